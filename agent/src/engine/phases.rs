//! The phases between checking and the end that are not files, patches or hooks: staging
//! (with the CRL hosts-file remediation), stopping and starting services, post-install
//! precompile, cleanup. Split from `run` (the sequence and its endings) to keep each file
//! one concept.

use super::events::append_log;
use super::journal::Record;
use super::run::{PhaseResult, Run, Stop, write_durable};
use super::{crl, webapp};
use fleetup_proto::manifest::FileAction;
use fleetup_proto::package::{self, Limits};
use fleetup_proto::{PhaseId, PhaseStatus};
use serde_json::json;
use std::fs;
use std::os::unix::fs::PermissionsExt as _;

impl Run<'_> {
    pub(crate) fn pre_precompile(&mut self) -> PhaseResult {
        let p = PhaseId::PrePrecompile;
        if !self.remediate_hosts.is_empty() {
            let original = fs::read(&self.hosts_file)
                .map_err(|e| Stop::Failed(format!("reading {}: {e}", self.hosts_file.display())))?;
            let saved = self.state_dir.join(format!("hosts.saved-{}", self.id));
            write_durable(&saved, &original)
                .map_err(|e| Stop::Failed(format!("saving {}: {e}", self.hosts_file.display())))?;
            self.record(Record::HostsFile { path: self.hosts_file.clone(), saved })?;
            let new = crl::remediated_hosts(&original, &self.remediate_hosts, &self.id);
            crl::write_in_place(&self.hosts_file, &new)
                .map_err(|e| Stop::Failed(format!("writing {}: {e}", self.hosts_file.display())))?;
            self.em.emit(
                p,
                PhaseStatus::Running,
                format!(
                    "CRL remediation: {} now maps {} to 127.0.0.1 until the install ends",
                    self.hosts_file.display(),
                    self.remediate_hosts.join(", ")
                ),
                json!({ "step": "crl-remediation", "hosts": self.remediate_hosts }),
            );
        }
        fs::create_dir(&self.stage)
            .map_err(|e| Stop::Failed(format!("creating staging {}: {e}", self.stage.display())))?;
        let pkg = self.pkg();
        let (package, trusted, em) = (&self.package, &self.trusted, &mut self.em);
        let mut throttle = super::events::Throttle::new();
        let verified = package::extract_file_with_progress(package, trusted, &Limits::default(), &pkg, &mut |pr| {
            if throttle.due(pr.entries_done as u64, pr.entries_total as u64) {
                em.emit(
                    p,
                    PhaseStatus::Running,
                    format!("staging {}/{} entries, {} of {} bytes", pr.entries_done, pr.entries_total, pr.bytes_done, pr.bytes_total),
                    json!({ "step": "staging", "progress": { "done": pr.entries_done, "total": pr.entries_total, "bytes_done": pr.bytes_done, "bytes_total": pr.bytes_total } }),
                );
            }
        })
        .map_err(|e| Stop::Failed(format!("unpacking {}: {e}", self.package.display())))?;
        let manifest_text = verified.index.manifest.clone();
        self.record(Record::Staged { manifest: manifest_text })?;
        fs::create_dir_all(self.backup()).map_err(|e| Stop::Failed(e.to_string()))?;
        let m = self.manifest().clone();
        for f in m.files.iter().filter(|f| f.action.places()) {
            let staged = self.staged_source(f);
            if let Some(target) = f.target.as_deref().filter(|_| f.action == FileAction::Symlink) {
                // The link is made in staging and renamed into place with the rest.
                fs::create_dir_all(staged.parent().expect("under staging")).map_err(|e| Stop::Failed(e.to_string()))?;
                std::os::unix::fs::symlink(target, &staged)
                    .map_err(|e| Stop::Failed(format!("staging the link {}: {e}", f.path)))?;
            } else if !staged.is_file() {
                return Err(Stop::Failed(format!("{} is not a file in the package", f.source_path())));
            }
            if let Some(mode) = &f.mode {
                let mode = fleetup_proto::manifest::parse_mode(mode).map_err(Stop::Failed)?;
                fs::set_permissions(&staged, fs::Permissions::from_mode(mode))
                    .map_err(|e| Stop::Failed(e.to_string()))?;
            }
            super::owner::apply(&staged, f).map_err(Stop::Failed)?;
        }
        self.stage_config_patches()?;
        self.em.emit(
            p,
            PhaseStatus::Running,
            format!("payload unpacked and verified into {}", self.pkg().display()),
            json!({ "step": "staged", "entries": verified.index.entries.len() }),
        );
        self.check_cancel(p)?;
        let n = m.precompile.before.len();
        for (i, c) in m.precompile.before.iter().enumerate() {
            let cmd = self.expand(&c.command)?;
            self.shell(p, &cmd, &self.pkg(), c.deadline_secs)?;
            self.em.emit(
                p,
                PhaseStatus::Running,
                format!("precompile {}/{n} done", i + 1),
                json!({ "progress": { "done": i + 1, "total": n } }),
            );
            self.check_cancel(p)?;
        }
        Ok((PhaseStatus::Succeeded, format!("staged and precompiled ({n} command(s)) while services kept running")))
    }

    pub(crate) fn stop_services(&mut self) -> PhaseResult {
        let p = PhaseId::StopServices;
        let m = self.manifest().clone();
        let mut running = Vec::new();
        for s in &m.services {
            if self.services.is_running(s).map_err(Stop::Failed)? {
                running.push(s.name.clone());
            }
        }
        // Files in use are asked about while the services still run: the operator's
        // thinking time is not outage. The services' own processes are left out.
        let own: std::collections::BTreeSet<u32> =
            m.services.iter().filter_map(|s| self.services.main_pid(s)).collect();
        if let Some(msg) = self.ask_files_in_use(p, &own)? {
            self.em.emit(p, PhaseStatus::Warning, msg, serde_json::Value::Null);
        }
        self.record(Record::ServicesStopping { was_running: running.clone() })?;
        self.was_running.clone_from(&running);
        // A cancel here takes effect only once every service has stopped (seeds).
        for s in m.services.iter().rev().filter(|s| running.contains(&s.name)) {
            self.services.stop(s).map_err(|e| Stop::Failed(format!("stopping {}: {e}", s.name)))?;
            self.em.emit(p, PhaseStatus::Running, format!("service {} stopped", s.name), json!({ "service": s.name }));
        }
        self.check_cancel(p)?;
        Ok((PhaseStatus::Succeeded, format!("stopped {} service(s): {}", running.len(), running.join(", "))))
    }

    pub(crate) fn post_precompile(&mut self) -> PhaseResult {
        let n = self.precompile_after(PhaseId::PostPrecompile, false)?;
        if n == 0 {
            return Ok((PhaseStatus::Skipped, "no post-install precompile inside the outage".into()));
        }
        Ok((PhaseStatus::Succeeded, format!("{n} precompile command(s) ran on the new files")))
    }

    /// Runs the `precompile.after` commands with this `after_start`, in the install root;
    /// returns how many ran. Those marked `after_start` run in post-hooks, once the
    /// services are healthy: outside the outage.
    pub(crate) fn precompile_after(&mut self, p: PhaseId, after_start: bool) -> Result<usize, Stop> {
        let m = self.manifest().clone();
        let commands: Vec<_> = m.precompile.after.iter().filter(|c| c.after_start == after_start).collect();
        for (i, c) in commands.iter().enumerate() {
            let cmd = self.expand(&c.command)?;
            self.shell(p, &cmd, &self.root, c.deadline_secs)?;
            let total = commands.len();
            self.em.emit(
                p,
                PhaseStatus::Running,
                format!("post-install precompile {}/{total} done", i + 1),
                json!({ "progress": { "done": i + 1, "total": total } }),
            );
        }
        Ok(commands.len())
    }

    pub(crate) fn start_services(&mut self) -> PhaseResult {
        let p = PhaseId::StartServices;
        let m = self.manifest().clone();
        let mut started = Vec::new();
        let was_running = self.was_running.clone();
        for s in m.services.iter().filter(|s| was_running.contains(&s.name)) {
            let serving = self.start_service(s, true).map_err(Stop::Failed)?;
            // `serving_since`: when it first answered its health check, which ends the
            // outage (the summary's); the rest of the start window only watches it.
            self.em.emit(
                p,
                PhaseStatus::Running,
                format!("service {} started and healthy", s.name),
                json!({ "service": s.name, "serving_since": serving }),
            );
            started.push(s.name.clone());
        }
        Ok((
            PhaseStatus::Succeeded,
            format!("started {} service(s) that ran before: {}", started.len(), started.join(", ")),
        ))
    }

    pub(crate) fn cleanup(&mut self) -> PhaseResult {
        if self.stage.exists() {
            fs::remove_dir_all(&self.stage)
                .map_err(|e| Stop::Failed(format!("removing {}: {e}", self.stage.display())))?;
        }
        let m = self.manifest().clone();
        let mut msg = "backups and staging removed".to_owned();
        if let Some(w) = &m.webapp
            && let Some(keep) = w.keep_releases
        {
            let releases = self.root.join(&w.web_root).join("releases");
            let removed = webapp::prune_releases(&releases, &m.rollup.version, keep as usize)
                .map_err(|e| Stop::Failed(format!("removing old releases in {}: {e}", releases.display())))?;
            append_log(
                &self.em.logs.join("update-webapp.log"),
                &format!(
                    "kept {keep} release(s); removed: {}",
                    if removed.is_empty() { "none".into() } else { removed.join(", ") }
                ),
            );
            if !removed.is_empty() {
                msg = format!("{msg}; old web app release(s) removed (keep {keep}): {}", removed.join(", "));
            }
        }
        Ok((PhaseStatus::Succeeded, msg))
    }
}

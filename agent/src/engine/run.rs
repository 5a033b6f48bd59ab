//! The phase sequence of one install, and recovery of an interrupted one.

use super::events::{Emitter, append_log};
use super::exec::{self, ExecError, Shell};
use super::journal::{Journal, Record, sync_dir};
use super::services::Services;
use super::{
    CancelHandle, CrlRemediation, Engine, EngineError, InstallRequest, config_patch, crl, inuse, rollback, webapp,
};
use fleetup_proto::manifest::{FileAction, Manifest, PrerequisiteCheck, Severity};
use fleetup_proto::package::{self, Limits};
use fleetup_proto::{
    Cancellability, DecisionAnswer, DecisionKind, DecisionRequest, InstallOutcome, InstallSummary, PhaseId,
    PhaseStatus, PublicKey,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Why a phase stopped the install.
#[derive(Debug)]
pub(crate) enum Stop {
    /// A cancel was accepted.
    Cancelled(String),
    /// Files in use: the operator chose exit.
    Exit(String),
    /// Something failed.
    Failed(String),
}

type PhaseResult = Result<(PhaseStatus, String), Stop>;

/// The state of one install while it runs (or is recovered).
pub(crate) struct Run<'e> {
    pub(crate) engine: &'e Engine,
    pub(crate) id: String,
    pub(crate) root: PathBuf,
    pub(crate) state_dir: PathBuf,
    pub(crate) stage: PathBuf,
    pub(crate) package: PathBuf,
    pub(crate) trusted: Vec<PublicKey>,
    pub(crate) vars: BTreeMap<String, String>,
    pub(crate) services: Services,
    pub(crate) hosts_file: PathBuf,
    pub(crate) remediation: CrlRemediation,
    pub(crate) journal: Journal,
    pub(crate) em: Emitter,
    pub(crate) manifest: Option<Manifest>,
    pub(crate) was_running: Vec<String>,
    pub(crate) restart_required: bool,
    remediate_hosts: Vec<String>,
    decisions: u32,
}

impl Run<'_> {
    pub(crate) fn pkg(&self) -> PathBuf {
        self.stage.join("pkg")
    }

    pub(crate) fn backup(&self) -> PathBuf {
        self.stage.join("backup")
    }

    fn cancel(&self) -> &CancelHandle {
        &self.engine.cancel
    }

    pub(crate) fn record(&mut self, r: Record) -> Result<(), Stop> {
        self.journal.append(r).map_err(|e| Stop::Failed(format!("cannot write the journal: {e}")))
    }

    fn manifest(&self) -> &Manifest {
        self.manifest.as_ref().expect("manifest known after check-system")
    }

    fn hook_env(&self, phase: PhaseId) -> Vec<(String, String)> {
        let m = self.manifest.as_ref();
        vec![
            ("FLEETUP_ROOT".into(), self.root.display().to_string()),
            ("FLEETUP_STAGING".into(), self.pkg().display().to_string()),
            ("FLEETUP_STATE_DIR".into(), self.state_dir.display().to_string()),
            ("FLEETUP_INSTALL_ID".into(), self.id.clone()),
            ("FLEETUP_ROLLUP_NAME".into(), m.map(|m| m.rollup.name.clone()).unwrap_or_default()),
            ("FLEETUP_ROLLUP_VERSION".into(), m.map(|m| m.rollup.version.clone()).unwrap_or_default()),
            ("FLEETUP_HOSTS_FILE".into(), self.hosts_file.display().to_string()),
            ("FLEETUP_PHASE".into(), phase.as_str().into()),
        ]
    }

    fn expand(&self, s: &str) -> Result<String, Stop> {
        fleetup_proto::manifest::expand(s, &self.vars).map_err(Stop::Failed)
    }

    /// Runs a shell command for a phase, honouring the deadline and (where the phase
    /// allows it) a cancel.
    pub(crate) fn shell(&self, phase: PhaseId, command: &str, cwd: &Path, deadline_secs: u64) -> Result<(), Stop> {
        let env = self.hook_env(phase);
        let log = self.em.phase_log(phase);
        let cancellable = phase.cancellability() == Cancellability::Immediate;
        let cancel = self.cancel().clone();
        exec::run(
            &Shell { command, cwd, env: &env, deadline: Duration::from_secs(deadline_secs.max(1)), log: &log },
            &move || cancellable && cancel.is_requested(),
        )
        .map_err(|e| match e {
            ExecError::Cancelled => Stop::Cancelled(format!("cancelled while running `{command}`")),
            other => Stop::Failed(format!("`{command}`: {other}")),
        })
    }

    fn check_cancel(&self, phase: PhaseId) -> Result<(), Stop> {
        if self.cancel().is_requested() && phase.cancellability() != Cancellability::Refused {
            return Err(Stop::Cancelled(super::cancel_effect(phase, phase.cancellability())));
        }
        Ok(())
    }

    /// Asks a decision, reporting the question and the answer as events.
    fn ask(&mut self, phase: PhaseId, message: String, kind: DecisionKind) -> DecisionAnswer {
        self.decisions += 1;
        let options = DecisionRequest::options_for(&kind);
        let req = DecisionRequest { id: self.decisions, phase, message: message.clone(), kind, options };
        self.em.emit(phase, PhaseStatus::Warning, message, json!({ "decision": req }));
        let mut answer = self.engine.decider.decide(&req);
        if !req.options.contains(&answer) {
            answer =
                if req.options.contains(&DecisionAnswer::Exit) { DecisionAnswer::Exit } else { DecisionAnswer::Cancel };
        }
        if self.cancel().is_requested() && phase.cancellability() != Cancellability::Refused {
            answer =
                if req.options.contains(&DecisionAnswer::Exit) { DecisionAnswer::Exit } else { DecisionAnswer::Cancel };
        }
        self.em.emit(
            phase,
            PhaseStatus::Running,
            format!("answer to decision {}: {answer}", req.id),
            json!({ "decision_id": req.id, "answer": answer }),
        );
        answer
    }

    fn rollup(&self) -> (String, String) {
        match &self.manifest {
            Some(m) => (m.rollup.name.clone(), m.rollup.version.clone()),
            None => {
                (self.package.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(), String::new())
            }
        }
    }

    // ---------------------------------------------------------------- phases

    fn run_phase(&mut self, phase: PhaseId) -> PhaseResult {
        match phase {
            PhaseId::CheckSystem => self.check_system(),
            PhaseId::PrePrecompile => self.pre_precompile(),
            PhaseId::PreHooks => self.hooks(PhaseId::PreHooks, "pre-install.d"),
            PhaseId::StopServices => self.stop_services(),
            PhaseId::ValidateFiles => self.validate_files(),
            PhaseId::UpdateFiles => self.update_files(),
            PhaseId::PostPrecompile => self.post_precompile(),
            PhaseId::StartServices => self.start_services(),
            PhaseId::PostHooks => self.hooks(PhaseId::PostHooks, "post-install.d"),
            PhaseId::PatchConfig => self.patch_config(),
            PhaseId::PatchWebapp => self.patch_webapp(),
            PhaseId::Cleanup => self.cleanup(),
            PhaseId::Rollback => Ok((PhaseStatus::Skipped, String::new())),
        }
    }

    fn check_system(&mut self) -> PhaseResult {
        let p = PhaseId::CheckSystem;
        let verified = package::verify_file(&self.package, &self.trusted, &Limits::default())
            .map_err(|e| Stop::Failed(format!("package {}: {e}", self.package.display())))?;
        self.em.emit(
            p,
            PhaseStatus::Running,
            format!(
                "package verified: {} {}, signed by key {}",
                verified.manifest.rollup.name, verified.manifest.rollup.version, verified.key_id
            ),
            json!({ "step": "integrity" }),
        );
        let m = verified.manifest;
        self.vars.insert("version".into(), m.rollup.version.clone());
        self.services.vars.clone_from(&self.vars);
        let mut fatal = Vec::new();
        // Every template must expand now: a typo fails here, not halfway through.
        let mut templates: Vec<&str> = Vec::new();
        for s in &m.services {
            if let Some(e) = &s.exec {
                templates.push(&e.start);
                templates.extend(e.stop.as_deref());
                templates.extend(e.status.as_deref());
            }
            if let Some(h) = &s.health {
                templates.extend(h.http.as_deref());
                templates.extend(h.command.as_deref());
            }
        }
        templates.extend(m.precompile.before.iter().chain(&m.precompile.after).map(|c| c.command.as_str()));
        if let Some(c) = &m.crl {
            templates.extend(c.endpoints.iter().map(String::as_str));
        }
        for t in templates {
            if let Err(e) = fleetup_proto::manifest::expand(t, &self.vars) {
                fatal.push(e);
            }
        }
        // Files: adds must be new, replaces and removes must exist.
        let mut backup_bytes = 0u64;
        for f in &m.files {
            let path = self.root.join(&f.path);
            let meta = fs::symlink_metadata(&path);
            match (f.action, &meta) {
                (FileAction::Add, Ok(_)) => fatal.push(format!("{} already exists, but the rollup adds it", f.path)),
                (FileAction::Replace | FileAction::Remove, Err(_)) => fatal.push(format!(
                    "{} does not exist, but the rollup {}s it",
                    f.path,
                    if f.action == FileAction::Remove { "remove" } else { "replace" }
                )),
                (_, Ok(md)) => backup_bytes += md.len(),
                _ => {}
            }
        }
        for c in &m.config_patches {
            match fs::metadata(self.root.join(&c.file)) {
                Ok(md) => backup_bytes += md.len(),
                Err(_) => fatal.push(format!("config file {} does not exist", c.file)),
            }
        }
        if let Some(w) = &m.webapp
            && self.root.join(&w.web_root).join("releases").join(&m.rollup.version).exists()
        {
            fatal.push(format!(
                "{}/releases/{} already exists: this version's web app is already deployed",
                w.web_root, m.rollup.version
            ));
        }
        // Disk space on the root's filesystem (staging lives there too).
        let need = verified.index.total_size() + backup_bytes + m.check.free_space_margin_mb * 1024 * 1024;
        let parent = self.stage.parent().unwrap_or(&self.root).to_path_buf();
        match nix::sys::statvfs::statvfs(&parent) {
            Ok(st) => {
                let avail = st.blocks_available() * st.fragment_size();
                if avail < need {
                    fatal.push(format!("not enough free space on the filesystem of {}: {avail} bytes free, {need} needed (payload + backups + {} MiB margin)", self.root.display(), m.check.free_space_margin_mb));
                }
            }
            Err(e) => fatal.push(format!("cannot read free space of {}: {e}", parent.display())),
        }
        let root_dev = fs::metadata(&self.root).map(|m| m.dev()).ok();
        let parent_dev = fs::metadata(&parent).map(|m| m.dev()).ok();
        if root_dev != parent_dev {
            fatal.push(format!("{} is a mount point: staging beside it would be on another filesystem, and files could not be renamed into place", self.root.display()));
        }
        // Permissions.
        if nix::unistd::access(&self.root, nix::unistd::AccessFlags::W_OK).is_err()
            || nix::unistd::access(&parent, nix::unistd::AccessFlags::W_OK).is_err()
        {
            fatal.push(format!(
                "cannot write to {} (and its parent, for staging): run as the owner of the install root",
                self.root.display()
            ));
        }
        match self.services.kind {
            super::BackendKind::Systemd => {
                if !m.services.is_empty()
                    && std::process::Command::new("systemctl")
                        .arg("--version")
                        .output()
                        .map_or(true, |o| !o.status.success())
                {
                    fatal.push(
                        "systemctl is not available: cannot control the services (use --services-backend exec?)".into(),
                    );
                }
            }
            super::BackendKind::Exec => {
                for s in &m.services {
                    if s.exec.is_none() {
                        fatal.push(format!(
                            "service {} has no [services.exec] section, needed by the exec backend",
                            s.name
                        ));
                    }
                }
            }
        }
        // Prerequisites.
        let mut warnings = Vec::new();
        for pre in &m.prerequisites {
            let ok = match &pre.check {
                PrerequisiteCheck::FileExists { path } => self.root.join(path).exists(),
                PrerequisiteCheck::CommandSucceeds { command } => self.shell(p, command, &self.root, 30).is_ok(),
                PrerequisiteCheck::PackageVersion { package, min_version } => {
                    let cmd = format!(
                        "v=$(dpkg-query -W -f='${{Version}}' '{package}' 2>/dev/null) && dpkg --compare-versions \"$v\" ge '{min_version}'"
                    );
                    self.shell(p, &cmd, &self.root, 30).is_ok()
                }
            };
            if !ok {
                match pre.severity {
                    Severity::Fatal => fatal.push(pre.message.clone()),
                    Severity::Warning => warnings.push(pre.message.clone()),
                }
            }
        }
        if !fatal.is_empty() {
            self.manifest = Some(m);
            return Err(Stop::Failed(fatal.join("; ")));
        }
        self.manifest = Some(m.clone());
        let mut status = PhaseStatus::Succeeded;
        for w in warnings {
            status = PhaseStatus::Warning;
            let answer = self.ask(
                p,
                format!("prerequisite not met: {w}"),
                DecisionKind::Warning { code: "prerequisite".into(), remediation: Some(w.clone()) },
            );
            if answer != DecisionAnswer::Continue {
                return Err(Stop::Cancelled(format!("cancelled at the prerequisite warning: {w}")));
            }
        }
        // CRL endpoints, in parallel, each within the short deadline.
        if let Some(c) = m.crl.as_ref().filter(|c| c.revocation_checking && !c.endpoints.is_empty()) {
            let urls: Vec<String> = c.endpoints.iter().map(|u| self.expand(u)).collect::<Result<_, _>>()?;
            let deadline = Duration::from_secs(c.probe_deadline_secs);
            let t = Instant::now();
            let probes = crl::probe_all(&urls, &self.hosts_file, deadline);
            let elapsed = t.elapsed();
            let bad: Vec<_> = probes.iter().filter(|p| p.problem.is_some()).cloned().collect();
            self.em.emit(p, PhaseStatus::Running, format!("probed {} CRL endpoint(s) in {} ms: {} unreachable", probes.len(), elapsed.as_millis(), bad.len()),
                json!({ "step": "crl", "probe_ms": elapsed.as_millis() as u64, "probes": probes.iter().map(|p| json!({"url": p.url, "ok": p.problem.is_none(), "problem": p.problem, "ms": p.elapsed.as_millis() as u64})).collect::<Vec<_>>() }));
            for b in bad {
                status = PhaseStatus::Warning;
                let text = crl::remediation(&b);
                let can_remediate = b.host.parse::<std::net::IpAddr>().is_err() && !b.host.is_empty();
                if self.remediation == CrlRemediation::HostsFile && can_remediate {
                    self.em.emit(p, PhaseStatus::Warning, format!("CRL endpoint {} is unreachable: {}; {} will map {} to 127.0.0.1 for this install only (--crl-remediation hosts-file)", b.url, b.problem.as_deref().unwrap_or("?"), self.hosts_file.display(), b.host),
                        json!({ "warning": { "code": "crl-unreachable", "remediation": text, "applied": "hosts-file" } }));
                    if !self.remediate_hosts.contains(&b.host) {
                        self.remediate_hosts.push(b.host.clone());
                    }
                } else {
                    let answer = self.ask(
                        p,
                        format!("CRL endpoint {} is unreachable: {}", b.url, b.problem.as_deref().unwrap_or("?")),
                        DecisionKind::Warning { code: "crl-unreachable".into(), remediation: Some(text) },
                    );
                    if answer != DecisionAnswer::Continue {
                        return Err(Stop::Cancelled(format!("cancelled at the CRL warning for {}", b.url)));
                    }
                }
            }
        }
        self.check_cancel(p)?;
        Ok((
            status,
            format!(
                "system checked: package verified, {need} bytes of space needed and available, permissions and prerequisites ok"
            ),
        ))
    }

    fn pre_precompile(&mut self) -> PhaseResult {
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
        let verified = package::extract_file(&self.package, &self.trusted, &Limits::default(), &self.pkg())
            .map_err(|e| Stop::Failed(format!("unpacking {}: {e}", self.package.display())))?;
        let manifest_text = verified.index.manifest.clone();
        self.record(Record::Staged { manifest: manifest_text })?;
        fs::create_dir_all(self.backup()).map_err(|e| Stop::Failed(e.to_string()))?;
        let m = self.manifest().clone();
        for f in m.files.iter().filter(|f| f.action != FileAction::Remove) {
            let src = self.pkg().join(f.source_path());
            if !src.is_file() {
                return Err(Stop::Failed(format!("{} is not a file in the package", f.source_path())));
            }
            if let Some(mode) = &f.mode {
                let mode = fleetup_proto::manifest::parse_mode(mode).map_err(Stop::Failed)?;
                fs::set_permissions(&src, fs::Permissions::from_mode(mode)).map_err(|e| Stop::Failed(e.to_string()))?;
            }
        }
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

    fn hooks(&mut self, p: PhaseId, dir: &str) -> PhaseResult {
        let mut scripts: Vec<PathBuf> = fs::read_dir(self.state_dir.join("hooks").join(dir))
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
            .unwrap_or_default();
        scripts.sort();
        let m = self.manifest().clone();
        let (pkg_scripts, deadline) = if p == PhaseId::PreHooks {
            (&m.scripts.pre_install, m.scripts.deadline_secs)
        } else {
            (&m.scripts.post_install, m.scripts.deadline_secs)
        };
        scripts.extend(pkg_scripts.iter().map(|s| self.pkg().join(s)));
        if scripts.is_empty() {
            return Ok((PhaseStatus::Skipped, "no hooks".into()));
        }
        for s in &scripts {
            self.check_cancel(p)?;
            let cmd = format!("sh '{}'", s.display());
            self.shell(p, &cmd, &self.root, deadline).map_err(|e| match e {
                Stop::Failed(msg) => Stop::Failed(format!("hook {} failed: {msg}", s.display())),
                other => other,
            })?;
            self.em.emit(p, PhaseStatus::Running, format!("hook {} done", s.display()), serde_json::Value::Null);
        }
        self.check_cancel(p)?;
        Ok((PhaseStatus::Succeeded, format!("{} hook(s) ran", scripts.len())))
    }

    fn stop_services(&mut self) -> PhaseResult {
        let p = PhaseId::StopServices;
        let m = self.manifest().clone();
        let mut running = Vec::new();
        for s in &m.services {
            if self.services.is_running(s).map_err(Stop::Failed)? {
                running.push(s.name.clone());
            }
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

    fn validate_files(&mut self) -> PhaseResult {
        let p = PhaseId::ValidateFiles;
        let m = self.manifest().clone();
        let mut targets = BTreeMap::new();
        for f in m.files.iter().filter(|f| f.action != FileAction::Add) {
            targets.insert(self.root.join(&f.path), f.path.clone());
        }
        for c in &m.config_patches {
            targets.insert(self.root.join(&c.file), c.file.clone());
        }
        loop {
            self.check_cancel(p)?;
            let holders = inuse::scan(&targets);
            if holders.is_empty() {
                return Ok(if self.restart_required {
                    (PhaseStatus::Warning, "files in use were ignored: restart required after the install".into())
                } else {
                    (PhaseStatus::Succeeded, "no process holds a file that will be replaced".into())
                });
            }
            let names: Vec<String> =
                holders.iter().map(|h| format!("{} (pid {}) holds {}", h.name, h.pid, h.files.join(", "))).collect();
            let answer = self.ask(
                p,
                format!("files in use: {}", names.join("; ")),
                DecisionKind::FilesInUse { processes: holders },
            );
            match answer {
                DecisionAnswer::Retry => {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_secs(1) && !self.cancel().is_requested() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                DecisionAnswer::Ignore => {
                    self.restart_required = true;
                    return Ok((
                        PhaseStatus::Warning,
                        format!("files in use ignored: restart required ({})", names.join("; ")),
                    ));
                }
                _ => return Err(Stop::Exit(format!("files in use; exit chosen: {}", names.join("; ")))),
            }
        }
    }

    fn update_files(&mut self) -> PhaseResult {
        let p = PhaseId::UpdateFiles;
        let m = self.manifest().clone();
        let total = m.files.len();
        let t = Instant::now();
        for (i, f) in m.files.iter().enumerate() {
            self.check_cancel(p)?;
            let dst = self.root.join(&f.path);
            let parent = dst.parent().expect("paths under the root have a parent").to_path_buf();
            if f.action == FileAction::Add {
                let mut missing = Vec::new();
                let mut d = parent.clone();
                while !d.exists() && d.starts_with(&self.root) {
                    missing.push(d.clone());
                    d = d.parent().expect("under root").to_path_buf();
                }
                for d in missing.into_iter().rev() {
                    let rel = d.strip_prefix(&self.root).expect("under root").display().to_string();
                    self.record(Record::MkDir { path: rel })?;
                    fs::create_dir(&d).map_err(|e| Stop::Failed(format!("creating {}: {e}", d.display())))?;
                }
            }
            if f.action != FileAction::Add {
                let bak = self.backup().join(&f.path);
                fs::create_dir_all(bak.parent().expect("has parent")).map_err(|e| Stop::Failed(e.to_string()))?;
                self.record(Record::Backup { path: f.path.clone() })?;
                fs::rename(&dst, &bak).map_err(|e| Stop::Failed(format!("backing up {}: {e}", f.path)))?;
            }
            if f.action != FileAction::Remove {
                self.record(Record::Place { path: f.path.clone(), added: f.action == FileAction::Add })?;
                fs::rename(self.pkg().join(f.source_path()), &dst)
                    .map_err(|e| Stop::Failed(format!("renaming {} into place: {e}", f.path)))?;
            }
            sync_dir(&parent).map_err(|e| Stop::Failed(e.to_string()))?;
            append_log(&self.em.phase_log(p), &format!("{:?} {} (rename)", f.action, f.path));
            self.em.emit(
                p,
                PhaseStatus::Running,
                format!("{} {} ({}/{total})", action_word(f.action), f.path, i + 1),
                json!({ "progress": { "done": i + 1, "total": total }, "path": f.path }),
            );
        }
        self.check_cancel(p)?;
        self.record(Record::Committed)?;
        Ok((
            PhaseStatus::Succeeded,
            format!("{total} file(s) updated by rename in {} ms; 0 bytes copied", t.elapsed().as_millis()),
        ))
    }

    fn post_precompile(&mut self) -> PhaseResult {
        let p = PhaseId::PostPrecompile;
        let m = self.manifest().clone();
        if m.precompile.after.is_empty() {
            return Ok((PhaseStatus::Skipped, "no post-install precompile".into()));
        }
        for c in &m.precompile.after {
            let cmd = self.expand(&c.command)?;
            self.shell(p, &cmd, &self.root, c.deadline_secs)?;
        }
        Ok((PhaseStatus::Succeeded, format!("{} precompile command(s) ran on the new files", m.precompile.after.len())))
    }

    fn start_services(&mut self) -> PhaseResult {
        let p = PhaseId::StartServices;
        let m = self.manifest().clone();
        let mut started = Vec::new();
        for s in m.services.iter().filter(|s| self.was_running.contains(&s.name)) {
            self.services.start(s).map_err(|e| Stop::Failed(format!("starting {}: {e}", s.name)))?;
            self.services
                .wait_healthy(s, &self.hosts_file)
                .map_err(|e| Stop::Failed(format!("service {} {e}", s.name)))?;
            self.em.emit(
                p,
                PhaseStatus::Running,
                format!("service {} started and healthy", s.name),
                json!({ "service": s.name }),
            );
            started.push(s.name.clone());
        }
        Ok((
            PhaseStatus::Succeeded,
            format!("started {} service(s) that ran before: {}", started.len(), started.join(", ")),
        ))
    }

    fn patch_config(&mut self) -> PhaseResult {
        let p = PhaseId::PatchConfig;
        let m = self.manifest().clone();
        if m.config_patches.is_empty() {
            return Ok((PhaseStatus::Skipped, "no config patches".into()));
        }
        let log = self.em.logs.join("patch-config.log");
        for c in &m.config_patches {
            let path = self.root.join(&c.file);
            let bak = self.backup().join("config").join(&c.file);
            let recorded =
                self.journal.records().iter().any(|r| matches!(r, Record::ConfigPatch { file } if *file == c.file));
            if !recorded {
                self.record(Record::ConfigPatch { file: c.file.clone() })?;
                let original = fs::read(&path).map_err(|e| Stop::Failed(format!("reading {}: {e}", c.file)))?;
                fs::create_dir_all(bak.parent().expect("has parent")).map_err(|e| Stop::Failed(e.to_string()))?;
                let tmp = bak.with_extension("fleetup-tmp");
                write_durable(&tmp, &original).map_err(|e| Stop::Failed(e.to_string()))?;
                fs::rename(&tmp, &bak).map_err(|e| Stop::Failed(e.to_string()))?;
                append_log(&log, &format!("backed up {} to {}", c.file, bak.display()));
            }
            let text = fs::read_to_string(&path).map_err(|e| Stop::Failed(format!("reading {}: {e}", c.file)))?;
            let new = config_patch::apply(&text, &c.edit, &c.value)
                .map_err(|e| Stop::Failed(format!("patching {}: {e}", c.file)))?;
            if new != text {
                let tmp = path.with_file_name(format!(
                    ".{}.fleetup-tmp",
                    path.file_name().and_then(|n| n.to_str()).unwrap_or("config")
                ));
                write_durable(&tmp, new.as_bytes()).map_err(|e| Stop::Failed(e.to_string()))?;
                if let Ok(md) = fs::metadata(&path) {
                    let _ = fs::set_permissions(&tmp, md.permissions());
                }
                fs::rename(&tmp, &path).map_err(|e| Stop::Failed(format!("replacing {}: {e}", c.file)))?;
                sync_dir(path.parent().expect("has parent")).map_err(|e| Stop::Failed(e.to_string()))?;
            }
            append_log(&log, &format!("{}: {:?} = {}", c.file, c.edit, c.value));
            self.em.emit(p, PhaseStatus::Running, format!("patched {}", c.file), json!({ "file": c.file }));
        }
        Ok((PhaseStatus::Succeeded, format!("{} config edit(s) applied (originals backed up)", m.config_patches.len())))
    }

    fn patch_webapp(&mut self) -> PhaseResult {
        let m = self.manifest().clone();
        let Some(w) = &m.webapp else { return Ok((PhaseStatus::Skipped, "no web app in this rollup".into())) };
        let log = self.em.logs.join("update-webapp.log");
        let rel_dir = format!("{}/releases/{}", w.web_root, m.rollup.version);
        let dir = self.root.join(&rel_dir);
        let src = self.pkg().join(&w.source);
        if !dir.exists() {
            self.record(Record::WebappDeploy { dir: rel_dir.clone() })?;
            fs::create_dir_all(dir.parent().expect("has parent")).map_err(|e| Stop::Failed(e.to_string()))?;
            fs::rename(&src, &dir).map_err(|e| Stop::Failed(format!("deploying the web app to {rel_dir}: {e}")))?;
            append_log(&log, &format!("deployed {} to {rel_dir}", w.source));
        }
        let link_rel = format!("{}/current", w.web_root);
        let link = self.root.join(&link_rel);
        let target = format!("releases/{}", m.rollup.version);
        let old = webapp::read_target(&link);
        if old.as_deref() != Some(target.as_str()) {
            self.record(Record::WebappSwitch { link: link_rel.clone(), old_target: old.clone() })?;
            webapp::switch_link(&link, &target).map_err(|e| Stop::Failed(format!("switching {link_rel}: {e}")))?;
            append_log(&log, &format!("switched {link_rel}: {} -> {target}", old.as_deref().unwrap_or("(none)")));
        }
        Ok((PhaseStatus::Succeeded, format!("web app {} live at {link_rel} -> {target}", m.rollup.version)))
    }

    fn cleanup(&mut self) -> PhaseResult {
        if self.stage.exists() {
            fs::remove_dir_all(&self.stage)
                .map_err(|e| Stop::Failed(format!("removing {}: {e}", self.stage.display())))?;
        }
        Ok((PhaseStatus::Succeeded, "backups and staging removed".into()))
    }

    // ---------------------------------------------------------------- endings

    /// Restores services to their prior state (after a cancel in stop/validate).
    fn restart_prior(&mut self) -> Result<(), String> {
        let m = self.manifest().clone();
        let mut errors = Vec::new();
        for s in m.services.iter().filter(|s| self.was_running.contains(&s.name)) {
            if let Err(e) = self.services.start(s) {
                errors.push(format!("{}: {e}", s.name));
            } else {
                self.em.emit(
                    PhaseId::StartServices,
                    PhaseStatus::Running,
                    format!("service {} started again", s.name),
                    json!({ "service": s.name }),
                );
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors.join("; ")) }
    }

    /// Every path out: restore the hosts file, remove staging (unless a person needs the
    /// backups), emit the one final event, close the journal.
    pub(crate) fn finish(
        mut self,
        outcome: InstallOutcome,
        failed_phase: Option<PhaseId>,
        error: Option<String>,
    ) -> InstallSummary {
        let mut error = error;
        let mut outcome = outcome;
        if let Err(e) = rollback::restore_hosts(&self) {
            outcome = InstallOutcome::RecoveryRequired;
            error = Some(format!("{}; hosts file not restored: {e}", error.unwrap_or_default()));
        }
        if outcome != InstallOutcome::RecoveryRequired && self.stage.exists() {
            let _ = fs::remove_dir_all(&self.stage);
        }
        let _ = fs::remove_file(self.state_dir.join(format!("hosts.saved-{}", self.id)));
        let (name, version) = self.rollup();
        let summary = self.em.summary(outcome, &name, &version, self.restart_required, failed_phase, error.clone());
        let (phase, status) = match outcome {
            InstallOutcome::Succeeded => (PhaseId::Cleanup, PhaseStatus::Succeeded),
            InstallOutcome::Cancelled => (failed_phase.unwrap_or(PhaseId::CheckSystem), PhaseStatus::Cancelled),
            InstallOutcome::RolledBack => (PhaseId::Rollback, PhaseStatus::Succeeded),
            InstallOutcome::Failed => (failed_phase.unwrap_or(PhaseId::CheckSystem), PhaseStatus::Failed),
            InstallOutcome::RecoveryRequired => (PhaseId::Rollback, PhaseStatus::Failed),
        };
        let msg = match (&outcome, &error) {
            (InstallOutcome::Succeeded, _) => {
                format!("{name} {version} installed; outage {} ms of {} ms total", summary.outage_ms, summary.total_ms)
            }
            (InstallOutcome::RecoveryRequired, e) => format!(
                "install of {name} {version} needs a person: {}; backups kept in {}",
                e.as_deref().unwrap_or("?"),
                self.stage.display()
            ),
            (o, e) => format!("install of {name} {version} ended: {o}: {}", e.as_deref().unwrap_or("")),
        };
        self.em.emit(phase, status, msg, json!({ "summary": summary }));
        self.cancel().set_phase(None);
        let _ = self.journal.append(Record::End { outcome });
        let logs = self.em.logs.clone();
        let _ = self.journal.archive(&logs);
        summary
    }

    /// Rolls back and ends with `outcome` (or `recovery-required`).
    fn rollback_and_finish(
        mut self,
        outcome: InstallOutcome,
        failed: Option<PhaseId>,
        error: String,
    ) -> InstallSummary {
        match rollback::rollback(&mut self, &error, outcome) {
            Ok(()) => self.finish(outcome, failed, Some(error)),
            Err(e) => self.finish(
                InstallOutcome::RecoveryRequired,
                failed,
                Some(format!("{error}; rollback incomplete: {e}")),
            ),
        }
    }

    /// Runs phases from `from` (an index into `PhaseId::INSTALL`) to the end.
    pub(crate) fn run_from(mut self, from: usize) -> InstallSummary {
        for &phase in &PhaseId::INSTALL[from..] {
            self.cancel().set_phase(Some(phase));
            if let Err(Stop::Failed(e)) = self.record(Record::Phase { phase }) {
                return self.finish(InstallOutcome::RecoveryRequired, Some(phase), Some(e));
            }
            let can = match phase.cancellability() {
                Cancellability::Refused => "cancel not possible now".to_owned(),
                c => super::cancel_effect(phase, c),
            };
            self.em.emit(phase, PhaseStatus::Running, phase.title(), json!({ "number": phase.number(), "of": PhaseId::INSTALL.len(), "cancel": phase.cancellability(), "cancel_effect": can }));
            let result = self.run_phase(phase);
            match result {
                Ok((status, msg)) => self.em.emit(phase, status, msg, serde_json::Value::Null),
                Err(stop) => return self.stopped(phase, stop),
            }
        }
        self.finish(InstallOutcome::Succeeded, None, None)
    }

    fn stopped(mut self, phase: PhaseId, stop: Stop) -> InstallSummary {
        let changed = self.journal.records().iter().any(|r| matches!(r, Record::ServicesStopping { .. }));
        match stop {
            Stop::Cancelled(msg) | Stop::Exit(msg) => {
                self.em.emit(phase, PhaseStatus::Cancelled, msg.clone(), serde_json::Value::Null);
                match phase.cancellability() {
                    Cancellability::Immediate | Cancellability::Refused => {
                        self.finish(InstallOutcome::Cancelled, Some(phase), Some(msg))
                    }
                    Cancellability::AfterStopping | Cancellability::RestartServices => match self.restart_prior() {
                        Ok(()) => self.finish(InstallOutcome::Cancelled, Some(phase), Some(msg)),
                        Err(e) => self.finish(
                            InstallOutcome::RecoveryRequired,
                            Some(phase),
                            Some(format!("{msg}; services could not be started again: {e}")),
                        ),
                    },
                    Cancellability::Rollback => self.rollback_and_finish(InstallOutcome::Cancelled, Some(phase), msg),
                }
            }
            Stop::Failed(msg) => {
                self.em.emit(phase, PhaseStatus::Failed, msg.clone(), serde_json::Value::Null);
                if changed {
                    self.rollback_and_finish(InstallOutcome::RolledBack, Some(phase), msg)
                } else {
                    self.finish(InstallOutcome::Failed, Some(phase), Some(msg))
                }
            }
        }
    }
}

fn action_word(a: FileAction) -> &'static str {
    match a {
        FileAction::Add => "added",
        FileAction::Replace => "replaced",
        FileAction::Remove => "removed",
    }
}

/// Writes a file and fsyncs it.
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::StateDir { path: path.to_path_buf(), source }
}

pub(crate) fn install(engine: &Engine, req: &InstallRequest) -> Result<InstallSummary, EngineError> {
    fs::create_dir_all(&req.state_dir).map_err(state_err(&req.state_dir))?;
    let state_dir = fs::canonicalize(&req.state_dir).map_err(state_err(&req.state_dir))?;
    if Journal::path_in(&state_dir).exists() {
        return Err(EngineError::Unfinished(Journal::path_in(&state_dir)));
    }
    let root = fs::canonicalize(&req.root).map_err(|e| EngineError::Root(format!("{}: {e}", req.root.display())))?;
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| EngineError::Root("the root must not be /".into()))?
        .to_owned();
    let id = format!("{}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%3f"), std::process::id());
    let stage = root.parent().expect("has a name, so a parent").join(format!(".{name}.fleetup-{id}"));
    let mut vars = req.vars.clone();
    vars.insert("root".into(), root.display().to_string());
    vars.insert("staging".into(), stage.join("pkg").display().to_string());
    vars.insert("state_dir".into(), state_dir.display().to_string());
    let logs = state_dir.join("logs").join(&id);
    let em = Emitter::open(&logs, engine.sink.clone()).map_err(state_err(&logs))?;
    let mut journal = Journal::create(&state_dir).map_err(state_err(&state_dir))?;
    journal
        .append(Record::Begin {
            install_id: id.clone(),
            package: fs::canonicalize(&req.package).unwrap_or_else(|_| req.package.clone()),
            root: root.clone(),
            stage: stage.clone(),
            vars: vars.clone(),
            backend: req.backend.as_str().into(),
            hosts_file: req.hosts_file.clone(),
        })
        .map_err(state_err(&state_dir))?;
    let services = Services {
        kind: req.backend,
        root: root.clone(),
        vars: vars.clone(),
        output_dir: state_dir.join("logs").join("services"),
        log: logs.join("service-control.log"),
    };
    let run = Run {
        engine,
        id,
        root,
        state_dir,
        stage,
        package: req.package.clone(),
        trusted: req.trusted.clone(),
        vars,
        services,
        hosts_file: req.hosts_file.clone(),
        remediation: req.crl_remediation,
        journal,
        em,
        manifest: None,
        was_running: Vec::new(),
        restart_required: false,
        remediate_hosts: Vec::new(),
        decisions: 0,
    };
    Ok(run.run_from(0))
}

pub(crate) fn recover(engine: &Engine, state_dir: &Path) -> Result<Option<InstallSummary>, EngineError> {
    let Ok(state_dir) = fs::canonicalize(state_dir) else { return Ok(None) };
    let Some(journal) = Journal::open(&state_dir).map_err(state_err(&state_dir))? else { return Ok(None) };
    let Some(Record::Begin { install_id, package, root, stage, vars, backend, hosts_file }) =
        journal.records().first().cloned()
    else {
        // Not even the first record made it: nothing was changed.
        let _ = fs::remove_file(Journal::path_in(&state_dir));
        return Ok(None);
    };
    let logs = state_dir.join("logs").join(&install_id);
    let em = Emitter::open(&logs, engine.sink.clone()).map_err(state_err(&logs))?;
    let manifest = journal.records().iter().find_map(|r| match r {
        Record::Staged { manifest } => Manifest::from_toml(manifest).ok(),
        _ => None,
    });
    let mut vars = vars;
    if let Some(m) = &manifest {
        vars.insert("version".into(), m.rollup.version.clone());
    }
    let was_running = journal.records().iter().find_map(|r| match r {
        Record::ServicesStopping { was_running } => Some(was_running.clone()),
        _ => None,
    });
    let services = Services {
        kind: super::BackendKind::parse(&backend).unwrap_or_default(),
        root: root.clone(),
        vars: vars.clone(),
        output_dir: state_dir.join("logs").join("services"),
        log: logs.join("service-control.log"),
    };
    let records = journal.records().to_vec();
    let run = Run {
        engine,
        id: install_id,
        root,
        state_dir,
        stage,
        package,
        trusted: Vec::new(),
        vars,
        services,
        hosts_file,
        remediation: CrlRemediation::None,
        journal,
        em,
        manifest,
        was_running: was_running.clone().unwrap_or_default(),
        restart_required: false,
        remediate_hosts: Vec::new(),
        decisions: 0,
    };
    // The final event may have been emitted just before the kill: report nothing twice.
    if let Some(done) = run.em.history_summary() {
        let mut run = run;
        let _ = run.journal.append(Record::End { outcome: done.outcome });
        let logs = run.em.logs.clone();
        let _ = run.journal.archive(&logs);
        return Ok(Some(done));
    }
    let last_phase = records.iter().rev().find_map(|r| match r {
        Record::Phase { phase } => Some(*phase),
        _ => None,
    });
    let rolling = records.iter().rev().find_map(|r| match r {
        Record::RollbackStarted { outcome, reason } => Some((*outcome, reason.clone())),
        _ => None,
    });
    let committed = records.iter().any(|r| matches!(r, Record::Committed));
    let where_ = last_phase.map_or("check-system", PhaseId::as_str);
    let mut run = run;
    run.em.emit(
        last_phase.unwrap_or(PhaseId::CheckSystem),
        PhaseStatus::Running,
        format!("recovering: the engine was interrupted during '{where_}'"),
        json!({ "recovery": true }),
    );
    if let Some((outcome, reason)) = rolling {
        return Ok(Some(run.rollback_and_finish(
            outcome,
            last_phase,
            format!("{reason} (rollback resumed after an interruption)"),
        )));
    }
    if committed && run.manifest.is_some() {
        let from = last_phase
            .and_then(PhaseId::number)
            .map_or(0, |n| n - 1)
            .max(PhaseId::PostPrecompile.number().expect("install phase") - 1);
        return Ok(Some(run.run_from(from)));
    }
    let msg = format!("the engine was interrupted during '{where_}'");
    if was_running.is_some() {
        Ok(Some(run.rollback_and_finish(InstallOutcome::RolledBack, last_phase, msg)))
    } else {
        Ok(Some(run.finish(
            InstallOutcome::Failed,
            last_phase,
            Some(format!("{msg}, before anything on the server was changed")),
        )))
    }
}

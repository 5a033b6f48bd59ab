//! `check-system`: everything that can be known before anything changes — integrity and
//! signature, templates, file preconditions, free space, same-filesystem staging,
//! permissions, prerequisites and CRL reachability. Nothing on the server changes here.

use super::CrlRemediation;
use super::crl;
use super::run::{PhaseResult, Run, Stop};
use fleetup_proto::manifest::{FileAction, PrerequisiteCheck, Severity};
use fleetup_proto::package::{self, Limits};
use fleetup_proto::{DecisionAnswer, DecisionKind, PhaseId, PhaseStatus};
use serde_json::json;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

impl Run<'_> {
    pub(crate) fn check_system(&mut self) -> PhaseResult {
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
        let mut m = verified.manifest;
        // Is this package for this server at all, and not already or no longer due?
        let mut fatal = target_problems(&m.target, self.device_class.as_deref());
        let versions = super::marks::Versions::load(&self.state_dir).map_err(Stop::Failed)?;
        let mark = versions.get(&m.rollup.name);
        if fatal.is_empty()
            && let Some(why) = already_installed(&self.root, &m, mark)
        {
            self.manifest = Some(m);
            return Err(Stop::AlreadyInstalled(why));
        }
        fatal.extend(super::marks::downgrade_problem(mark, &m.rollup.name, &m.rollup.version, self.allow_downgrade));
        // From here on a tree entry is its per-file changes (see `tree`).
        m.files = super::tree::expand(&self.root, &m.files, &verified.index).map_err(Stop::Failed)?;
        self.vars.insert("version".into(), m.rollup.version.clone());
        self.services.vars.clone_from(&self.vars);
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
        if let Some(f) = &m.check.from_version {
            fatal.extend(from_version_problem(&self.root, f));
        }
        // Nothing may be written outside the root, whatever symlinks lie on the way.
        fatal.extend(super::beneath::offenders(&self.root, &m, &verified.index));
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
                (FileAction::Symlink, Ok(md)) if md.is_dir() => fatal.push(format!(
                    "{} is a directory, but the rollup makes it a symlink (a link replaces a file or a link)",
                    f.path
                )),
                (_, Ok(md)) => backup_bytes += md.len(),
                _ => {}
            }
        }
        fatal.extend(super::owner::problems(&m.files));
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
            // The manifest's message says what is wrong and how to fix it: shown once.
            let answer = self.ask(
                p,
                format!("prerequisite not met: {w}"),
                DecisionKind::Warning { code: "prerequisite".into(), remediation: None },
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
            let mut ask_about = Vec::new();
            for b in bad {
                status = PhaseStatus::Warning;
                let can_remediate = b.host.parse::<std::net::IpAddr>().is_err() && !b.host.is_empty();
                if self.remediation == CrlRemediation::HostsFile && can_remediate {
                    let text = crl::remediation(std::slice::from_ref(&b), &self.hosts_file);
                    self.em.emit(p, PhaseStatus::Warning, format!("CRL endpoint {} is unreachable: {}; {} will map {} to 127.0.0.1 for this install only (--crl-remediation hosts-file)", b.url, b.problem.as_deref().unwrap_or("?"), self.hosts_file.display(), b.host),
                        json!({ "warning": { "code": "crl-unreachable", "remediation": text, "applied": "hosts-file" } }));
                    if !self.remediate_hosts.contains(&b.host) {
                        self.remediate_hosts.push(b.host.clone());
                    }
                } else {
                    ask_about.push(b);
                }
            }
            // One question for all of them: the answer is the same decision.
            if !ask_about.is_empty() {
                let list: Vec<String> =
                    ask_about.iter().map(|b| format!("{} ({})", b.url, b.problem.as_deref().unwrap_or("?"))).collect();
                let message = match list.as_slice() {
                    [one] => format!("CRL endpoint {one} is unreachable"),
                    many => format!("{} CRL endpoints are unreachable: {}", many.len(), many.join("; ")),
                };
                let text = crl::remediation(&ask_about, &self.hosts_file);
                let answer = self.ask(
                    p,
                    message,
                    DecisionKind::Warning { code: "crl-unreachable".into(), remediation: Some(text) },
                );
                if answer != DecisionAnswer::Continue {
                    let urls: Vec<&str> = ask_about.iter().map(|b| b.url.as_str()).collect();
                    return Err(Stop::Cancelled(format!("cancelled at the CRL warning for {}", urls.join(", "))));
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
}

/// Why this server is not one the manifest's `[target]` is for: the running OS, and the
/// device class the server declares (the agent's `device-class` label, `--device-class`).
/// A package naming a class installs only where that class is declared.
fn target_problems(t: &fleetup_proto::manifest::Target, device_class: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let os = std::env::consts::OS;
    if !t.os.is_empty() && !t.os.eq_ignore_ascii_case(os) {
        out.push(format!("this rollup is for os '{}' ([target] os), but this server runs {os}", t.os));
    }
    if !t.device_class.is_empty() {
        match device_class {
            Some(c) if c == t.device_class => {}
            Some(c) => out.push(format!(
                "this rollup is for device class '{}' ([target] device_class), but this server is '{c}'",
                t.device_class
            )),
            None => out.push(format!(
                "this rollup is for device class '{}' ([target] device_class), but this server declares none: \
                 give the agent the label device-class={} (or --device-class) if it is one",
                t.device_class, t.device_class
            )),
        }
    }
    out
}

/// Why the server already has this version, if it does. With `[check.from_version]` the
/// file on disk decides (it is what is there now); otherwise the engine's record of the
/// last successful install of the rollup.
fn already_installed(
    root: &std::path::Path,
    m: &fleetup_proto::Manifest,
    mark: Option<&super::marks::Mark>,
) -> Option<String> {
    let version = &m.rollup.version;
    if let Some(f) = &m.check.from_version {
        if super::beneath::escapes(root, &f.file, true).is_some() {
            return None; // refused below, naming why
        }
        let found = fs::read_to_string(root.join(&f.file)).ok()?;
        return (found.trim() == version).then(|| format!("{} says the installed version is {version}", f.file));
    }
    let mark = mark?;
    (mark.installed == *version).then(|| {
        format!("the last install here put {version} in place ({}, recorded in the state dir)", mark.at.to_rfc3339())
    })
}

/// Why the installed version (read from `f.file`) is not one this rollup upgrades from.
fn from_version_problem(root: &std::path::Path, f: &fleetup_proto::manifest::FromVersion) -> Option<String> {
    let wanted = f.versions.join(", ");
    let found = match super::beneath::escapes(root, &f.file, true) {
        Some(why) => return Some(format!("the installed version cannot be read: {why}")),
        None => fs::read_to_string(root.join(&f.file)),
    };
    match found {
        Ok(v) if f.versions.iter().any(|w| w == v.trim()) => None,
        Ok(v) => Some(format!(
            "this rollup upgrades from {wanted}, but {} says the installed version is {}",
            f.file,
            v.trim()
        )),
        Err(e) => Some(format!("this rollup upgrades from {wanted}, but {} cannot be read: {e}", f.file)),
    }
}

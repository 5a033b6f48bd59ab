//! The phase sequence of one install, its shared helpers (shell, decisions, service
//! starts) and its endings (finish, rollback, cancel); the phases themselves live in
//! `phases`, `check`, `files`, `hooks` and `patch`.

use super::events::Emitter;
use super::exec::{self, ExecError, Shell};
use super::journal::{Journal, Record};
use super::lock::{self, Locks};
use super::services::{Services, Spawned};
use super::{CancelHandle, CrlRemediation, Engine, EngineError, InstallRequest, rollback};
use chrono::{DateTime, Utc};
use fleetup_proto::manifest::{FileAction, FileChange, Manifest, Service};
use fleetup_proto::{
    Cancellability, DecisionAnswer, DecisionKind, DecisionRequest, InstallOutcome, InstallSummary, PhaseId,
    PhaseStatus, PublicKey,
};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// The exit status (EX_TEMPFAIL) by which a hook or command says "not now, try the
/// install again later": the install ends as for a failure (rolled back if anything
/// changed), its error starts with [`RETRY_LATER`], and the CLI exits with this status.
pub const RETRY_LATER_EXIT: i32 = 75;

/// How the error of an install ended by [`RETRY_LATER_EXIT`] begins.
pub const RETRY_LATER: &str = "retry later:";

/// Variables the engine sets itself; a host cannot set them (`--var`).
pub const BUILT_IN_VARS: [&str; 4] = ["root", "staging", "state_dir", "version"];

/// Why a phase stopped the install.
#[derive(Debug)]
pub(crate) enum Stop {
    /// A cancel was accepted.
    Cancelled(String),
    /// Files in use: the operator chose exit.
    Exit(String),
    /// Something failed.
    Failed(String),
    /// The server already has this version: the install ends changing nothing.
    AlreadyInstalled(String),
}

pub(crate) type PhaseResult = Result<(PhaseStatus, String), Stop>;

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
    /// This server's device class, for `[target]`.
    pub(crate) device_class: Option<String>,
    /// The install may go below the rollup's high-water mark.
    pub(crate) allow_downgrade: bool,
    pub(crate) journal: Journal,
    pub(crate) em: Emitter,
    pub(crate) manifest: Option<Manifest>,
    pub(crate) was_running: Vec<String>,
    pub(crate) restart_required: bool,
    /// Processes holding files that the operator chose to ignore (not asked about again).
    pub(crate) ignored_holders: std::collections::BTreeSet<u32>,
    /// Original bytes of each config file patched by the rename set (drift check).
    pub(crate) config_originals: BTreeMap<String, Vec<u8>>,
    pub(crate) remediate_hosts: Vec<String>,
    pub(crate) decisions: u32,
    /// The state dir's and the root's install locks, released when the run is dropped.
    pub(crate) _locks: Locks,
}

impl Run<'_> {
    pub(crate) fn pkg(&self) -> PathBuf {
        self.stage.join("pkg")
    }

    pub(crate) fn backup(&self) -> PathBuf {
        self.stage.join("backup")
    }

    /// What update-files renames into place for an entry: its file in the unpacked
    /// package, or (a `symlink` entry) the link made in `<staging>/links/`.
    pub(crate) fn staged_source(&self, f: &FileChange) -> PathBuf {
        match f.action {
            FileAction::Symlink => self.stage.join("links").join(&f.path),
            _ => self.pkg().join(f.source_path()),
        }
    }

    pub(crate) fn cancel(&self) -> &CancelHandle {
        &self.engine.cancel
    }

    pub(crate) fn record(&mut self, r: Record) -> Result<(), Stop> {
        self.journal.append(r).map_err(|e| Stop::Failed(format!("cannot write the journal: {e}")))
    }

    pub(crate) fn manifest(&self) -> &Manifest {
        self.manifest.as_ref().expect("manifest known after check-system")
    }

    /// The environment of hooks, precompile commands, prerequisite commands and rollback
    /// scripts: the install's facts, and each host variable (`--var name=value`) as
    /// `FLEETUP_VAR_<NAME>` (upper case, anything but letters and digits as `_`).
    pub(crate) fn hook_env(&self, phase: PhaseId) -> Vec<(String, String)> {
        let m = self.manifest.as_ref();
        let host_vars = self.vars.iter().filter(|(k, _)| !BUILT_IN_VARS.contains(&k.as_str())).map(|(k, v)| {
            let name: String =
                k.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect();
            (format!("FLEETUP_VAR_{name}"), v.clone())
        });
        let mut env = vec![
            ("FLEETUP_ROOT".into(), self.root.display().to_string()),
            ("FLEETUP_STAGING".into(), self.pkg().display().to_string()),
            ("FLEETUP_STATE_DIR".into(), self.state_dir.display().to_string()),
            ("FLEETUP_INSTALL_ID".into(), self.id.clone()),
            ("FLEETUP_ROLLUP_NAME".into(), m.map(|m| m.rollup.name.clone()).unwrap_or_default()),
            ("FLEETUP_ROLLUP_VERSION".into(), m.map(|m| m.rollup.version.clone()).unwrap_or_default()),
            ("FLEETUP_HOSTS_FILE".into(), self.hosts_file.display().to_string()),
            ("FLEETUP_PHASE".into(), phase.as_str().into()),
        ];
        env.extend(host_vars);
        env
    }

    pub(crate) fn expand(&self, s: &str) -> Result<String, Stop> {
        fleetup_proto::manifest::expand(s, &self.vars).map_err(Stop::Failed)
    }

    /// Runs a shell command for a phase, honouring the deadline and (where the phase
    /// allows it) a cancel.
    pub(crate) fn shell(&self, phase: PhaseId, command: &str, cwd: &Path, deadline_secs: u64) -> Result<(), Stop> {
        self.shell_named(phase, command, &format!("`{command}`"), cwd, deadline_secs)
    }

    /// [`Run::shell`], naming the command `what` in a failure (said once: a hook is
    /// `hook <path> failed: exit status 7`, not its path twice).
    pub(crate) fn shell_named(
        &self,
        phase: PhaseId,
        command: &str,
        what: &str,
        cwd: &Path,
        deadline_secs: u64,
    ) -> Result<(), Stop> {
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
            ExecError::Exited(RETRY_LATER_EXIT) => Stop::Failed(format!(
                "{RETRY_LATER} {what}: exit status {RETRY_LATER_EXIT} asks to try the install again later"
            )),
            other => Stop::Failed(format!("{what}: {other}")),
        })
    }

    /// Starts `svc` (with `healthy`, also waits for its health check, and returns when it
    /// first passed), journaling the exec backend's process group before the service runs
    /// (see `orphans`).
    pub(crate) fn start_service(&mut self, svc: &Service, healthy: bool) -> Result<Option<DateTime<Utc>>, String> {
        let boot_id = super::orphans::boot_id();
        let (services, journal, hosts) = (&self.services, &mut self.journal, &self.hosts_file);
        let mut record = |sp: Spawned<'_>| {
            journal
                .append(Record::ServiceSpawned { name: sp.name.to_owned(), pgid: sp.pgid, boot_id: boot_id.clone() })
                .map_err(|e| format!("cannot write the journal: {e}"))
        };
        if healthy {
            services.start_and_wait_healthy(svc, hosts, &mut record).map(Some)
        } else {
            services.start_tracked(svc, &mut record).map(|()| None)
        }
    }

    pub(crate) fn check_cancel(&self, phase: PhaseId) -> Result<(), Stop> {
        if self.cancel().is_requested() && phase.cancellability() != Cancellability::Refused {
            return Err(Stop::Cancelled(super::cancel_effect(phase, phase.cancellability())));
        }
        Ok(())
    }

    /// Asks a decision, reporting the question and the answer as events.
    pub(crate) fn ask(&mut self, phase: PhaseId, message: String, kind: DecisionKind) -> DecisionAnswer {
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
            PhaseId::PreHooks => self.pre_hooks(),
            PhaseId::StopServices => self.stop_services(),
            PhaseId::ValidateFiles => self.validate_files(),
            PhaseId::UpdateFiles => self.update_files(),
            PhaseId::PostPrecompile => self.post_precompile(),
            PhaseId::StartServices => self.start_services(),
            PhaseId::PostHooks => {
                self.precompile_after(PhaseId::PostHooks, true)?;
                self.post_hooks()
            }
            PhaseId::PatchConfig => self.patch_config(),
            PhaseId::PatchWebapp => self.patch_webapp(),
            PhaseId::Cleanup => self.cleanup(),
            PhaseId::Rollback => Ok((PhaseStatus::Skipped, String::new())),
        }
    }

    // ---------------------------------------------------------------- endings

    /// Restores services to their prior state (after a cancel in stop/validate).
    fn restart_prior(&mut self) -> Result<(), String> {
        let m = self.manifest().clone();
        let mut errors = Vec::new();
        let was_running = self.was_running.clone();
        for s in m.services.iter().filter(|s| was_running.contains(&s.name)) {
            if let Err(e) = self.start_service(s, false) {
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
        if outcome == InstallOutcome::Succeeded
            && let Some(m) = &self.manifest
            && let Err(e) =
                super::marks::Versions::record(&self.state_dir, &m.rollup.name, &m.rollup.version, self.allow_downgrade)
        {
            // The new version is in place and serving; only the record is missing.
            self.em.emit(
                PhaseId::Cleanup,
                PhaseStatus::Warning,
                e,
                json!({ "warning": { "code": "versions-record" } }),
            );
        }
        if !outcome.is_success() {
            self.error_hooks(outcome, failed_phase.unwrap_or(PhaseId::Rollback), error.as_deref().unwrap_or(""));
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
            InstallOutcome::AlreadyInstalled => (PhaseId::CheckSystem, PhaseStatus::Skipped),
        };
        let msg = match (&outcome, &error) {
            (InstallOutcome::Succeeded, _) => {
                format!("{name} {version} installed; outage {} ms of {} ms total", summary.outage_ms, summary.total_ms)
            }
            (InstallOutcome::AlreadyInstalled, e) => {
                format!("{name} {version} is already installed: nothing changed ({})", e.as_deref().unwrap_or(""))
            }
            (InstallOutcome::RecoveryRequired, e) => format!(
                "install of {name} {version} needs a person: {}; backups kept in {}",
                e.as_deref().unwrap_or("?"),
                self.stage.display()
            ),
            (o, e) => format!("install of {name} {version} ended: {o}: {}", e.as_deref().unwrap_or("")),
        };
        let retry_later = error.as_deref().is_some_and(|e| e.starts_with(RETRY_LATER));
        let summary = if outcome == InstallOutcome::AlreadyInstalled {
            // Not an error: the reason is in the message only.
            InstallSummary { error: None, ..summary }
        } else {
            summary
        };
        self.em.emit(phase, status, msg, json!({ "summary": summary, "retry_later": retry_later }));
        self.cancel().set_phase(None);
        let _ = self.journal.append(Record::End { outcome });
        let logs = self.em.logs.clone();
        let _ = self.journal.archive(&logs);
        summary
    }

    /// Rolls back and ends with `outcome` (or `recovery-required`).
    pub(crate) fn rollback_and_finish(
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
            let mut result = self.run_phase(phase);
            // The events are the install's record (the agent reports them after a
            // restart): an install that cannot write them stops, rolled back if needed.
            if let (Ok(_), Some(e)) = (&result, self.em.take_persist_error()) {
                result = Err(Stop::Failed(format!(
                    "the state dir {} cannot be written ({e}): the install stops rather than go on unrecorded; \
                     free space there",
                    self.state_dir.display()
                )));
            }
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
            Stop::AlreadyInstalled(why) => self.finish(InstallOutcome::AlreadyInstalled, None, Some(why)),
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

pub(crate) fn action_word(a: FileAction) -> &'static str {
    match a {
        FileAction::Add => "added",
        FileAction::Replace => "replaced",
        FileAction::Remove => "removed",
        FileAction::Tree => "replaced as a tree",
        FileAction::Symlink => "linked",
    }
}

/// Writes a file and fsyncs it.
pub(crate) fn write_durable(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut f = fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

pub(crate) fn state_err(path: &Path) -> impl FnOnce(std::io::Error) -> EngineError + '_ {
    move |source| EngineError::StateDir { path: path.to_path_buf(), source }
}

pub(crate) fn install(
    engine: &Engine,
    req: &InstallRequest,
    install_id: Option<&str>,
) -> Result<InstallSummary, EngineError> {
    fs::create_dir_all(&req.state_dir).map_err(state_err(&req.state_dir))?;
    let state_dir = fs::canonicalize(&req.state_dir).map_err(state_err(&req.state_dir))?;
    let id = install_id.map_or_else(
        || format!("{}-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%3f"), std::process::id()),
        str::to_owned,
    );
    let holder = lock::me("install", &id, &req.package.display().to_string());
    // Held until the journal is closed: a second engine must not take this install's
    // journal for an interrupted one.
    let mut locks =
        Locks::state(&state_dir, &holder).map_err(|e| e.into_engine(&format!("state dir {}", state_dir.display())))?;
    if Journal::path_in(&state_dir).exists() {
        return Err(EngineError::Unfinished(Journal::path_in(&state_dir)));
    }
    let root = fs::canonicalize(&req.root).map_err(|e| EngineError::Root(format!("{}: {e}", req.root.display())))?;
    let name = root
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| EngineError::Root("the root must not be /".into()))?
        .to_owned();
    locks.root(&root, &holder).map_err(|e| e.into_engine(&format!("install root {}", root.display())))?;
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
            allow_downgrade: req.allow_downgrade,
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
        device_class: req.device_class.clone(),
        allow_downgrade: req.allow_downgrade,
        journal,
        em,
        manifest: None,
        was_running: Vec::new(),
        restart_required: false,
        ignored_holders: std::collections::BTreeSet::new(),
        config_originals: BTreeMap::new(),
        remediate_hosts: Vec::new(),
        decisions: 0,
        _locks: locks,
    };
    Ok(run.run_from(0))
}

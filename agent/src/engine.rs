//! The install engine: runs the twelve phases of [`PhaseId::INSTALL`] against an install
//! root, journaled so that a crash at any instant converges on the whole old or the whole
//! new state, and reports every step as an [`EngineEvent`].
//!
//! The engine is synchronous (std threads, processes and sockets with explicit
//! deadlines): it is driven from the CLI directly, and from the async agent daemon via
//! `tokio::task::spawn_blocking`. Decisions come from a [`Decider`], events go to an
//! [`EventSink`], a [`CancelHandle`] asks it to stop. See `docs/engine.md`.

mod beneath;
mod check;
mod config_patch;
mod crl;
mod decide;
mod events;
mod exec;
mod files;
mod hooks;
mod http;
mod inuse;
mod journal;
mod lock;
mod marks;
mod orphans;
mod owner;
mod patch;
mod phases;
mod recovery;
mod rollback;
mod run;
mod services;
mod tree;
mod webapp;

pub use decide::{AutoDecider, Decider, ScriptedDecider};
pub use events::{EventSink, MemorySink, NullSink, recorded_events};
pub use journal::{PAUSE_ENV, PAUSE_RENAME_ENV, PAUSE_SPAWN_ENV, PAUSE_UNDO_ENV};
pub use lock::Holder;
pub use marks::VERSIONS_FILE;
pub use run::{BUILT_IN_VARS, RETRY_LATER, RETRY_LATER_EXIT};
pub use services::{BackendKind, Services, pid_alive};

use fleetup_proto::{InstallSummary, PhaseId, PublicKey};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// What to do about CRL endpoints that cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrlRemediation {
    /// Only warn (a decision continue/cancel is asked).
    #[default]
    None,
    /// Map each unreachable CRL host to 127.0.0.1 in the hosts file for the install
    /// only, restoring the file byte for byte afterwards.
    HostsFile,
}

/// Everything one install needs.
#[derive(Debug, Clone)]
pub struct InstallRequest {
    /// The signed package file.
    pub package: PathBuf,
    /// The install root.
    pub root: PathBuf,
    /// The agent's state dir (journal, logs, hooks).
    pub state_dir: PathBuf,
    /// Public keys a package may be signed with.
    pub trusted: Vec<PublicKey>,
    /// Host variables for `${name}` in the manifest (`--var name=value`).
    pub vars: BTreeMap<String, String>,
    /// How services are controlled.
    pub backend: BackendKind,
    /// The hosts file for CRL name resolution and remediation (default `/etc/hosts`).
    pub hosts_file: PathBuf,
    /// CRL remediation choice.
    pub crl_remediation: CrlRemediation,
    /// This server's device class (the agent's `device-class` label), matched against
    /// the manifest's `[target] device_class`; `None`: the server declares none.
    pub device_class: Option<String>,
    /// Install even if the package is older than the rollup's high-water mark.
    pub allow_downgrade: bool,
}

/// Why the engine could not run at all (an install that ran always ends in a summary).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The state dir cannot be used.
    #[error("state dir {path}: {source}")]
    StateDir {
        /// The state dir.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// An earlier install is unfinished; run recovery first.
    #[error("an interrupted install is recorded in {0}; it must be recovered first (fleetup-agent recover)")]
    Unfinished(PathBuf),
    /// The root cannot be used.
    #[error("install root {0}")]
    Root(String),
    /// Another install or recovery holds the state dir or the root (one at a time).
    #[error(
        "{what} is in use by another fleetup engine: {}; wait for it to end (lock {})",
        holder.as_ref().map_or_else(|| "a process that has not yet said who it is".to_owned(), ToString::to_string),
        lock.display()
    )]
    Busy {
        /// `state dir <path>` or `install root <path>`.
        what: String,
        /// The lock file.
        lock: PathBuf,
        /// Who holds it, as it wrote into the lock file.
        holder: Option<Box<Holder>>,
    },
}

/// Asks a running install to stop. Cloneable; safe to use from any thread.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle(Arc<CancelState>);

#[derive(Debug, Default)]
struct CancelState {
    requested: AtomicBool,
    /// Index into `PhaseId::ALL` + 1 of the phase running now (0: none).
    phase: AtomicUsize,
    reason: Mutex<Option<String>>,
}

impl CancelHandle {
    /// Requests a cancel. Refused (with the reason) from `post-precompile` on: the new
    /// files are in place and finishing is shorter and safer than undoing.
    pub fn cancel(&self) -> Result<String, String> {
        let phase = self.current_phase();
        if let Some(p) = phase {
            match p.cancellability() {
                fleetup_proto::Cancellability::Refused => {
                    return Err(format!(
                        "cancel refused during '{}': the new files are already in place and their services are being brought back; \
                         finishing takes less time and risk than undoing. Roll back with a new install of the previous version if needed.",
                        p.as_str()
                    ));
                }
                c => {
                    self.0.requested.store(true, Ordering::SeqCst);
                    return Ok(cancel_effect(p, c));
                }
            }
        }
        self.0.requested.store(true, Ordering::SeqCst);
        Ok("cancel requested; the install will end before it changes anything".into())
    }

    /// True once a cancel was accepted.
    pub fn is_requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    /// The phase running now.
    pub fn current_phase(&self) -> Option<PhaseId> {
        match self.0.phase.load(Ordering::SeqCst) {
            0 => None,
            i => PhaseId::ALL.get(i - 1).copied(),
        }
    }

    fn set_phase(&self, phase: Option<PhaseId>) {
        let i = phase.and_then(|p| PhaseId::ALL.iter().position(|q| *q == p)).map_or(0, |i| i + 1);
        self.0.phase.store(i, Ordering::SeqCst);
        if let Ok(mut r) = self.0.reason.lock() {
            *r = None;
        }
    }
}

/// What a cancel does in a phase, in the operator's words.
pub fn cancel_effect(phase: PhaseId, c: fleetup_proto::Cancellability) -> String {
    use fleetup_proto::Cancellability as C;
    match c {
        C::Immediate => format!("cancel during '{phase}': the install ends now; nothing has been changed"),
        C::AfterStopping => format!(
            "cancel during '{phase}': stopping finishes first, then the services are started again and the install ends"
        ),
        C::RestartServices => format!("cancel during '{phase}': the services are started again and the install ends"),
        C::Rollback => format!("cancel during '{phase}': everything changed so far is rolled back"),
        C::Refused => format!("cancel is not possible during '{phase}'"),
    }
}

/// The install engine: one per agent; runs one install at a time.
#[derive(Clone)]
pub struct Engine {
    decider: Arc<dyn Decider>,
    sink: Arc<dyn EventSink>,
    cancel: CancelHandle,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("cancel", &self.cancel).finish_non_exhaustive()
    }
}

impl Engine {
    /// An engine asking `decider` and reporting to `sink`.
    pub fn new(decider: Arc<dyn Decider>, sink: Arc<dyn EventSink>) -> Self {
        Self { decider, sink, cancel: CancelHandle::default() }
    }

    /// The handle that cancels the install this engine runs.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// Runs one install to its end. Refuses to start while an interrupted install is
    /// recorded in the state dir (call [`Engine::recover`] first).
    pub fn install(&self, req: &InstallRequest) -> Result<InstallSummary, EngineError> {
        run::install(self, req, None)
    }

    /// Like [`Engine::install`], naming the install `install_id` (its logs go to
    /// `<state-dir>/logs/<install_id>/`). The agent daemon uses the job id, so that after
    /// a restart it finds the events of that job with [`recorded_events`].
    pub fn install_as(&self, req: &InstallRequest, install_id: &str) -> Result<InstallSummary, EngineError> {
        run::install(self, req, Some(install_id))
    }

    /// If the state dir records an unfinished install, finishes it (rolls back, or
    /// completes the remaining idempotent post-install steps) and returns its one
    /// outcome; `None` when there is nothing to recover.
    pub fn recover(&self, state_dir: &Path) -> Result<Option<InstallSummary>, EngineError> {
        recovery::recover(self, state_dir)
    }
}

//! One install per state dir and per install root at a time.
//!
//! Two engines sharing a state dir (the daemon and an operator's CLI both default to
//! `/var/lib/fleetup-agent`) would each take the other's journal for an interrupted
//! install and roll it back underneath it. So every install and every recovery first
//! takes an exclusive `flock` on `<state-dir>/install.lock` and on
//! `<root-parent>/.<root-name>.fleetup.lock`, and holds both until its journal is closed.
//! `flock` is released by the kernel when the process dies, so a killed engine never
//! leaves a stale lock behind: recovery after a kill just takes it.
//!
//! The holder writes who it is (pid, install id, package) into each lock file, so the
//! refused second engine can say whom it is waiting for. The lock files stay in place
//! (removing one would race with a process about to lock it).

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{Read as _, Seek as _, Write as _};
use std::path::{Path, PathBuf};

/// Who holds an install lock, as written into the lock file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    /// Process id of the engine holding the lock.
    pub pid: u32,
    /// `install` or `recover`.
    pub action: String,
    /// The install id (the job id under the agent daemon); empty before it is known.
    pub install_id: String,
    /// The package being installed (empty for a recovery).
    pub package: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "pid {} ({}", self.pid, self.action)?;
        if !self.install_id.is_empty() {
            write!(f, " of install/job {}", self.install_id)?;
        }
        if !self.package.is_empty() {
            write!(f, ", package {}", self.package)?;
        }
        f.write_str(")")
    }
}

/// Why a lock could not be taken.
#[derive(Debug)]
pub(crate) enum LockError {
    /// Another engine holds it; `holder` is what it wrote (None if unreadable yet).
    Busy {
        /// The lock file.
        path: PathBuf,
        /// Who holds it.
        holder: Option<Holder>,
    },
    /// The lock file cannot be opened or locked.
    Io {
        /// The lock file.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

/// An exclusive lock on one lock file, released when dropped (or when the process dies).
#[derive(Debug)]
pub(crate) struct InstallLock {
    file: Flock<File>,
    path: PathBuf,
}

impl InstallLock {
    /// The state dir's lock file.
    pub(crate) fn state_path(state_dir: &Path) -> PathBuf {
        state_dir.join("install.lock")
    }

    /// The install root's lock file, beside the root (where staging goes too).
    pub(crate) fn root_path(root: &Path) -> PathBuf {
        let name = root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        root.parent().unwrap_or(root).join(format!(".{name}.fleetup.lock"))
    }

    /// Takes the lock at `path` without waiting, and writes `holder` into it.
    pub(crate) fn acquire(path: &Path, holder: &Holder) -> Result<Self, LockError> {
        let io = |source| LockError::Io { path: path.to_path_buf(), source };
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path).map_err(io)?;
        let file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(f) => f,
            Err((mut file, Errno::EWOULDBLOCK)) => {
                return Err(LockError::Busy { path: path.to_path_buf(), holder: read_holder(&mut file) });
            }
            Err((_, e)) => return Err(io(e.into())),
        };
        let mut lock = Self { file, path: path.to_path_buf() };
        lock.write_holder(holder).map_err(io)?;
        Ok(lock)
    }

    /// Replaces the holder text (e.g. once the install id is known).
    fn write_holder(&mut self, holder: &Holder) -> std::io::Result<()> {
        let text = serde_json::to_string(holder).expect("holder serialises");
        self.file.set_len(0)?;
        self.file.rewind()?;
        self.file.write_all(text.as_bytes())?;
        self.file.flush()
    }
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut text = String::new();
    file.read_to_string(&mut text).ok()?;
    serde_json::from_str(&text).ok()
}

/// The holder this process writes.
pub(crate) fn me(action: &str, install_id: &str, package: &str) -> Holder {
    Holder {
        pid: std::process::id(),
        action: action.to_owned(),
        install_id: install_id.to_owned(),
        package: package.to_owned(),
    }
}

/// Both locks of one install: the state dir's and the root's. Dropped when the install's
/// journal is closed.
#[derive(Debug)]
pub(crate) struct Locks {
    state: InstallLock,
    root: Option<InstallLock>,
}

impl Locks {
    /// Takes the state dir's lock (first: it guards the journal that names the root).
    pub(crate) fn state(state_dir: &Path, holder: &Holder) -> Result<Self, LockError> {
        Ok(Self { state: InstallLock::acquire(&InstallLock::state_path(state_dir), holder)?, root: None })
    }

    /// Takes the root's lock too, and names `holder` in both.
    pub(crate) fn root(&mut self, root: &Path, holder: &Holder) -> Result<(), LockError> {
        let path = InstallLock::root_path(root);
        self.root = Some(InstallLock::acquire(&path, holder)?);
        self.state.write_holder(holder).map_err(|source| LockError::Io { path: self.state.path.clone(), source })
    }
}

impl LockError {
    /// The engine's error for a lock on `what` (`state dir …` / `install root …`).
    pub(crate) fn into_engine(self, what: &str) -> super::EngineError {
        match self {
            LockError::Busy { path, holder } => {
                super::EngineError::Busy { what: what.to_owned(), lock: path, holder: holder.map(Box::new) }
            }
            LockError::Io { path, source } => super::EngineError::StateDir { path, source },
        }
    }
}

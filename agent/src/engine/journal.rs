//! The install journal: an append-only file of JSON lines in the state dir, each line
//! fsynced before the change it announces is made.
//!
//! Crash safety rests on one rule: a record is durable *before* the change it names.
//! After a kill, every change that may have happened has a record, so recovery can undo
//! (or redo) each one idempotently. The one record that announces many changes, the
//! rename set of `update-files`, is undone entry by entry from what is on disk. The
//! journal of a finished install is moved into its log directory; a `journal.jsonl` left
//! in the state dir therefore means "unfinished".

use fleetup_proto::{InstallOutcome, PhaseId};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};

/// Env var for deterministic kill tests: after journal record N (1-based) is durable, the
/// engine prints `fleetup-engine: paused after journal step N` on stderr and waits forever
/// (until killed). Never set in production.
pub const PAUSE_ENV: &str = "FLEETUP_ENGINE_PAUSE_AFTER_JOURNAL_STEP";

/// Env var for kill tests: after change K (1-based; a `mkdir` or a rename) of the rename
/// set of `update-files`, the engine prints `fleetup-engine: paused after rename K of N`
/// and waits forever. Never set in production.
pub const PAUSE_RENAME_ENV: &str = "FLEETUP_ENGINE_PAUSE_AFTER_RENAME";

/// Env var for kill tests: after the K-th service process the exec backend started has
/// been let run, and before its pid is written to the pidfile, the engine prints
/// `fleetup-engine: paused after service start K` and waits forever. Never set in
/// production.
pub const PAUSE_SPAWN_ENV: &str = "FLEETUP_ENGINE_PAUSE_AFTER_SERVICE_START";

/// Env var for kill tests: after the K-th file undo step of a rollback (one `mk-dir`,
/// `backup` or `place` of the journal, newest first), the engine prints
/// `fleetup-engine: paused after undo K of N` and waits forever. Never set in production.
pub const PAUSE_UNDO_ENV: &str = "FLEETUP_ENGINE_PAUSE_AFTER_UNDO";

/// One journal record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "record", rename_all = "kebab-case")]
pub enum Record {
    /// The install starts; everything recovery needs that is known before verification.
    Begin {
        /// Install id (names the log directory).
        install_id: String,
        /// The package file.
        package: PathBuf,
        /// The install root.
        root: PathBuf,
        /// Staging directory (sibling of the root, same filesystem).
        stage: PathBuf,
        /// Host variables plus built-ins.
        vars: BTreeMap<String, String>,
        /// `exec` or `systemd`.
        backend: String,
        /// The hosts file used for CRL name resolution and remediation.
        hosts_file: PathBuf,
        /// The install may go below the high-water mark (recorded on success).
        #[serde(default)]
        allow_downgrade: bool,
    },
    /// The package is verified and unpacked in staging; its manifest.
    Staged {
        /// The manifest text from the signed index.
        manifest: String,
    },
    /// A phase starts.
    Phase {
        /// Which.
        phase: PhaseId,
    },
    /// The hosts file is about to be changed; its original bytes are saved at `saved`.
    HostsFile {
        /// The hosts file.
        path: PathBuf,
        /// Where the original bytes are kept.
        saved: PathBuf,
    },
    /// Services are about to be stopped; these were running.
    ServicesStopping {
        /// Names of the services that were running before.
        was_running: Vec<String>,
    },
    /// Every change of `update-files`, journaled as one record before the first of them
    /// (one fsync for the whole set). They are made in this order: `mkdirs`, then
    /// `backups` (existing file → backup dir), a barrier (the backup dirs are fsynced),
    /// then `places` (staged file → root), then the touched directories are fsynced and
    /// `committed` follows. Until `committed`, each entry may or may not have been made;
    /// recovery reads it as the per-file records below ([`expand_rename_sets`]), whose
    /// undo steps decide from what is on disk.
    RenameSet {
        /// Directories under the root to create, parents first (none of them exists).
        mkdirs: Vec<String>,
        /// Existing files (`replace`, `remove`) to move into the backup directory.
        backups: Vec<String>,
        /// The inode of each of `backups` before the move (a rename keeps it), so undo can
        /// tell the old file from anything else: a backup that is missing or is another
        /// file means the old version is not there to restore. Empty in older journals.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        backup_inodes: Vec<u64>,
        /// Staged files (`add`, `replace`) to rename into place.
        places: Vec<Placement>,
    },
    /// A directory under the root is about to be created (journals before the rename set
    /// wrote one record per change; still read, never written).
    MkDir {
        /// Path under the root.
        path: String,
    },
    /// An existing file is about to be moved to the backup directory (per-file journals
    /// only; still read, never written).
    Backup {
        /// Path under the root.
        path: String,
        /// Its inode before the move (from a rename set; None in per-file journals).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ino: Option<u64>,
    },
    /// A staged file is about to be renamed into place (per-file journals only; still
    /// read, never written).
    Place {
        /// Path under the root.
        path: String,
        /// True for `add`: the path did not exist before.
        added: bool,
    },
    /// The exec backend has spawned a service's start shell, held before it runs the
    /// service, in its own process group `pgid`: whatever it starts belongs to that group.
    /// Recovery stops any live member of the group that the pidfile does not name (an
    /// engine killed between the start and the pidfile write left it untracked).
    ServiceSpawned {
        /// The service.
        name: String,
        /// The process group (the start shell's pid).
        pgid: i32,
        /// `/proc/sys/kernel/random/boot_id` then: after a reboot the group is gone.
        boot_id: String,
    },
    /// All files are in place: from here on, recovery rolls forward.
    Committed,
    /// A config file is about to be backed up (copy) and rewritten.
    ConfigPatch {
        /// Path under the root.
        file: String,
    },
    /// The web app directory is about to be moved into `releases/<version>`.
    WebappDeploy {
        /// Path under the root of the new release directory.
        dir: String,
    },
    /// The `current` link is about to be switched.
    WebappSwitch {
        /// Path under the root of the link.
        link: String,
        /// Its target before (None if there was no link).
        old_target: Option<String>,
    },
    /// A rollback starts (or continues after a crash).
    RollbackStarted {
        /// Why.
        reason: String,
        /// The outcome to report once the rollback completes (`rolled-back` or `cancelled`).
        outcome: InstallOutcome,
    },
    /// The install ended; exactly one per install.
    End {
        /// How.
        outcome: InstallOutcome,
    },
}

impl Record {
    fn kind(&self) -> &'static str {
        match self {
            Record::Begin { .. } => "begin",
            Record::Staged { .. } => "staged",
            Record::Phase { .. } => "phase",
            Record::HostsFile { .. } => "hosts-file",
            Record::ServicesStopping { .. } => "services-stopping",
            Record::RenameSet { .. } => "rename-set",
            Record::MkDir { .. } => "mk-dir",
            Record::Backup { .. } => "backup",
            Record::Place { .. } => "place",
            Record::ServiceSpawned { .. } => "service-spawned",
            Record::Committed => "committed",
            Record::ConfigPatch { .. } => "config-patch",
            Record::WebappDeploy { .. } => "webapp-deploy",
            Record::WebappSwitch { .. } => "webapp-switch",
            Record::RollbackStarted { .. } => "rollback-started",
            Record::End { .. } => "end",
        }
    }
}

/// One staged file of a [`Record::RenameSet`] to rename into place.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// Path under the root.
    pub path: String,
    /// True for `add`: the path did not exist before.
    pub added: bool,
}

/// The records with every [`Record::RenameSet`] replaced by the per-file records it
/// stands for, in the order its changes are made: `mk-dir`s, `backup`s, `place`s. Undoing
/// the result newest first undoes the set whether all, some or none of it was made.
pub fn expand_rename_sets(records: &[Record]) -> Vec<Record> {
    let mut out = Vec::with_capacity(records.len());
    for r in records {
        match r {
            Record::RenameSet { mkdirs, backups, backup_inodes, places } => {
                out.extend(mkdirs.iter().map(|path| Record::MkDir { path: path.clone() }));
                out.extend(
                    backups
                        .iter()
                        .enumerate()
                        .map(|(i, path)| Record::Backup { path: path.clone(), ino: backup_inodes.get(i).copied() }),
                );
                out.extend(places.iter().map(|p| Record::Place { path: p.path.clone(), added: p.added }));
            }
            other => out.push(other.clone()),
        }
    }
    out
}

/// The open journal of one install.
#[derive(Debug)]
pub struct Journal {
    path: PathBuf,
    file: File,
    records: Vec<Record>,
    pause_at: Option<usize>,
}

impl Journal {
    /// The journal path in a state dir.
    pub fn path_in(state_dir: &Path) -> PathBuf {
        state_dir.join("journal.jsonl")
    }

    /// Creates a new journal; fails if one exists (an unfinished install).
    pub fn create(state_dir: &Path) -> std::io::Result<Self> {
        let path = Self::path_in(state_dir);
        let file = OpenOptions::new().append(true).create_new(true).open(&path)?;
        sync_dir(state_dir)?;
        Ok(Self { path, file, records: Vec::new(), pause_at: pause_from_env() })
    }

    /// Opens an existing journal, reading its records. A torn last line (a kill during
    /// the write) is ignored: the change it announced was never started.
    pub fn open(state_dir: &Path) -> std::io::Result<Option<Self>> {
        let path = Self::path_in(state_dir);
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut records = Vec::new();
        for line in BufReader::new(file).lines() {
            let line = line?;
            match serde_json::from_str::<Record>(&line) {
                Ok(r) => records.push(r),
                Err(_) => break,
            }
        }
        // Rewrite without a torn tail so appends start on a fresh line.
        let mut text = String::new();
        for r in &records {
            text.push_str(&serde_json::to_string(r).expect("records serialise"));
            text.push('\n');
        }
        let tmp = path.with_extension("jsonl.tmp");
        fs::write(&tmp, text)?;
        File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, &path)?;
        sync_dir(state_dir)?;
        let file = OpenOptions::new().append(true).open(&path)?;
        Ok(Some(Self { path, file, records, pause_at: None }))
    }

    /// Appends a record and makes it durable before returning.
    pub fn append(&mut self, record: Record) -> std::io::Result<()> {
        let mut line = serde_json::to_string(&record).expect("records serialise");
        line.push('\n');
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()?;
        let kind = record.kind();
        self.records.push(record);
        if self.pause_at == Some(self.records.len()) {
            park_forever(&format!("journal step {} ({kind})", self.records.len()));
        }
        Ok(())
    }

    /// Every record so far.
    pub fn records(&self) -> &[Record] {
        &self.records
    }

    /// Moves the finished journal into `dir` (the install's log directory).
    pub fn archive(self, dir: &Path) -> std::io::Result<()> {
        let state_dir = self.path.parent().map(Path::to_path_buf).unwrap_or_default();
        fs::rename(&self.path, dir.join("journal.jsonl"))?;
        sync_dir(&state_dir)
    }
}

fn pause_from_env() -> Option<usize> {
    std::env::var(PAUSE_ENV).ok().and_then(|v| v.parse().ok())
}

/// Says where the engine paused (kill tests wait for this line) and waits to be killed.
pub(crate) fn park_forever(what: &str) -> ! {
    eprintln!("fleetup-engine: paused after {what}");
    loop {
        std::thread::park();
    }
}

/// A numbered pause point for kill tests, armed by an env var (read once); inert when
/// the variable is unset, as in production.
#[derive(Debug)]
pub(crate) struct PausePoint {
    at: Option<usize>,
    what: &'static str,
    done: usize,
}

impl PausePoint {
    pub(crate) fn from_env(var: &str, what: &'static str) -> Self {
        Self { at: std::env::var(var).ok().and_then(|v| v.parse().ok()), what, done: 0 }
    }

    /// One more step of `total` is done; parks forever if it is the chosen one.
    pub(crate) fn step(&mut self, total: usize) {
        self.done += 1;
        if self.at == Some(self.done) {
            park_forever(&format!("{} {} of {total}", self.what, self.done));
        }
    }
}

/// fsyncs a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

//! The install journal: an append-only file of JSON lines in the state dir, each line
//! fsynced before the change it announces is made.
//!
//! Crash safety rests on one rule: a record is durable *before* the change it names.
//! After a kill, every change that may have happened has a record, so recovery can undo
//! (or redo) each one idempotently. The journal of a finished install is moved into its
//! log directory; a `journal.jsonl` left in the state dir therefore means "unfinished".

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
    /// A directory under the root is about to be created.
    MkDir {
        /// Path under the root.
        path: String,
    },
    /// An existing file is about to be moved to the backup directory.
    Backup {
        /// Path under the root.
        path: String,
    },
    /// A staged file is about to be renamed into place.
    Place {
        /// Path under the root.
        path: String,
        /// True for `add`: the path did not exist before.
        added: bool,
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
            Record::MkDir { .. } => "mkdir",
            Record::Backup { .. } => "backup",
            Record::Place { .. } => "place",
            Record::Committed => "committed",
            Record::ConfigPatch { .. } => "config-patch",
            Record::WebappDeploy { .. } => "webapp-deploy",
            Record::WebappSwitch { .. } => "webapp-switch",
            Record::RollbackStarted { .. } => "rollback-started",
            Record::End { .. } => "end",
        }
    }
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
            eprintln!("fleetup-engine: paused after journal step {} ({kind})", self.records.len());
            loop {
                std::thread::park();
            }
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

/// fsyncs a directory so a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

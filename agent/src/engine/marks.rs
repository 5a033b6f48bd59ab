//! What this server has installed, per rollup name: the version last installed and the
//! **high-water mark**, kept in `<state-dir>/versions.json` across restarts.
//!
//! The mark is what stops a rollback attack (TUF, Uptane): a validly signed but older
//! package is refused in `check-system` unless the install explicitly allows a
//! downgrade (`--allow-downgrade`, or the job's `allow_downgrade`). It moves up with every
//! successful install ([`fleetup_proto::version::compare`] decides), and down only by an
//! explicitly allowed downgrade: the operator chose that version, and later fixes of it
//! must not each need the flag again. The record of the last install also lets the engine
//! end at once, changing nothing, when the server already runs the job's version.
//!
//! The file is replaced atomically (temporary file, fsync, rename, fsync of the state
//! dir): a crash leaves the old record or the new one. A record that cannot be read stops
//! the install instead of silently forgetting the mark.

use chrono::{DateTime, Utc};
use fleetup_proto::version;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

/// The record's file name in the state dir.
pub const VERSIONS_FILE: &str = "versions.json";

/// `versions.json`: one entry per rollup name.
#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct Versions {
    rollups: BTreeMap<String, Mark>,
}

/// What is known about one rollup on this server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Mark {
    /// The version the last successful install put in place.
    pub(crate) installed: String,
    /// No version older than this is installed without an explicit downgrade.
    pub(crate) high_water: String,
    /// When the last successful install ended.
    pub(crate) at: DateTime<Utc>,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join(VERSIONS_FILE)
}

impl Versions {
    /// The record; empty when no install has succeeded yet.
    pub(crate) fn load(state_dir: &Path) -> Result<Self, String> {
        let p = path(state_dir);
        match fs::read(&p) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                format!(
                    "{} cannot be read ({e}): it holds the versions installed here and the downgrade mark; \
                     fix or remove it (removing it forgets the mark)",
                    p.display()
                )
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Self::default()),
            Err(e) => Err(format!("{}: {e}", p.display())),
        }
    }

    /// The mark of `name`, if it was ever installed here.
    pub(crate) fn get(&self, name: &str) -> Option<&Mark> {
        self.rollups.get(name)
    }

    /// Records a successful install of `name` `version` and writes the file atomically.
    pub(crate) fn record(state_dir: &Path, name: &str, version: &str, downgrade_allowed: bool) -> Result<(), String> {
        let mut all = Self::load(state_dir)?;
        // Kept unless the new version is above it, or the operator allowed going below.
        let high_water = match all.rollups.get(name) {
            Some(m) if !downgrade_allowed && !version::is_downgrade(&m.high_water, version) => m.high_water.clone(),
            _ => version.to_owned(),
        };
        all.rollups.insert(name.to_owned(), Mark { installed: version.to_owned(), high_water, at: Utc::now() });
        let text = serde_json::to_vec_pretty(&all).expect("plain data serialises");
        let p = path(state_dir);
        let tmp = state_dir.join(format!("{VERSIONS_FILE}.tmp"));
        let write = || -> std::io::Result<()> {
            super::run::write_durable(&tmp, &text)?;
            fs::rename(&tmp, &p)?;
            super::journal::sync_dir(state_dir)
        };
        write().map_err(|e| format!("recording the installed version in {}: {e}", p.display()))
    }
}

/// Why installing `name` `version` is refused by the mark, if it is.
pub(crate) fn downgrade_problem(mark: Option<&Mark>, name: &str, version: &str, allowed: bool) -> Option<String> {
    let m = mark?;
    (!allowed && version::is_downgrade(version, &m.high_water)).then(|| {
        format!(
            "{name} {version} is older than {}, the highest version installed here (high-water mark in the state \
             dir's {VERSIONS_FILE}; installed now: {}): a downgrade must be allowed explicitly \
             (fleetup-agent install --allow-downgrade, or a rollout that allows downgrades)",
            m.high_water, m.installed
        )
    })
}

//! Files in use: which processes hold a file that is about to be replaced.
//!
//! Linux has no mandatory file locks, so replacing a file a process has open "works",
//! but the process goes on running the old code or data: the seeds' installer asked the
//! operator, and so does fleetup. Open descriptors (`/proc/PID/fd`) and mapped files
//! (`/proc/PID/maps`, shared libraries and mmapped data) are both checked.
//!
//! The question is asked before the services stop (their own processes left out: stopping
//! them is the plan), so the operator's thinking time is not outage; `validate-files`
//! re-checks after the stop, leaving out holders the operator chose to ignore.

use super::run::{Run, Stop};
use fleetup_proto::manifest::FileAction;
use fleetup_proto::{DecisionAnswer, DecisionKind, HoldingProcess, PhaseId};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

impl Run<'_> {
    /// Asks about processes (other than `exclude`) holding a file the install replaces,
    /// removes or patches, until none does: retry scans again after a second, ignore
    /// marks the install restart-required and remembers the holders, exit ends it.
    /// `Some(message)` when holders were ignored.
    pub(crate) fn ask_files_in_use(&mut self, p: PhaseId, exclude: &BTreeSet<u32>) -> Result<Option<String>, Stop> {
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
            let holders: Vec<HoldingProcess> =
                scan(&targets).into_iter().filter(|h| !exclude.contains(&h.pid)).collect();
            if holders.is_empty() {
                return Ok(None);
            }
            let names: Vec<String> =
                holders.iter().map(|h| format!("{} (pid {}) holds {}", h.name, h.pid, h.files.join(", "))).collect();
            let when = if p == PhaseId::ValidateFiles { "services stopped" } else { "services still running" };
            let pids: Vec<u32> = holders.iter().map(|h| h.pid).collect();
            let answer = self.ask(
                p,
                format!("files in use ({when}): {}", names.join("; ")),
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
                    self.ignored_holders.extend(pids);
                    return Ok(Some(format!("files in use ignored: restart required ({})", names.join("; "))));
                }
                _ => return Err(Stop::Exit(format!("files in use; exit chosen: {}", names.join("; ")))),
            }
        }
    }
}

/// Scans /proc for processes (other than this one) holding any of `files` (absolute
/// paths), returning them with the relative names given in `files`' values.
pub fn scan(files: &BTreeMap<PathBuf, String>) -> Vec<HoldingProcess> {
    let me = std::process::id();
    let mut found: BTreeMap<u32, BTreeSet<String>> = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir("/proc") else { return Vec::new() };
    for entry in entries.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
        if pid == me {
            continue;
        }
        let base = entry.path();
        if let Ok(fds) = std::fs::read_dir(base.join("fd")) {
            for fd in fds.flatten() {
                if let Ok(target) = std::fs::read_link(fd.path())
                    && let Some(rel) = lookup(files, &target)
                {
                    found.entry(pid).or_default().insert(rel);
                }
            }
        }
        if let Ok(maps) = std::fs::read_to_string(base.join("maps")) {
            for line in maps.lines() {
                // address perms offset dev inode pathname
                if let Some(path) = line.split_whitespace().nth(5)
                    && let Some(rel) = lookup(files, Path::new(path))
                {
                    found.entry(pid).or_default().insert(rel);
                }
            }
        }
    }
    found
        .into_iter()
        .map(|(pid, files)| HoldingProcess {
            pid,
            name: std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map_or_else(|_| "?".into(), |s| s.trim().to_owned()),
            files: files.into_iter().collect(),
        })
        .collect()
}

fn lookup(files: &BTreeMap<PathBuf, String>, target: &Path) -> Option<String> {
    files.get(target).cloned()
}

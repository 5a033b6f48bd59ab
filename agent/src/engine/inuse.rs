//! Files in use: which processes hold a file that is about to be replaced.
//!
//! Linux has no mandatory file locks, so replacing a file a process has open "works",
//! but the process goes on running the old code or data: the seeds' installer asked the
//! operator, and so does fleetup. Open descriptors (`/proc/PID/fd`) and mapped files
//! (`/proc/PID/maps`, shared libraries and mmapped data) are both checked.

use fleetup_proto::HoldingProcess;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

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

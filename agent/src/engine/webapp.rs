//! The web app switch: a new versioned directory, then an atomic swap of the `current`
//! symlink (a new link renamed over the old one), so requests see the old app or the
//! new one, never a mix.

use std::path::Path;

/// Points `link` at `target` atomically (symlink beside it, then rename over it).
pub fn switch_link(link: &Path, target: &str) -> std::io::Result<()> {
    let tmp =
        link.with_file_name(format!(".{}.fleetup-new", link.file_name().and_then(|n| n.to_str()).unwrap_or("current")));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)?;
    if let Some(dir) = link.parent() {
        super::journal::sync_dir(dir)?;
    }
    Ok(())
}

/// The current target of a link, if it is one.
pub fn read_target(link: &Path) -> Option<String> {
    std::fs::read_link(link).ok().and_then(|t| t.to_str().map(str::to_owned))
}

/// Removes the oldest releases in `releases` (by the directory's modification time, i.e.
/// deploy order) so that `keep` remain, never `current`; returns the names removed.
pub fn prune_releases(releases: &Path, current: &str, keep: usize) -> std::io::Result<Vec<String>> {
    let mut all: Vec<(std::time::SystemTime, String)> = Vec::new();
    for e in std::fs::read_dir(releases)? {
        let e = e?;
        let name = e.file_name().to_string_lossy().into_owned();
        let modified = e.metadata()?.modified()?;
        all.push((modified, name));
    }
    // Newest first; the current release always counts as kept.
    all.sort_by(|a, b| b.cmp(a));
    let mut kept = 1;
    let mut removed = Vec::new();
    for (_, name) in all.into_iter().filter(|(_, n)| n != current) {
        if kept < keep {
            kept += 1;
            continue;
        }
        let path = releases.join(&name);
        // remove_dir_all does not follow symlinks; a link itself is just unlinked.
        if std::fs::symlink_metadata(&path)?.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else {
            std::fs::remove_file(&path)?;
        }
        removed.push(name);
    }
    Ok(removed)
}

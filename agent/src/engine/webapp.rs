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

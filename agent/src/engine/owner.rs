//! `owner` and `group` of `[[files]]` entries: names resolved on this server (or numeric
//! ids), checked in `check-system` so an unknown user stops the install before anything
//! changes, and applied to the staged files (not following links) before the rename set
//! puts them in place, so a file is never visible under the root with the wrong owner.

use fleetup_proto::manifest::FileChange;
use nix::unistd::{Gid, Group, Uid, User};
use std::collections::BTreeSet;
use std::path::Path;

/// The ids an entry asks for (`None`: leave as staged).
pub(crate) fn resolve(f: &FileChange) -> Result<(Option<u32>, Option<u32>), String> {
    let uid = f.owner.as_deref().map(user).transpose()?;
    let gid = f.group.as_deref().map(group).transpose()?;
    Ok((uid, gid))
}

fn user(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    match User::from_name(name) {
        Ok(Some(u)) => Ok(Uid::as_raw(u.uid)),
        Ok(None) => Err(format!("owner '{name}' is not a user on this server (create it first, or give a uid)")),
        Err(e) => Err(format!("owner '{name}' cannot be looked up: {e}")),
    }
}

fn group(name: &str) -> Result<u32, String> {
    if let Ok(id) = name.parse::<u32>() {
        return Ok(id);
    }
    match Group::from_name(name) {
        Ok(Some(g)) => Ok(Gid::as_raw(g.gid)),
        Ok(None) => Err(format!("group '{name}' is not a group on this server (create it first, or give a gid)")),
        Err(e) => Err(format!("group '{name}' cannot be looked up: {e}")),
    }
}

/// Every owner or group of `files` that does not resolve, each named once with the
/// entries asking for it.
pub(crate) fn problems(files: &[FileChange]) -> Vec<String> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for f in files {
        for (value, lookup) in [(&f.owner, user as fn(&str) -> Result<u32, String>), (&f.group, group)] {
            if let Some(v) = value
                && seen.insert(v.clone())
                && let Err(e) = lookup(v)
            {
                out.push(format!("{e} (files entry {})", f.path));
            }
        }
    }
    out
}

/// Gives the staged `path` (a file or a link, not followed) the entry's owner and group.
pub(crate) fn apply(path: &Path, f: &FileChange) -> Result<(), String> {
    let (uid, gid) = resolve(f)?;
    if uid.is_none() && gid.is_none() {
        return Ok(());
    }
    std::os::unix::fs::lchown(path, uid, gid).map_err(|e| format!("setting the owner of {}: {e}", f.path))
}

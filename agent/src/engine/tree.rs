//! `tree` entries: a directory replaced as a unit, expanded into per-file changes.
//!
//! A product with 20,000 files should not need 20,000 `[[files]]` entries. A `tree` entry
//! names a directory under the root and a package directory; in `check-system` it becomes
//! one `add` or `replace` per file of the package directory and one `remove` per file under
//! the root directory that is no longer in it. Everything after (space, files in use, the
//! rename set, rollback, kill recovery) then works on plain per-file changes, so the tree
//! gets the same guarantees without code of its own. Directories are created as needed and
//! never removed (an undo could not tell a directory the tree emptied from one it found).

use fleetup_proto::manifest::{FileAction, FileChange, normal_path};
use fleetup_proto::package::{EntryKind, PackageIndex};
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// `files` with every `tree` entry replaced by its per-file changes.
pub(crate) fn expand(root: &Path, files: &[FileChange], index: &PackageIndex) -> Result<Vec<FileChange>, String> {
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        if f.action != FileAction::Tree {
            out.push(f.clone());
            continue;
        }
        let path = normal_path(&f.path);
        let source = normal_path(&f.source_path());
        let prefix = format!("{source}/");
        let new: BTreeSet<String> = index
            .entries
            .iter()
            .filter(|e| e.kind == EntryKind::File)
            .filter_map(|e| e.path.strip_prefix(&prefix).map(str::to_owned))
            .collect();
        let old = existing(&root.join(&path)).map_err(|e| format!("tree {path}: {e}"))?;
        for rel in &new {
            let action = if old.contains(rel) { FileAction::Replace } else { FileAction::Add };
            out.push(FileChange {
                path: format!("{path}/{rel}"),
                action,
                source: Some(format!("{prefix}{rel}")),
                mode: f.mode.clone(),
                owner: f.owner.clone(),
                group: f.group.clone(),
                target: None,
            });
        }
        for rel in old.difference(&new) {
            out.push(FileChange {
                path: format!("{path}/{rel}"),
                action: FileAction::Remove,
                source: None,
                mode: None,
                owner: None,
                group: None,
                target: None,
            });
        }
    }
    Ok(out)
}

/// Every file and symlink below `dir` (relative, `/`-separated), not following links; empty
/// if `dir` does not exist yet.
fn existing(dir: &Path) -> std::io::Result<BTreeSet<String>> {
    let mut out = BTreeSet::new();
    match fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
        Ok(md) if !md.is_dir() => {
            return Err(std::io::Error::other("is not a directory (a symlink or a file): a tree replaces a directory"));
        }
        Ok(_) => {}
    }
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).expect("below dir").to_string_lossy().into_owned();
                out.insert(rel);
            }
        }
    }
    Ok(out)
}

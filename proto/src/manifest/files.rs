//! `[[files]]`: what happens to each path under the install root.

use super::{ManifestError, check_relative, invalid, normal_path};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What happens to one path under the install root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileAction {
    /// The file must not exist yet; it is created.
    Add,
    /// The file exists and is replaced (backed up first).
    Replace,
    /// The file exists and is removed (backed up first).
    Remove,
    /// `path` is a directory that becomes, file by file, the package directory `source`
    /// (default `payload/<path>`): its files are added or replaced, files under `path`
    /// that are not in it are removed. The engine expands it into those changes in
    /// `check-system`; directories are created as needed and never removed.
    Tree,
    /// `path` becomes a symbolic link to `target`: created, or put in place of what is
    /// there (a file or link, backed up first). The target must resolve inside the root.
    Symlink,
}

impl FileAction {
    /// Whether the entry puts something staged in place (its content or a link).
    pub const fn places(self) -> bool {
        !matches!(self, FileAction::Remove)
    }

    /// Whether the entry's new content comes from a file in the package.
    pub const fn has_source(self) -> bool {
        matches!(self, FileAction::Add | FileAction::Replace | FileAction::Tree)
    }
}

/// `[[files]]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileChange {
    /// Path under the install root.
    pub path: String,
    /// What to do.
    pub action: FileAction,
    /// Path in the package (default `payload/<path>`); unused for `remove`.
    #[serde(default)]
    pub source: Option<String>,
    /// Unix permission bits as an octal string (default: those of the packed file).
    #[serde(default)]
    pub mode: Option<String>,
    /// Owning user: a name resolved on the server, or a numeric uid (default: the
    /// engine's user). For `tree`, every file of the tree.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Owning group: a name resolved on the server, or a numeric gid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// (`symlink` only) What the link points to, relative to the link's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl FileChange {
    /// The path inside the package that holds this file's new content.
    pub fn source_path(&self) -> String {
        self.source.clone().unwrap_or_else(|| format!("payload/{}", self.path))
    }
}

/// Paths and sources listed once (in normal form: a second entry for a path, or a second
/// use of one staged source, would fail mid-outage), modes parsable, a symlink's target
/// given (and only there), no entry inside a tree.
pub(super) fn validate(files: &[FileChange]) -> Result<(), ManifestError> {
    let mut paths: BTreeMap<String, usize> = BTreeMap::new();
    let mut sources: BTreeMap<String, usize> = BTreeMap::new();
    for (i, f) in files.iter().enumerate() {
        check_relative(&format!("files[{i}].path"), &f.path)?;
        check_relative(&format!("files[{i}].source"), &f.source_path())?;
        if let Some(j) = paths.insert(normal_path(&f.path), i) {
            return Err(invalid(
                format!("files[{i}].path"),
                format!("'{}' is the same path as files[{j}] ('{}'): list each path once", f.path, files[j].path),
            ));
        }
        if f.action.has_source()
            && let Some(j) = sources.insert(normal_path(&f.source_path()), i)
        {
            return Err(invalid(
                format!("files[{i}].source"),
                format!(
                    "'{}' (for '{}') is also the source of files[{j}] ('{}'): each staged file is moved into \
                     place once, so give each entry its own source",
                    f.source_path(),
                    f.path,
                    files[j].path
                ),
            ));
        }
        if let Some(mode) = &f.mode {
            parse_mode(mode).map_err(|p| invalid(format!("files[{i}].mode"), p))?;
        }
        match (f.action, &f.target) {
            (FileAction::Symlink, None) => {
                return Err(invalid(format!("files[{i}].target"), "a symlink entry needs `target`"));
            }
            (FileAction::Symlink, Some(t)) if t.is_empty() => {
                return Err(invalid(format!("files[{i}].target"), "must not be empty"));
            }
            (FileAction::Symlink, Some(_)) if f.source.is_some() || f.mode.is_some() => {
                return Err(invalid(
                    format!("files[{i}]"),
                    "a symlink has no `source` or `mode` (a link has no content or permissions of its own)",
                ));
            }
            (FileAction::Symlink, Some(_)) | (_, None) => {}
            (_, Some(_)) => {
                return Err(invalid(format!("files[{i}].target"), "only a `symlink` entry has a target"));
            }
        }
        if f.action == FileAction::Remove && (f.owner.is_some() || f.group.is_some()) {
            return Err(invalid(format!("files[{i}]"), "a removed file has no owner or group to set"));
        }
        for (what, v) in [("owner", &f.owner), ("group", &f.group)] {
            if let Some(v) = v
                && (v.is_empty() || v.contains(char::is_whitespace) || v.contains(':'))
            {
                return Err(invalid(
                    format!("files[{i}].{what}"),
                    format!("'{v}' is not a {what} name or number (no spaces or ':')"),
                ));
            }
        }
    }
    for (i, t) in files.iter().enumerate().filter(|(_, f)| f.action == FileAction::Tree) {
        let tree = format!("{}/", normal_path(&t.path));
        if let Some(j) = files.iter().position(|f| normal_path(&f.path).starts_with(&tree)) {
            return Err(invalid(
                format!("files[{j}].path"),
                format!("'{}' lies inside the tree files[{i}] ('{}'): the tree decides it", files[j].path, t.path),
            ));
        }
    }
    Ok(())
}

/// Parses an octal mode string such as `0755`; setuid/setgid/sticky bits are refused.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| format!("'{text}' is not an octal mode such as 0644"))?;
    if mode > 0o777 {
        return Err(format!("'{text}': only permission bits (up to 0777) are allowed, no setuid/setgid/sticky"));
    }
    Ok(mode)
}

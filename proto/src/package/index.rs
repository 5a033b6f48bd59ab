//! The signed index of a package and the rules every entry must follow.

use super::{Limits, PackageError};
use crate::manifest::Manifest;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Component, Path};

/// Format version written by this code.
pub const FORMAT: u32 = 1;

/// What the signature covers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PackageIndex {
    /// Package format version.
    pub format: u32,
    /// The manifest text, exactly as packed (also present as `manifest.toml`).
    pub manifest: String,
    /// The compressed content member.
    pub content: ContentInfo,
    /// Every entry of the content archive, in archive order; parents before children.
    pub entries: Vec<IndexEntry>,
}

/// Digest and size of the compressed content member.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContentInfo {
    /// Hex sha256 of the compressed bytes.
    pub sha256: String,
    /// Compressed size in bytes.
    pub size: u64,
    /// Always `gzip` in format 1.
    pub compression: String,
}

/// Kind of a content entry. Nothing else (hard links, devices, fifos) is ever accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum EntryKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A relative symbolic link that stays inside the package.
    Symlink,
}

/// One entry of the content archive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IndexEntry {
    /// Relative path, `/`-separated, no trailing slash.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Bytes (files only; 0 otherwise).
    #[serde(default)]
    pub size: u64,
    /// Hex sha256 (files only).
    #[serde(default)]
    pub sha256: Option<String>,
    /// Permission bits (at most 0o777).
    pub mode: u32,
    /// Link target (symlinks only).
    #[serde(default)]
    pub target: Option<String>,
}

impl PackageIndex {
    /// Sum of file sizes.
    pub fn total_size(&self) -> u64 {
        self.entries.iter().map(|e| e.size).sum()
    }

    /// The entry at `path`, if any.
    pub fn entry(&self, path: &str) -> Option<&IndexEntry> {
        self.entries.iter().find(|e| e.path == path)
    }

    /// Checks the index against the entry rules and the caps, and parses its manifest.
    pub fn validate(&self, limits: &Limits) -> Result<Manifest, PackageError> {
        if self.format != FORMAT {
            return Err(PackageError::Layout(format!(
                "index format {} is not supported (this fleetup reads format {FORMAT}); upgrade fleetup",
                self.format
            )));
        }
        if self.content.compression != "gzip" {
            return Err(PackageError::Layout(format!("unsupported compression '{}'", self.content.compression)));
        }
        if self.entries.len() > limits.max_entries {
            return Err(PackageError::TooLarge(format!(
                "{} entries, the limit is {}",
                self.entries.len(),
                limits.max_entries
            )));
        }
        let total = self.total_size();
        if total > limits.max_total_bytes {
            return Err(PackageError::TooLarge(format!(
                "{total} bytes of files, the limit is {}",
                limits.max_total_bytes
            )));
        }
        let mut kinds: BTreeMap<&str, EntryKind> = BTreeMap::new();
        for e in &self.entries {
            check_entry_path(&e.path).map_err(|p| PackageError::entry(&e.path, p))?;
            if e.mode > 0o777 {
                return Err(PackageError::entry(
                    &e.path,
                    format!("mode {:o} has setuid, setgid or sticky bits; only permission bits are allowed", e.mode),
                ));
            }
            if let Some(parent) = parent_of(&e.path) {
                match kinds.get(parent) {
                    Some(EntryKind::Dir) => {}
                    Some(_) => {
                        return Err(PackageError::entry(
                            &e.path,
                            format!("its parent '{parent}' is not a directory (a link or file cannot hold entries)"),
                        ));
                    }
                    None => {
                        return Err(PackageError::entry(
                            &e.path,
                            format!("its parent directory '{parent}' is not listed before it"),
                        ));
                    }
                }
            }
            match e.kind {
                EntryKind::File => {
                    let ok =
                        e.sha256.as_deref().is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()));
                    if !ok || e.target.is_some() {
                        return Err(PackageError::entry(&e.path, "a file needs a sha256 and no link target"));
                    }
                }
                EntryKind::Dir => {
                    if e.size != 0 || e.sha256.is_some() || e.target.is_some() {
                        return Err(PackageError::entry(&e.path, "a directory has no size, digest or target"));
                    }
                }
                EntryKind::Symlink => {
                    let target =
                        e.target.as_deref().ok_or_else(|| PackageError::entry(&e.path, "a link needs a target"))?;
                    check_link_target(&e.path, target).map_err(|p| PackageError::entry(&e.path, p))?;
                    if e.size != 0 || e.sha256.is_some() {
                        return Err(PackageError::entry(&e.path, "a link has no size or digest"));
                    }
                }
            }
            if kinds.insert(&e.path, e.kind).is_some() {
                return Err(PackageError::entry(&e.path, "appears twice (one name cannot be two entries)"));
            }
        }
        let manifest = Manifest::from_toml(&self.manifest)?;
        match kinds.get("manifest.toml") {
            Some(EntryKind::File) => {}
            _ => {
                return Err(PackageError::Layout("manifest.toml is missing from the content".into()));
            }
        }
        for path in manifest.referenced_package_files() {
            if kinds.get(path.as_str()) != Some(&EntryKind::File) {
                return Err(PackageError::Layout(format!(
                    "the manifest refers to '{path}', which is not a file in the package"
                )));
            }
        }
        for dir in manifest.referenced_package_dirs() {
            if kinds.get(dir.trim_end_matches('/')) != Some(&EntryKind::Dir) {
                return Err(PackageError::Layout(format!(
                    "the manifest's tree entry refers to '{dir}', which is not a directory in the package"
                )));
            }
        }
        if let Some(w) = &manifest.webapp
            && kinds.get(w.source.trim_end_matches('/')) != Some(&EntryKind::Dir)
        {
            return Err(PackageError::Layout(format!(
                "webapp.source '{}' is not a directory in the package",
                w.source
            )));
        }
        Ok(manifest)
    }
}

fn parent_of(path: &str) -> Option<&str> {
    path.rsplit_once('/').map(|(p, _)| p)
}

/// An entry path must be relative, made only of plain names, and of sane length.
pub fn check_entry_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 4096 || path.contains('\0') {
        return Err("empty, overlong or NUL-containing path".into());
    }
    if path.ends_with('/') || path.contains("//") {
        return Err("path is not in canonical form (no empty components, no trailing '/')".into());
    }
    if path.starts_with('/') {
        return Err("absolute path; entries must be relative to the package".into());
    }
    for c in Path::new(path).components() {
        if !matches!(c, Component::Normal(_)) {
            return Err("path contains '..' or '.'; it could leave the target directory".into());
        }
    }
    Ok(())
}

/// A link target must be relative, of the form `../../a/b` (leading `..` only), and
/// never climb above the package root from where the link stands. Because no entry may
/// live under a link, resolving such a target can only land inside the tree.
pub fn check_link_target(link: &str, target: &str) -> Result<(), String> {
    if target.is_empty() || target.starts_with('/') {
        return Err(format!(
            "link target '{target}' is absolute or empty; it could point outside the target directory"
        ));
    }
    let depth = link.matches('/').count();
    let mut ups = 0usize;
    let mut seen_name = false;
    for c in Path::new(target).components() {
        match c {
            Component::ParentDir if !seen_name => ups += 1,
            Component::Normal(_) => seen_name = true,
            _ => {
                return Err(format!(
                    "link target '{target}' is not in the form '../dir/name' (no '.' and no '..' after a name)"
                ));
            }
        }
    }
    if ups > depth {
        return Err(format!("link target '{target}' leaves the target directory"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths() {
        assert!(check_entry_path("payload/lib/a.so").is_ok());
        for bad in ["", "/etc/passwd", "../x", "a/../../x", "./a", "a/", "a//b"] {
            assert!(check_entry_path(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn link_targets() {
        assert!(check_link_target("payload/lib/current", "v1").is_ok());
        assert!(check_link_target("payload/lib/current", "../../manifest.toml").is_ok());
        assert!(check_link_target("payload/lib/current", "../../../etc").is_err());
        assert!(check_link_target("a", "/etc").is_err());
        assert!(check_link_target("a", "b/../../x").is_err());
        assert!(check_link_target("a", "..").is_err());
    }
}

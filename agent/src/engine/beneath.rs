//! Every path the engine writes stays beneath the install root.
//!
//! The manifest's paths are relative and `..`-free (`Manifest::validate`), but the disk
//! can still lead outside: `lib/outlink` may be a symlink inside the root pointing to
//! `/etc`, so an `add` of `lib/outlink/x` would write `/etc/x`; a package's relative link,
//! harmless where it stands in the package, points elsewhere once the web app moves to
//! `<web_root>/releases/<version>/`.
//!
//! The rule: the directory an entry is written into, with every symlink on the way
//! resolved, is the root or below it; a link the web app brings resolves, from where it
//! will stand, inside that web app. It is
//! checked in `check-system` (before anything changes, every offender named at once) and
//! again when `update-files` plans its renames. Links inside the root that stay inside
//! it are fine: hosts use them (`lib/current -> lib/1.0`).

use fleetup_proto::manifest::{FileAction, Manifest, normal_path};
use fleetup_proto::package::index::check_link_target;
use fleetup_proto::package::{EntryKind, PackageIndex};
use std::fs;
use std::path::Path;

/// Why `rel` (a path under `root`) would be written outside the root, if it would be.
/// `through_last`: the last component is written through (a config file edited, a
/// pidfile), not replaced as a name (a payload file renamed over).
pub(crate) fn escapes(root: &Path, rel: &str, through_last: bool) -> Option<String> {
    let full = root.join(rel);
    let start = if through_last { full.clone() } else { full.parent().map_or_else(|| full.clone(), Path::to_path_buf) };
    // The deepest part that exists decides: what does not exist yet is created by the
    // engine as plain directories.
    let mut existing = start.as_path();
    while fs::symlink_metadata(existing).is_err() {
        existing = existing.parent()?;
    }
    match fs::canonicalize(existing) {
        Ok(real) if real.starts_with(root) => None,
        Ok(real) => Some(format!(
            "{rel}: {} resolves to {}, outside the install root (a symlink on the way leads out)",
            shown(root, existing),
            real.display()
        )),
        Err(e) => Some(format!("{rel}: {} cannot be resolved ({e}; a dangling symlink?)", shown(root, existing))),
    }
}

/// Why a link at `link` (under `root`) pointing to `target` would resolve outside the
/// root, if it would: an absolute target, `..` climbing above the root, or a symlink on
/// the way (already on the server) that leads out.
pub(crate) fn link_escapes(root: &Path, link: &str, target: &str) -> Option<String> {
    if target.starts_with('/') {
        return Some(format!(
            "{link} -> {target}: an absolute target points outside the install root; give it relative to the link"
        ));
    }
    let link_norm = normal_path(link);
    let mut parts: Vec<&str> = link_norm.split('/').collect();
    parts.pop(); // the link's own name: the target is relative to its directory
    for c in target.split('/').filter(|c| !c.is_empty() && *c != ".") {
        if c == ".." {
            if parts.pop().is_none() {
                return Some(format!("{link} -> {target}: the target climbs out of the install root"));
            }
        } else {
            parts.push(c);
        }
    }
    if parts.is_empty() {
        return None; // the root itself
    }
    let resolved = parts.join("/");
    escapes(root, &resolved, true).map(|why| {
        let why = why.strip_prefix(&format!("{resolved}: ")).unwrap_or(&why).to_owned();
        format!("{link} -> {target}: {why}")
    })
}

fn shown(root: &Path, p: &Path) -> String {
    p.strip_prefix(root).map_or_else(|_| p.display().to_string(), |r| r.display().to_string())
}

/// Every write of this manifest that would land outside `root`, and every link it
/// installs that would point outside, each named; empty when all stay beneath.
pub(crate) fn offenders(root: &Path, m: &Manifest, index: &PackageIndex) -> Vec<String> {
    let mut out = Vec::new();
    // (A payload source is always a regular file: the signed index refuses anything else.)
    for f in &m.files {
        out.extend(escapes(root, &f.path, false));
        if let Some(target) = f.target.as_deref().filter(|_| f.action == FileAction::Symlink) {
            out.extend(link_escapes(root, &f.path, target));
        }
    }
    for c in &m.config_patches {
        out.extend(escapes(root, &c.file, true));
    }
    for s in &m.services {
        if let Some(exec) = &s.exec {
            out.extend(escapes(root, &exec.pidfile, true));
        }
    }
    if let Some(w) = &m.webapp {
        out.extend(escapes(root, &format!("{}/releases/{}", w.web_root, m.rollup.version), false));
        out.extend(escapes(root, &format!("{}/current", w.web_root), false));
        let prefix = format!("{}/", w.source.trim_end_matches('/'));
        for e in index.entries.iter().filter(|e| e.kind == EntryKind::Symlink) {
            let Some(inside) = e.path.strip_prefix(&prefix) else { continue };
            let target = e.target.as_deref().unwrap_or_default();
            if let Err(why) = check_link_target(inside, target) {
                out.push(format!(
                    "web app link {} -> {target}: once deployed to {}/releases/{}, {why} (links must stay inside the web app)",
                    e.path, w.web_root, m.rollup.version
                ));
            }
        }
    }
    out
}

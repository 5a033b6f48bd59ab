//! The signed package format against tampering and hostile archives.
//!
//! Hostile archives are signed with a *trusted* key: the rules must hold even when the
//! signer is careless or compromised, so nothing may ever land outside the target.

mod hostile;
mod tamper;

use fleetup_proto::keys::SecretKey;
use fleetup_proto::package::{self, Limits};
use std::path::{Path, PathBuf};

pub fn sample_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/sample-rollup")
}

/// Packs the sample rollup with a fresh key; returns (key, package path, tempdir).
pub fn packed_sample() -> (SecretKey, PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = SecretKey::generate().unwrap();
    let out = dir.path().join("sample.fup");
    package::pack_dir(&sample_dir(), &key, &out).unwrap();
    (key, out, dir)
}

/// Every path (relative) below `dir`, with kind and content, sorted.
pub fn tree(dir: &Path) -> Vec<(String, String)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap()).collect();
        entries.sort_by_key(std::fs::DirEntry::file_name);
        for e in entries {
            let rel = e.path().strip_prefix(base).unwrap().display().to_string();
            if rel.starts_with('.') || rel.contains("/.") {
                continue;
            }
            let ft = e.file_type().unwrap();
            if ft.is_symlink() {
                out.push((rel, format!("link {}", std::fs::read_link(e.path()).unwrap().display())));
            } else if ft.is_dir() {
                out.push((rel.clone(), "dir".into()));
                walk(base, &e.path(), out);
            } else {
                use std::os::unix::fs::PermissionsExt as _;
                let mode = e.metadata().unwrap().permissions().mode() & 0o777;
                out.push((rel, format!("{mode:o} {}", String::from_utf8_lossy(&std::fs::read(e.path()).unwrap()))));
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

#[test]
fn packed_sample_verifies_and_extracts_to_the_source_tree() {
    let (key, pkg, dir) = packed_sample();
    let v = package::verify_file(&pkg, &[key.public()], &Limits::default()).unwrap();
    assert_eq!(v.manifest.rollup.version, "1.1.0");
    assert_eq!(v.key_id, key.public().key_id());
    let dest = dir.path().join("out");
    package::extract_file(&pkg, &[key.public()], &Limits::default(), &dest).unwrap();
    assert_eq!(tree(&dest), tree(&sample_dir()));
}

#[test]
fn packing_is_deterministic() {
    let (key, pkg, dir) = packed_sample();
    let again = dir.path().join("again.fup");
    package::pack_dir(&sample_dir(), &key, &again).unwrap();
    assert_eq!(std::fs::read(&pkg).unwrap(), std::fs::read(&again).unwrap());
}

#[test]
fn extract_refuses_an_existing_destination() {
    let (key, pkg, dir) = packed_sample();
    let dest = dir.path().join("exists");
    std::fs::create_dir(&dest).unwrap();
    std::fs::write(dest.join("keep"), "x").unwrap();
    assert!(package::extract_file(&pkg, &[key.public()], &Limits::default(), &dest).is_err());
    assert_eq!(std::fs::read_to_string(dest.join("keep")).unwrap(), "x", "existing content untouched");
}

#[test]
fn long_paths_and_link_targets_round_trip() {
    // Over 100 bytes: carried by GNU long-name / long-link entries, which the reader
    // handles itself (bounded) instead of leaving them to the tar crate.
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    copy_dir(&sample_dir(), &src);
    let deep = src.join("payload").join("d".repeat(60)).join("e".repeat(60));
    std::fs::create_dir_all(&deep).unwrap();
    std::fs::write(deep.join("f".repeat(50)), "deep\n").unwrap();
    let target = format!("{}/{}/{}", "d".repeat(60), "e".repeat(60), "f".repeat(50));
    std::os::unix::fs::symlink(&target, src.join("payload/long-link")).unwrap();
    let key = SecretKey::generate().unwrap();
    let pkg = dir.path().join("p.fup");
    package::pack_dir(&src, &key, &pkg).unwrap();
    package::verify_file(&pkg, &[key.public()], &Limits::default()).unwrap();
    let dest = dir.path().join("out");
    package::extract_file(&pkg, &[key.public()], &Limits::default(), &dest).unwrap();
    assert_eq!(tree(&dest), tree(&src));
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let dst = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).unwrap();
        }
    }
}

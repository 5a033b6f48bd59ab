//! A corpus of hostile archives, each signed with a trusted key, each refused with
//! nothing written outside (or inside) the target directory.

use fleetup_proto::keys::SecretKey;
use fleetup_proto::package::{self, ContentInfo, EntryKind, IndexEntry, Limits, PackageIndex};
use sha2::{Digest as _, Sha256};
use std::io::Write as _;
use std::path::Path;

const MANIFEST: &str = "[rollup]\nname = \"hostile\"\nversion = \"6.6.6\"\n";

/// One raw tar entry, written without any of the tar crate's path sanitising.
enum Raw {
    File(&'static str, Vec<u8>, u32),
    Dir(&'static str),
    Symlink(&'static str, String),
    Hardlink(&'static str, &'static str),
    CharDevice(&'static str),
    Fifo(&'static str),
    /// A PAX extended header of this many bytes (kept in memory by tar readers).
    Pax(usize),
}

fn raw_header(path: &str, kind: tar::EntryType, size: u64, mode: u32, link: &str) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    let name = &mut h.as_old_mut().name;
    name[..path.len()].copy_from_slice(path.as_bytes());
    let linkname = &mut h.as_old_mut().linkname;
    linkname[..link.len()].copy_from_slice(link.as_bytes());
    h.set_size(size);
    h.set_mode(mode);
    h.set_entry_type(kind);
    if kind == tar::EntryType::Char {
        h.set_device_major(1).unwrap();
        h.set_device_minor(3).unwrap();
    }
    h.set_cksum();
    h
}

fn content(entries: &[Raw]) -> Vec<u8> {
    let mut tar = Vec::new();
    let mut push = |h: tar::Header, data: &[u8]| {
        tar.extend_from_slice(h.as_bytes());
        tar.extend_from_slice(data);
        tar.resize(tar.len().div_ceil(512) * 512, 0);
    };
    push(raw_header("manifest.toml", tar::EntryType::Regular, MANIFEST.len() as u64, 0o644, ""), MANIFEST.as_bytes());
    for e in entries {
        match e {
            Raw::File(p, data, mode) => {
                push(raw_header(p, tar::EntryType::Regular, data.len() as u64, *mode, ""), data);
            }
            Raw::Dir(p) => push(raw_header(p, tar::EntryType::Directory, 0, 0o755, ""), &[]),
            Raw::Symlink(p, t) => push(raw_header(p, tar::EntryType::Symlink, 0, 0o777, t), &[]),
            Raw::Hardlink(p, t) => push(raw_header(p, tar::EntryType::Link, 0, 0o644, t), &[]),
            Raw::CharDevice(p) => push(raw_header(p, tar::EntryType::Char, 0, 0o644, ""), &[]),
            Raw::Fifo(p) => push(raw_header(p, tar::EntryType::Fifo, 0, 0o644, ""), &[]),
            Raw::Pax(n) => {
                push(raw_header("PaxHeader", tar::EntryType::XHeader, *n as u64, 0o644, ""), &pax_record(*n));
            }
        }
    }
    tar.extend_from_slice(&[0u8; 1024]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    gz.finish().unwrap()
}

/// One well-formed PAX record (`<len> comment=xxx…\n`) of exactly `n` bytes.
fn pax_record(n: usize) -> Vec<u8> {
    let digits = n.to_string().len();
    let value = n - digits - " comment=\n".len();
    let record = format!("{n} comment={}\n", "x".repeat(value));
    assert_eq!(record.len(), n);
    record.into_bytes()
}

fn file(path: &str, data: &[u8], mode: u32) -> IndexEntry {
    IndexEntry {
        path: path.into(),
        kind: EntryKind::File,
        size: data.len() as u64,
        sha256: Some(hex::encode(Sha256::digest(data))),
        mode,
        target: None,
    }
}

fn dir(path: &str) -> IndexEntry {
    IndexEntry { path: path.into(), kind: EntryKind::Dir, size: 0, sha256: None, mode: 0o755, target: None }
}

fn link(path: &str, target: &str) -> IndexEntry {
    IndexEntry {
        path: path.into(),
        kind: EntryKind::Symlink,
        size: 0,
        sha256: None,
        mode: 0o777,
        target: Some(target.into()),
    }
}

/// Seals `archive` under `index` (plus the manifest) with a trusted key, then checks
/// that verification and extraction both refuse it with `cause` in the message and that
/// the sandbox holds nothing but the package file afterwards.
fn assert_refused(case: &str, archive: &[Raw], index: Vec<IndexEntry>, limits: Limits, cause: &str) {
    let outer = tempfile::tempdir().unwrap();
    let sandbox = outer.path().join("s");
    std::fs::create_dir(&sandbox).unwrap();
    let key = SecretKey::generate().unwrap();
    let mut entries = vec![file("manifest.toml", MANIFEST.as_bytes(), 0o644)];
    entries.extend(index);
    let index = PackageIndex {
        format: 1,
        manifest: MANIFEST.into(),
        content: ContentInfo { sha256: String::new(), size: 0, compression: "gzip".into() },
        entries,
    };
    let pkg = sandbox.join("pkg.fup");
    std::fs::write(&pkg, package::seal(index, &content(archive), &key).unwrap()).unwrap();

    let err = package::verify_file(&pkg, &[key.public()], &limits).expect_err(case).to_string();
    assert!(err.contains(cause), "{case}: verify said '{err}', expected it to mention '{cause}'");
    let dest = sandbox.join("dest");
    let err = package::extract_file(&pkg, &[key.public()], &limits, &dest).expect_err(case).to_string();
    assert!(err.contains(cause), "{case}: extract said '{err}', expected '{cause}'");
    assert_eq!(listing(outer.path()), ["s", "s/pkg.fup"], "{case}: something was written");
}

fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            out.push(e.path().strip_prefix(base).unwrap().display().to_string());
            if e.file_type().unwrap().is_dir() {
                walk(base, &e.path(), out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out.sort();
    out
}

#[test]
fn path_traversal() {
    let data = b"owned".to_vec();
    assert_refused(
        "traversal, honest index",
        &[Raw::File("../evil", data.clone(), 0o644)],
        vec![file("../evil", &data, 0o644)],
        Limits::default(),
        "'..'",
    );
    assert_refused(
        "traversal, lying index",
        &[Raw::Dir("payload/"), Raw::File("payload/../../evil", data.clone(), 0o644)],
        vec![dir("payload"), file("payload/evil", &data, 0o644)],
        Limits::default(),
        "'..'",
    );
}

#[test]
fn absolute_path() {
    let data = b"owned".to_vec();
    let abs = "/tmp/fleetup-hostile-absolute-evil";
    let _ = std::fs::remove_file(abs);
    assert_refused(
        "absolute, honest index",
        &[Raw::File(abs, data.clone(), 0o644)],
        vec![file(abs, &data, 0o644)],
        Limits::default(),
        "absolute",
    );
    assert_refused(
        "absolute, lying index",
        &[Raw::File(abs, data.clone(), 0o644)],
        vec![file("evil", &data, 0o644)],
        Limits::default(),
        "absolute",
    );
    assert!(!Path::new(abs).exists());
}

#[test]
fn symlink_escape_then_write_through() {
    let data = b"owned".to_vec();
    let archive = [
        Raw::Dir("payload/"),
        Raw::Symlink("payload/link", "../../..".into()),
        Raw::File("payload/link/evil", data.clone(), 0o644),
    ];
    assert_refused(
        "escaping link, honest index",
        &archive,
        vec![dir("payload"), link("payload/link", "../../.."), file("payload/link/evil", &data, 0o644)],
        Limits::default(),
        "leaves the target directory",
    );
    assert_refused(
        "escaping link, lying index",
        &archive,
        vec![dir("payload"), link("payload/link", "x"), file("payload/x", &data, 0o644)],
        Limits::default(),
        "link target differs",
    );
    assert_refused(
        "write through an inside link",
        &[
            Raw::Dir("payload/"),
            Raw::Symlink("payload/link", "..".into()),
            Raw::File("payload/link/evil", data.clone(), 0o644),
        ],
        vec![dir("payload"), link("payload/link", ".."), file("payload/link/evil", &data, 0o644)],
        Limits::default(),
        "is not a directory",
    );
    assert_refused(
        "absolute link",
        &[Raw::Symlink("etc", "/etc".into())],
        vec![link("etc", "/etc")],
        Limits::default(),
        "absolute",
    );
}

#[test]
fn symlink_and_directory_with_one_name() {
    let data = b"owned".to_vec();
    assert_refused(
        "dir then link",
        &[
            Raw::Dir("payload/"),
            Raw::Dir("payload/d/"),
            Raw::Symlink("payload/d", "..".into()),
            Raw::File("payload/d/x", data.clone(), 0o644),
        ],
        vec![dir("payload"), dir("payload/d"), link("payload/d", ".."), file("payload/d/x", &data, 0o644)],
        Limits::default(),
        "appears twice",
    );
    assert_refused(
        "link then dir, lying index",
        &[
            Raw::Dir("payload/"),
            Raw::Symlink("payload/d", "..".into()),
            Raw::Dir("payload/d/"),
            Raw::File("payload/d/x", data.clone(), 0o644),
        ],
        vec![dir("payload"), dir("payload/d"), file("payload/d/x", &data, 0o644)],
        Limits::default(),
        "where the signed index has",
    );
}

#[test]
fn hardlink_out() {
    assert_refused(
        "hardlink",
        &[Raw::Hardlink("passwd", "/etc/passwd")],
        vec![file("passwd", b"", 0o644)],
        Limits::default(),
        "hard links are not allowed",
    );
}

#[test]
fn device_node_and_fifo() {
    assert_refused(
        "char device",
        &[Raw::CharDevice("null")],
        vec![file("null", b"", 0o644)],
        Limits::default(),
        "device nodes",
    );
    assert_refused("fifo", &[Raw::Fifo("pipe")], vec![file("pipe", b"", 0o644)], Limits::default(), "fifos");
}

#[test]
fn setuid_bits() {
    let data = b"#!/bin/sh\n".to_vec();
    assert_refused(
        "setuid, honest index",
        &[Raw::File("suid", data.clone(), 0o4755)],
        vec![file("suid", &data, 0o4755)],
        Limits::default(),
        "setuid",
    );
    assert_refused(
        "setuid, lying index",
        &[Raw::File("suid", data.clone(), 0o4755)],
        vec![file("suid", &data, 0o755)],
        Limits::default(),
        "setuid",
    );
}

#[test]
fn oversize() {
    let big = vec![7u8; 2 << 20];
    let small = Limits { max_total_bytes: 1 << 20, ..Limits::default() };
    assert_refused(
        "over the total cap",
        &[Raw::File("big", big.clone(), 0o644)],
        vec![file("big", &big, 0o644)],
        small,
        "too large",
    );
    assert_refused(
        "larger than the index says",
        &[Raw::File("big", big.clone(), 0o644)],
        vec![file("big", b"tiny", 0o644)],
        Limits::default(),
        "differs from the signed index",
    );
    let many: Vec<IndexEntry> = (0..10).map(|i| dir(Box::leak(format!("d{i}").into_boxed_str()))).collect();
    assert_refused("too many entries", &[], many, Limits { max_entries: 5, ..Limits::default() }, "entries");
}

#[test]
fn gzip_bomb() {
    // A PAX header within the header bound but beyond what the signed index's sizes
    // allow: the decompression cap stops it.
    let data = b"x".to_vec();
    assert_refused(
        "gzip bomb",
        &[Raw::Pax(60 << 10), Raw::File("x", data.clone(), 0o644)],
        vec![file("x", &data, 0o644)],
        Limits::default(),
        "decompression bomb",
    );
}

#[test]
fn pax_header_size_bomb() {
    // The index declares a big file, so the decompression cap is far away; a PAX header
    // declaring 32 MiB must be refused from its header, before it is read into memory.
    let big = IndexEntry { size: 256 << 20, ..file("big", b"", 0o644) };
    assert_refused(
        "pax header size bomb",
        &[Raw::Pax(32 << 20), Raw::File("big", Vec::new(), 0o644)],
        vec![big],
        Limits::default(),
        "PAX extended header of 33554432 bytes in the content archive; the limit is 65536",
    );
}

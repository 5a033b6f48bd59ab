//! Building a signed package from a source directory.

use super::content::Hashing;
use super::index::{ContentInfo, EntryKind, FORMAT, IndexEntry, PackageIndex, check_entry_path, check_link_target};
use super::read::{Frame, SignatureFile};
use super::{Limits, PackageError};
use crate::keys::SecretKey;
use base64::Engine as _;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;

/// What `pack_dir` produced.
#[derive(Debug, Clone)]
pub struct PackSummary {
    /// Rollup name from the manifest.
    pub name: String,
    /// Rollup version from the manifest.
    pub version: String,
    /// Number of content entries.
    pub entries: usize,
    /// Sum of file sizes.
    pub total_size: u64,
    /// Id of the signing key.
    pub key_id: String,
}

/// Packs `src` (holding `manifest.toml`, `payload/`, `scripts/`, …) into a signed package
/// at `out`. Hidden entries (starting with `.`) are skipped. The package is written to a
/// temporary file beside `out` and renamed, so `out` is never half-written.
pub fn pack_dir(src: &Path, key: &SecretKey, out: &Path) -> Result<PackSummary, PackageError> {
    let manifest_path = src.join("manifest.toml");
    let manifest_text =
        fs::read_to_string(&manifest_path).map_err(PackageError::io(format!("reading {}", manifest_path.display())))?;
    crate::manifest::Manifest::from_toml(&manifest_text)?;

    let mut entries = Vec::new();
    collect(src, "", &mut entries)?;

    let out_dir = out.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut content = tempfile::tempfile_in(out_dir)
        .map_err(PackageError::io(format!("creating a temporary file in {}", out_dir.display())))?;
    {
        let gz = flate2::write::GzEncoder::new(&mut content, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        for e in &mut entries {
            let mut header = tar::Header::new_gnu();
            header.set_mode(e.mode);
            header.set_mtime(0);
            header.set_uid(0);
            header.set_gid(0);
            let io_err = PackageError::io(format!("packing {}", e.path));
            match e.kind {
                EntryKind::Dir => {
                    header.set_entry_type(tar::EntryType::Directory);
                    header.set_size(0);
                    tar.append_data(&mut header, format!("{}/", e.path), io::empty()).map_err(io_err)?;
                }
                EntryKind::Symlink => {
                    header.set_entry_type(tar::EntryType::Symlink);
                    header.set_size(0);
                    tar.append_link(&mut header, &e.path, e.target.as_deref().unwrap_or_default()).map_err(io_err)?;
                }
                EntryKind::File => {
                    let file =
                        File::open(src.join(&e.path)).map_err(PackageError::io(format!("reading {}", e.path)))?;
                    header.set_entry_type(tar::EntryType::Regular);
                    header.set_size(e.size);
                    let mut hashing = Hashing::new(file.take(e.size));
                    tar.append_data(&mut header, &e.path, &mut hashing).map_err(io_err)?;
                    let (digest, count) = hashing.finish();
                    if count != e.size {
                        return Err(PackageError::Pack(format!("{} changed size while being packed", e.path)));
                    }
                    e.sha256 = Some(digest);
                }
            }
        }
        tar.into_inner().and_then(flate2::write::GzEncoder::finish).map_err(PackageError::io("compressing"))?;
    }
    let mut index = PackageIndex {
        format: FORMAT,
        manifest: manifest_text,
        content: ContentInfo { sha256: String::new(), size: 0, compression: "gzip".into() },
        entries,
    };
    let manifest = index.validate(&Limits::default())?;
    let summary = PackSummary {
        name: manifest.rollup.name,
        version: manifest.rollup.version,
        entries: index.entries.len(),
        total_size: index.total_size(),
        key_id: key.public().key_id(),
    };

    let tmp = tempfile::NamedTempFile::new_in(out_dir).map_err(PackageError::io("creating the package file"))?;
    let mut writer = io::BufWriter::new(tmp);
    seal_into(&mut writer, &mut index, &mut content, key)?;
    let tmp = writer.into_inner().map_err(|e| PackageError::io("writing the package")(e.into_error()))?;
    // A package is not a secret: readable by all, like any file `cp` would make.
    tmp.as_file()
        .set_permissions(fs::Permissions::from_mode(0o644))
        .and_then(|()| tmp.as_file().sync_all())
        .map_err(PackageError::io("syncing the package"))?;
    tmp.persist(out).map_err(|e| PackageError::io(format!("writing {}", out.display()))(e.error))?;
    Ok(summary)
}

/// Walks `dir` in sorted order, directories before their contents.
fn collect(root: &Path, rel: &str, out: &mut Vec<IndexEntry>) -> Result<(), PackageError> {
    let dir = root.join(rel);
    let mut names: Vec<_> = fs::read_dir(&dir)
        .map_err(PackageError::io(format!("reading {}", dir.display())))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<Result<_, _>>()
        .map_err(PackageError::io(format!("reading {}", dir.display())))?;
    names.sort();
    for name in names {
        let name =
            name.to_str().ok_or_else(|| PackageError::Pack(format!("a name in {} is not UTF-8", dir.display())))?;
        if name.starts_with('.') {
            continue;
        }
        let path = if rel.is_empty() { name.to_owned() } else { format!("{rel}/{name}") };
        check_entry_path(&path).map_err(|p| PackageError::entry(&path, p))?;
        let meta = fs::symlink_metadata(root.join(&path)).map_err(PackageError::io(format!("reading {path}")))?;
        let mode = meta.permissions().mode() & 0o7777;
        if mode > 0o777 {
            return Err(PackageError::Pack(format!(
                "{path} has a setuid, setgid or sticky bit (mode {mode:o}); clear it with chmod"
            )));
        }
        let ft = meta.file_type();
        if ft.is_dir() {
            out.push(IndexEntry {
                path: path.clone(),
                kind: EntryKind::Dir,
                size: 0,
                sha256: None,
                mode,
                target: None,
            });
            collect(root, &path, out)?;
        } else if ft.is_file() {
            out.push(IndexEntry { path, kind: EntryKind::File, size: meta.len(), sha256: None, mode, target: None });
        } else if ft.is_symlink() {
            let target = fs::read_link(root.join(&path)).map_err(PackageError::io(format!("reading link {path}")))?;
            let target = target
                .to_str()
                .ok_or_else(|| PackageError::Pack(format!("link {path} target is not UTF-8")))?
                .to_owned();
            check_link_target(&path, &target).map_err(|p| PackageError::entry(&path, p))?;
            out.push(IndexEntry {
                path,
                kind: EntryKind::Symlink,
                size: 0,
                sha256: None,
                mode: 0o777,
                target: Some(target),
            });
        } else {
            return Err(PackageError::Pack(format!("{path} is not a file, directory or symlink")));
        }
    }
    Ok(())
}

/// Fills in the content digest, signs the index and writes the package file.
fn seal_into<C: Read + Seek>(
    out: &mut impl Write,
    index: &mut PackageIndex,
    content: &mut C,
    key: &SecretKey,
) -> Result<(), PackageError> {
    content.seek(SeekFrom::Start(0)).map_err(PackageError::io("rewinding the content"))?;
    let mut hashing = Hashing::new(&mut *content);
    io::copy(&mut hashing, &mut io::sink()).map_err(PackageError::io("hashing the content"))?;
    let (sha256, size) = hashing.finish();
    index.content.sha256 = sha256;
    index.content.size = size;
    let index_bytes = serde_json::to_vec_pretty(index).expect("an index always serialises");
    let sig = SignatureFile {
        key_id: key.public().key_id(),
        signature: base64::engine::general_purpose::STANDARD.encode(key.sign(&index_bytes)),
    };
    let sig_bytes = serde_json::to_vec(&sig).expect("a signature always serialises");
    content.seek(SeekFrom::Start(0)).map_err(PackageError::io("rewinding the content"))?;
    let frame = Frame::new(&index_bytes, &sig_bytes, size);
    let write_err = PackageError::io("writing the package");
    out.write_all(&frame.prefix).map_err(PackageError::io("writing the package"))?;
    let copied = io::copy(&mut content.take(size), out).map_err(PackageError::io("writing the package"))?;
    if copied != size {
        return Err(PackageError::Pack("the content changed size while being written".into()));
    }
    out.write_all(&frame.suffix).and_then(|()| out.flush()).map_err(write_err)?;
    Ok(())
}

/// Low-level: signs `index` over the given compressed `content` and returns the package
/// bytes. `pack_dir` is the normal way; this exists for tools and for tests that must
/// build packages `pack_dir` would refuse to make (hostile-archive tests).
pub fn seal(mut index: PackageIndex, content: &[u8], key: &SecretKey) -> Result<Vec<u8>, PackageError> {
    let mut out = Vec::new();
    seal_into(&mut out, &mut index, &mut io::Cursor::new(content), key)?;
    Ok(out)
}

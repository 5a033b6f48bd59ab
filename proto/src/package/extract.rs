//! Extracting a verified package into a fresh directory.

use super::content::{EntrySink, Hashing, walk};
use super::index::{EntryKind, IndexEntry};
use super::read::{VerifiedPackage, check_content_digest, locate};
use super::{Limits, PackageError};
use crate::keys::PublicKey;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// Writes entries below `root`. Parents are guaranteed (by the index rules) to be
/// directories this sink created itself, so no write can follow a link out of `root`;
/// files are created with `O_EXCL`, which never follows a link in the last component.
struct Writer<'p> {
    root: PathBuf,
    progress: Progress,
    report: &'p mut dyn FnMut(&Progress),
}

/// How far an extraction is, reported after each entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Progress {
    /// Entries written.
    pub entries_done: usize,
    /// Entries in the package.
    pub entries_total: usize,
    /// File bytes written.
    pub bytes_done: u64,
    /// File bytes in the package.
    pub bytes_total: u64,
}

impl EntrySink for Writer<'_> {
    fn entry(&mut self, entry: &IndexEntry, data: &mut dyn Read) -> Result<(), PackageError> {
        self.write(entry, data)?;
        self.progress.entries_done += 1;
        self.progress.bytes_done += entry.size;
        (self.report)(&self.progress);
        Ok(())
    }
}

impl Writer<'_> {
    fn write(&mut self, entry: &IndexEntry, data: &mut dyn Read) -> Result<(), PackageError> {
        let path = self.root.join(&entry.path);
        let ctx = || format!("extracting {}", entry.path);
        match entry.kind {
            EntryKind::Dir => {
                fs::create_dir(&path).map_err(PackageError::io(ctx()))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(entry.mode | 0o700))
                    .map_err(PackageError::io(ctx()))?;
            }
            EntryKind::File => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .map_err(PackageError::io(ctx()))?;
                io::copy(data, &mut f).map_err(PackageError::io(ctx()))?;
                f.set_permissions(fs::Permissions::from_mode(entry.mode)).map_err(PackageError::io(ctx()))?;
            }
            EntryKind::Symlink => {
                let target = entry.target.as_deref().unwrap_or_default();
                std::os::unix::fs::symlink(target, &path).map_err(PackageError::io(ctx()))?;
            }
        }
        Ok(())
    }
}

/// Verifies `package`, then extracts it into `dest`, which must not exist yet (its parent
/// must). On any error `dest` is removed, so a half-extracted package never remains.
pub fn extract_file(
    package: &Path,
    trusted: &[PublicKey],
    limits: &Limits,
    dest: &Path,
) -> Result<VerifiedPackage, PackageError> {
    extract_file_with_progress(package, trusted, limits, dest, &mut |_| {})
}

/// [`extract_file`], calling `report` after each entry written (the engine's staging
/// progress bar).
pub fn extract_file_with_progress(
    package: &Path,
    trusted: &[PublicKey],
    limits: &Limits,
    dest: &Path,
    report: &mut dyn FnMut(&Progress),
) -> Result<VerifiedPackage, PackageError> {
    let verified = super::verify_file(package, trusted, limits)?;
    fs::create_dir(dest).map_err(PackageError::io(format!("creating {}", dest.display())))?;
    match extract_into(package, trusted, limits, dest, report) {
        Ok(()) => Ok(verified),
        Err(e) => {
            let _ = fs::remove_dir_all(dest);
            Err(e)
        }
    }
}

fn extract_into(
    package: &Path,
    trusted: &[PublicKey],
    limits: &Limits,
    dest: &Path,
    report: &mut dyn FnMut(&Progress),
) -> Result<(), PackageError> {
    // Read everything again: the file may have changed since it was verified, so every
    // check is repeated on the bytes that are actually written.
    let file = File::open(package).map_err(PackageError::io(format!("opening {}", package.display())))?;
    let (located, mut reader) = locate(BufReader::new(file), trusted, limits)?;
    check_content_digest(&mut reader, &located)?;
    reader.seek(SeekFrom::Start(located.content_offset)).map_err(PackageError::io("seeking to the content"))?;
    let mut compressed = Hashing::new((&mut reader).take(located.content_size));
    let progress = Progress {
        entries_total: located.index.entries.len(),
        bytes_total: located.index.total_size(),
        ..Progress::default()
    };
    walk(&mut compressed, &located.index, limits, &mut Writer { root: dest.to_path_buf(), progress, report })?;
    io::copy(&mut compressed, &mut io::sink()).map_err(PackageError::io("reading the content"))?;
    let (digest, _) = compressed.finish();
    if digest != located.index.content.sha256 {
        return Err(PackageError::ContentMismatch {
            what: "sha256",
            expected: located.index.content.sha256,
            actual: digest,
        });
    }
    Ok(())
}

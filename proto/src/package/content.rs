//! Walking the content archive against the signed index, shared by verification (which
//! only hashes) and extraction (which also writes).

use super::index::{EntryKind, IndexEntry, PackageIndex, check_entry_path};
use super::{Limits, PackageError};
use sha2::{Digest as _, Sha256};
use std::io::{self, Read};

/// Receives each verified-so-far entry. For files, `data` yields exactly the entry's
/// bytes; the walker checks their digest after the sink returns.
pub(crate) trait EntrySink {
    fn entry(&mut self, entry: &IndexEntry, data: &mut dyn Read) -> Result<(), PackageError>;
}

/// A reader that fails once more than `left` bytes are read: the decompression-bomb cap.
struct Capped<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.left = self.left.checked_sub(n as u64).ok_or_else(|| {
            io::Error::other("decompressed content exceeds what the index declares (decompression bomb?)")
        })?;
        Ok(n)
    }
}

/// Hashes what passes through it.
pub(crate) struct Hashing<R> {
    pub inner: R,
    pub hasher: Sha256,
    pub count: u64,
}

impl<R> Hashing<R> {
    pub fn new(inner: R) -> Self {
        Self { inner, hasher: Sha256::new(), count: 0 }
    }

    pub fn finish(self) -> (String, u64) {
        (hex::encode(self.hasher.finalize()), self.count)
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.count += n as u64;
        Ok(n)
    }
}

/// Decompresses `compressed` and checks every entry against `index`, in order, handing
/// each one to `sink`. Fails on the first entry that is not exactly what the index says.
pub(crate) fn walk(
    compressed: impl Read,
    index: &PackageIndex,
    limits: &Limits,
    sink: &mut dyn EntrySink,
) -> Result<(), PackageError> {
    // Tar overhead: a header (and possibly long-name/PAX headers) and padding per entry,
    // plus the end-of-archive blocks and record padding.
    let overhead = 2048 * (index.entries.len() as u64 + 2) + 20 * 512;
    let cap = index.total_size().min(limits.max_total_bytes) + overhead;
    let decoder = Capped { inner: flate2::read::GzDecoder::new(compressed), left: cap };
    let mut archive = tar::Archive::new(decoder);
    let mut expected = index.entries.iter();
    // Raw: PAX and GNU long-name entries come to us, so their size is checked before a
    // byte of them is read (the tar crate would read each one whole into memory).
    let entries = archive.entries().map_err(content_error)?.raw(true);
    let mut pending = Pending::default();
    for item in entries {
        let mut item = item.map_err(content_error)?;
        if pending.take_metadata(&mut item)? {
            continue;
        }
        let raw_path = match pending.path.take() {
            Some(p) => String::from_utf8_lossy(&p).into_owned(),
            None => String::from_utf8_lossy(&item.path_bytes()).into_owned(),
        };
        let path = raw_path.strip_suffix('/').unwrap_or(&raw_path).to_owned();
        check_entry_path(&path).map_err(|p| PackageError::entry(&path, p))?;
        let kind = match item.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => EntryKind::File,
            tar::EntryType::Directory => EntryKind::Dir,
            tar::EntryType::Symlink => EntryKind::Symlink,
            tar::EntryType::Link => {
                return Err(PackageError::entry(&path, "hard links are not allowed"));
            }
            tar::EntryType::Char | tar::EntryType::Block => {
                return Err(PackageError::entry(&path, "device nodes are not allowed"));
            }
            tar::EntryType::Fifo => {
                return Err(PackageError::entry(&path, "fifos are not allowed"));
            }
            other => {
                return Err(PackageError::entry(&path, format!("entry type {other:?} is not allowed")));
            }
        };
        let mode = item.header().mode().map_err(content_error)?;
        if mode & 0o7000 != 0 {
            return Err(PackageError::entry(&path, "setuid, setgid or sticky bit set"));
        }
        let want = expected
            .next()
            .ok_or_else(|| PackageError::entry(&path, "is in the archive but not in the signed index"))?;
        if want.path != path || want.kind != kind {
            return Err(PackageError::entry(
                &path,
                format!("archive has {kind:?} '{path}' where the signed index has {:?} '{}'", want.kind, want.path),
            ));
        }
        if kind == EntryKind::Symlink {
            let target = match pending.link.take() {
                Some(l) => Some(String::from_utf8_lossy(&l).into_owned()),
                None => item.link_name_bytes().map(|b| String::from_utf8_lossy(&b).into_owned()),
            };
            if target.as_deref() != want.target.as_deref() {
                return Err(PackageError::entry(&path, "link target differs from the signed index"));
            }
        }
        pending = Pending::default();
        let size = item.header().size().map_err(content_error)?;
        if size != want.size {
            return Err(PackageError::entry(
                &path,
                format!("size {size} differs from the signed index ({})", want.size),
            ));
        }
        let mut hashing = Hashing::new((&mut item).take(want.size));
        sink.entry(want, &mut hashing)?;
        // Drain whatever the sink did not read, so the digest covers every byte.
        io::copy(&mut hashing, &mut io::sink()).map_err(content_error)?;
        if kind == EntryKind::File {
            let (digest, count) = hashing.finish();
            if count != want.size || Some(digest.as_str()) != want.sha256.as_deref() {
                return Err(PackageError::entry(&path, "content sha256 differs from the signed index"));
            }
        }
    }
    if let Some(missing) = expected.next() {
        return Err(PackageError::entry(&missing.path, "is in the signed index but missing from the archive"));
    }
    Ok(())
}

/// The largest PAX extended header or GNU long-name / long-link entry accepted. Entry
/// paths are at most 4096 bytes (`check_entry_path`), so this is generous; without a
/// bound, a header declaring 4 GiB made the reader hold 4 GiB.
pub(crate) const MAX_METADATA_BYTES: u64 = 64 * 1024;

/// Path and link target announced by metadata entries for the next real entry.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
}

impl Pending {
    /// If `item` is a metadata entry (PAX extended header, GNU long name or link), reads
    /// it — after checking its declared size against [`MAX_METADATA_BYTES`] — and keeps
    /// what it says for the next entry. False for any other entry.
    fn take_metadata<R: Read>(&mut self, item: &mut tar::Entry<'_, R>) -> Result<bool, PackageError> {
        let kind = item.header().entry_type();
        let what = match kind {
            tar::EntryType::XHeader => "PAX extended header",
            tar::EntryType::GNULongName => "GNU long-name entry",
            tar::EntryType::GNULongLink => "GNU long-link entry",
            _ => return Ok(false),
        };
        let size = item.header().size().map_err(content_error)?;
        if size > MAX_METADATA_BYTES {
            return Err(PackageError::TooLarge(format!(
                "a {what} of {size} bytes in the content archive; the limit is {MAX_METADATA_BYTES} \
                 (refused before reading it)"
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        item.take(size).read_to_end(&mut data).map_err(content_error)?;
        match kind {
            tar::EntryType::GNULongName => self.path = Some(until_nul(data)),
            tar::EntryType::GNULongLink => self.link = Some(until_nul(data)),
            _ => {
                for ext in tar::PaxExtensions::new(&data) {
                    let ext = ext.map_err(content_error)?;
                    match ext.key() {
                        Ok("path") => self.path = Some(ext.value_bytes().to_vec()),
                        Ok("linkpath") => self.link = Some(ext.value_bytes().to_vec()),
                        // The header's size is the one checked against the index.
                        Ok("size") => {
                            return Err(PackageError::Layout(
                                "a PAX header overrides an entry's size; packages never do".into(),
                            ));
                        }
                        _ => {}
                    }
                }
            }
        }
        Ok(true)
    }
}

fn until_nul(mut bytes: Vec<u8>) -> Vec<u8> {
    if let Some(end) = bytes.iter().position(|b| *b == 0) {
        bytes.truncate(end);
    }
    bytes
}

fn content_error(e: io::Error) -> PackageError {
    PackageError::Layout(format!("content archive is unreadable: {e}"))
}

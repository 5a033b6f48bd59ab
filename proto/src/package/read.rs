//! Verifying a package without writing anything to disk.

use super::content::{EntrySink, Hashing, walk};
use super::index::{IndexEntry, PackageIndex};
use super::{CONTENT_MEMBER, INDEX_MEMBER, Limits, PackageError, SIGNATURE_MEMBER};
use crate::keys::PublicKey;
use crate::manifest::Manifest;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;

/// The signature member.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct SignatureFile {
    pub key_id: String,
    pub signature: String,
}

/// A package whose signature, content digest and every entry were checked.
#[derive(Debug, Clone)]
pub struct VerifiedPackage {
    /// The signed index.
    pub index: PackageIndex,
    /// The parsed manifest.
    pub manifest: Manifest,
    /// Id of the key that signed it.
    pub key_id: String,
}

/// Where the members are in the outer tar.
pub(crate) struct Located {
    pub index: PackageIndex,
    pub manifest: Manifest,
    pub key_id: String,
    pub content_offset: u64,
    pub content_size: u64,
}

const MAX_SIGNATURE_BYTES: u64 = 4096;

/// The bytes of a package file around the content data: the three member headers, the
/// index and signature members, and the padding and end-of-archive blocks. Written by
/// the packer and compared byte for byte by the verifier, so that every byte of a
/// package file is covered: the frame by this comparison (it is a function of the
/// signed index and the signature), the content by its digest in the signed index.
pub(crate) struct Frame {
    pub prefix: Vec<u8>,
    pub suffix: Vec<u8>,
}

fn member_header(name: &str, size: u64) -> [u8; 512] {
    let mut header = tar::Header::new_gnu();
    header.set_path(name).expect("member names are short and relative");
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_uid(0);
    header.set_gid(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    *header.as_bytes()
}

fn pad(out: &mut Vec<u8>, len: u64) {
    let rem = (len % 512) as usize;
    if rem != 0 {
        out.resize(out.len() + 512 - rem, 0);
    }
}

impl Frame {
    pub fn new(index: &[u8], signature: &[u8], content_size: u64) -> Self {
        let mut prefix = Vec::with_capacity(index.len() + signature.len() + 2048);
        for (name, data) in [(INDEX_MEMBER, index), (SIGNATURE_MEMBER, signature)] {
            prefix.extend_from_slice(&member_header(name, data.len() as u64));
            prefix.extend_from_slice(data);
            pad(&mut prefix, data.len() as u64);
        }
        prefix.extend_from_slice(&member_header(CONTENT_MEMBER, content_size));
        let mut suffix = Vec::new();
        pad(&mut suffix, content_size);
        suffix.resize(suffix.len() + 1024, 0);
        Self { prefix, suffix }
    }
}

/// Reads one member (header + data) of the expected name, refusing more than `max` bytes.
fn read_member<R: Read>(reader: &mut R, name: &str, max: u64) -> Result<Option<Vec<u8>>, PackageError> {
    let mut block = [0u8; 512];
    reader.read_exact(&mut block).map_err(|_| PackageError::Layout(format!("the file ends before {name}")))?;
    let header = tar::Header::from_byte_slice(&block);
    let found = String::from_utf8_lossy(&header.path_bytes()).into_owned();
    if found != name {
        return Ok(None);
    }
    let size = header.size().map_err(|e| PackageError::Layout(format!("{name}: bad header: {e}")))?;
    if size > max {
        return Err(PackageError::TooLarge(format!("{name} is {size} bytes, the limit is {max}")));
    }
    let mut data = vec![0u8; size as usize];
    reader.read_exact(&mut data).map_err(|_| PackageError::Layout(format!("the file ends inside {name}")))?;
    let rem = size % 512;
    if rem != 0 {
        io::copy(&mut reader.take(512 - rem), &mut io::sink()).map_err(layout_io)?;
    }
    Ok(Some(data))
}

/// Reads the frame, checks the signature, parses and validates the index, and checks
/// that every byte outside the content is exactly what the packer writes.
pub(crate) fn locate<R: Read + Seek>(
    mut reader: R,
    trusted: &[PublicKey],
    limits: &Limits,
) -> Result<(Located, R), PackageError> {
    let not_package = || {
        PackageError::Layout(format!(
            "expected the members {INDEX_MEMBER}, {SIGNATURE_MEMBER}, {CONTENT_MEMBER} in that order"
        ))
    };
    let index_bytes = read_member(&mut reader, INDEX_MEMBER, limits.max_index_bytes)?.ok_or_else(not_package)?;
    let Some(sig_bytes) = read_member(&mut reader, SIGNATURE_MEMBER, MAX_SIGNATURE_BYTES)? else {
        return Err(PackageError::Unsigned);
    };
    let sig: SignatureFile = serde_json::from_slice(&sig_bytes)
        .map_err(|e| PackageError::Layout(format!("{SIGNATURE_MEMBER} is not readable: {e}")))?;
    let key = trusted.iter().find(|k| k.key_id() == sig.key_id).ok_or_else(|| PackageError::UntrustedKey {
        key_id: sig.key_id.clone(),
        trusted: if trusted.is_empty() {
            "none".into()
        } else {
            trusted.iter().map(PublicKey::key_id).collect::<Vec<_>>().join(", ")
        },
    })?;
    let signature: [u8; 64] = base64::engine::general_purpose::STANDARD
        .decode(sig.signature.trim())
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| PackageError::BadSignature { key_id: sig.key_id.clone() })?;
    if !key.verify(&index_bytes, &signature) {
        return Err(PackageError::BadSignature { key_id: sig.key_id });
    }
    // Only now, with the signature good, is the index parsed.
    let index: PackageIndex = serde_json::from_slice(&index_bytes)
        .map_err(|e| PackageError::Layout(format!("{INDEX_MEMBER} is not readable: {e}")))?;
    let manifest = index.validate(limits)?;

    // The frame around the content must be exactly the canonical one.
    let frame = Frame::new(&index_bytes, &sig_bytes, index.content.size);
    let file_len = reader.seek(SeekFrom::End(0)).map_err(PackageError::io("reading the package size"))?;
    let expected_len = frame.prefix.len() as u64 + index.content.size + frame.suffix.len() as u64;
    if file_len != expected_len {
        return Err(PackageError::ContentMismatch {
            what: "file size",
            expected: expected_len.to_string(),
            actual: file_len.to_string(),
        });
    }
    let mut found = vec![0u8; frame.prefix.len()];
    reader.seek(SeekFrom::Start(0)).map_err(PackageError::io("rewinding"))?;
    reader.read_exact(&mut found).map_err(layout_io)?;
    let content_offset = frame.prefix.len() as u64;
    let mut tail = vec![0u8; frame.suffix.len()];
    reader.seek(SeekFrom::Start(content_offset + index.content.size)).map_err(PackageError::io("seeking"))?;
    reader.read_exact(&mut tail).map_err(layout_io)?;
    if let Some(at) = first_difference(&found, &frame.prefix)
        .or_else(|| first_difference(&tail, &frame.suffix).map(|i| i + (content_offset + index.content.size) as usize))
    {
        return Err(PackageError::Layout(format!(
            "byte {at} of the file differs from the signed layout (a header or padding was altered after signing)"
        )));
    }
    let content_size = index.content.size;
    Ok((Located { index, manifest, key_id: sig.key_id, content_offset, content_size }, reader))
}

fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}

fn layout_io(e: io::Error) -> PackageError {
    PackageError::Layout(format!("the file cannot be read: {e}"))
}

/// Hashes the compressed content member and compares it with the signed index.
pub(crate) fn check_content_digest<R: Read + Seek>(reader: &mut R, located: &Located) -> Result<(), PackageError> {
    reader.seek(SeekFrom::Start(located.content_offset)).map_err(PackageError::io("seeking to the content"))?;
    let mut hashing = Hashing::new(reader.take(located.content_size));
    io::copy(&mut hashing, &mut io::sink()).map_err(PackageError::io("reading the content"))?;
    let (digest, _) = hashing.finish();
    if digest != located.index.content.sha256 {
        return Err(PackageError::ContentMismatch {
            what: "sha256",
            expected: located.index.content.sha256.clone(),
            actual: digest,
        });
    }
    Ok(())
}

struct Discard;

impl EntrySink for Discard {
    fn entry(&mut self, _: &IndexEntry, _: &mut dyn Read) -> Result<(), PackageError> {
        Ok(())
    }
}

/// Verifies a package from any seekable reader. Writes nothing anywhere.
pub fn verify_reader<R: Read + Seek>(
    reader: R,
    trusted: &[PublicKey],
    limits: &Limits,
) -> Result<VerifiedPackage, PackageError> {
    let (located, mut reader) = locate(reader, trusted, limits)?;
    check_content_digest(&mut reader, &located)?;
    reader.seek(SeekFrom::Start(located.content_offset)).map_err(PackageError::io("seeking to the content"))?;
    walk((&mut reader).take(located.content_size), &located.index, limits, &mut Discard)?;
    Ok(VerifiedPackage { index: located.index, manifest: located.manifest, key_id: located.key_id })
}

/// Verifies a package file. Writes nothing anywhere.
pub fn verify_file(path: &Path, trusted: &[PublicKey], limits: &Limits) -> Result<VerifiedPackage, PackageError> {
    let file = File::open(path).map_err(PackageError::io(format!("opening {}", path.display())))?;
    verify_reader(io::BufReader::new(file), trusted, limits)
}

/// Hex sha256 and size of a whole file (how the coordinator names a package).
pub fn file_sha256(path: &Path) -> Result<(String, u64), PackageError> {
    let file = File::open(path).map_err(PackageError::io(format!("opening {}", path.display())))?;
    let mut hashing = Hashing::new(io::BufReader::new(file));
    io::copy(&mut hashing, &mut io::sink()).map_err(PackageError::io(format!("reading {}", path.display())))?;
    Ok(hashing.finish())
}

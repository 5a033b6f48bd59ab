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

/// Reads the outer tar, checks the signature, parses and validates the index.
pub(crate) fn locate<R: Read + Seek>(
    mut reader: R,
    trusted: &[PublicKey],
    limits: &Limits,
) -> Result<(Located, R), PackageError> {
    let mut index_bytes = None;
    let mut sig_bytes = None;
    let mut content = None;
    {
        let mut outer = tar::Archive::new(&mut reader);
        let entries = outer.entries_with_seek().map_err(layout_io)?;
        for item in entries {
            let mut item = item.map_err(layout_io)?;
            let name = String::from_utf8_lossy(&item.path_bytes()).into_owned();
            let size = item.header().size().map_err(layout_io)?;
            match name.as_str() {
                INDEX_MEMBER if index_bytes.is_none() && content.is_none() => {
                    if size > limits.max_index_bytes {
                        return Err(PackageError::TooLarge(format!("index of {size} bytes")));
                    }
                    index_bytes = Some(read_member(&mut item, size)?);
                }
                SIGNATURE_MEMBER if sig_bytes.is_none() && content.is_none() => {
                    if size > MAX_SIGNATURE_BYTES {
                        return Err(PackageError::Layout("signature member is too large".into()));
                    }
                    sig_bytes = Some(read_member(&mut item, size)?);
                }
                CONTENT_MEMBER if content.is_none() => content = Some((item.raw_file_position(), size)),
                other => {
                    return Err(PackageError::Layout(format!(
                        "unexpected member '{other}' (a package holds {INDEX_MEMBER}, {SIGNATURE_MEMBER}, {CONTENT_MEMBER} in that order)"
                    )));
                }
            }
        }
    }
    let index_bytes = index_bytes.ok_or_else(|| PackageError::Layout(format!("{INDEX_MEMBER} is missing")))?;
    let sig_bytes = sig_bytes.ok_or(PackageError::Unsigned)?;
    let (content_offset, content_size) =
        content.ok_or_else(|| PackageError::Layout(format!("{CONTENT_MEMBER} is missing")))?;

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
    if content_size != index.content.size {
        return Err(PackageError::ContentMismatch {
            what: "size",
            expected: index.content.size.to_string(),
            actual: content_size.to_string(),
        });
    }
    Ok((Located { index, manifest, key_id: sig.key_id, content_offset, content_size }, reader))
}

fn read_member(item: &mut impl Read, size: u64) -> Result<Vec<u8>, PackageError> {
    let mut buf = Vec::with_capacity(size as usize);
    item.take(size).read_to_end(&mut buf).map_err(layout_io)?;
    Ok(buf)
}

fn layout_io(e: io::Error) -> PackageError {
    PackageError::Layout(format!("the file is not a readable tar: {e}"))
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
pub fn verify_reader<R: Read + Seek>(reader: R, trusted: &[PublicKey], limits: &Limits) -> Result<VerifiedPackage, PackageError> {
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

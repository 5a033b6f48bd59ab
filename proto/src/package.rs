//! The signed package format: one file that carries a rollup.
//!
//! Layout (an uncompressed tar with exactly three members, in this order):
//!
//! - `fleetup/index.json`: the index — the manifest text, the sha256 and size of the
//!   content archive, and every entry of it (path, kind, size, sha256, mode, link target);
//! - `fleetup/index.sig`: an ed25519 signature over the index bytes, naming its key id;
//! - `fleetup/content.tar.gz`: `manifest.toml`, `payload/`, `scripts/`, `webapp/`, ….
//!
//! Verification reads the signature first, then parses the index, then hashes the
//! compressed content *before* decompressing it (so a tampered or foreign package never
//! reaches the decompressor), then walks the content in memory checking every entry
//! against the signed index. Nothing is written to disk by [`verify_file`].
//! [`extract_file`] verifies, then writes into a fresh directory, re-checking each file's
//! hash as it is written and removing the directory on any error. The entry rules
//! ([`index::check_entry_path`], [`index::check_link_target`]) hold even against a
//! package signed by a trusted but careless or compromised signer.

mod content;
mod extract;
pub mod index;
mod pack;
mod read;

pub use extract::{Progress as ExtractProgress, extract_file, extract_file_with_progress};
pub use index::{ContentInfo, EntryKind, IndexEntry, PackageIndex};
pub use pack::{PackSummary, pack_dir, seal};
pub use read::{VerifiedPackage, file_sha256, verify_file, verify_reader};

/// Names of the three members of a package file.
pub const INDEX_MEMBER: &str = "fleetup/index.json";
/// See [`INDEX_MEMBER`].
pub const SIGNATURE_MEMBER: &str = "fleetup/index.sig";
/// See [`INDEX_MEMBER`].
pub const CONTENT_MEMBER: &str = "fleetup/content.tar.gz";

/// Caps applied while verifying and extracting.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Total uncompressed bytes of all files.
    pub max_total_bytes: u64,
    /// Number of entries.
    pub max_entries: usize,
    /// Size of the index member.
    pub max_index_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_total_bytes: 4 << 30, max_entries: 200_000, max_index_bytes: 16 << 20 }
    }
}

/// Why a package was refused. Every variant names the file or check that failed.
#[derive(Debug, thiserror::Error)]
pub enum PackageError {
    /// Reading or writing failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The file is not laid out as a fleetup package.
    #[error("not a fleetup package: {0}")]
    Layout(String),
    /// No signature member.
    #[error("package is not signed: {SIGNATURE_MEMBER} is missing; sign it with `fleetup-agent pack --key KEY`")]
    Unsigned,
    /// Signed by a key that is not trusted here.
    #[error(
        "package is signed by key {key_id}, which is not trusted here (trusted: {trusted}); add its .pub with --trust"
    )]
    UntrustedKey {
        /// The signer's key id.
        key_id: String,
        /// The trusted key ids.
        trusted: String,
    },
    /// The signature does not match the index.
    #[error(
        "signature check failed: {INDEX_MEMBER} was not signed by key {key_id} (tampered index or wrong signature)"
    )]
    BadSignature {
        /// The key id the signature claims.
        key_id: String,
    },
    /// The content archive is not the one the index describes.
    #[error(
        "integrity check failed: {CONTENT_MEMBER} has {what} {actual}, the signed index says {expected} (the package was altered after signing)"
    )]
    ContentMismatch {
        /// `sha256` or `size`.
        what: &'static str,
        /// From the signed index.
        expected: String,
        /// Found.
        actual: String,
    },
    /// One entry breaks a rule or does not match the index.
    #[error("entry '{path}': {problem}")]
    Entry {
        /// The entry path as found.
        path: String,
        /// What is wrong.
        problem: String,
    },
    /// A cap was exceeded.
    #[error("package too large: {0}")]
    TooLarge(String),
    /// The manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    /// A source directory cannot be packed.
    #[error("cannot pack: {0}")]
    Pack(String),
}

impl PackageError {
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> PackageError {
        let context = context.into();
        move |source| PackageError::Io { context, source }
    }

    pub(crate) fn entry(path: impl Into<String>, problem: impl Into<String>) -> PackageError {
        PackageError::Entry { path: path.into(), problem: problem.into() }
    }
}

//! Package signing keys: ed25519, stored as one line of text each.
//!
//! Secret key file: `fleetup-secret-key-v1 <base64 seed>`; public key file:
//! `fleetup-public-key-v1 <base64 key>`. A key id (first 16 hex digits of the sha256 of
//! the public key) names a key in signatures, logs and error messages.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as B64;
use ed25519_dalek::{Signer as _, Verifier as _};
use sha2::{Digest as _, Sha256};
use std::path::Path;

const SECRET_TAG: &str = "fleetup-secret-key-v1";
const PUBLIC_TAG: &str = "fleetup-public-key-v1";
/// Signatures cover this prefix and the signed bytes, so a package signature can never
/// be replayed as a signature over anything else.
const SIGNING_CONTEXT: &[u8] = b"fleetup-package-index-v1\0";

/// A key that cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The key file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The text is not a fleetup key of the expected kind.
    #[error(
        "{path}: not a fleetup {kind} key (expected a line starting with '{tag}'); create one with `fleetup-agent keygen --out KEY`"
    )]
    Format {
        /// Where it came from.
        path: String,
        /// `public` or `secret`.
        kind: &'static str,
        /// The expected tag.
        tag: &'static str,
    },
    /// The OS random number generator failed.
    #[error("cannot get random bytes for a new key: {0}")]
    Random(String),
}

/// A signing key. Never printed: its `Debug` shows only the key id.
pub struct SecretKey(ed25519_dalek::SigningKey);

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretKey({})", self.public().key_id())
    }
}

/// A verifying key, pinned by agents and the coordinator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey(ed25519_dalek::VerifyingKey);

impl SecretKey {
    /// A new random key.
    pub fn generate() -> Result<Self, KeyError> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Random(e.to_string()))?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&seed)))
    }

    /// The matching public key.
    pub fn public(&self) -> PublicKey {
        PublicKey(self.0.verifying_key())
    }

    /// The key file text.
    pub fn to_text(&self) -> String {
        format!("{SECRET_TAG} {}\n", B64.encode(self.0.to_bytes()))
    }

    /// Parses key file text; `origin` names it in errors.
    pub fn from_text(text: &str, origin: &str) -> Result<Self, KeyError> {
        let bytes = parse_tagged(text, SECRET_TAG).ok_or_else(|| KeyError::Format {
            path: origin.to_owned(),
            kind: "secret",
            tag: SECRET_TAG,
        })?;
        Ok(Self(ed25519_dalek::SigningKey::from_bytes(&bytes)))
    }

    /// Reads a key file.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        Self::from_text(&read_text(path)?, &path.display().to_string())
    }

    /// Signs package index bytes.
    pub fn sign(&self, message: &[u8]) -> [u8; 64] {
        self.0.sign(&contextual(message)).to_bytes()
    }
}

impl PublicKey {
    /// The key file text.
    pub fn to_text(&self) -> String {
        format!("{PUBLIC_TAG} {}\n", B64.encode(self.0.to_bytes()))
    }

    /// Parses key file text; `origin` names it in errors.
    pub fn from_text(text: &str, origin: &str) -> Result<Self, KeyError> {
        let format_error = || KeyError::Format { path: origin.to_owned(), kind: "public", tag: PUBLIC_TAG };
        let bytes = parse_tagged(text, PUBLIC_TAG).ok_or_else(format_error)?;
        ed25519_dalek::VerifyingKey::from_bytes(&bytes).map(Self).map_err(|_| format_error())
    }

    /// Reads a key file.
    pub fn read(path: &Path) -> Result<Self, KeyError> {
        Self::from_text(&read_text(path)?, &path.display().to_string())
    }

    /// Short stable id of this key.
    pub fn key_id(&self) -> String {
        hex::encode(&Sha256::digest(self.0.as_bytes())[..8])
    }

    /// True when `signature` is this key's signature over `message`.
    pub fn verify(&self, message: &[u8], signature: &[u8; 64]) -> bool {
        let sig = ed25519_dalek::Signature::from_bytes(signature);
        self.0.verify(&contextual(message), &sig).is_ok()
    }
}

fn contextual(message: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(SIGNING_CONTEXT.len() + message.len());
    m.extend_from_slice(SIGNING_CONTEXT);
    m.extend_from_slice(message);
    m
}

fn parse_tagged(text: &str, tag: &str) -> Option<[u8; 32]> {
    let rest = text.trim().strip_prefix(tag)?.trim();
    B64.decode(rest).ok()?.try_into().ok()
}

fn read_text(path: &Path) -> Result<String, KeyError> {
    std::fs::read_to_string(path).map_err(|source| KeyError::Io { path: path.display().to_string(), source })
}

/// Writes a new key pair: `path` (mode 0600) and `path.pub`. Refuses to overwrite.
pub fn write_keypair(path: &Path) -> Result<PublicKey, KeyError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let key = SecretKey::generate()?;
    let io = |p: &Path| {
        let p = p.display().to_string();
        move |source| KeyError::Io { path: p, source }
    };
    let pub_path = path.with_file_name(format!(
        "{}.pub",
        path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    ));
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).open(path).map_err(io(path))?;
    f.write_all(key.to_text().as_bytes()).and_then(|()| f.sync_all()).map_err(io(path))?;
    let public = key.public();
    std::fs::write(&pub_path, public.to_text()).map_err(io(&pub_path))?;
    Ok(public)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_sign() {
        let k = SecretKey::generate().unwrap();
        let k2 = SecretKey::from_text(&k.to_text(), "x").unwrap();
        let p = PublicKey::from_text(&k.public().to_text(), "x.pub").unwrap();
        let sig = k2.sign(b"hello");
        assert!(p.verify(b"hello", &sig));
        assert!(!p.verify(b"hellp", &sig));
        assert!(!format!("{k:?}").contains(&k.to_text()[25..40]));
        let err = PublicKey::from_text(&k.to_text(), "k").unwrap_err().to_string();
        assert!(err.contains("not a fleetup public key"), "{err}");
    }

    #[test]
    fn keypair_file_is_private_and_not_overwritten() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("signing.key");
        let public = write_keypair(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(PublicKey::read(&dir.path().join("signing.key.pub")).unwrap(), public);
        assert!(write_keypair(&path).is_err());
    }
}

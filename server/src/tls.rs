//! HTTPS for the coordinator: the certificate pair from PEM files (reloaded on SIGHUP),
//! and `fleetup-server tls init`, a private CA with one server certificate for a quick start.
//!
//! rustls with the ring provider (no aws-lc: see docs/decisions.md); HTTP/1.1 and h2 are
//! offered by ALPN and hyper-util serves whichever the client picks.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Why a certificate pair or a quick-start CA could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file that is missing, unreadable or holds the wrong thing.
    #[error("{path}: {why}")]
    File {
        /// The file.
        path: String,
        /// What was wrong and what to do.
        why: String,
    },
    /// rustls refused the pair (e.g. the key does not belong to the certificate).
    #[error("the certificate {cert} and key {key} do not form a usable pair: {source}")]
    Pair {
        /// Certificate file.
        cert: String,
        /// Key file.
        key: String,
        /// Why.
        source: rustls::Error,
    },
    /// Making a certificate.
    #[error("cannot make the certificate: {0}")]
    Generate(#[from] rcgen::Error),
    /// Writing the quick-start files.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

fn file_error(path: &Path, why: impl Into<String>) -> TlsError {
    TlsError::File { path: path.display().to_string(), why: why.into() }
}

/// The rustls provider every TLS link of fleetup uses.
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A rustls server config from a PEM certificate chain and its PEM private key, offering
/// h2 and HTTP/1.1 by ALPN.
pub fn server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(Iterator::collect::<Result<Vec<_>, _>>)
        .map_err(|e| file_error(cert, format!("cannot read a PEM certificate chain: {e}")))?;
    if chain.is_empty() {
        return Err(file_error(cert, "no CERTIFICATE block: --tls-cert takes a PEM certificate (chain)"));
    }
    let private = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| file_error(key, format!("cannot read a PEM private key (PKCS#8, PKCS#1 or SEC1): {e}")))?;
    let pair = |source| TlsError::Pair { cert: cert.display().to_string(), key: key.display().to_string(), source };
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(pair)?
        .with_no_client_auth()
        .with_single_cert(chain, private)
        .map_err(pair)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

/// The certificate and key files of `serve --tls-cert/--tls-key`.
#[derive(Debug, Clone)]
pub struct PemPair {
    /// PEM certificate chain.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
}

impl PemPair {
    /// Loads the pair now (a bad pair stops `serve` before it listens).
    pub fn load(&self) -> Result<axum_server::tls_rustls::RustlsConfig, TlsError> {
        let config = server_config(&self.cert, &self.key)?;
        Ok(axum_server::tls_rustls::RustlsConfig::from_config(Arc::new(config)))
    }

    /// Re-reads the pair on every SIGHUP until `stop`: new connections get the new
    /// certificate, open ones keep theirs. A pair that fails to load is logged and the
    /// previous one stays in use. The handler is installed before this returns, so a
    /// SIGHUP right after start cannot kill the process.
    pub fn reload_on_sighup(
        self,
        live: axum_server::tls_rustls::RustlsConfig,
        stop: tokio_util::sync::CancellationToken,
    ) -> impl std::future::Future<Output = ()> + Send {
        let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup());
        async move {
            let mut hup = match hup {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "no SIGHUP handler: the certificate cannot be reloaded");
                    return;
                }
            };
            loop {
                tokio::select! {
                    () = stop.cancelled() => return,
                    _ = hup.recv() => match server_config(&self.cert, &self.key) {
                        Ok(config) => {
                            live.reload_from_config(Arc::new(config));
                            tracing::info!(cert = %self.cert.display(), "SIGHUP: reloaded the TLS certificate");
                        }
                        Err(e) => tracing::error!(error = %e, "SIGHUP: kept the previous TLS certificate"),
                    },
                }
            }
        }
    }
}

/// What `tls init` wrote.
#[derive(Debug)]
pub struct Quickstart {
    /// The CA certificate agents pin (`--ca-cert`).
    pub ca_cert: PathBuf,
    /// The CA's private key (keep it offline once the server certificate is made).
    pub ca_key: PathBuf,
    /// The server certificate (`serve --tls-cert`).
    pub cert: PathBuf,
    /// The server key (`serve --tls-key`).
    pub key: PathBuf,
    /// SHA-256 of the CA certificate (DER), colon-separated hex, as `openssl x509
    /// -fingerprint -sha256` prints it.
    pub fingerprint: String,
}

/// SHA-256 of a DER certificate as `AA:BB:…`.
pub fn fingerprint(der: &[u8]) -> String {
    use sha2::Digest as _;
    let digest = sha2::Sha256::digest(der);
    digest.iter().map(|b| format!("{b:02X}")).collect::<Vec<_>>().join(":")
}

/// Makes a private CA and a server certificate for `names` (host names or IP addresses)
/// in `dir`: `ca.pem`, `ca-key.pem`, `server.pem`, `server-key.pem` (keys mode 0600).
/// Existing files are never overwritten.
pub fn init(dir: &Path, names: &[String], days: u32) -> Result<Quickstart, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose};
    if names.is_empty() {
        return Err(file_error(dir, "give the server's names: --name HOST (repeatable; host names or IP addresses)"));
    }
    let out = Quickstart {
        ca_cert: dir.join("ca.pem"),
        ca_key: dir.join("ca-key.pem"),
        cert: dir.join("server.pem"),
        key: dir.join("server-key.pem"),
        fingerprint: String::new(),
    };
    for path in [&out.ca_cert, &out.ca_key, &out.cert, &out.key] {
        if path.exists() {
            return Err(file_error(path, "already exists; remove it or choose another --dir (nothing was written)"));
        }
    }
    let now = time_now();
    let until = now + std::time::Duration::from_hours(24 * u64::from(days));

    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    // A name of its own: two CAs with one subject would be told apart only by a signature
    // failure, a confusing error for the agent that pins the wrong one.
    let mut tag = [0u8; 4];
    getrandom::fill(&mut tag).map_err(|e| file_error(dir, format!("no randomness: {e}")))?;
    ca.distinguished_name.push(DnType::CommonName, format!("fleetup private CA {} {}", names[0], hex::encode(tag)));
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    (ca.not_before, ca.not_after) = (now.into(), until.into());
    let ca = rcgen::CertifiedIssuer::self_signed(ca, ca_key)?;

    let server_key = KeyPair::generate()?;
    let mut server = CertificateParams::new(names.to_vec())?;
    server.distinguished_name.push(DnType::CommonName, names[0].clone());
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    (server.not_before, server.not_after) = (now.into(), until.into());
    let server_cert = server.signed_by(&server_key, &ca)?;

    std::fs::create_dir_all(dir).map_err(|source| TlsError::Io { path: dir.display().to_string(), source })?;
    write_new(&out.ca_key, &ca.key().serialize_pem(), 0o600)?;
    write_new(&out.ca_cert, &ca.pem(), 0o644)?;
    write_new(&out.key, &server_key.serialize_pem(), 0o600)?;
    write_new(&out.cert, &server_cert.pem(), 0o644)?;
    Ok(Quickstart { fingerprint: fingerprint(ca.der()), ..out })
}

fn time_now() -> std::time::SystemTime {
    // A minute back: a host whose clock is slightly behind still accepts it.
    std::time::SystemTime::now() - std::time::Duration::from_mins(1)
}

fn write_new(path: &Path, text: &str, mode: u32) -> Result<(), TlsError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let io = |source| TlsError::Io { path: path.display().to_string(), source };
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).mode(mode).open(path).map_err(io)?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(io)
}

#[cfg(test)]
mod tests {
    #[test]
    fn init_writes_a_pair_that_serves_and_refuses_to_overwrite() {
        let dir = tempfile::tempdir().unwrap();
        let q = super::init(dir.path(), &["localhost".into(), "127.0.0.1".into()], 30).unwrap();
        assert_eq!(q.fingerprint.len(), 32 * 3 - 1, "{}", q.fingerprint);
        super::server_config(&q.cert, &q.key).unwrap();
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(std::fs::metadata(&q.key).unwrap().permissions().mode() & 0o777, 0o600);
        let again = super::init(dir.path(), &["localhost".into()], 30).unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let a = tempfile::tempdir().unwrap();
        let b = tempfile::tempdir().unwrap();
        let qa = super::init(a.path(), &["localhost".into()], 30).unwrap();
        let qb = super::init(b.path(), &["localhost".into()], 30).unwrap();
        let err = super::server_config(&qa.cert, &qb.key).unwrap_err();
        assert!(err.to_string().contains("do not form a usable pair"), "{err}");
        let err = super::server_config(&qa.key, &qa.key).unwrap_err();
        assert!(err.to_string().contains("no CERTIFICATE"), "{err}");
    }
}

//! TLS from the outside: a raw handshake against a coordinator, pinning a CA file, to see
//! which certificate it presents and which protocol ALPN picked; the client and server
//! configurations the man in the middle ([`crate::mitm`]) uses.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Handshakes with `addr` as `name`, trusting only the CA in `ca`, offering `alpn`.
/// `Ok(protocol)`: the handshake succeeded and the server chose `protocol` (if any);
/// `Err`: why rustls refused the server (e.g. `UnknownIssuer`).
pub fn handshake(addr: SocketAddr, name: &str, ca: &Path, alpn: &[&str]) -> Result<Option<String>, String> {
    let config = client_config(ca, alpn);
    let server_name = ServerName::try_from(name.to_owned()).expect("a server name");
    let mut conn = rustls::ClientConnection::new(Arc::new(config), server_name).unwrap();
    let mut sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    sock.set_write_timeout(Some(Duration::from_secs(10))).unwrap();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock).map_err(|e| e.to_string())?;
    }
    Ok(conn.alpn_protocol().map(|p| String::from_utf8_lossy(p).into_owned()))
}

/// A TLS client configuration trusting only the CA (or CAs) in the PEM file `ca`,
/// offering `alpn`.
pub fn client_config(ca: &Path, alpn: &[&str]) -> rustls::ClientConfig {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("a CA certificate");
    }
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    config
}

/// A TLS server configuration presenting the certificate chain in `cert` with the key in
/// `key` (PEM files, as `fleetup-server tls init` writes them), speaking HTTP/1.1.
pub fn server_config(cert: &Path, key: &Path) -> rustls::ServerConfig {
    let chain: Vec<CertificateDer<'static>> =
        CertificateDer::pem_file_iter(cert).expect("certificate file").map(|c| c.expect("a certificate")).collect();
    let key = PrivateKeyDer::from_pem_file(key).expect("a private key");
    let mut config = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .expect("a certificate and its key");
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

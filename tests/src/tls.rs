//! TLS from the outside: a raw handshake against a coordinator, pinning a CA file, to see
//! which certificate it presents and which protocol ALPN picked.

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// Handshakes with `addr` as `name`, trusting only the CA in `ca`, offering `alpn`.
/// `Ok(protocol)`: the handshake succeeded and the server chose `protocol` (if any);
/// `Err`: why rustls refused the server (e.g. `UnknownIssuer`).
pub fn handshake(addr: SocketAddr, name: &str, ca: &Path, alpn: &[&str]) -> Result<Option<String>, String> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(cert.expect("CA certificate")).expect("a CA certificate");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
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

//! The agent's link to the coordinator: which URLs it accepts and whom it trusts.
//!
//! - `https://`: the coordinator's certificate must chain to the pinned CA (`--ca-cert`)
//!   or, without one, to the system's CA store. The store is read only here, so an
//!   `http://` agent on a host without `ca-certificates` runs.
//! - `http://`: only to loopback (the demo, a TLS proxy on the same host), unless
//!   `--insecure-http`; the refusal happens before any socket is opened.
//!
//! rustls with the ring provider; the agent speaks HTTP/1.1 (one long-poll at a time).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;

/// How the agent reaches the coordinator.
#[derive(Debug, Clone, Default)]
pub struct TlsLink {
    /// A PEM file of the CA (or CAs) the coordinator's certificate must chain to. `None`:
    /// the system's CA store.
    pub ca_cert: Option<PathBuf>,
    /// Allow plain `http://` to a non-loopback coordinator.
    pub insecure_http: bool,
}

/// A URL the agent will not use, said before connecting.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// Not a URL, or not http(s).
    #[error("--server '{url}': {why}")]
    Url {
        /// What was given.
        url: String,
        /// Why it is unusable.
        why: String,
    },
    /// Plain HTTP beyond loopback without `--insecure-http`.
    #[error(
        "refusing plain http:// to {host}: the agent's token, packages and decisions would cross the network \
         unencrypted. Use https:// (pin the coordinator's CA with --ca-cert FILE), or pass --insecure-http \
         (FLEETUP_INSECURE_HTTP=1) if you really mean it"
    )]
    PlainHttp {
        /// The coordinator's host.
        host: String,
    },
    /// The pinned CA file.
    #[error("--ca-cert {path}: {why}")]
    CaFile {
        /// The file.
        path: String,
        /// What was wrong.
        why: String,
    },
    /// An https URL, no `--ca-cert`, and nothing in the system store.
    #[error(
        "no CA certificates were found on this host to check the coordinator's https certificate{detail}. \
         Install them (Debian/Ubuntu: apt-get install ca-certificates) or pin the coordinator's CA with \
         --ca-cert FILE"
    )]
    NoSystemRoots {
        /// What the loader said, if anything.
        detail: String,
    },
    /// rustls or reqwest refused the configuration.
    #[error("cannot set up the HTTPS client: {0}")]
    Client(String),
}

impl TlsLink {
    /// Checks `server` before anything connects. `Ok(Some(warning))`: allowed, but say
    /// so (plain HTTP beyond loopback under `--insecure-http`).
    pub fn check(&self, server: &str) -> Result<Option<String>, LinkError> {
        let url = reqwest::Url::parse(server).map_err(|e| LinkError::Url {
            url: server.into(),
            why: format!("not a URL ({e}); e.g. https://fleetup.example:8443"),
        })?;
        let host = url.host_str().unwrap_or_default().to_owned();
        if host.is_empty() {
            return Err(LinkError::Url { url: server.into(), why: "no host".into() });
        }
        match url.scheme() {
            "https" => Ok(None),
            "http" if is_loopback(&url) => Ok(None),
            "http" if self.insecure_http => Ok(Some(format!(
                "--insecure-http: talking plain HTTP to {host}; the agent token and packages cross the network \
                 unencrypted (use https:// and --ca-cert)"
            ))),
            "http" => Err(LinkError::PlainHttp { host }),
            other => Err(LinkError::Url { url: server.into(), why: format!("scheme '{other}' is not http or https") }),
        }
    }

    /// The HTTP client for `server` (checked again: nothing reaches a refused URL).
    pub fn client(&self, server: &str, builder: reqwest::ClientBuilder) -> Result<reqwest::Client, LinkError> {
        self.check(server)?;
        let https = server.starts_with("https:");
        let roots = if https { self.roots()? } else { rustls::RootCertStore::empty() };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| LinkError::Client(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        // An http:// agent never does TLS, but may be redirected: https_only keeps a
        // refused link refused.
        builder.use_preconfigured_tls(tls).https_only(https).build().map_err(|e| LinkError::Client(e.to_string()))
    }

    fn roots(&self) -> Result<rustls::RootCertStore, LinkError> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        if let Some(path) = &self.ca_cert {
            let bad = |why: String| LinkError::CaFile { path: path.display().to_string(), why };
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(Iterator::collect::<Result<Vec<_>, _>>)
                .map_err(|e| bad(format!("cannot read PEM certificates: {e}")))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(bad(
                    "no usable CERTIFICATE in it (give the CA's PEM file, e.g. ca.pem of `fleetup-server tls init`)"
                        .into(),
                ));
            }
            return Ok(roots);
        }
        let found = rustls_native_certs::load_native_certs();
        let (added, _) = roots.add_parsable_certificates(found.certs);
        if added == 0 {
            let detail = found.errors.first().map_or(String::new(), |e| format!(" ({e})"));
            return Err(LinkError::NoSystemRoots { detail });
        }
        Ok(roots)
    }
}

/// A failed request with its causes (reqwest's own message omits them), and what to do
/// when the cause is the coordinator's certificate.
pub fn describe(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    if text.contains("invalid peer certificate") {
        text.push_str(
            " (the coordinator's certificate does not chain to the CA this agent trusts, or is not for this \
             host name: check --ca-cert and the name in --server)",
        );
    }
    text
}

/// `localhost`, 127.0.0.0/8 or ::1.
fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default().trim_start_matches('[').trim_end_matches(']');
    match host.parse::<IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost") || host.to_ascii_lowercase().ends_with(".localhost"),
    }
}

#[cfg(test)]
mod tests {
    use super::{LinkError, TlsLink};

    #[test]
    fn plain_http_only_to_loopback_unless_insecure() {
        let strict = TlsLink::default();
        for ok in [
            "http://127.0.0.1:8080",
            "http://127.3.4.5",
            "http://[::1]:80",
            "http://localhost:8080",
            "https://192.0.2.1",
        ] {
            assert!(matches!(strict.check(ok), Ok(None)), "{ok}");
        }
        for refused in ["http://192.0.2.1", "http://10.0.0.1:8080", "http://fleetup.example", "http://[2001:db8::1]"] {
            let err = strict.check(refused).unwrap_err();
            assert!(matches!(err, LinkError::PlainHttp { .. }), "{refused}: {err}");
            assert!(err.to_string().contains("--insecure-http"), "{err}");
        }
        let loose = TlsLink { insecure_http: true, ..TlsLink::default() };
        assert!(loose.check("http://192.0.2.1").unwrap().unwrap().contains("unencrypted"));
        assert!(matches!(strict.check("ftp://127.0.0.1"), Err(LinkError::Url { .. })));
        assert!(matches!(strict.check("127.0.0.1:8080"), Err(LinkError::Url { .. })));
    }

    #[test]
    fn a_ca_file_without_certificates_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("ca.pem");
        std::fs::write(&file, "not a certificate\n").unwrap();
        let link = TlsLink { ca_cert: Some(file), insecure_http: false };
        let err = link.client("https://127.0.0.1:1", reqwest::Client::builder()).unwrap_err();
        assert!(err.to_string().contains("no usable CERTIFICATE"), "{err}");
        // Plain HTTP to loopback never reads the CA file nor the system store.
        link.client("http://127.0.0.1:1", reqwest::Client::builder()).unwrap();
    }
}

//! Minimal plain-HTTP client for health checks and CRL probes.
//!
//! Decision (docs/decisions.md): the engine is synchronous and talks plain HTTP/1.0 over
//! std sockets with explicit connect and read deadlines. Health endpoints and CRL
//! distribution points are plain `http://` in practice (CRLs are signed objects and are
//! served over http by design); for `https://` CRL endpoints, reachability is a TCP
//! connect within the deadline.

use std::io::{Read as _, Write as _};
use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs as _};
use std::path::Path;
use std::time::{Duration, Instant};

/// A parsed `http(s)://host[:port]/path` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Url {
    /// `http` or `https`.
    pub scheme: String,
    /// Host name or IP literal (without brackets).
    pub host: String,
    /// Port (default 80/443).
    pub port: u16,
    /// Path and query, starting with `/`.
    pub path: String,
}

/// Parses an http(s) URL.
pub fn parse_url(url: &str) -> Result<Url, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("'{url}' is not an http(s) URL"))?;
    let default_port = match scheme {
        "http" => 80,
        "https" => 443,
        _ => return Err(format!("'{url}': only http and https URLs are supported")),
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], rest[i..].to_owned()),
        None => (rest, "/".to_owned()),
    };
    let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
        let (h, p) = stripped.split_once(']').ok_or_else(|| format!("'{url}': bad IPv6 literal"))?;
        (h.to_owned(), p.strip_prefix(':'))
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h.to_owned(), Some(p)),
            None => (authority.to_owned(), None),
        }
    };
    let port = match port {
        Some(p) => p.parse().map_err(|_| format!("'{url}': bad port '{p}'"))?,
        None => default_port,
    };
    if host.is_empty() {
        return Err(format!("'{url}' has no host"));
    }
    Ok(Url { scheme: scheme.to_owned(), host, port, path })
}

/// Looks `name` up in a hosts file (first match wins, like the C library).
pub fn lookup_hosts_file(hosts_file: &Path, name: &str) -> Option<IpAddr> {
    let text = std::fs::read_to_string(hosts_file).ok()?;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(ip) = fields.next() else { continue };
        if fields.any(|h| h.eq_ignore_ascii_case(name)) {
            return ip.parse().ok();
        }
    }
    None
}

/// Resolves a URL's host: IP literals directly, then the given hosts file, then the
/// system resolver.
pub fn resolve(url: &Url, hosts_file: &Path) -> Result<SocketAddr, String> {
    if let Ok(ip) = url.host.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, url.port));
    }
    if let Some(ip) = lookup_hosts_file(hosts_file, &url.host) {
        return Ok(SocketAddr::new(ip, url.port));
    }
    (url.host.as_str(), url.port)
        .to_socket_addrs()
        .map_err(|e| format!("cannot resolve {}: {e}", url.host))?
        .next()
        .ok_or_else(|| format!("{} has no address", url.host))
}

/// A response: status code and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Body (lossy UTF-8).
    pub body: String,
}

/// GET over plain HTTP, the whole exchange bounded by `deadline`.
pub fn get(addr: SocketAddr, url: &Url, deadline: Duration) -> Result<Response, String> {
    let start = Instant::now();
    let left = |what: &str| {
        deadline
            .checked_sub(start.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {} ms ({what})", deadline.as_millis()))
    };
    let mut stream =
        TcpStream::connect_timeout(&addr, left("connect")?).map_err(|e| format!("connect to {addr}: {e}"))?;
    stream.set_write_timeout(Some(left("send")?)).map_err(|e| e.to_string())?;
    // One write: a server may answer (and close) after the first bytes it sees.
    let request = format!("GET {} HTTP/1.0\r\nHost: {}\r\nConnection: close\r\n\r\n", url.path, url.host);
    let sent = stream.write_all(request.as_bytes());
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        stream.set_read_timeout(Some(left("read")?)).map_err(|e| e.to_string())?;
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return Err(format!(
                    "{addr} accepted the connection but sent no answer within {} ms",
                    deadline.as_millis()
                ));
            }
            Err(e) => return Err(format!("read from {addr}: {e}")),
        }
    }
    if buf.is_empty()
        && let Err(e) = sent
    {
        return Err(format!("send to {addr}: {e}"));
    }
    let text = String::from_utf8_lossy(&buf);
    let status_line = text.lines().next().unwrap_or("");
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("{addr} sent no HTTP status line"))?;
    let body = text.split_once("\r\n\r\n").map_or(String::new(), |(_, b)| b.to_owned());
    Ok(Response { status, body })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_urls() {
        let u = parse_url("http://127.0.0.1:8080/health").unwrap();
        assert_eq!((u.host.as_str(), u.port, u.path.as_str()), ("127.0.0.1", 8080, "/health"));
        let u = parse_url("https://crl.example/x.crl").unwrap();
        assert_eq!((u.port, u.path.as_str()), (443, "/x.crl"));
        assert!(parse_url("ftp://x/").is_err());
    }

    #[test]
    fn hosts_file_first_match_wins() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        std::fs::write(&p, "# c\n127.0.0.1 localhost\n127.0.0.5 crl.a crl.b # x\n127.0.0.6 crl.a\n").unwrap();
        assert_eq!(lookup_hosts_file(&p, "crl.b"), Some("127.0.0.5".parse().unwrap()));
        assert_eq!(lookup_hosts_file(&p, "crl.a"), Some("127.0.0.5".parse().unwrap()));
        assert_eq!(lookup_hosts_file(&p, "nope"), None);
    }
}

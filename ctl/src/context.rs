//! The saved context: which coordinator, with which token (and CA), in one TOML file
//! written 0600 — the token is a bearer secret, so a file other users can read is refused
//! rather than used. Environment variables override the file, for CI jobs that keep the
//! token in their secret store (`FLEETUP_SERVER`, `FLEETUP_TOKEN`, `FLEETUP_CA_CERT`).

use crate::fail::{Failure, Outcome};
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// What the context file holds.
#[derive(Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Context {
    /// The coordinator's base URL (no `/api/v1`).
    pub server: String,
    /// The API token.
    pub token: String,
    /// The CA certificate (PEM) to trust for https, when the coordinator's CA is private.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<PathBuf>,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the token.
        f.debug_struct("Context").field("server", &self.server).field("ca_cert", &self.ca_cert).finish_non_exhaustive()
    }
}

/// `$XDG_CONFIG_HOME/fleetup/context.toml`, else `~/.config/fleetup/context.toml`.
pub fn default_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").filter(|v| !v.is_empty()).map(|h| PathBuf::from(h).join(".config")))?;
    Some(base.join("fleetup").join("context.toml"))
}

/// Reads the context at `path`: `None` when there is no file; refused when group or others
/// may read or write it.
pub fn read(path: &Path) -> Outcome<Option<Context>> {
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Failure::error(format!("reading {}: {e}", path.display()))),
    };
    let mode = md.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(Failure::auth(format!(
            "{} holds a token and is open to other users (mode {mode:03o}): run `chmod 600 {}` (or log in again)",
            path.display(),
            path.display()
        )));
    }
    let text = std::fs::read_to_string(path).map_err(|e| Failure::error(format!("reading {}: {e}", path.display())))?;
    toml::from_str(&text).map(Some).map_err(|e| Failure::usage(format!("{}: {}", path.display(), e.message())))
}

/// Writes `ctx` to `path` with mode 0600 (its directory 0700 if it creates it), replacing
/// the file atomically: a crash leaves the old context or the new one.
pub fn write(path: &Path, ctx: &Context) -> Outcome {
    let err = |what: &str, e: std::io::Error| Failure::error(format!("{what} {}: {e}", path.display()));
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| err("creating the directory of", e))?;
    }
    let text = toml::to_string(ctx).map_err(|e| Failure::error(format!("encoding the context: {e}")))?;
    let tmp = dir.join(format!(
        ".{}.tmp-{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("context"),
        std::process::id()
    ));
    let _ = std::fs::remove_file(&tmp);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err("writing", e))?;
    f.write_all(text.as_bytes()).and_then(|()| f.sync_all()).map_err(|e| err("writing", e))?;
    drop(f);
    std::fs::rename(&tmp, path).map_err(|e| err("writing", e))
}

/// Removes the context file; `false` when there was none.
pub fn remove(path: &Path) -> Outcome<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Failure::error(format!("removing {}: {e}", path.display()))),
    }
}

/// True when `url` names a loopback host (127.0.0.0/8, ::1, localhost), where plain http
/// does not cross a network.
pub fn is_loopback(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host.eq_ignore_ascii_case("localhost") || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Checks a coordinator URL: http(s), and plain http only to loopback unless allowed.
pub fn check_url(url: &str, insecure_http: bool) -> Outcome {
    if url.starts_with("https://") {
        return Ok(());
    }
    if !url.starts_with("http://") {
        return Err(Failure::usage(format!(
            "'{url}' is not a coordinator URL: write https://HOST:PORT (or http:// for loopback)"
        )));
    }
    if is_loopback(url) || insecure_http {
        return Ok(());
    }
    Err(Failure::usage(format!(
        "{url} is plain http to another machine: the token would cross the network unencrypted; use https:// (or --insecure-http)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls() {
        for (url, yes) in [
            ("http://127.0.0.1:8080", true),
            ("http://127.1.2.3/", true),
            ("http://localhost:1", true),
            ("http://[::1]:8080/x", true),
            ("http://10.0.0.1:8080", false),
            ("http://fleetup.example", false),
            ("http://127.0.0.1.evil.example", false),
        ] {
            assert_eq!(is_loopback(url), yes, "{url}");
        }
        assert!(check_url("https://fleetup.example", false).is_ok());
        assert!(check_url("http://127.0.0.1:1", false).is_ok());
        assert_eq!(check_url("http://fleetup.example", false).unwrap_err().exit, crate::fail::code::USAGE);
        assert!(check_url("http://fleetup.example", true).is_ok());
        assert!(check_url("ftp://x", true).is_err());
    }

    #[test]
    fn context_is_written_0600_and_refused_when_others_can_read_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fleetup/context.toml");
        let ctx = Context { server: "http://127.0.0.1:1".into(), token: "flt_secret".into(), ca_cert: None };
        write(&path, &ctx).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::metadata(path.parent().unwrap()).unwrap().permissions().mode() & 0o777, 0o700);
        assert_eq!(read(&path).unwrap(), Some(ctx.clone()));
        assert!(!format!("{ctx:?}").contains("flt_secret"), "Debug never shows the token");
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let refused = read(&path).unwrap_err();
        assert_eq!(refused.exit, crate::fail::code::AUTH);
        assert!(refused.message.contains("chmod 600"), "{refused}");
        // Writing again fixes it.
        write(&path, &ctx).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert!(remove(&path).unwrap());
        assert!(!remove(&path).unwrap());
        assert_eq!(read(&path).unwrap(), None);
    }
}

//! fleetup-demo-service: the stand-in for "the product being updated".
//!
//! It behaves like a real service as far as an installer can tell: it reads its version
//! and configuration from files under an install root when it starts (so new files take
//! effect only after a restart), serves a web app from `www/current/`, and answers
//! `GET /health` with its version. `unhealthy_versions` in `etc/demo.conf` simulates a
//! bad release on one host, so the rollback path can be exercised for real.
//!
//! Dependency-free on purpose (std only): it is started many times by tests. A library
//! too, so that `fleetup demo` can run it from its own binary.

use std::collections::BTreeMap;
use std::io::{BufRead as _, BufReader, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

struct State {
    root: PathBuf,
    version: String,
    config: BTreeMap<String, String>,
}

/// Runs the service with these arguments (without the program name); never returns
/// unless `--help` is asked.
pub fn main_from(args: impl IntoIterator<Item = String>) {
    let mut listen = None;
    let mut root = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--listen" => listen = args.next(),
            "--root" => root = args.next().map(PathBuf::from),
            "--help" | "-h" => {
                println!("usage: fleetup-demo-service --listen 127.0.0.1:PORT --root INSTALL_ROOT");
                return;
            }
            other => fail(&format!("unknown argument '{other}'; see --help")),
        }
    }
    let listen = listen.unwrap_or_else(|| fail("--listen 127.0.0.1:PORT is required"));
    let root = root.unwrap_or_else(|| fail("--root INSTALL_ROOT is required"));
    let version_file = root.join("lib/demo/VERSION");
    let version = match std::fs::read_to_string(&version_file) {
        Ok(v) => v.trim().to_owned(),
        Err(e) => fail(&format!("cannot read {}: {e}", version_file.display())),
    };
    let config = read_config(&root.join("etc/demo.conf"));
    let listener = TcpListener::bind(&listen).unwrap_or_else(|e| fail(&format!("cannot listen on {listen}: {e}")));
    let bound = listener.local_addr().map_or(listen, |a| a.to_string());
    eprintln!("demo-service {version} listening on {bound}");
    let state = std::sync::Arc::new(State { root, version, config });
    for stream in listener.incoming().flatten() {
        let state = state.clone();
        std::thread::spawn(move || {
            let _ = serve(&state, stream);
        });
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("fleetup-demo-service: {msg}");
    std::process::exit(2);
}

fn read_config(path: &Path) -> BTreeMap<String, String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
        .collect()
}

fn serve(state: &State, stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut request_line = String::new();
    reader.read_line(&mut request_line)?;
    // Skip headers.
    let mut line = String::new();
    while reader.read_line(&mut line)? > 2 {
        line.clear();
    }
    let path = request_line.split_whitespace().nth(1).unwrap_or("/");
    let (status, content_type, body) = match path {
        "/health" => {
            let unhealthy = state
                .config
                .get("unhealthy_versions")
                .is_some_and(|list| list.split(',').any(|v| v.trim() == state.version));
            let status = if unhealthy { "503 Service Unavailable" } else { "200 OK" };
            let health = if unhealthy { "failing" } else { "ok" };
            let body = format!(
                "{{\"status\":\"{health}\",\"version\":\"{}\",\"pid\":{}}}\n",
                state.version,
                std::process::id()
            );
            (status, "application/json", body.into_bytes())
        }
        "/version" => ("200 OK", "text/plain", format!("{}\n", state.version).into_bytes()),
        "/" | "/index.html" => match std::fs::read(state.root.join("www/current/index.html")) {
            Ok(b) => ("200 OK", "text/html", b),
            Err(_) => ("404 Not Found", "text/plain", b"no web app deployed\n".to_vec()),
        },
        _ => ("404 Not Found", "text/plain", b"not found\n".to_vec()),
    };
    let mut stream = stream;
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    )?;
    stream.write_all(&body)
}

/// Starts a certificate revocation list endpoint on a free loopback port that answers
/// every request with 200, on a background thread, and returns its base URL
/// (`http://127.0.0.1:PORT`): the reachable CRL endpoint of the demo and the tests.
pub fn crl_endpoint() -> std::io::Result<String> {
    use std::io::Read as _;
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    std::thread::spawn(move || {
        for mut s in listener.incoming().flatten() {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let mut buf = [0u8; 2048];
            let _ = s.read(&mut buf);
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\nConnection: close\r\n\r\nCRL\n");
        }
    });
    Ok(format!("http://{addr}"))
}

/// Starts the demo service the way the `exec` backend does: detached in its own process
/// group, output to `log`, its pid written to `<root>/run/demo.pid`. `program` is the
/// service binary (or a wrapper that execs it). The caller owns the child: reap it, or let
/// it go like a daemon (it is stopped through its pid file).
pub fn launch(program: &Path, root: &Path, port: u16, log: &Path) -> std::io::Result<std::process::Child> {
    use std::os::unix::process::CommandExt as _;
    let log = std::fs::File::create(log)?;
    let child = std::process::Command::new(program)
        .args(["--listen", &format!("127.0.0.1:{port}"), "--root"])
        .arg(root)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()?;
    std::fs::write(root.join("run/demo.pid"), format!("{}\n", child.id()))?;
    Ok(child)
}

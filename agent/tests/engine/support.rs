//! Test fixture: a temporary install root made from examples/base-1.0 with the demo
//! service really running under the exec backend, a package signed with a fresh key,
//! a loopback CRL stub, a private hosts file and state dir.

use fleetup_agent::engine::{BackendKind, CrlRemediation, Decider, Engine, InstallRequest, MemorySink, Services};
use fleetup_proto::manifest::Manifest;
use fleetup_proto::package::pack_dir;
use fleetup_proto::{EngineEvent, InstallSummary, SecretKey};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub struct Fixture {
    pub tmp: tempfile::TempDir,
    pub root: PathBuf,
    pub state: PathBuf,
    pub hosts: PathBuf,
    pub package: PathBuf,
    pub key_pub: PathBuf,
    trusted: fleetup_proto::PublicKey,
    pub port: u16,
    pub vars: BTreeMap<String, String>,
    pub manifest: Manifest,
}

/// A free loopback port (bound then released).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A CRL stub on loopback answering 200 to everything; returns its base URL.
pub fn crl_stub_ok() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let mut s = s;
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            // Read the whole request head before answering.
            let mut head = Vec::new();
            let mut buf = [0u8; 1024];
            while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => head.extend_from_slice(&buf[..n]),
                }
            }
            let _ = s.write_all(b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\n\r\ncrl");
        }
    });
    format!("http://127.0.0.1:{port}")
}

/// A loopback listener that accepts and never answers (kept alive for the test's life).
pub fn crl_stub_silent(ip: &str) -> (TcpListener, u16) {
    let l = TcpListener::bind(format!("{ip}:0")).unwrap();
    let port = l.local_addr().unwrap().port();
    (l, port)
}

impl Fixture {
    /// The sample rollup, with `edit` applied to its manifest text.
    pub fn new(crl_base: &str, edit: impl FnOnce(String) -> String) -> Self {
        Self::with_payload(crl_base, edit, &[])
    }

    /// The sample rollup with extra payload files (`(path under payload/, content)`;
    /// `edit` lists them in the manifest), and `edit` applied to its manifest text.
    pub fn with_payload(crl_base: &str, edit: impl FnOnce(String) -> String, extra: &[(&str, &str)]) -> Self {
        Self::with_source(crl_base, edit, |src| {
            for (path, content) in extra {
                let file = src.join("payload").join(path);
                std::fs::create_dir_all(file.parent().unwrap()).unwrap();
                std::fs::write(file, content).unwrap();
            }
        })
    }

    /// The sample rollup with `prepare` run on its source directory before packing (and
    /// after the root exists), and `edit` applied to its manifest text.
    pub fn with_source(crl_base: &str, edit: impl FnOnce(String) -> String, prepare: impl FnOnce(&Path)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let ws = fleetup_e2e::workspace_root();
        let root = tmp.path().join("root");
        fleetup_e2e::copy_tree(&ws.join("examples/base-1.0"), &root).unwrap();
        let state = tmp.path().join("state");
        std::fs::create_dir_all(&state).unwrap();
        let hosts = tmp.path().join("hosts");
        std::fs::write(&hosts, "127.0.0.1 localhost\n# test hosts file\n").unwrap();
        let src = tmp.path().join("rollup-src");
        fleetup_e2e::copy_tree(&ws.join("examples/sample-rollup"), &src).unwrap();
        prepare(&src);
        // Tests keep deadlines short.
        let text = std::fs::read_to_string(src.join("manifest.toml")).unwrap();
        let text = text
            .replace("deadline_secs = 10", "deadline_secs = 8")
            .replace("stop_deadline_secs = 10", "stop_deadline_secs = 5");
        let text = edit(text);
        std::fs::write(src.join("manifest.toml"), &text).unwrap();
        let manifest = Manifest::from_toml(&text).unwrap();
        let key = SecretKey::generate().unwrap();
        let key_pub = tmp.path().join("key.pub");
        std::fs::write(&key_pub, key.public().to_text()).unwrap();
        let package = tmp.path().join("rollup.fleetup");
        pack_dir(&src, &key, &package).unwrap();
        let port = free_port();
        let bin = fleetup_e2e::binary("fleetup-demo-service");
        let vars = BTreeMap::from([
            ("port".to_owned(), port.to_string()),
            ("demo_service_bin".to_owned(), bin.display().to_string()),
            ("crl_base".to_owned(), crl_base.to_owned()),
        ]);
        let fx = Self { tmp, root, state, hosts, package, key_pub, trusted: key.public(), port, vars, manifest };
        fx.start_service();
        fx.wait_version("1.0.0");
        fx
    }

    pub fn services(&self) -> Services {
        let mut vars = self.vars.clone();
        vars.insert("root".into(), self.root.display().to_string());
        Services {
            kind: BackendKind::Exec,
            root: self.root.clone(),
            vars,
            output_dir: self.tmp.path().join("svc-out"),
            log: self.tmp.path().join("test-service-control.log"),
        }
    }

    pub fn start_service(&self) {
        self.services().start(&self.manifest.services[0]).unwrap();
    }

    pub fn service_pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.root.join("run/demo.pid")).ok()?.trim().parse().ok()
    }

    pub fn service_running(&self) -> bool {
        self.service_pid().is_some_and(fleetup_agent::engine::pid_alive)
    }

    /// Every live demo service process serving this root, tracked by the pidfile or not.
    pub fn service_processes(&self) -> Vec<i32> {
        let root = std::fs::canonicalize(&self.root).unwrap().display().to_string();
        let mut pids: Vec<i32> = std::fs::read_dir("/proc")
            .unwrap()
            .flatten()
            .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
            .filter(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                args.first().is_some_and(|a| a.ends_with(b"fleetup-demo-service"))
                    && args.windows(2).any(|w| w[0] == b"--root" && w[1] == root.as_bytes())
                    && fleetup_agent::engine::pid_alive(*pid)
            })
            .collect();
        pids.sort_unstable();
        pids
    }

    /// GET a path from the demo service.
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut s = std::net::TcpStream::connect_timeout(
            &format!("127.0.0.1:{}", self.port).parse().unwrap(),
            Duration::from_millis(500),
        )
        .ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        Some((status, text.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default()))
    }

    /// Waits until /health reports `version`.
    pub fn wait_version(&self, version: &str) {
        fleetup_e2e::wait_for(&format!("demo service answering {version}"), Duration::from_secs(10), || {
            self.get("/health").filter(|(_, b)| b.contains(&format!("\"version\":\"{version}\""))).map(|_| ())
        });
    }

    pub fn request(&self, remediation: CrlRemediation) -> InstallRequest {
        InstallRequest {
            package: self.package.clone(),
            root: self.root.clone(),
            state_dir: self.state.clone(),
            trusted: vec![self.trusted.clone()],
            vars: self.vars.clone(),
            backend: BackendKind::Exec,
            hosts_file: self.hosts.clone(),
            crl_remediation: remediation,
            // The sample's [target] device_class.
            device_class: Some("demo".into()),
            allow_downgrade: false,
        }
    }

    /// Runs the engine as a library; `on_event` sees every event (and may cancel).
    pub fn install_lib(
        &self,
        decider: Arc<dyn Decider>,
        on_event: impl Fn(&EngineEvent, &fleetup_agent::engine::CancelHandle) + Send + Sync + 'static,
    ) -> (InstallSummary, Vec<EngineEvent>) {
        let mem = MemorySink::default();
        let sink =
            Arc::new(CallbackSink { mem: mem.clone(), cb: Box::new(on_event), cancel: std::sync::OnceLock::new() });
        let engine = Engine::new(decider, sink.clone());
        sink.cancel.set(engine.cancel_handle()).unwrap();
        let summary = engine.install(&self.request(CrlRemediation::None)).unwrap();
        let events = mem.0.lock().unwrap().clone();
        (summary, events)
    }

    /// The real binary's `install --json --yes` command.
    pub fn cli(&self) -> std::process::Command {
        self.cli_with_state(&self.state)
    }

    /// [`Fixture::cli`] with another state dir.
    pub fn cli_with_state(&self, state: &Path) -> std::process::Command {
        let mut c = self.cli_interactive(state);
        c.args(["--json", "--yes"]);
        c.stdin(std::process::Stdio::null());
        c
    }

    /// The real binary's `install` as an operator types it: no `--json`, no `--yes`.
    pub fn cli_interactive(&self, state: &Path) -> std::process::Command {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_fleetup-agent"));
        c.arg("install")
            .arg(&self.package)
            .arg("--root")
            .arg(&self.root)
            .arg("--trust")
            .arg(&self.key_pub)
            .arg("--state-dir")
            .arg(state)
            .arg("--hosts-file")
            .arg(&self.hosts)
            .args(["--services-backend", "exec", "--device-class", "demo"]);
        for (k, v) in &self.vars {
            c.arg("--var").arg(format!("{k}={v}"));
        }
        c
    }

    /// Makes the demo service answer 503 on /health when it runs `version`.
    pub fn mark_unhealthy(&self, version: &str) {
        let conf = self.root.join("etc/demo.conf");
        let text = std::fs::read_to_string(&conf).unwrap() + &format!("unhealthy_versions = {version}\n");
        std::fs::write(&conf, text).unwrap();
    }

    /// The staging directory of the install running now.
    pub fn staging_dir(tmp: &Path) -> PathBuf {
        std::fs::read_dir(tmp)
            .unwrap()
            .flatten()
            .map(|e| e.path())
            .find(|p| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(".root.fleetup-")))
            .expect("an install is staged")
    }

    /// Adds a host hook script.
    pub fn host_hook(&self, dir: &str, name: &str, body: &str) {
        let d = self.state.join("hooks").join(dir);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// Staging directories left beside the root.
    pub fn leftover_staging(&self) -> Vec<String> {
        std::fs::read_dir(self.tmp.path())
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".root.fleetup-"))
            .collect()
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(pid) = self.service_pid() {
            let _ = nix_kill(pid);
        }
    }
}

fn nix_kill(pid: i32) -> std::io::Result<()> {
    std::process::Command::new("kill").arg("-KILL").arg(pid.to_string()).status().map(drop)
}

type Callback = Box<dyn Fn(&EngineEvent, &fleetup_agent::engine::CancelHandle) + Send + Sync>;

struct CallbackSink {
    mem: MemorySink,
    cb: Callback,
    cancel: std::sync::OnceLock<fleetup_agent::engine::CancelHandle>,
}

impl fleetup_agent::engine::EventSink for CallbackSink {
    fn emit(&self, event: &EngineEvent) {
        self.mem.emit(event);
        if let Some(c) = self.cancel.get() {
            (self.cb)(event, c);
        }
    }
}

/// A tree's content: path -> kind and sha256 / link target / mode. `run/` (pidfile) and
/// `var/` (precompile caches, not rolled back by design) are left out.
pub fn tree(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    walk(root, root, &mut out);
    out
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir).unwrap().flatten().collect();
    entries.sort_by_key(std::fs::DirEntry::file_name);
    for e in entries {
        let path = e.path();
        let rel = path.strip_prefix(root).unwrap().display().to_string();
        if rel == "run" || rel == "var" {
            continue;
        }
        let md = std::fs::symlink_metadata(&path).unwrap();
        if md.file_type().is_symlink() {
            out.insert(rel, format!("link {}", std::fs::read_link(&path).unwrap().display()));
        } else if md.is_dir() {
            out.insert(rel.clone(), format!("dir {:o}", md.permissions().mode() & 0o777));
            walk(root, &path, out);
        } else {
            let h = hex::encode(Sha256::digest(std::fs::read(&path).unwrap()));
            out.insert(rel, format!("file {:o} {h}", md.permissions().mode() & 0o777));
        }
    }
}

/// Parses a `--json` stdout into events.
pub fn parse_events(stdout: &[u8]) -> Vec<EngineEvent> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l}: {e}")))
        .collect()
}

/// The lines a child writes on stderr, read by a thread, waited for with a deadline.
pub struct StderrLines {
    rx: std::sync::mpsc::Receiver<String>,
    /// Every line seen so far.
    pub seen: Vec<String>,
}

impl StderrLines {
    /// Takes `child`'s piped stderr.
    pub fn of(child: &mut std::process::Child) -> Self {
        use std::io::BufRead as _;
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        Self { rx, seen: Vec::new() }
    }

    /// The first (new) line containing `want`, or `Err` with why not within `deadline`.
    pub fn wait_for(&mut self, want: &str, deadline: Duration) -> Result<String, String> {
        let until = std::time::Instant::now() + deadline;
        loop {
            match self.rx.recv_timeout(until.saturating_duration_since(std::time::Instant::now())) {
                Ok(l) => {
                    self.seen.push(l.clone());
                    if l.contains(want) {
                        return Ok(l);
                    }
                }
                Err(e) => return Err(format!("no line with '{want}' ({e}); stderr: {:?}", self.seen)),
            }
        }
    }
}

/// Spawns `cmd` with the pause variable `var=value` and waits (with a deadline) until the
/// engine says `paused after <want>` on stderr; the engine then waits there until killed.
pub fn spawn_paused(mut cmd: std::process::Command, var: &str, value: usize, want: &str) -> std::process::Child {
    let mut child = cmd
        .env(var, value.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = StderrLines::of(&mut child);
    if let Err(e) = lines.wait_for(&format!("paused after {want}"), Duration::from_mins(1)) {
        let status = child.try_wait();
        let _ = child.kill();
        panic!("{var}={value}: {e}; status {status:?}");
    }
    child
}

/// [`spawn_paused`], then SIGKILL.
pub fn pause_and_kill(cmd: std::process::Command, var: &str, value: usize, want: &str) {
    let mut child = spawn_paused(cmd, var, value, want);
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
}

//! A fleet on one machine for end-to-end tests: a real `fleetup-server` process, real
//! `fleetup-agent run` processes, each with its own install root (a copy of
//! `examples/base-1.0`) and the demo service running on its own loopback port. The tests
//! drive the coordinator through `fleetup-client`, as any automation would.

use crate::{binary, copy_tree, wait_for, workspace_root};
use fleetup_client::{Client, JobFilter, JobView, NewEnrollmentToken};
use fleetup_proto::id::{PackageId, RolloutId};
use serde_json::Value;
use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A free loopback port (bound and released; good enough for tests on one machine).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A child process killed when dropped, its output kept in a log file.
#[derive(Debug)]
pub struct Proc {
    /// The child.
    pub child: Child,
    /// Where its stdout and stderr go.
    pub log: PathBuf,
}

impl Proc {
    /// Spawns `cmd` with output to `log`.
    pub fn spawn(mut cmd: Command, log: PathBuf) -> Self {
        let out = std::fs::File::create(&log).expect("log file");
        let err = out.try_clone().expect("log file");
        cmd.stdin(Stdio::null()).stdout(out).stderr(err);
        let child = cmd.spawn().unwrap_or_else(|e| panic!("spawning {cmd:?}: {e}"));
        Self { child, log }
    }

    /// The process's output so far.
    pub fn output(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGKILL, and reap.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// True while it runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running coordinator with an admin token.
#[derive(Debug)]
pub struct Server {
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub url: String,
    /// An admin API token.
    pub token: String,
    /// The process.
    pub proc: Proc,
    /// The signing key packages are made with (trusted by the server and the agents).
    pub key: PathBuf,
    /// Its public half.
    pub key_pub: PathBuf,
    /// The working directory (database, data dir, logs).
    pub dir: PathBuf,
    /// The operator API with the admin token: the one typed client, as any automation uses.
    pub client: Client,
    /// Over TLS: the private CA (from `fleetup-server tls init`) agents pin.
    pub ca_cert: Option<PathBuf>,
    /// The arguments of `fleetup-server` that started it, to start it again alike.
    serve: Vec<std::ffi::OsString>,
    /// How many times it was started.
    starts: u32,
}

impl Server {
    /// Starts `fleetup-server serve` on a free port with a fresh database (`database_url`,
    /// or a SQLite file in `dir` when `None`) and short leases for tests.
    pub async fn start(dir: &Path, database_url: Option<&str>, extra: &[&str]) -> Self {
        Self::launch(dir, database_url, extra, None).await
    }

    /// Like [`Server::start`], serving HTTPS with a certificate for `localhost` and
    /// `127.0.0.1` from `fleetup-server tls init` (its files in `dir/tls`); the operator
    /// client pins that CA, as agents do with [`Server::ca_cert`].
    pub async fn start_tls(dir: &Path, extra: &[&str]) -> Self {
        let tls = dir.join("tls");
        if !tls.join("ca.pem").exists() {
            tls_init(&tls, &["localhost", "127.0.0.1"]);
        }
        let (cert, key) = (tls.join("server.pem"), tls.join("server-key.pem"));
        let mut args = vec!["--tls-cert", cert.to_str().unwrap(), "--tls-key", key.to_str().unwrap()];
        args.extend_from_slice(extra);
        Self::launch(dir, None, &args, Some(tls.join("ca.pem"))).await
    }

    async fn launch(dir: &Path, database_url: Option<&str>, extra: &[&str], ca_cert: Option<PathBuf>) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let key = dir.join("release.key");
        let key_pub = dir.join("release.key.pub");
        if !key.exists() {
            keygen(&key);
        }
        let db = database_url.map_or_else(|| format!("sqlite:{}", dir.join("fleetup.db").display()), str::to_owned);
        let out = Command::new(binary("fleetup-server"))
            .args(["token", "create", "--role", "admin", "--name", "e2e", "--database-url", &db])
            .output()
            .unwrap();
        assert!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or_default().trim().to_owned();
        let port = free_port();
        let mut serve: Vec<std::ffi::OsString> =
            ["serve", "--listen", &format!("127.0.0.1:{port}"), "--database-url", &db].iter().map(Into::into).collect();
        serve.extend(["--trust".into(), key_pub.clone().into(), "--data-dir".into(), dir.join("data").into()]);
        serve.extend(extra.iter().map(Into::into));
        let proc = serve_process(dir, &serve, "server.log");
        let scheme = if ca_cert.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://127.0.0.1:{port}");
        let mut client = Client::new(&url, &token).expect("an HTTP client");
        if let Some(ca) = &ca_cert {
            client = client.with_ca_cert(&std::fs::read(ca).unwrap()).expect("the CA certificate");
        }
        let server = Self { url, token, proc, key, key_pub, dir: dir.to_path_buf(), client, ca_cert, serve, starts: 1 };
        server.wait_healthy().await;
        server
    }

    async fn wait_healthy(&self) {
        if let Err(e) = self.client.wait_healthy(Duration::from_secs(30)).await {
            panic!("server did not become healthy: {e}\n{}", self.proc.output());
        }
    }

    /// SIGKILLs the coordinator if it runs (no shutdown of any kind: a crash), starts it
    /// again on the same port, database and options, and waits until it answers. Each
    /// start logs to its own file (`server-N.log`).
    pub async fn restart(&mut self) {
        self.proc.kill();
        self.starts += 1;
        self.proc = serve_process(&self.dir, &self.serve, &format!("server-{}.log", self.starts));
        self.wait_healthy().await;
    }

    /// Packs `src` (default: the sample rollup) with the server's key, with the agent's
    /// `pack` command as a packager would, and uploads it; returns the package id.
    pub async fn upload(&self, src: Option<&Path>) -> PackageId {
        let src = src.map_or_else(|| workspace_root().join("examples/sample-rollup"), Path::to_path_buf);
        let pkg = self.dir.join(format!("pkg-{}.fup", free_port()));
        pack(&src, &self.key, &pkg);
        self.client.upload_package(&pkg).await.unwrap_or_else(|e| panic!("upload: {e}")).id
    }

    /// Stages and starts a rollout of `package` to every `env=test` agent with the spec's
    /// other fields from `extra`, and waits (up to `deadline`) until it stops by itself
    /// (finished, paused or aborted).
    pub async fn rollout_to_end(
        &self,
        package: &PackageId,
        extra: Value,
        deadline: Duration,
    ) -> fleetup_proto::api::Rollout {
        use fleetup_proto::api::{RolloutSpec, RolloutState};
        let mut spec = serde_json::json!({ "package_id": package, "targets": { "labels": { "env": "test" } } });
        spec.as_object_mut().unwrap().extend(extra.as_object().expect("a JSON object").clone());
        let spec: RolloutSpec = serde_json::from_value(spec).expect("a valid rollout spec");
        let r = self.client.create_rollout(&spec).await.unwrap_or_else(|e| panic!("staging: {e}"));
        self.client.start(&r.id).await.unwrap_or_else(|e| panic!("starting: {e}"));
        let ended = |r: &fleetup_proto::api::Rollout| {
            matches!(r.state, RolloutState::Finished | RolloutState::Paused | RolloutState::Aborted)
        };
        self.client.wait_rollout(&r.id, deadline, ended).await.unwrap_or_else(|e| panic!("rollout {}: {e}", r.id))
    }
    /// Enrolls a pretend agent (no agent process) with the enrollment token `secret`
    /// through the agent protocol, as `hostname`, and returns the coordinator's answer.
    pub async fn enroll_pretend(&self, secret: &str, hostname: &str) -> fleetup_proto::agent_api::EnrollResponse {
        let req = fleetup_proto::agent_api::EnrollRequest {
            token: secret.to_owned(),
            hostname: hostname.to_owned(),
            labels: BTreeMap::new(),
            facts: BTreeMap::new(),
            version: "test".into(),
        };
        let resp = reqwest::Client::new().post(format!("{}/api/v1/agent/enroll", self.url)).json(&req).send().await;
        let resp = resp.expect("enroll request");
        assert_eq!(resp.status(), reqwest::StatusCode::CREATED, "enrolling {hostname}");
        resp.json().await.expect("enroll answer")
    }

    /// An enrollment token good for `uses` agents, giving them the label `env=test`.
    pub async fn enrollment_token(&self, uses: u32) -> String {
        let new = NewEnrollmentToken {
            labels: BTreeMap::from([("env".to_owned(), "test".to_owned())]),
            max_uses: Some(u64::from(uses)),
            ..NewEnrollmentToken::default()
        };
        self.client.create_enrollment_token(&new).await.unwrap_or_else(|e| panic!("enrollment token: {e}")).secret
    }

    /// Every job of a rollout in the view `T` ([`fleetup_proto::api::Job`] or
    /// [`fleetup_proto::api::JobSummary`]), following the cursors to the last page.
    pub async fn jobs<T: JobView>(&self, rollout: &RolloutId) -> Vec<T> {
        let jobs = self.client.all_jobs(rollout, &JobFilter::default()).await;
        jobs.unwrap_or_else(|e| panic!("jobs of {rollout}: {e}"))
    }

    /// Waits until exactly `n` agents are online (not one more: a test that enrolls `n`
    /// expects no stray agent).
    pub async fn every_agent_online(&self, n: usize, deadline: Duration) {
        self.eventually("every agent online", deadline, async || {
            let online = self.client.agents().await?.iter().filter(|a| a.online).count();
            Ok((online == n).then_some(()))
        })
        .await;
    }

    /// Calls `check` until it finds what it wants, or panics after `deadline` (or at the
    /// first API error) with the error and the end of the server log.
    pub async fn eventually<T>(
        &self,
        what: &str,
        deadline: Duration,
        check: impl AsyncFnMut() -> Result<Option<T>, fleetup_client::Error>,
    ) -> T {
        match self.client.poll_until(what, deadline, check).await {
            Ok(v) => v,
            Err(e) => {
                let log = self.proc.output();
                let tail: Vec<&str> = log.lines().rev().take(40).collect();
                panic!("{e}\nlast lines of the server log:\n{}", tail.into_iter().rev().collect::<Vec<_>>().join("\n"))
            }
        }
    }
}

/// `fleetup-agent keygen --out KEY`: a signing key `KEY` and its public half `KEY.pub`.
pub fn keygen(key: &Path) {
    let out = Command::new(binary("fleetup-agent")).args(["keygen", "--out"]).arg(key).output().unwrap();
    assert!(out.status.success(), "keygen: {}", String::from_utf8_lossy(&out.stderr));
}

/// `fleetup-agent pack SRC --key KEY --out OUT`, as a packager would.
pub fn pack(src: &Path, key: &Path, out: &Path) {
    let done = Command::new(binary("fleetup-agent"))
        .arg("pack")
        .arg(src)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out)
        .output()
        .unwrap();
    assert!(done.status.success(), "pack: {}", String::from_utf8_lossy(&done.stderr));
}

/// `fleetup-server ARGS` in `dir`, its output in `dir/log`.
fn serve_process(dir: &Path, args: &[std::ffi::OsString], log: &str) -> Proc {
    let mut cmd = Command::new(binary("fleetup-server"));
    cmd.current_dir(dir).args(args).env("RUST_LOG", "info");
    Proc::spawn(cmd, dir.join(log))
}

/// `fleetup-server tls init --dir DIR --name …`: a private CA and a server certificate.
pub fn tls_init(dir: &Path, names: &[&str]) {
    let mut cmd = Command::new(binary("fleetup-server"));
    cmd.args(["tls", "init", "--dir"]).arg(dir);
    for n in names {
        cmd.args(["--name", n]);
    }
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "tls init: {}", String::from_utf8_lossy(&out.stderr));
}

/// A simulated server of the fleet: an install root at 1.0 with the demo service
/// running, and a `fleetup-agent run` process managing it.
#[derive(Debug)]
pub struct Host {
    /// The host's name (also its `--hostname`).
    pub name: String,
    /// Its directory: `root/`, `state/`, `hosts`, logs.
    pub dir: PathBuf,
    /// The install root.
    pub root: PathBuf,
    /// The agent's state dir.
    pub state: PathBuf,
    /// The demo service's port.
    pub port: u16,
    /// Host variables passed with `--var`.
    pub vars: BTreeMap<String, String>,
    /// Labels the agent proposes at enrollment (`k=v`).
    pub labels: Vec<String>,
    /// The agent process, while it runs.
    pub agent: Option<Proc>,
}

impl Host {
    /// Prepares a host: root at 1.0, a sandbox hosts file, the demo service started
    /// (as the exec backend would: detached, pid file in `run/demo.pid`).
    pub fn new(base: &Path, name: &str, crl_base: &str) -> Self {
        let dir = base.join(name);
        let root = dir.join("root");
        copy_tree(&workspace_root().join("examples/base-1.0"), &root).unwrap();
        std::fs::write(dir.join("hosts"), "127.0.0.1 localhost\n").unwrap();
        let port = free_port();
        let vars = BTreeMap::from([
            ("port".to_owned(), port.to_string()),
            ("demo_service_bin".to_owned(), binary("fleetup-demo-service").display().to_string()),
            ("crl_base".to_owned(), crl_base.to_owned()),
        ]);
        let host = Self {
            name: name.to_owned(),
            state: dir.join("state"),
            dir,
            root,
            port,
            vars,
            labels: Vec::new(),
            agent: None,
        };
        host.start_service();
        host
    }

    /// Starts the demo service the way the exec backend does and waits until it answers.
    pub fn start_service(&self) {
        let child = fleetup_demo_service::launch(
            &binary("fleetup-demo-service"),
            &self.root,
            self.port,
            &self.dir.join("service.log"),
        )
        .unwrap();
        // Detached like a daemon: the exec backend stops it through its pid file.
        std::mem::forget(child);
        wait_for("the demo service", Duration::from_secs(10), || self.version());
    }

    /// The version the demo service answers on `/health`, if it answers.
    pub fn version(&self) -> Option<String> {
        use std::io::{Read as _, Write as _};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.port)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET /health HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
        let mut out = String::new();
        s.read_to_string(&mut out).ok()?;
        let body = out.split("\r\n\r\n").nth(1)?;
        let v: Value = serde_json::from_str(body).ok()?;
        v["version"].as_str().map(str::to_owned)
    }

    /// Starts (or restarts) `fleetup-agent run` for this host.
    pub fn start_agent(&mut self, server: &Server, enroll_token: &str) {
        self.start_agent_with_env(server, enroll_token, &[]);
    }

    /// Like [`Host::start_agent`], with extra environment variables for the agent.
    pub fn start_agent_with_env(&mut self, server: &Server, enroll_token: &str, env: &[(String, String)]) {
        self.start_agent_via(server, &server.url, enroll_token, env);
    }

    /// Like [`Host::start_agent_with_env`], the agent talking to `url` (a proxy in front of
    /// `server`) instead of the server itself.
    pub fn start_agent_via(&mut self, server: &Server, url: &str, enroll_token: &str, env: &[(String, String)]) {
        let mut cmd = Command::new(binary("fleetup-agent"));
        cmd.args(["run", "--server", url, "--enroll-token", enroll_token, "--hostname", &self.name])
            .arg("--state-dir")
            .arg(&self.state)
            .arg("--root")
            .arg(&self.root)
            .arg("--trust")
            .arg(&server.key_pub)
            .arg("--hosts-file")
            .arg(self.dir.join("hosts"))
            .args(["--services-backend", "exec", "--poll-wait", "5"])
            .env("RUST_LOG", "info");
        if let Some(ca) = &server.ca_cert {
            cmd.arg("--ca-cert").arg(ca);
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        for l in &self.labels {
            cmd.args(["--label", l]);
        }
        for (k, v) in &self.vars {
            cmd.args(["--var", &format!("{k}={v}")]);
        }
        let n = std::fs::read_dir(&self.dir).map_or(0, Iterator::count);
        self.agent = Some(Proc::spawn(cmd, self.dir.join(format!("agent-{n}.log"))));
    }

    /// The install root's content: relative path -> mode and bytes (a link's target), to
    /// see that nothing changed. `run/` (the pid file) and `var/` (caches) are left out.
    pub fn tree(&self) -> BTreeMap<String, (u32, Vec<u8>)> {
        fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u32, Vec<u8>)>) {
            use std::os::unix::fs::PermissionsExt as _;
            for entry in std::fs::read_dir(dir).unwrap().flatten() {
                let path = entry.path();
                let rel = path.strip_prefix(root).unwrap().display().to_string();
                if rel == "run" || rel == "var" {
                    continue;
                }
                let md = std::fs::symlink_metadata(&path).unwrap();
                let mode = md.permissions().mode();
                if md.file_type().is_symlink() {
                    out.insert(rel, (mode, std::fs::read_link(&path).unwrap().into_os_string().into_encoded_bytes()));
                } else if md.is_dir() {
                    out.insert(rel, (mode, Vec::new()));
                    walk(root, &path, out);
                } else {
                    out.insert(rel, (mode, std::fs::read(&path).unwrap()));
                }
            }
        }
        let mut out = BTreeMap::new();
        walk(&self.root, &self.root, &mut out);
        out
    }

    /// Stops the demo service (test cleanup).
    pub fn stop_service(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.root.join("run/demo.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(a) = &mut self.agent {
            a.kill();
        }
        self.stop_service();
    }
}

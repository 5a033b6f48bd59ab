//! Real processes for the benchmarks: a `fleetup-server` on SQLite or on a throwaway
//! Postgres database (created and dropped per run), an admin token, packages. API calls go
//! through `fleetup-client`, the one client of the operator API.

use crate::Bins;
use anyhow::{Context as _, Result, bail};
use fleetup_client::{Client, NewEnrollmentToken};
use fleetup_e2e::fleet::{Proc, free_port};
use fleetup_proto::api::Rollout;
use fleetup_proto::id::{PackageId, RolloutId};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Which store the coordinator uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Backend {
    /// One SQLite file (WAL, synchronous=FULL).
    Sqlite,
    /// A database created for the run on the local Postgres.
    Postgres,
}

impl Backend {
    /// `sqlite` or `postgres`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

/// The Postgres server the throwaway databases are made on (`FLEETUP_BENCH_PG` overrides).
pub fn pg_admin_url() -> String {
    std::env::var("FLEETUP_BENCH_PG").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A database created for one run and dropped (forcibly) when this is dropped.
#[derive(Debug)]
pub struct PgDb {
    /// Its URL.
    pub url: String,
    name: String,
}

impl PgDb {
    /// Creates `fleetup_bench_<pid>_<port>` on the admin server.
    pub fn create() -> Result<Self> {
        let admin = pg_admin_url();
        let name = format!("fleetup_bench_{}_{}", std::process::id(), free_port());
        psql(&admin, &format!("create database {name}"))?;
        let base = admin.rsplit_once('/').map_or(admin.as_str(), |(b, _)| b);
        Ok(Self { url: format!("{base}/{name}"), name })
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let _ = psql(&pg_admin_url(), &format!("drop database if exists {} with (force)", self.name));
    }
}

fn psql(url: &str, sql: &str) -> Result<()> {
    let out =
        Command::new("psql").arg(url).args(["-v", "ON_ERROR_STOP=1", "-qc", sql]).output().context("running psql")?;
    if !out.status.success() {
        bail!("psql {sql}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// A running coordinator with an admin token.
#[derive(Debug)]
pub struct BenchServer {
    /// Base URL.
    pub url: String,
    /// Admin API token.
    pub token: String,
    /// The process.
    pub proc: Proc,
    /// Signing key for packages (trusted by the server and agents).
    pub key: PathBuf,
    /// Its public half.
    pub key_pub: PathBuf,
    /// Working directory.
    pub dir: PathBuf,
    /// The store.
    pub backend: Backend,
    /// The operator API with the admin token (2-minute request timeout: a page of 5,000
    /// full jobs under load takes a while).
    pub client: Client,
    /// The database URL (for `fleetup-server user create` and the like).
    pub db_url: String,
    _db: Option<PgDb>,
}

impl BenchServer {
    /// Starts `fleetup-server serve` on a free loopback port. `FLEETUP_LOG=warn`: request
    /// logging at info would be part of what is measured.
    pub async fn start(bins: &Bins, dir: &Path, backend: Backend, extra: &[&str]) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let key = dir.join("release.key");
        let key_pub = dir.join("release.key.pub");
        if !key.exists() {
            let ok = Command::new(bins.path("fleetup-agent")).args(["keygen", "--out"]).arg(&key).output()?;
            anyhow::ensure!(ok.status.success(), "keygen failed");
        }
        let db = match backend {
            Backend::Sqlite => None,
            Backend::Postgres => Some(PgDb::create()?),
        };
        let db_url =
            db.as_ref().map_or_else(|| format!("sqlite:{}", dir.join("fleetup.db").display()), |d| d.url.clone());
        let out = Command::new(bins.path("fleetup-server"))
            .args(["token", "create", "--role", "admin", "--name", "bench", "--database-url", &db_url])
            .output()?;
        anyhow::ensure!(out.status.success(), "token create: {}", String::from_utf8_lossy(&out.stderr));
        let token = String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap_or_default().trim().to_owned();
        let port = free_port();
        let mut cmd = Command::new(bins.path("fleetup-server"));
        cmd.current_dir(dir)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database-url", &db_url, "--trust"])
            .arg(&key_pub)
            .arg("--data-dir")
            .arg(dir.join("data"))
            .args(extra)
            // The server reads its levels from FLEETUP_LOG. Runs before 3678958 set RUST_LOG,
            // which the server ignores, so they logged at info. FLEETUP_BENCH_SERVER_LOG
            // overrides it when a run is profiled (`warn,fleetup_server::scheduler=debug`:
            // pass timings).
            .env("FLEETUP_LOG", std::env::var("FLEETUP_BENCH_SERVER_LOG").unwrap_or_else(|_| "warn".to_owned()));
        let proc = Proc::spawn(cmd, dir.join("server.log"));
        let url = format!("http://127.0.0.1:{port}");
        // Rollouts are timed by polling until they finish: poll often, so the poll interval
        // does not blur the figure.
        let client = Client::new(&url, &token)?
            .with_timeout(Duration::from_mins(2))
            .with_poll_interval(Duration::from_millis(25));
        if let Err(e) = client.wait_healthy(Duration::from_mins(1)).await {
            bail!("server not healthy: {e}\n{}", proc.output());
        }
        Ok(Self { url, token, proc, key, key_pub, dir: dir.to_path_buf(), backend, client, db_url, _db: db })
    }

    /// The server's pid.
    pub fn pid(&self) -> u32 {
        self.proc.child.id()
    }

    /// Packs `src` with the server's key and uploads it; returns the package id.
    pub async fn upload(&self, bins: &Bins, src: &Path) -> Result<PackageId> {
        let pkg = self.dir.join(format!("pkg-{}.fup", free_port()));
        pack(bins, src, &self.key, &pkg)?;
        Ok(self.client.upload_package(&pkg).await?.id)
    }

    /// An enrollment token for `uses` agents with these labels.
    pub async fn enrollment_token(&self, uses: usize, labels: &[(&str, &str)]) -> Result<String> {
        let new = NewEnrollmentToken {
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect::<BTreeMap<_, _>>(),
            max_uses: Some(uses as u64),
            ..NewEnrollmentToken::default()
        };
        Ok(self.client.create_enrollment_token(&new).await?.secret)
    }

    /// Waits until the rollout has `finished_at`, or `deadline` passes; returns the rollout.
    pub async fn wait_rollout_finished(&self, id: &RolloutId, deadline: Duration) -> Result<Rollout> {
        Ok(self.client.wait_rollout(id, deadline, |r| r.finished_at.is_some()).await?)
    }

    /// Waits until at least `n` agents have enrolled (online or not); `what` names them in
    /// the error.
    pub async fn wait_enrolled(&self, n: usize, deadline: Duration, what: &str) -> Result<()> {
        let enrolled = async || Ok((self.client.agents().await?.len() >= n).then_some(()));
        Ok(self.client.poll_until(what, deadline, enrolled).await?)
    }

    /// Logs in to the dashboard as a browser does: creates a viewer with
    /// `fleetup-server user create` on the run's database, fetches `/login` (its CSRF field
    /// and the cookie binding it), posts the form and keeps the session cookie. Returns a
    /// client that follows no redirects (a redirect to `/login` then shows as a 303, not as
    /// a login page measured as the dashboard) and the `Cookie` header to send.
    pub async fn dashboard_login(&self, bins: &Bins) -> Result<(reqwest::Client, String)> {
        use std::io::Write as _;
        const PASSWORD: &str = "bench dashboard password";
        let mut child = Command::new(bins.path("fleetup-server"))
            .args(["user", "create", "--username", "bench", "--role", "viewer", "--password-stdin"])
            .args(["--database-url", &self.db_url])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .context("running fleetup-server user create")?;
        child.stdin.take().context("user create stdin")?.write_all(format!("{PASSWORD}\n").as_bytes())?;
        let out = child.wait_with_output()?;
        anyhow::ensure!(out.status.success(), "user create: {}", String::from_utf8_lossy(&out.stderr));
        let browser = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(Duration::from_mins(2))
            .build()?;
        let form = browser.get(format!("{}/login", self.url)).send().await?;
        anyhow::ensure!(form.status().as_u16() == 200, "GET /login: {}", form.status());
        let login_cookie = set_cookie(&form, "fleetup_login").context("GET /login set no fleetup_login cookie")?;
        let html = form.text().await?;
        let csrf = html
            .split_once("name=\"csrf\" value=\"")
            .and_then(|(_, rest)| rest.split('"').next())
            .context("no csrf field in the login form")?
            .to_owned();
        let body = [("csrf", csrf.as_str()), ("username", "bench"), ("password", PASSWORD), ("next", "/")]
            .iter()
            .map(|(k, v)| format!("{k}={}", form_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let resp = browser
            .post(format!("{}/login", self.url))
            .header("cookie", format!("fleetup_login={login_cookie}"))
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
            .await?;
        let status = resp.status().as_u16();
        let session = set_cookie(&resp, "fleetup_session");
        anyhow::ensure!(status == 303, "POST /login: {status} {}", resp.text().await.unwrap_or_default());
        let session = session.context("POST /login set no fleetup_session cookie")?;
        Ok((browser, format!("fleetup_session={session}")))
    }

    /// A value of the server's Prometheus `/metrics` (first series with that name).
    pub async fn metric(&self, name: &str) -> Option<f64> {
        let text = self.client.metrics().await.ok()?;
        text.lines()
            .filter(|l| !l.starts_with('#'))
            .find(|l| l.split([' ', '{']).next() == Some(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
    }
}

/// The value a response sets for cookie `name`.
fn set_cookie(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers().get_all("set-cookie").iter().filter_map(|v| v.to_str().ok()).find_map(|c| {
        c.strip_prefix(name)?.strip_prefix('=').map(|v| v.split(';').next().unwrap_or_default().to_owned())
    })
}

/// `application/x-www-form-urlencoded` value (reqwest is built without its `form` feature).
fn form_encode(s: &str) -> String {
    s.bytes().map(|b| if b.is_ascii_alphanumeric() { (b as char).to_string() } else { format!("%{b:02X}") }).collect()
}

/// `fleetup-agent pack SRC --key KEY --out OUT`.
pub fn pack(bins: &Bins, src: &Path, key: &Path, out: &Path) -> Result<()> {
    let o = Command::new(bins.path("fleetup-agent"))
        .arg("pack")
        .arg(src)
        .arg("--key")
        .arg(key)
        .arg("--out")
        .arg(out)
        .output()?;
    anyhow::ensure!(o.status.success(), "pack {}: {}", src.display(), String::from_utf8_lossy(&o.stderr));
    Ok(())
}

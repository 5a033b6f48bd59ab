//! `spawn_app()`: a fresh database and a port-0 server per test, typed helpers for the
//! operator API and a fake agent.

use chrono::Utc;
use fleetup_proto::agent_api::{EnrollRequest, EnrollResponse, EventBatch, JobAssignment};
use fleetup_proto::{EngineEvent, InstallOutcome, InstallSummary, PhaseId, PhaseStatus};
use fleetup_server::config::Config;
use fleetup_server::model::Role;
use serde_json::{Value, json};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// A signed sample package and its trusted key, built once per test process.
pub struct Fixture {
    _dir: tempfile::TempDir,
    pub package: PathBuf,
    pub trusted: PathBuf,
}

pub fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("signer.key");
        fleetup_proto::keys::write_keypair(&key_path).unwrap();
        let key = fleetup_proto::SecretKey::read(&key_path).unwrap();
        let package = dir.path().join("sample.fleetup");
        let src = fleetup_e2e::workspace_root().join("examples/sample-rollup");
        fleetup_proto::package::pack_dir(&src, &key, &package).unwrap();
        Fixture { package, trusted: dir.path().join("signer.key.pub"), _dir: dir }
    })
}

/// The bytes of the sample rollup with its manifest text changed by `edit`, signed by the
/// trusted key.
pub fn variant_package(edit: impl Fn(String) -> String) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let src = fleetup_e2e::workspace_root().join("examples/sample-rollup");
    let copy = dir.path().join("rollup");
    let status = std::process::Command::new("cp").arg("-a").arg(&src).arg(&copy).status().unwrap();
    assert!(status.success());
    let manifest = copy.join("manifest.toml");
    std::fs::write(&manifest, edit(std::fs::read_to_string(&manifest).unwrap())).unwrap();
    let key = fleetup_proto::SecretKey::read(&fixture().trusted.with_extension("")).unwrap();
    let package = dir.path().join("variant.fleetup");
    fleetup_proto::package::pack_dir(&copy, &key, &package).unwrap();
    std::fs::read(&package).unwrap()
}

fn init_tracing() {
    static INIT: OnceLock<()> = OnceLock::new();
    INIT.get_or_init(|| {
        // reqwest is built without a TLS provider of its own; tests speak plain HTTP on loopback.
        let _ = rustls::crypto::ring::default_provider().install_default();
        if std::env::var_os("TEST_LOG").is_some() {
            tracing_subscriber::fmt().with_env_filter("info,sqlx=warn").with_test_writer().init();
        }
    });
}

/// A throwaway Postgres database, dropped with the test.
pub struct PgDb {
    admin_url: String,
    name: String,
    pub url: String,
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (admin, name) = (self.admin_url.clone(), self.name.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                use sqlx::Connection as _;
                if let Ok(mut c) = sqlx::PgConnection::connect(&admin).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!("drop database if exists {name} with (force)")))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

/// Creates a fresh Postgres database, or skips (None) when Postgres is unreachable.
pub async fn pg_database(test: &str) -> Option<PgDb> {
    use sqlx::Connection as _;
    let admin_url =
        std::env::var("FLEETUP_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let mut conn = match tokio::time::timeout(Duration::from_secs(5), sqlx::PgConnection::connect(&admin_url)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            fleetup_e2e::skip_or_fail(test, &format!("Postgres at {admin_url} is unreachable ({e})"));
            return None;
        }
        Err(_) => {
            fleetup_e2e::skip_or_fail(test, &format!("Postgres at {admin_url} did not answer"));
            return None;
        }
    };
    let name = format!("fleetup_t_{}", uuid::Uuid::new_v4().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("create database {name}"))).execute(&mut conn).await.unwrap();
    let base = admin_url.rsplit_once('/').map_or(admin_url.as_str(), |(b, _)| b);
    Some(PgDb { url: format!("{base}/{name}"), admin_url: admin_url.clone(), name })
}

pub struct TestApp {
    pub base: String,
    pub client: reqwest::Client,
    pub admin: String,
    pub operator: String,
    pub viewer: String,
    /// The database URL (a second replica uses the same one).
    #[allow(dead_code)]
    pub db_url: String,
    /// The server's data directory (package files under `packages/`).
    pub data_dir: PathBuf,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
    _pg: Option<std::sync::Arc<PgDb>>,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }
}

/// A server on a fresh database; `None` when the backend is unavailable (skipped).
pub async fn spawn_app(backend: Backend) -> Option<TestApp> {
    spawn_app_with(backend, |_| {}).await
}

/// A server on a fresh database with `tweak` applied to its configuration.
pub async fn spawn_app_with(backend: Backend, tweak: impl FnOnce(&mut Config)) -> Option<TestApp> {
    let pg = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => Some(std::sync::Arc::new(pg_database("postgres test").await?)),
    };
    spawn_configured(backend, pg, None, tweak).await
}

/// A server on a given database (a second replica when `pg` is shared).
pub async fn spawn_on(
    backend: Backend,
    pg: Option<std::sync::Arc<PgDb>>,
    tokens: Option<(String, String, String)>,
) -> Option<TestApp> {
    spawn_configured(backend, pg, tokens, |_| {}).await
}

async fn spawn_configured(
    backend: Backend,
    pg: Option<std::sync::Arc<PgDb>>,
    tokens: Option<(String, String, String)>,
    tweak: impl FnOnce(&mut Config),
) -> Option<TestApp> {
    init_tracing();
    let dir = tempfile::tempdir().unwrap();
    let db_url = match (&pg, backend) {
        (Some(p), _) => p.url.clone(),
        (None, _) => format!("sqlite:{}", dir.path().join("fleetup.db").display()),
    };
    let (admin, operator, viewer) = match tokens {
        Some(t) => t,
        None => (
            fleetup_server::cli::create_token(&db_url, Role::Admin, "admin").await.unwrap(),
            fleetup_server::cli::create_token(&db_url, Role::Operator, "operator").await.unwrap(),
            fleetup_server::cli::create_token(&db_url, Role::Viewer, "viewer").await.unwrap(),
        ),
    };
    let data_dir = dir.path().join("data");
    let mut config = Config::new(&db_url, data_dir.clone());
    config.trust = vec![fixture().trusted.clone()];
    config.scheduler_interval_ms = 50;
    config.heartbeat_flush_ms = 100;
    config.lease_secs = 30;
    config.observer = Some(crate::contract::observer());
    tweak(&mut config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        fleetup_server::run(config, listener, async {
            let _ = rx.await;
        })
        .await
        .unwrap();
    });
    Some(TestApp {
        base: format!("http://{addr}"),
        client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap(),
        admin,
        operator,
        viewer,
        db_url,
        data_dir,
        stop: Some(tx),
        task: Some(task),
        _dir: dir,
        _pg: pg,
    })
}

impl TestApp {
    pub fn tokens(&self) -> (String, String, String) {
        (self.admin.clone(), self.operator.clone(), self.viewer.clone())
    }

    /// Sends a request with a token and a JSON body; returns (status, JSON body or Null).
    pub async fn call(&self, method: &str, path: &str, token: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self.client.request(method.parse().unwrap(), format!("{}{path}", self.base)).bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str) -> Value {
        let (s, v) = self.call("GET", path, &self.viewer, None).await;
        assert_eq!(s, 200, "GET {path}: {v}");
        v
    }

    pub async fn post(&self, path: &str, body: Value) -> Value {
        let (s, v) = self.call("POST", path, &self.operator, Some(body)).await;
        assert!(s == 200 || s == 201, "POST {path}: {s} {v}");
        v
    }

    pub async fn upload_package(&self) -> String {
        self.upload_bytes(std::fs::read(&fixture().package).unwrap()).await
    }

    /// Uploads a package file's bytes as the operator; returns the package id.
    async fn upload_bytes(&self, bytes: Vec<u8>) -> String {
        let res = self
            .client
            .post(format!("{}/api/v1/packages", self.base))
            .bearer_auth(&self.operator)
            .body(bytes)
            .send()
            .await
            .unwrap();
        let status = res.status().as_u16();
        let v: Value = res.json().await.unwrap();
        assert_eq!(status, 201, "{v}");
        v["id"].as_str().unwrap().to_owned()
    }

    /// Uploads the sample rollup with its manifest text changed by `edit`, signed by the
    /// trusted key; returns the package id.
    pub async fn upload_variant(&self, edit: impl Fn(String) -> String) -> String {
        self.upload_bytes(variant_package(edit)).await
    }

    pub async fn enrollment_token(&self, labels: Value) -> String {
        let (s, v) =
            self.call("POST", "/api/v1/enrollment-tokens", &self.admin, Some(json!({ "labels": labels }))).await;
        assert_eq!(s, 201, "{v}");
        v["secret"].as_str().unwrap().to_owned()
    }

    pub async fn enroll(&self, token: &str, hostname: &str) -> FakeAgent {
        let req = EnrollRequest {
            token: token.into(),
            hostname: hostname.into(),
            labels: std::collections::BTreeMap::default(),
            facts: std::collections::BTreeMap::default(),
            version: "0.1.0".into(),
        };
        let res = self.client.post(format!("{}/api/v1/agent/enroll", self.base)).json(&req).send().await.unwrap();
        assert_eq!(res.status().as_u16(), 201);
        let r: EnrollResponse = res.json().await.unwrap();
        FakeAgent { id: r.agent_id, token: r.agent_token, base: self.base.clone(), client: self.client.clone() }
    }

    /// Enrolls `n` agents labelled `group=<group>`.
    pub async fn fleet(&self, group: &str, n: usize) -> Vec<FakeAgent> {
        let token = self.enrollment_token(json!({ "group": group })).await;
        let mut out = Vec::new();
        for i in 0..n {
            out.push(self.enroll(&token, &format!("{group}-{i}")).await);
        }
        out
    }

    /// `n` agents of a new `group`, in a started rollout of the package whose one wave runs
    /// them all at once; returns its id and the agents.
    pub async fn one_wave_of(&self, group: &str, n: usize) -> (String, Vec<FakeAgent>) {
        let package = self.upload_package().await;
        let agents = self.fleet(group, n).await;
        let spec = json!({ "package_id": package, "targets": { "labels": { "group": group } }, "waves": [n], "concurrency": n });
        (self.rollout(spec, true).await, agents)
    }

    /// Creates and starts a rollout; returns its id.
    pub async fn rollout(&self, mut spec: Value, start: bool) -> String {
        if spec.get("name").is_none() {
            spec["name"] = json!("test rollout");
        }
        let r = self.post("/api/v1/rollouts", spec).await;
        let id = r["id"].as_str().unwrap().to_owned();
        if start {
            self.post(&format!("/api/v1/rollouts/{id}/start"), json!({})).await;
        }
        id
    }

    /// Waits (with a deadline) until `check` on the rollout is true.
    pub async fn wait_rollout(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let r = self.get(&format!("/api/v1/rollouts/{id}")).await;
            if check(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; rollout: {r}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn wait_job(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let j = self.get(&format!("/api/v1/jobs/{id}")).await;
            if check(&j) {
                return j;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}; job: {j}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The value of a counter on `/metrics`, `series` with its labels as rendered
    /// (`name{label="v"}`); 0 when never recorded. Counters are of the test process (every
    /// server of it records into one recorder): compare before and after, as a lower bound.
    pub async fn counter(&self, series: &str) -> u64 {
        let text = self.client.get(format!("{}/metrics", self.base)).send().await.unwrap().text().await.unwrap();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
            .map_or(0, |v| v.trim().parse().unwrap_or_else(|e| panic!("{series} = {v}: {e}")))
    }

    pub async fn audit_len(&self) -> usize {
        self.get("/api/v1/audit?limit=5000").await["items"].as_array().unwrap().len()
    }
}

/// An agent speaking the protocol by hand.
#[derive(Clone)]
pub struct FakeAgent {
    pub id: String,
    pub token: String,
    base: String,
    client: reqwest::Client,
}

impl FakeAgent {
    /// The same agent speaking to another coordinator on the same database.
    #[allow(dead_code)]
    pub fn via(&self, app: &TestApp) -> Self {
        Self { base: app.base.clone(), ..self.clone() }
    }

    /// Long-polls; `None` on 204.
    pub async fn poll(&self, wait: u64) -> Option<JobAssignment> {
        let res = self
            .client
            .get(format!("{}/api/v1/agent/poll?wait={wait}", self.base))
            .bearer_auth(&self.token)
            .send()
            .await
            .unwrap();
        match res.status().as_u16() {
            204 => None,
            200 => Some(res.json().await.unwrap()),
            s => panic!("poll: {s} {}", res.text().await.unwrap()),
        }
    }

    /// Polls until a job comes (deadline 20 s).
    pub async fn next_job(&self) -> JobAssignment {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(j) = self.poll(2).await {
                return j;
            }
            assert!(Instant::now() < deadline, "agent {} got no job in time", self.id);
        }
    }

    /// Posts events; returns (status, body).
    pub async fn report(&self, job: &str, token: u64, events: Vec<EngineEvent>) -> (u16, Value) {
        self.report_wait(job, token, events, 0).await
    }

    pub async fn report_wait(&self, job: &str, token: u64, events: Vec<EngineEvent>, wait: u64) -> (u16, Value) {
        let res = self
            .client
            .post(format!("{}/api/v1/agent/jobs/{job}/events?wait={wait}", self.base))
            .bearer_auth(&self.token)
            .json(&EventBatch { fencing_token: token, events })
            .send()
            .await
            .unwrap();
        let s = res.status().as_u16();
        (s, res.json().await.unwrap_or(Value::Null))
    }

    /// Runs a whole install: a few phase events then the final summary.
    pub async fn finish(&self, job: &JobAssignment, outcome: InstallOutcome) {
        let mut events = vec![
            ev(1, PhaseId::CheckSystem, PhaseStatus::Running),
            ev(2, PhaseId::CheckSystem, PhaseStatus::Succeeded),
        ];
        events.push(final_ev(3, outcome));
        let (s, v) = self.report(&job.job_id, job.fencing_token, events).await;
        assert_eq!(s, 200, "{v}");
    }
}

pub fn ev(seq: u64, phase: PhaseId, status: PhaseStatus) -> EngineEvent {
    EngineEvent { seq, phase, status, message: format!("{phase} {status:?}"), data: Value::Null, at: Utc::now() }
}

/// A check-system warning with code `code` asking a decision (id 1) whose question is
/// `message`.
pub fn warning_ev(seq: u64, code: &str, message: &str) -> EngineEvent {
    use fleetup_proto::{DecisionKind, DecisionRequest};
    let kind = DecisionKind::Warning { code: code.into(), remediation: None };
    let req = DecisionRequest {
        id: 1,
        phase: PhaseId::CheckSystem,
        message: message.into(),
        options: DecisionRequest::options_for(&kind),
        kind,
    };
    let mut e = ev(seq, PhaseId::CheckSystem, PhaseStatus::Warning);
    e.data = json!({ "decision": req });
    e
}

/// A stop-services warning asking a files-in-use decision (id 1): `holders` (pid, process,
/// file) hold files the install replaces.
pub fn files_in_use_ev(seq: u64, holders: &[(u32, &str, &str)]) -> EngineEvent {
    use fleetup_proto::{DecisionKind, DecisionRequest, HoldingProcess};
    let processes: Vec<HoldingProcess> = holders
        .iter()
        .map(|(pid, name, file)| HoldingProcess { pid: *pid, name: (*name).into(), files: vec![(*file).into()] })
        .collect();
    let names: Vec<String> =
        holders.iter().map(|(pid, name, file)| format!("{name} (pid {pid}) holds {file}")).collect();
    let kind = DecisionKind::FilesInUse { processes };
    let req = DecisionRequest {
        id: 1,
        phase: PhaseId::StopServices,
        message: format!("files in use (services still running): {}", names.join("; ")),
        options: DecisionRequest::options_for(&kind),
        kind,
    };
    let mut e = ev(seq, PhaseId::StopServices, PhaseStatus::Warning);
    e.data = json!({ "decision": req });
    e
}

pub fn final_ev(seq: u64, outcome: InstallOutcome) -> EngineEvent {
    let summary = InstallSummary {
        outcome,
        rollup: "demo-service".into(),
        version: "1.1.0".into(),
        outage_ms: 1500,
        total_ms: 4000,
        phase_ms: std::collections::BTreeMap::default(),
        restart_required: false,
        failed_phase: (outcome != InstallOutcome::Succeeded).then_some(PhaseId::StartServices),
        error: (outcome != InstallOutcome::Succeeded).then(|| "health check failed".to_owned()),
    };
    let phase = if outcome == InstallOutcome::Succeeded { PhaseId::Cleanup } else { PhaseId::Rollback };
    EngineEvent {
        seq,
        phase,
        status: PhaseStatus::Succeeded,
        message: "done".into(),
        data: json!({ "summary": summary }),
        at: Utc::now(),
    }
}

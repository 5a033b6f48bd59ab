//! fleetup-client: the one typed client of the coordinator's operator API (`/api/v1`).
//!
//! The demo, the end-to-end tests and the benchmarks all drive the coordinator through
//! this crate, so the transport (one pooled reqwest client, a request timeout), the bearer
//! token, the API's error body and the package upload are written once, and every answer
//! is parsed into the wire types of [`fleetup_proto::api`]: if the coordinator's JSON drifts
//! from those types, every user of the API notices at once (a [`Error::Decode`]), not the
//! one script that happened to read the changed field.
//!
//! ```no_run
//! # async fn demo() -> Result<(), fleetup_client::Error> {
//! use fleetup_client::{Client, JobFilter};
//! use fleetup_proto::api::{JobSummary, RolloutSpec};
//! use std::time::Duration;
//! let client = Client::new("http://127.0.0.1:8080", "flt_…")?;
//! client.wait_healthy(Duration::from_secs(10)).await?;
//! let package = client.upload_package("sample-1.1.fup".as_ref()).await?;
//! let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
//!     "name": "sample 1.1 to web", "package_id": package.id,
//!     "targets": { "labels": { "role": "web" } }, "waves": [1, "100%"],
//! })).expect("a valid spec");
//! let rollout = client.create_rollout(&spec).await?;
//! client.start(&rollout.id).await?;
//! let done = client.wait_rollout(&rollout.id, Duration::from_secs(600), |r| r.state.is_terminal()).await?;
//! for job in client.all_jobs::<JobSummary>(&done.id, &JobFilter::default()).await? {
//!     println!("{} {}", job.hostname, job.state.as_str());
//! }
//! # Ok(()) }
//! ```
//!
//! Request bodies the proto crate does not define (an enrollment token's options, a
//! decision's answer) are small types here. Nothing in this crate sleeps without a
//! deadline: every wait helper takes one and fails with [`Error::Deadline`].

mod error;
mod jobs;
mod rollouts_ext;
mod tokens;
mod wait;
mod webhooks;

pub use error::{Error, ErrorBody};
pub use jobs::{JobFilter, JobPages, JobView, JobsPage};
pub use reqwest::{Method, StatusCode};
pub use rollouts_ext::{AgentQuery, BulkAnswer, Created, RolloutQuery};
pub use webhooks::NewWebhook;

use fleetup_proto::agent_api::LogLine;
use fleetup_proto::api::{Agent, AuditEntry, Decision, EnrollmentToken, Job, Package, Rollout, RolloutSpec};
use fleetup_proto::id::{AgentId, JobId, PackageId, RolloutId};
use fleetup_proto::{DecisionAnswer, EngineEvent};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

/// The default time one request may take, answer included.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);

/// A client of one coordinator, authenticated with one API token. Cheap to clone (the
/// connection pool is shared).
#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    timeout: Duration,
    poll_every: Duration,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The token is a secret: never in logs or panic messages.
        f.debug_struct("Client").field("base", &self.base).field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

pub use fleetup_proto::api::Health;

/// Options of a new enrollment token (`POST /enrollment-tokens`); every field may be left
/// out.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NewEnrollmentToken {
    /// A name for people (default: derived from the id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Labels given to every agent enrolled with it.
    pub labels: BTreeMap<String, String>,
    /// Lifetime in seconds (default 24 h).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
    /// How many agents may enroll with it (default unlimited).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_uses: Option<u64>,
}

/// A created enrollment token: the stored token and its secret, shown this once.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct CreatedEnrollmentToken {
    /// The token as listed later.
    #[serde(flatten)]
    pub token: EnrollmentToken,
    /// What agents pass as `--enroll-token`.
    pub secret: String,
}

/// Filters of `GET /audit`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuditQuery {
    /// At most this many entries, newest first (server default 200).
    pub limit: Option<u32>,
    /// Only entries about this object.
    pub object_id: Option<String>,
}

impl Client {
    /// A client of the coordinator at `base_url` (`http://127.0.0.1:8080`, no `/api/v1`)
    /// sending `token` as its bearer token, with [`DEFAULT_TIMEOUT`] per request.
    pub fn new(base_url: &str, token: &str) -> Result<Self, Error> {
        // reqwest is built without a bundled crypto provider (the workspace's Cargo.toml:
        // ring, not aws-lc); an https URL needs one installed. A second install is a no-op.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .build()
            .map_err(|source| Error::Transport { call: "building the HTTP client".into(), source })?;
        Ok(Self {
            http,
            base: base_url.trim_end_matches('/').to_owned(),
            token: token.to_owned(),
            timeout: DEFAULT_TIMEOUT,
            poll_every: wait::DEFAULT_POLL,
        })
    }

    /// The same client trusting only the CA certificates in `pem` for https (a coordinator
    /// with a private CA, e.g. the ca.pem of `fleetup-server tls init`).
    pub fn with_ca_cert(mut self, pem: &[u8]) -> Result<Self, Error> {
        let transport = |source| Error::Transport { call: "reading the CA certificate".into(), source };
        let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(transport)?;
        self.http = reqwest::Client::builder().tls_certs_only(certs).build().map_err(transport)?;
        Ok(self)
    }

    /// The same client with another per-request timeout (a benchmark reading 10,000 jobs,
    /// a large upload).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same client polling every `every` in the wait helpers (default 100 ms); a
    /// benchmark timing a rollout polls more often so the poll does not blur the figure.
    pub fn with_poll_interval(mut self, every: Duration) -> Self {
        self.poll_every = every;
        self
    }

    /// The base URL, e.g. `http://127.0.0.1:8080`.
    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The API token this client sends.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// A request to `/api/v1{path}` with the token and the timeout set, for what the typed
    /// methods do not cover (a test of a raw status code, a benchmark timing raw bytes).
    pub fn request(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        self.http.request(method, format!("{}/api/v1{path}", self.base)).bearer_auth(&self.token).timeout(self.timeout)
    }

    /// Sends `req`, turning a non-2xx answer into [`Error::Status`]; returns the body.
    async fn body(&self, call: String, req: reqwest::RequestBuilder) -> Result<(String, String), Error> {
        let resp = match req.send().await {
            Ok(r) => r,
            Err(source) => return Err(Error::Transport { call, source }),
        };
        let status = resp.status();
        let text = match resp.text().await {
            Ok(t) => t,
            Err(source) => return Err(Error::Transport { call, source }),
        };
        if status.is_success() { Ok((call, text)) } else { Err(error::status_error(call, status, &text)) }
    }

    /// Sends `req` and parses a 2xx answer as `T`.
    async fn send<T: DeserializeOwned>(&self, call: String, req: reqwest::RequestBuilder) -> Result<T, Error> {
        let (call, text) = self.body(call, req).await?;
        serde_json::from_str(&text).map_err(|source| Error::Decode { call, source, body: error::shown(&text) })
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, Error> {
        self.send(format!("GET /api/v1{path}"), self.request(Method::GET, path)).await
    }

    async fn post<T: DeserializeOwned>(&self, path: &str, body: &impl Serialize) -> Result<T, Error> {
        self.send(format!("POST /api/v1{path}"), self.request(Method::POST, path).json(body)).await
    }

    /// `GET /healthz` (no token needed).
    pub async fn health(&self) -> Result<Health, Error> {
        let req = self.http.get(format!("{}/healthz", self.base)).timeout(self.timeout);
        self.send("GET /healthz".into(), req).await
    }

    /// `GET /metrics`: the Prometheus text (no token needed).
    pub async fn metrics(&self) -> Result<String, Error> {
        let req = self.http.get(format!("{}/metrics", self.base)).timeout(self.timeout);
        Ok(self.body("GET /metrics".into(), req).await?.1)
    }

    /// `POST /packages` with the file at `path` as the body, streamed: the coordinator
    /// verifies the signature and answers the stored package (422 with the reason if not).
    pub async fn upload_package(&self, path: &Path) -> Result<Package, Error> {
        let file = tokio::fs::File::open(path).await.map_err(|source| Error::File { path: path.into(), source })?;
        self.upload(reqwest::Body::from(file)).await
    }

    /// `POST /packages` with a package file already in memory.
    pub async fn upload_package_bytes(&self, bytes: Vec<u8>) -> Result<Package, Error> {
        self.upload(reqwest::Body::from(bytes)).await
    }

    async fn upload(&self, body: reqwest::Body) -> Result<Package, Error> {
        let req = self.request(Method::POST, "/packages").header("content-type", "application/octet-stream").body(body);
        self.send("POST /api/v1/packages".into(), req).await
    }

    /// `GET /packages`, every page: newest upload first.
    pub async fn packages(&self) -> Result<Vec<Package>, Error> {
        self.every_page("/packages").await
    }

    /// Every item of a cursor-paged listing (`/rollouts`, `/agents`, `/packages`), following
    /// `next` to the last page.
    async fn every_page<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Vec<T>, Error> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let params: Vec<(&str, &str)> =
                cursor.as_deref().map(|c| ("cursor", c)).into_iter().chain([("limit", "5000")]).collect();
            let page: fleetup_proto::api::Page<T> =
                self.send(format!("GET /api/v1{path}"), self.request(Method::GET, path).query(&params)).await?;
            items.extend(page.items);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(items),
            }
        }
    }

    /// `GET /packages/{id}`.
    pub async fn package(&self, id: &PackageId) -> Result<Package, Error> {
        self.get(&format!("/packages/{id}")).await
    }

    /// `POST /enrollment-tokens` (admin): the token and its secret.
    pub async fn create_enrollment_token(&self, new: &NewEnrollmentToken) -> Result<CreatedEnrollmentToken, Error> {
        self.post("/enrollment-tokens", new).await
    }

    /// `GET /enrollment-tokens` (admin; never the secrets).
    pub async fn enrollment_tokens(&self) -> Result<Vec<EnrollmentToken>, Error> {
        self.get("/enrollment-tokens").await
    }

    /// `GET /agents`, every page: by hostname.
    pub async fn agents(&self) -> Result<Vec<Agent>, Error> {
        self.every_page("/agents").await
    }

    /// `GET /agents/{id}`.
    pub async fn agent(&self, id: &AgentId) -> Result<Agent, Error> {
        self.get(&format!("/agents/{id}")).await
    }

    /// `PATCH /agents/{id}`: replaces the agent's labels.
    pub async fn set_labels(&self, id: &AgentId, labels: &BTreeMap<String, String>) -> Result<Agent, Error> {
        let path = format!("/agents/{id}");
        let req = self.request(Method::PATCH, &path).json(&serde_json::json!({ "labels": labels }));
        self.send(format!("PATCH /api/v1{path}"), req).await
    }

    /// `DELETE /agents/{id}` (admin): its token stops working.
    pub async fn revoke_agent(&self, id: &AgentId) -> Result<(), Error> {
        let path = format!("/agents/{id}");
        self.body(format!("DELETE /api/v1{path}"), self.request(Method::DELETE, &path)).await.map(drop)
    }

    /// `POST /rollouts`: stages a draft rollout (waves and jobs planned, nothing started).
    pub async fn create_rollout(&self, spec: &RolloutSpec) -> Result<Rollout, Error> {
        self.post("/rollouts", spec).await
    }

    /// `GET /rollouts`, every page: newest first.
    pub async fn rollouts(&self) -> Result<Vec<Rollout>, Error> {
        self.every_page("/rollouts").await
    }

    /// `GET /rollouts/{id}`: state, waves, counts per job state.
    pub async fn rollout(&self, id: &RolloutId) -> Result<Rollout, Error> {
        self.get(&format!("/rollouts/{id}")).await
    }

    async fn act(&self, id: &RolloutId, action: &str) -> Result<Rollout, Error> {
        self.post(&format!("/rollouts/{id}/{action}"), &serde_json::json!({})).await
    }

    /// `POST /rollouts/{id}/start`.
    pub async fn start(&self, id: &RolloutId) -> Result<Rollout, Error> {
        self.act(id, "start").await
    }

    /// `POST /rollouts/{id}/pause`.
    pub async fn pause(&self, id: &RolloutId) -> Result<Rollout, Error> {
        self.act(id, "pause").await
    }

    /// `POST /rollouts/{id}/resume`.
    pub async fn resume(&self, id: &RolloutId) -> Result<Rollout, Error> {
        self.act(id, "resume").await
    }

    /// `POST /rollouts/{id}/approve` (when `awaiting-approval`).
    pub async fn approve(&self, id: &RolloutId) -> Result<Rollout, Error> {
        self.act(id, "approve").await
    }

    /// `POST /rollouts/{id}/cancel`.
    pub async fn cancel(&self, id: &RolloutId) -> Result<Rollout, Error> {
        self.act(id, "cancel").await
    }

    /// `POST /rollouts/{id}/retry-failed`: a new draft of the failed, rolled-back and lost
    /// servers only (409 when there is none).
    pub async fn retry_failed(&self, id: &RolloutId) -> Result<Rollout, Error> {
        self.act(id, "retry-failed").await
    }

    /// `GET /jobs/{id}`.
    pub async fn job(&self, id: &JobId) -> Result<Job, Error> {
        self.get(&format!("/jobs/{id}")).await
    }

    /// `GET /jobs/{id}/events?after=&limit=`: engine events with `seq > after`, oldest first.
    pub async fn job_events(&self, id: &JobId, after: u64, limit: Option<u32>) -> Result<Vec<EngineEvent>, Error> {
        self.get(&paged(&format!("/jobs/{id}/events"), after, limit)).await
    }

    /// `GET /jobs/{id}/logs?after=&limit=`: phase log lines with `seq > after`.
    pub async fn job_logs(&self, id: &JobId, after: u64, limit: Option<u32>) -> Result<Vec<LogLine>, Error> {
        self.get(&paged(&format!("/jobs/{id}/logs"), after, limit)).await
    }

    /// `GET /jobs/{id}/decisions`: every decision the job asked, answered or not.
    pub async fn job_decisions(&self, id: &JobId) -> Result<Vec<Decision>, Error> {
        self.get(&format!("/jobs/{id}/decisions")).await
    }

    /// `POST /jobs/{id}/decision`: answers `decision_id`, or the job's only open decision.
    pub async fn answer_decision(
        &self,
        id: &JobId,
        answer: DecisionAnswer,
        decision_id: Option<u32>,
    ) -> Result<Job, Error> {
        #[derive(Serialize)]
        struct Body {
            answer: DecisionAnswer,
            #[serde(skip_serializing_if = "Option::is_none")]
            decision_id: Option<u32>,
        }
        self.post(&format!("/jobs/{id}/decision"), &Body { answer, decision_id }).await
    }

    /// `POST /jobs/{id}/cancel`.
    pub async fn cancel_job(&self, id: &JobId) -> Result<Job, Error> {
        self.post(&format!("/jobs/{id}/cancel"), &serde_json::json!({})).await
    }

    /// `GET /audit`: who did what, newest first.
    pub async fn audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, Error> {
        let mut params = Vec::new();
        if let Some(l) = query.limit {
            params.push(("limit", l.to_string()));
        }
        if let Some(o) = &query.object_id {
            params.push(("object_id", o.clone()));
        }
        let page: fleetup_proto::api::Page<AuditEntry> =
            self.send("GET /api/v1/audit".into(), self.request(Method::GET, "/audit").query(&params)).await?;
        Ok(page.items)
    }
}

/// `path?after=N[&limit=M]`.
fn paged(path: &str, after: u64, limit: Option<u32>) -> String {
    match limit {
        Some(l) => format!("{path}?after={after}&limit={l}"),
        None => format!("{path}?after={after}"),
    }
}

//! The coordinator's agent protocol, as the agent sees it: typed calls with deadlines.

use fleetup_proto::agent_api::{
    EnrollRequest, EnrollResponse, EventBatch, JobAssignment, LogBatch, LogResponse, ReportResponse, STALE_LEASE_CODE,
};
use std::time::Duration;

/// Why a call failed, as far as the agent's next move is concerned.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The job's lease is gone (lost, finished or re-dispatched): stop reporting it.
    #[error("the coordinator refused the report: the lease is stale")]
    Stale,
    /// The coordinator refused this agent (revoked, or a bad token): retrying cannot help.
    #[error("the coordinator refused this agent ({0}); it may have been revoked: enroll again")]
    Refused(String),
    /// Anything else (network down, 5xx, timeout): try again later.
    #[error("{0}")]
    Transient(String),
}

/// A client bound to one coordinator and, once enrolled, one agent token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// Deadline of any call that is not a long-poll.
const CALL_DEADLINE: Duration = Duration::from_secs(30);

impl Client {
    /// A client for `server` (e.g. `https://fleetup.example:8443`), trusting as `link` says.
    pub fn new(server: &str, link: &super::tls::TlsLink) -> anyhow::Result<Self> {
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .user_agent(concat!("fleetup-agent/", env!("CARGO_PKG_VERSION")));
        let http = link.client(server, builder)?;
        Ok(Self { http, base: server.trim_end_matches('/').to_owned(), token: None })
    }

    /// The same client, authenticated as an agent.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: reqwest::Method, path: &str, deadline: Duration) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, self.url(path)).timeout(deadline);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req
    }

    /// `POST /api/v1/agent/enroll`
    pub async fn enroll(&self, body: &EnrollRequest) -> Result<EnrollResponse, CallError> {
        let resp = self.request(reqwest::Method::POST, "/api/v1/agent/enroll", CALL_DEADLINE).json(body).send().await;
        json(resp).await
    }

    /// `GET /api/v1/agent/poll?wait=SECS`: `None` when no job became ready.
    pub async fn poll(&self, wait: Duration) -> Result<Option<JobAssignment>, CallError> {
        let resp = self
            .request(reqwest::Method::GET, &format!("/api/v1/agent/poll?wait={}", wait.as_secs()), wait + CALL_DEADLINE)
            .send()
            .await;
        let resp = checked(resp).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        resp.json().await.map(Some).map_err(|e| CallError::Transient(format!("bad poll answer: {e}")))
    }

    /// `POST /api/v1/agent/jobs/{id}/events[?wait=SECS]`
    pub async fn report(&self, job: &str, batch: &EventBatch, wait: Duration) -> Result<ReportResponse, CallError> {
        let path = format!("/api/v1/agent/jobs/{job}/events?wait={}", wait.as_secs());
        let resp = self.request(reqwest::Method::POST, &path, wait + CALL_DEADLINE).json(batch).send().await;
        json(resp).await
    }

    /// `POST /api/v1/agent/jobs/{id}/logs`
    pub async fn logs(&self, job: &str, batch: &LogBatch) -> Result<LogResponse, CallError> {
        let path = format!("/api/v1/agent/jobs/{job}/logs");
        let resp = self.request(reqwest::Method::POST, &path, CALL_DEADLINE).json(batch).send().await;
        json(resp).await
    }

    /// Starts a download of `path` from byte `from` (HTTP Range). The caller bounds the
    /// size and puts a deadline on every chunk.
    pub async fn download(&self, path: &str, from: u64) -> Result<reqwest::Response, CallError> {
        let mut req = self.request(reqwest::Method::GET, path, Duration::from_hours(1));
        if from > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        checked(req.send().await).await
    }
}

async fn checked(resp: Result<reqwest::Response, reqwest::Error>) -> Result<reqwest::Response, CallError> {
    let resp =
        resp.map_err(|e| CallError::Transient(format!("coordinator unreachable: {}", super::tls::describe(&e))))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::CONFLICT && body.contains(STALE_LEASE_CODE) {
        return Err(CallError::Stale);
    }
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(CallError::Refused(format!("{status}: {body}")));
    }
    if status.is_client_error() {
        // A 4xx other than auth is a bug or a gone object; retrying the same request
        // cannot succeed, but the daemon must not die: report it as refused.
        return Err(CallError::Refused(format!("{status}: {body}")));
    }
    Err(CallError::Transient(format!("coordinator answered {status}: {body}")))
}

async fn json<T: serde::de::DeserializeOwned>(resp: Result<reqwest::Response, reqwest::Error>) -> Result<T, CallError> {
    checked(resp).await?.json().await.map_err(|e| CallError::Transient(format!("unreadable answer: {e}")))
}

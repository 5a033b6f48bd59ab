//! The coordinator's agent protocol, as the agent sees it: typed calls with deadlines.
//!
//! Nothing the coordinator sends is trusted further than it must be: every URL is the
//! configured origin joined with a path, and the result must still be on that origin (a
//! `download_path` of `@other-host/…` would otherwise send the bearer secret elsewhere);
//! every answer body is read up to a cap and no further, so an endless or huge answer costs
//! a bounded amount of memory.

use fleetup_proto::agent_api::{
    EnrollRequest, EnrollResponse, EventBatch, JobAssignment, LogBatch, LogResponse, ReportResponse, STALE_LEASE_CODE,
};
use reqwest::Url;
use std::time::Duration;

/// Why a call failed, as far as the agent's next move is concerned.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The job's lease is gone (lost, finished or re-dispatched), or the job has ended:
    /// stop reporting it.
    #[error("the coordinator refused the report: the lease is stale or the job has ended")]
    Stale,
    /// The coordinator refused this agent (revoked, or a bad token): retrying cannot help.
    #[error("the coordinator refused this agent ({0}); it may have been revoked: enroll again")]
    Refused(String),
    /// The coordinator refused this request (a 4xx other than auth): sending it again
    /// unchanged cannot succeed.
    #[error("the coordinator refused the request ({status}): {message}")]
    Rejected {
        /// The HTTP status.
        status: u16,
        /// The coordinator's message.
        message: String,
    },
    /// Over the coordinator's cap (429): send it again after this long (`Retry-After`).
    #[error("the coordinator asks to slow down: retry in {} s", .0.as_secs())]
    Busy(Duration),
    /// Anything else (network down, 5xx, timeout): try again later.
    #[error("{0}")]
    Transient(String),
}

/// A client bound to one coordinator and, once enrolled, one agent token.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    /// The configured origin (and path prefix, without a trailing `/`).
    base: Url,
    token: Option<String>,
}

/// Deadline of any call that is not a long-poll.
const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// Largest answer to a poll (a job assignment is a few hundred bytes).
pub const MAX_POLL_BODY: usize = 256 * 1024;
/// Largest answer to a report, an enrollment or a log batch.
pub const MAX_ANSWER_BODY: usize = 1024 * 1024;
/// Largest error body read (the rest is ignored).
const MAX_ERROR_BODY: usize = 16 * 1024;
/// Longest `Retry-After` honoured; a longer one is cut to this.
const MAX_RETRY_AFTER: Duration = Duration::from_mins(5);

/// The HTTP client every call of the agent uses: the one place that configures
/// connections (timeouts, user agent, and TLS when it is added).
fn http_client(server: &str, link: &super::tls::TlsLink) -> anyhow::Result<reqwest::Client> {
    let builder = reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("fleetup-agent/", env!("CARGO_PKG_VERSION")));
    Ok(link.client(server, builder)?)
}

impl Client {
    /// A client for `server` (e.g. `https://fleetup.example:8443`), trusting as `link` says.
    pub fn new(server: &str, link: &super::tls::TlsLink) -> anyhow::Result<Self> {
        let base = Url::parse(server.trim_end_matches('/')).map_err(|e| {
            anyhow::anyhow!("--server '{server}' is not a URL ({e}); give one like https://coordinator:8443")
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.host().is_none() {
            anyhow::bail!("--server '{server}' must be an http:// or https:// URL with a host");
        }
        if !base.username().is_empty() || base.password().is_some() || base.query().is_some() {
            anyhow::bail!("--server '{server}' must not carry a user, password or query");
        }
        Ok(Self { http: http_client(server, link)?, base, token: None })
    }

    /// The same client, authenticated as an agent.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(token.to_owned());
        self
    }

    /// The configured origin joined with `path` (and `?query`), refused unless `path` is an
    /// absolute path and the result is still on the configured origin.
    pub fn url(&self, path: &str) -> Result<Url, CallError> {
        let refused = |why: &str| CallError::Rejected {
            status: 0,
            message: format!(
                "refusing to fetch '{path}': {why}; the agent talks only to {}",
                self.base.origin().ascii_serialization()
            ),
        };
        if !path.starts_with('/') || path.starts_with("//") || path.contains(['@', '\\']) {
            return Err(refused("not a path on the coordinator"));
        }
        let joined = format!("{}{path}", self.base.as_str().trim_end_matches('/'));
        let url = Url::parse(&joined).map_err(|_| refused("not a valid path"))?;
        if url.origin() != self.base.origin() || !url.username().is_empty() || url.password().is_some() {
            return Err(refused("it leads to another origin"));
        }
        Ok(url)
    }

    fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        deadline: Duration,
    ) -> Result<reqwest::RequestBuilder, CallError> {
        let mut req = self.http.request(method, self.url(path)?).timeout(deadline);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        Ok(req)
    }

    /// `POST /api/v1/agent/enroll`
    pub async fn enroll(&self, body: &EnrollRequest) -> Result<EnrollResponse, CallError> {
        let resp = self.request(reqwest::Method::POST, "/api/v1/agent/enroll", CALL_DEADLINE)?.json(body).send().await;
        json(resp, MAX_ANSWER_BODY).await
    }

    /// `GET /api/v1/agent/poll?wait=SECS`: `None` when no job became ready. The answer is
    /// parsed, not yet checked ([`JobAssignment::check`]).
    pub async fn poll(&self, wait: Duration) -> Result<Option<JobAssignment>, CallError> {
        let path = format!("/api/v1/agent/poll?wait={}", wait.as_secs());
        let resp = self.request(reqwest::Method::GET, &path, wait + CALL_DEADLINE)?.send().await;
        let resp = checked(resp).await?;
        if resp.status() == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let body = bounded(resp, MAX_POLL_BODY).await?;
        serde_json::from_slice(&body).map(Some).map_err(|e| CallError::Transient(format!("bad poll answer: {e}")))
    }

    /// `POST /api/v1/agent/jobs/{id}/events[?wait=SECS]`
    pub async fn report(&self, job: &str, batch: &EventBatch, wait: Duration) -> Result<ReportResponse, CallError> {
        let path = format!("/api/v1/agent/jobs/{job}/events?wait={}", wait.as_secs());
        let resp = self.request(reqwest::Method::POST, &path, wait + CALL_DEADLINE)?.json(batch).send().await;
        json(resp, MAX_ANSWER_BODY).await
    }

    /// `POST /api/v1/agent/jobs/{id}/logs`
    pub async fn logs(&self, job: &str, batch: &LogBatch) -> Result<LogResponse, CallError> {
        let path = format!("/api/v1/agent/jobs/{job}/logs");
        let resp = self.request(reqwest::Method::POST, &path, CALL_DEADLINE)?.json(batch).send().await;
        json(resp, MAX_ANSWER_BODY).await
    }

    /// Starts a download of `path` from byte `from` (HTTP Range). The caller bounds the
    /// size, the throughput and the time of every chunk.
    pub async fn download(&self, path: &str, from: u64) -> Result<reqwest::Response, CallError> {
        let mut req = self.request(reqwest::Method::GET, path, Duration::from_hours(1))?;
        if from > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={from}-"));
        }
        checked(req.send().await).await
    }
}

/// Reads a body up to `cap` bytes; a longer one is an error (and is not read further).
async fn bounded(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, CallError> {
    if resp.content_length().is_some_and(|n| n > cap as u64) {
        return Err(CallError::Transient(format!("the coordinator's answer is over {cap} bytes; not read")));
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(|e| CallError::Transient(format!("reading the answer: {e}")))? {
        if body.len() + chunk.len() > cap {
            return Err(CallError::Transient(format!("the coordinator's answer is over {cap} bytes; not read")));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The seconds of a `Retry-After` header (at least 1 s, at most [`MAX_RETRY_AFTER`]).
fn retry_after(resp: &reqwest::Response) -> Duration {
    let secs = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(5);
    Duration::from_secs(secs.max(1)).min(MAX_RETRY_AFTER)
}

async fn checked(resp: Result<reqwest::Response, reqwest::Error>) -> Result<reqwest::Response, CallError> {
    let resp =
        resp.map_err(|e| CallError::Transient(format!("coordinator unreachable: {}", super::tls::describe(&e))))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    if status == reqwest::StatusCode::TOO_MANY_REQUESTS {
        return Err(CallError::Busy(retry_after(&resp)));
    }
    let body =
        bounded(resp, MAX_ERROR_BODY).await.map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default();
    if status == reqwest::StatusCode::CONFLICT {
        // `stale-lease`, or the job has ended: no report of this dispatch can succeed.
        if !body.contains(STALE_LEASE_CODE) {
            tracing::debug!("409 without {STALE_LEASE_CODE}: {body}");
        }
        return Err(CallError::Stale);
    }
    if status == reqwest::StatusCode::UNAUTHORIZED || status == reqwest::StatusCode::FORBIDDEN {
        return Err(CallError::Refused(format!("{status}: {body}")));
    }
    if status.is_client_error() {
        return Err(CallError::Rejected { status: status.as_u16(), message: body });
    }
    Err(CallError::Transient(format!("coordinator answered {status}: {body}")))
}

async fn json<T: serde::de::DeserializeOwned>(
    resp: Result<reqwest::Response, reqwest::Error>,
    cap: usize,
) -> Result<T, CallError> {
    let body = bounded(checked(resp).await?, cap).await?;
    serde_json::from_slice(&body).map_err(|e| CallError::Transient(format!("unreadable answer: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::tls::TlsLink;

    #[test]
    fn only_paths_on_the_configured_origin() {
        let c = Client::new("http://127.0.0.1:8080", &TlsLink::default()).unwrap();
        assert_eq!(
            c.url("/api/v1/agent/packages/p1").unwrap().as_str(),
            "http://127.0.0.1:8080/api/v1/agent/packages/p1"
        );
        for hostile in [
            "@127.0.0.2:9/api/v1/agent/packages/p1",
            "//127.0.0.2:9/x",
            "http://127.0.0.2:9/x",
            "/a@127.0.0.2/x",
            "\\\\127.0.0.2\\x",
            "api/v1/x",
        ] {
            assert!(c.url(hostile).is_err(), "{hostile}");
        }
        let prefixed = Client::new("http://127.0.0.1:8080/fleetup/", &TlsLink::default()).unwrap();
        assert_eq!(
            prefixed.url("/api/v1/agent/poll").unwrap().as_str(),
            "http://127.0.0.1:8080/fleetup/api/v1/agent/poll"
        );
        assert!(Client::new("http://u:p@127.0.0.1:8080", &TlsLink::default()).is_err());
    }

    /// An endless answer is read up to the cap and refused; memory stays bounded.
    #[tokio::test]
    async fn an_endless_poll_answer_is_cut_at_the_cap() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            s.write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n")
                .await
                .unwrap();
            let chunk = format!("{:x}\r\n{}\r\n", 64 * 1024, " ".repeat(64 * 1024));
            let mut sent = 0usize;
            // Endless until the agent hangs up.
            while s.write_all(chunk.as_bytes()).await.is_ok() {
                sent += 64 * 1024;
            }
            sent
        });
        let c = Client::new(&format!("http://{addr}"), &TlsLink::default()).unwrap().with_token("t");
        let err = c.poll(Duration::from_secs(1)).await.unwrap_err();
        assert!(err.to_string().contains("over"), "{err}");
        let sent = tokio::time::timeout(Duration::from_secs(10), server).await.unwrap().unwrap();
        assert!(sent < 64 * MAX_POLL_BODY, "the agent read far past its cap: {sent} bytes");
    }

    /// A `429` is `Busy` with the coordinator's `Retry-After`, which the reporter and the
    /// log shipper wait before sending again.
    #[tokio::test]
    async fn a_429_carries_its_retry_after() {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            let mut buf = [0u8; 4096];
            let _ = s.read(&mut buf).await;
            let body = r#"{"error":{"code":"too-many-requests","message":"slow down"}}"#;
            let head =
                format!("HTTP/1.1 429 Too Many Requests\r\nretry-after: 7\r\ncontent-length: {}\r\n\r\n", body.len());
            s.write_all(head.as_bytes()).await.unwrap();
            s.write_all(body.as_bytes()).await.unwrap();
        });
        let c = Client::new(&format!("http://{addr}"), &TlsLink::default()).unwrap().with_token("t");
        let batch = EventBatch { fencing_token: 1, events: vec![] };
        match c.report("j1", &batch, Duration::ZERO).await {
            Err(CallError::Busy(after)) => assert_eq!(after, Duration::from_secs(7)),
            other => panic!("{other:?}"),
        }
    }
}

//! Simulated agents for the dashboard's tests at fleet scale: each one enrolls and speaks
//! the agent protocol over HTTP (poll, report events) like `fleetup-agent` does, without an
//! engine behind it, so a test can put a thousand servers in a rollout on one machine and
//! make them report what it needs (a CRL decision, a failure, a success).

use crate::fleet::Server;
use fleetup_client::NewEnrollmentToken;
use fleetup_proto::agent_api::{EnrollRequest, EnrollResponse, EventBatch, JobAssignment, ReportResponse};
use fleetup_proto::{DecisionKind, DecisionRequest, EngineEvent, PhaseId, PhaseStatus};
use serde_json::json;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How many simulated agents talk to the server at once.
const PARALLEL: usize = 32;

/// One enrolled simulated agent.
#[derive(Debug, Clone)]
pub struct SimAgent {
    /// Agent id.
    pub id: String,
    /// Its host name.
    pub hostname: String,
    token: String,
}

/// Simulated agents of one server.
#[derive(Debug, Clone)]
pub struct SimFleet {
    base: String,
    http: reqwest::Client,
    /// The agents, in enrollment order.
    pub agents: Vec<SimAgent>,
}

/// Runs `f` over `items`, [`PARALLEL`] at a time, results in order.
async fn each<T: Send + Sync + 'static, R: Send + 'static, F>(
    items: Vec<T>,
    f: impl Fn(T) -> F + Send + Sync + 'static,
) -> Vec<R>
where
    F: std::future::Future<Output = R> + Send + 'static,
{
    let f = Arc::new(f);
    let permits = Arc::new(tokio::sync::Semaphore::new(PARALLEL));
    let mut tasks = Vec::new();
    for item in items {
        let (f, permits) = (f.clone(), permits.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = permits.acquire_owned().await.expect("semaphore open");
            f(item).await
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("simulated agent task"));
    }
    out
}

impl SimFleet {
    /// Enrolls `n` agents `PREFIX-00001` … labelled `labels`.
    pub async fn enroll(server: &Server, prefix: &str, n: usize, labels: &[(&str, &str)]) -> Self {
        Self::enroll_with_facts(server, prefix, n, labels, &[]).await
    }

    /// Like [`SimFleet::enroll`], each agent reporting the facts `facts` (`os`, …).
    pub async fn enroll_with_facts(
        server: &Server,
        prefix: &str,
        n: usize,
        labels: &[(&str, &str)],
        facts: &[(&str, &str)],
    ) -> Self {
        let facts: BTreeMap<String, serde_json::Value> =
            facts.iter().map(|(k, v)| ((*k).to_owned(), json!(v))).collect();
        let new = NewEnrollmentToken {
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            max_uses: Some(n as u64),
            ..NewEnrollmentToken::default()
        };
        let secret = server.client.create_enrollment_token(&new).await.expect("enrollment token").secret;
        let http = reqwest::Client::new();
        let base = server.url.clone();
        let names: Vec<String> = (1..=n).map(|i| format!("{prefix}-{i:05}")).collect();
        let (h, b) = (http.clone(), base.clone());
        let agents = each(names, move |hostname| {
            let (http, base, secret, facts) = (h.clone(), b.clone(), secret.clone(), facts.clone());
            async move {
                let req = EnrollRequest {
                    token: secret,
                    hostname: hostname.clone(),
                    labels: BTreeMap::new(),
                    facts,
                    version: "0.1.0".into(),
                };
                let resp = http.post(format!("{base}/api/v1/agent/enroll")).json(&req).send().await.expect("enroll");
                assert_eq!(resp.status().as_u16(), 201, "enroll {hostname}: {}", resp.text().await.unwrap_or_default());
                let r: EnrollResponse = resp.json().await.expect("enroll response");
                SimAgent { id: r.agent_id, hostname, token: r.agent_token }
            }
        })
        .await;
        Self { base, http, agents }
    }

    /// Every agent polls until it gets its job (deadline `within`); the jobs, in agent order.
    pub async fn take_jobs(&self, within: Duration) -> Vec<JobAssignment> {
        self.take_jobs_of(&(0..self.agents.len()).collect::<Vec<_>>(), within).await
    }

    /// The agents `which` poll until each gets its job; the jobs, in that order.
    pub async fn take_jobs_of(&self, which: &[usize], within: Duration) -> Vec<JobAssignment> {
        let (http, base) = (self.http.clone(), self.base.clone());
        let agents: Vec<SimAgent> = which.iter().map(|i| self.agents[*i].clone()).collect();
        each(agents, move |a| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let deadline = Instant::now() + within;
                loop {
                    match try_poll(&http, &base, &a, 2).await {
                        Ok(Some(job)) => return job,
                        Ok(None) => {
                            assert!(Instant::now() < deadline, "agent {} got no job within {within:?}", a.hostname);
                        }
                        Err(e) => panic!("poll of {}: {e}", a.hostname),
                    }
                }
            }
        })
        .await
    }

    /// Every agent polls once without waiting (the heartbeat: it is online again).
    pub async fn poll_once(&self) {
        let (http, base) = (self.http.clone(), self.base.clone());
        each(self.agents.clone(), move |a| {
            let (http, base) = (http.clone(), base.clone());
            async move {
                let resp = http
                    .get(format!("{base}/api/v1/agent/poll?wait=0"))
                    .bearer_auth(&a.token)
                    .send()
                    .await
                    .expect("poll");
                assert!(resp.status().is_success(), "poll of {}: {}", a.hostname, resp.status());
            }
        })
        .await;
    }

    /// Agent `i` reports `events` on `job`.
    pub async fn report(&self, i: usize, job: &JobAssignment, events: Vec<EngineEvent>) {
        report(&self.http, &self.base, &self.agents[i], job, events).await;
    }

    /// Agent `i` reports `events` on `job` once: the coordinator's answer, or why there was
    /// none it could use.
    pub async fn try_report(
        &self,
        i: usize,
        job: &JobAssignment,
        events: Vec<EngineEvent>,
    ) -> Result<ReportResponse, CallFailure> {
        try_report(&self.http, &self.base, &self.agents[i], job, events).await
    }

    /// Agent `i` polls once, waiting up to `wait_secs` for a job: the job, `None` (204), or
    /// why there was no answer it could use.
    pub async fn try_poll(&self, i: usize, wait_secs: u64) -> Result<Option<JobAssignment>, CallFailure> {
        try_poll(&self.http, &self.base, &self.agents[i], wait_secs).await
    }

    /// Every agent reports the events `events(i)` on its job `jobs[i]`.
    pub async fn report_all(&self, jobs: &[JobAssignment], events: impl Fn(usize) -> Vec<EngineEvent>) {
        let work: Vec<_> = self
            .agents
            .iter()
            .cloned()
            .zip(jobs.iter().cloned())
            .enumerate()
            .map(|(i, (a, j))| (a, j, events(i)))
            .collect();
        let (http, base) = (self.http.clone(), self.base.clone());
        each(work, move |(a, j, evs)| {
            let (http, base) = (http.clone(), base.clone());
            async move { report(&http, &base, &a, &j, evs).await }
        })
        .await;
    }
}

async fn report(http: &reqwest::Client, base: &str, a: &SimAgent, job: &JobAssignment, events: Vec<EngineEvent>) {
    if let Err(e) = try_report(http, base, a, job, events).await {
        panic!("report of {}: {e}", a.hostname);
    }
}

/// Why a call of a simulated agent got no answer it could use.
#[derive(Debug)]
pub enum CallFailure {
    /// No HTTP answer at all (refused, reset, cut, timed out): the agent sends it again.
    NoAnswer(String),
    /// An answer with another status than the call expects.
    Status(u16, String),
}

impl std::fmt::Display for CallFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallFailure::NoAnswer(e) => write!(f, "no answer: {e}"),
            CallFailure::Status(s, body) => write!(f, "{s} {body}"),
        }
    }
}

/// Longest a simulated agent's call may take before it counts as unanswered.
const CALL_TIMEOUT: Duration = Duration::from_secs(20);

async fn try_poll(
    http: &reqwest::Client,
    base: &str,
    a: &SimAgent,
    wait_secs: u64,
) -> Result<Option<JobAssignment>, CallFailure> {
    let resp = http
        .get(format!("{base}/api/v1/agent/poll?wait={wait_secs}"))
        .bearer_auth(&a.token)
        .timeout(CALL_TIMEOUT + Duration::from_secs(wait_secs))
        .send()
        .await
        .map_err(|e| CallFailure::NoAnswer(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| CallFailure::NoAnswer(e.to_string()))?;
    match status {
        200 => {
            serde_json::from_slice(&body).map(Some).map_err(|e| CallFailure::NoAnswer(format!("a cut answer ({e})")))
        }
        204 => Ok(None),
        s => Err(CallFailure::Status(s, String::from_utf8_lossy(&body).into_owned())),
    }
}

async fn try_report(
    http: &reqwest::Client,
    base: &str,
    a: &SimAgent,
    job: &JobAssignment,
    events: Vec<EngineEvent>,
) -> Result<ReportResponse, CallFailure> {
    let batch = EventBatch { fencing_token: job.fencing_token, events };
    let resp = http
        .post(format!("{base}/api/v1/agent/jobs/{}/events?wait=0", job.job_id))
        .bearer_auth(&a.token)
        .timeout(CALL_TIMEOUT)
        .json(&batch)
        .send()
        .await
        .map_err(|e| CallFailure::NoAnswer(e.to_string()))?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await.map_err(|e| CallFailure::NoAnswer(e.to_string()))?;
    if status != 200 {
        return Err(CallFailure::Status(status, String::from_utf8_lossy(&body).into_owned()));
    }
    serde_json::from_slice(&body).map_err(|e| CallFailure::NoAnswer(format!("a cut answer ({e})")))
}
/// An engine event now.
pub fn event(seq: u64, phase: PhaseId, status: PhaseStatus, message: &str, data: serde_json::Value) -> EngineEvent {
    EngineEvent { seq, phase, status, message: message.to_owned(), data, at: chrono::Utc::now() }
}

/// What the engine sends when a CRL endpoint does not answer and the policy asks: the
/// check-system phase starts, then asks (seq 1 and 2).
pub fn crl_question(url: &str, host: &str) -> Vec<EngineEvent> {
    let kind = DecisionKind::Warning {
        code: "crl-unreachable".into(),
        remediation: Some(format!(
            "These certificate revocation list endpoints cannot be reached from this server:\n    {url} (connection refused)\n\
             Software that checks revocation may stall for minutes while it waits.\n\
             Fix: allow this server to reach {host} through the firewall or proxy,\n\
             or, for this install only, make the lookup fail fast by adding these lines to /etc/hosts (remove them afterwards):\n\
             \x20   127.0.0.1 {host}\n\
             fleetup can do this for you and restore the file afterwards: --crl-remediation hosts-file"
        )),
    };
    let message = format!("CRL endpoint {url} (connection refused) is unreachable");
    let req = DecisionRequest {
        id: 1,
        phase: PhaseId::CheckSystem,
        message: message.clone(),
        options: DecisionRequest::options_for(&kind),
        kind,
    };
    vec![
        event(1, PhaseId::CheckSystem, PhaseStatus::Running, "checking the system", serde_json::Value::Null),
        event(2, PhaseId::CheckSystem, PhaseStatus::Warning, &message, json!({ "decision": req })),
    ]
}

/// A whole install's end: `outcome` with a summary, after check-system (seq from 1).
pub fn finished(outcome: fleetup_proto::InstallOutcome) -> Vec<EngineEvent> {
    use fleetup_proto::{InstallOutcome, InstallSummary};
    let failed = outcome != InstallOutcome::Succeeded;
    let summary = InstallSummary {
        outcome,
        rollup: "demo-service".into(),
        version: "1.1.0".into(),
        outage_ms: 1500,
        total_ms: 4000,
        phase_ms: BTreeMap::new(),
        restart_required: false,
        failed_phase: failed.then_some(PhaseId::StartServices),
        error: failed.then(|| "health check failed: http://127.0.0.1:8080/health answered 503".to_owned()),
    };
    let mut events = vec![
        event(1, PhaseId::CheckSystem, PhaseStatus::Running, "checking the system", serde_json::Value::Null),
        event(2, PhaseId::CheckSystem, PhaseStatus::Succeeded, "system checked", serde_json::Value::Null),
    ];
    if failed {
        events.push(event(
            3,
            PhaseId::StartServices,
            PhaseStatus::Failed,
            "health check failed",
            serde_json::Value::Null,
        ));
    }
    let last = if failed { PhaseId::Rollback } else { PhaseId::Cleanup };
    events.push(event(events.len() as u64 + 1, last, PhaseStatus::Succeeded, "done", json!({ "summary": summary })));
    events
}

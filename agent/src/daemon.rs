//! The agent daemon (`fleetup-agent run`): enrolls once, then long-polls the coordinator
//! and runs each job it is given through the install engine.
//!
//! Lightweight by design: no database, no web framework; idle, it sleeps inside a
//! long-poll. Everything it must not forget (identity, the job in progress, the engine's
//! journal and events) is in the state dir, so a restart at any instant resumes cleanly.

mod bridge;
mod client;
mod download;
mod finished;
mod identity;
mod job;
mod lease;
mod logs;
pub mod tls;

pub use download::Floor as DownloadFloor;

use crate::engine::{BackendKind, CrlRemediation, InstallRequest};
use client::{CallError, Client};
use fleetup_proto::PublicKey;
use fleetup_proto::agent_api::{CrlRemediation as JobCrl, EnrollRequest, JobAssignment};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// The label that names this server's device class, matched against a manifest's
/// `[target] device_class`.
pub const DEVICE_CLASS_LABEL: &str = "device-class";

/// How the daemon was started.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// The coordinator's base URL.
    pub server: String,
    /// Identity, jobs, journal, logs, downloaded packages.
    pub state_dir: PathBuf,
    /// One-time enrollment token (needed only before the first enrollment).
    pub enroll_token: Option<String>,
    /// The name shown to operators (default: the kernel's host name).
    pub hostname: Option<String>,
    /// Labels proposed at enrollment.
    pub labels: BTreeMap<String, String>,
    /// The install root packages are installed into.
    pub root: PathBuf,
    /// Pinned package-signing keys: a package is verified against these, never only
    /// against what the coordinator says.
    pub trusted: Vec<PublicKey>,
    /// Host variables for `${name}` in manifests.
    pub vars: BTreeMap<String, String>,
    /// How services are controlled.
    pub backend: BackendKind,
    /// The hosts file for CRL resolution and remediation.
    pub hosts_file: PathBuf,
    /// Long-poll duration.
    pub poll_wait: Duration,
    /// The slowest a package download may be before it is retried (resumed with Range).
    pub download_floor: DownloadFloor,
    /// Whom the agent trusts as the coordinator (`--ca-cert`, `--insecure-http`).
    pub tls: tls::TlsLink,
}

/// Exponential backoff for retries after transient failures: 0.5 s doubling to 30 s.
#[derive(Debug, Default)]
pub(crate) struct Backoff(Mutex<u32>);

impl Backoff {
    /// Waits before the next retry (a retry delay, not a synchronisation).
    pub async fn pause(&self) {
        let n = {
            let mut n = self.0.lock().expect("backoff");
            *n = (*n + 1).min(7);
            *n
        };
        let ms = (250u64 << n).min(30_000);
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }

    /// A call succeeded.
    pub fn reset(&self) {
        *self.0.lock().expect("backoff") = 0;
    }
}

/// What every part of the daemon shares.
#[derive(Debug)]
pub(crate) struct Ctx {
    config: DaemonConfig,
    client: Client,
    backoff: Backoff,
    /// The cancel handle of the install running now, for a stop request (SIGTERM from
    /// `systemctl stop`) to cancel it as its phase allows.
    current: std::sync::Mutex<Option<crate::engine::CancelHandle>>,
    /// A stop was requested: an install that starts from now on is cancelled at once.
    stopping: std::sync::atomic::AtomicBool,
}

impl Ctx {
    fn install_request(&self, package: PathBuf, job: &JobAssignment) -> InstallRequest {
        InstallRequest {
            package,
            root: self.config.root.clone(),
            state_dir: self.config.state_dir.clone(),
            trusted: self.config.trusted.clone(),
            vars: self.config.vars.clone(),
            backend: self.config.backend,
            hosts_file: self.config.hosts_file.clone(),
            crl_remediation: match job.policies.crl_remediation {
                JobCrl::None => CrlRemediation::None,
                JobCrl::HostsFile => CrlRemediation::HostsFile,
            },
            device_class: self.config.labels.get(DEVICE_CLASS_LABEL).cloned(),
            allow_downgrade: job.allow_downgrade,
        }
    }
}

#[cfg(test)]
impl Ctx {
    /// A context for unit tests against a fake coordinator at `server`.
    pub(crate) fn for_test(server: &str, state_dir: &std::path::Path) -> Self {
        let config = DaemonConfig {
            server: server.to_owned(),
            state_dir: state_dir.to_path_buf(),
            enroll_token: None,
            hostname: None,
            labels: BTreeMap::new(),
            root: state_dir.to_path_buf(),
            trusted: Vec::new(),
            vars: BTreeMap::new(),
            backend: BackendKind::Exec,
            hosts_file: state_dir.join("hosts"),
            poll_wait: Duration::from_secs(1),
            download_floor: DownloadFloor::default(),
            tls: tls::TlsLink::default(),
        };
        Self {
            client: Client::new(server, &tls::TlsLink::default()).expect("a client").with_token("t"),
            config,
            backoff: Backoff::default(),
            current: std::sync::Mutex::new(None),
            stopping: std::sync::atomic::AtomicBool::new(false),
        }
    }
}

impl Ctx {
    /// Asks the running install (if any) to cancel, as its phase allows; returns what
    /// that does, in the engine's words.
    fn cancel_current(&self) -> String {
        self.stopping.store(true, std::sync::atomic::Ordering::SeqCst);
        let current = self.current.lock().expect("current job").clone();
        match current {
            Some(c) => {
                let (Ok(m) | Err(m)) = c.cancel();
                m
            }
            // Still downloading: the install is cancelled as soon as it starts.
            None => "the install has not started; it ends before it changes anything".to_owned(),
        }
    }

    /// The phase of the install running now, for a second stop request.
    fn current_phase(&self) -> Option<fleetup_proto::PhaseId> {
        self.current.lock().expect("current job").as_ref().and_then(crate::engine::CancelHandle::current_phase)
    }

    /// Whether a stop was requested.
    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// How [`run`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stopped {
    /// Stopped between jobs.
    Idle,
    /// A stop arrived during a job; the job ended (with this outcome, if the engine gave
    /// one) and was reported before the daemon returned.
    DuringJob(Option<fleetup_proto::InstallOutcome>),
}

/// The identity in the state dir, enrolling first if there is none (`fleetup-agent
/// enroll` and the start of `run`). Returns the agent id.
pub async fn enroll_once(config: &DaemonConfig) -> anyhow::Result<String> {
    Ok(enrolled(config).await?.agent_id)
}

async fn enrolled(config: &DaemonConfig) -> anyhow::Result<identity::Identity> {
    std::fs::create_dir_all(&config.state_dir)?;
    match identity::load(&config.state_dir)? {
        Some(id) => Ok(id),
        None => enroll(config).await,
    }
}

/// Runs until `shutdown` resolves. A job in progress is cancelled as its phase allows
/// (rolled back up to `update-files`, finished forward from `post-precompile`), ends, is
/// reported, then the daemon returns; a further SIGTERM or SIGINT meanwhile is answered
/// with what is still being done.
pub async fn run(config: DaemonConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<Stopped> {
    let identity = enrolled(&config).await?;
    tracing::info!(agent = %identity.agent_id, server = %identity.server, "agent ready");
    // Under systemd (`Type=notify`): started once enrolled.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let ctx = Ctx {
        client: Client::new(&config.server, &config.tls)?.with_token(&identity.agent_token),
        config,
        backoff: Backoff::default(),
        current: std::sync::Mutex::new(None),
        stopping: std::sync::atomic::AtomicBool::new(false),
    };
    if let Some(job) = job::unfinished(&ctx.config.state_dir)? {
        tracing::info!(job = %job.job_id, "resuming the job interrupted by a restart");
        Box::pin(job::resume(&ctx, job)).await?;
    }
    tokio::pin!(shutdown);
    loop {
        let polled = tokio::select! {
            () = &mut shutdown => return Ok(Stopped::Idle),
            r = ctx.client.poll(ctx.config.poll_wait) => r,
        };
        match polled {
            Ok(Some(assignment)) => {
                ctx.backoff.reset();
                if let Err(e) = checked_assignment(&ctx, &assignment) {
                    refuse(&ctx, &assignment, &e).await;
                    ctx.backoff.pause().await;
                    continue;
                }
                tracing::info!(job = %assignment.job_id, package = %assignment.package.name, version = %assignment.package.version, "job received");
                let job_id = assignment.job_id.clone();
                // Boxed: a job's future is large, the idle loop's small.
                let mut job = Box::pin(job::run(&ctx, assignment));
                tokio::select! {
                    r = &mut job => { r?; }
                    // A stop request during a job is a cancel, honoured as the phase allows
                    // (as Ctrl-C on the command line); the job then ends and is reported.
                    () = &mut shutdown => {
                        let effect = ctx.cancel_current();
                        tracing::warn!(job = %job_id, "stop requested during job {job_id}: {effect}; the agent exits once the job has ended and its outcome is reported");
                        let outcome = finish_stopping(&ctx, &job_id, &effect, job).await?;
                        return Ok(Stopped::DuringJob(outcome));
                    }
                }
            }
            Ok(None) => ctx.backoff.reset(),
            Err(CallError::Busy(after)) => tokio::time::sleep(after).await,
            Err(CallError::Refused(e)) => anyhow::bail!("the coordinator refused this agent: {e}"),
            Err(e) => {
                tracing::warn!("poll failed: {e}; retrying");
                ctx.backoff.pause().await;
            }
        }
    }
}

/// Waits for the job being stopped to end, answering each further SIGTERM or SIGINT with
/// what is still being done.
async fn finish_stopping(
    ctx: &Ctx,
    job_id: &str,
    effect: &str,
    job: impl std::future::Future<Output = anyhow::Result<Option<fleetup_proto::InstallOutcome>>>,
) -> anyhow::Result<Option<fleetup_proto::InstallOutcome>> {
    use tokio::signal::unix::{SignalKind, signal};
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    tokio::pin!(job);
    loop {
        let again = tokio::select! {
            r = &mut job => {
                let outcome = r?;
                let said = outcome.map_or_else(|| "without an outcome".to_owned(), |o| format!("{o}"));
                tracing::warn!(job = %job_id, "job {job_id} ended {said} and was reported; stopping");
                return Ok(outcome);
            }
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        let phase = ctx.current_phase().map_or_else(|| "finishing and reporting".to_owned(), |p| format!("in '{p}'"));
        tracing::warn!(
            job = %job_id,
            "{again} received again: job {job_id} is still {phase}; the stop asked earlier stands ({effect}). \
             The agent exits on its own once the job has ended; kill -9 would leave it for the next start to recover"
        );
    }
}

/// Every field of the assignment to its strict format, and its download on the
/// coordinator's own origin.
fn checked_assignment(ctx: &Ctx, job: &JobAssignment) -> Result<(), String> {
    job.check().map_err(|e| e.to_string())?;
    ctx.client.url(&job.package.download_path).map(|_| ()).map_err(|e| e.to_string())
}

/// A refused assignment is never run. When its job id is usable, the coordinator hears why
/// (the job fails at check-system); otherwise it is only logged.
async fn refuse(ctx: &Ctx, job: &JobAssignment, why: &str) {
    tracing::error!("{why}");
    if fleetup_proto::id::check_id("job", &job.job_id).is_err() {
        return;
    }
    let event = job::refusal_event(why);
    let batch = fleetup_proto::agent_api::EventBatch { fencing_token: job.fencing_token, events: vec![event] };
    if let Err(e) = ctx.client.report(&job.job_id, &batch, Duration::ZERO).await {
        tracing::warn!("could not tell the coordinator why the job was refused: {e}");
    }
}

async fn enroll(config: &DaemonConfig) -> anyhow::Result<identity::Identity> {
    let token = config.enroll_token.clone().ok_or_else(|| {
        anyhow::anyhow!(
            "this agent is not enrolled yet ({} has no identity.json): pass --enroll-token TOKEN (create one with POST /api/v1/enrollment-tokens)",
            config.state_dir.display()
        )
    })?;
    let client = Client::new(&config.server, &config.tls)?;
    let hostname = config.hostname.clone().unwrap_or_else(|| {
        std::fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_owned()).unwrap_or_default()
    });
    let facts = BTreeMap::from([
        ("os".to_owned(), serde_json::json!(std::env::consts::OS)),
        ("arch".to_owned(), serde_json::json!(std::env::consts::ARCH)),
        ("root".to_owned(), serde_json::json!(config.root.display().to_string())),
    ]);
    let request = EnrollRequest {
        token,
        hostname,
        labels: config.labels.clone(),
        facts,
        version: env!("CARGO_PKG_VERSION").to_owned(),
    };
    let backoff = Backoff::default();
    let resp = loop {
        match client.enroll(&request).await {
            Ok(r) => break r,
            Err(CallError::Transient(e)) => {
                tracing::warn!("enrollment failed: {e}; retrying");
                backoff.pause().await;
            }
            Err(e) => anyhow::bail!("enrollment refused: {e}"),
        }
    };
    let id =
        identity::Identity { server: config.server.clone(), agent_id: resp.agent_id, agent_token: resp.agent_token };
    identity::save(&config.state_dir, &id)?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(labels: &[(&str, &str)]) -> Ctx {
        let mut ctx = Ctx::for_test("http://127.0.0.1:9", std::path::Path::new("/nonexistent/state"));
        ctx.config.labels = labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        ctx.config.root = PathBuf::from("/nonexistent/root");
        ctx.config.hosts_file = PathBuf::from("/etc/hosts");
        ctx
    }

    fn job(extra: serde_json::Value) -> JobAssignment {
        let mut v = serde_json::json!({
            "job_id": "j1", "rollout_id": "r1", "fencing_token": 1, "lease_secs": 60, "expires_at": "2099-01-01T00:00:00Z",
            "package": { "id": "p", "name": "demo", "version": "1.0.0", "sha256": "00", "size": 1,
                         "download_path": "/api/v1/agent/packages/p" },
            "policies": {}
        });
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_jobs_downgrade_permission_and_the_device_class_label_reach_the_engine() {
        let req = ctx(&[("device-class", "router"), ("role", "web")])
            .install_request(PathBuf::from("p.fup"), &job(serde_json::json!({ "allow_downgrade": true })));
        assert!(req.allow_downgrade);
        assert_eq!(req.device_class.as_deref(), Some("router"));
        // A coordinator that does not send the field never allows a downgrade.
        let req = ctx(&[]).install_request(PathBuf::from("p.fup"), &job(serde_json::json!({})));
        assert!(!req.allow_downgrade);
        assert_eq!(req.device_class, None);
    }
}

//! The agent daemon (`fleetup-agent run`): enrolls once, then long-polls the coordinator
//! and runs each job it is given through the install engine.
//!
//! Lightweight by design: no database, no web framework; idle, it sleeps inside a
//! long-poll. Everything it must not forget (identity, the job in progress, the engine's
//! journal and events) is in the state dir, so a restart at any instant resumes cleanly.

mod bridge;
mod client;
mod download;
mod identity;
mod job;
mod logs;
pub mod tls;

use crate::engine::{BackendKind, CrlRemediation, InstallRequest};
use client::{CallError, Client};
use fleetup_proto::PublicKey;
use fleetup_proto::agent_api::{CrlRemediation as JobCrl, EnrollRequest, JobAssignment};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

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
        }
    }
}

impl Ctx {
    /// Asks the running install (if any) to cancel, logging what that will do.
    fn cancel_current(&self) {
        let current = self.current.lock().expect("current job").clone();
        if let Some(c) = current {
            let (Ok(m) | Err(m)) = c.cancel();
            tracing::warn!("stop requested during a job: {m}; exiting once it has ended");
        }
    }
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
/// (finished forward from `post-precompile`), ends, is reported, then the daemon exits.
pub async fn run(config: DaemonConfig, shutdown: impl std::future::Future<Output = ()>) -> anyhow::Result<()> {
    let identity = enrolled(&config).await?;
    tracing::info!(agent = %identity.agent_id, server = %identity.server, "agent ready");
    // Under systemd (`Type=notify`): started once enrolled.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let ctx = Ctx {
        client: Client::new(&config.server, &config.tls)?.with_token(&identity.agent_token),
        config,
        backoff: Backoff::default(),
        current: std::sync::Mutex::new(None),
    };
    if let Some(job) = job::unfinished(&ctx.config.state_dir)? {
        tracing::info!(job = %job.job_id, "resuming the job interrupted by a restart");
        job::resume(&ctx, job).await?;
    }
    tokio::pin!(shutdown);
    loop {
        let polled = tokio::select! {
            () = &mut shutdown => return Ok(()),
            r = ctx.client.poll(ctx.config.poll_wait) => r,
        };
        match polled {
            Ok(Some(assignment)) => {
                ctx.backoff.reset();
                tracing::info!(job = %assignment.job_id, package = %assignment.package.name, version = %assignment.package.version, "job received");
                let job = job::run(&ctx, assignment);
                tokio::pin!(job);
                tokio::select! {
                    r = &mut job => r?,
                    // A stop request during a job is a cancel, honoured as the phase allows
                    // (as Ctrl-C on the command line); the job then ends and is reported.
                    () = &mut shutdown => {
                        ctx.cancel_current();
                        job.await?;
                        return Ok(());
                    }
                }
            }
            Ok(None) => ctx.backoff.reset(),
            Err(CallError::Refused(e)) => anyhow::bail!("the coordinator refused this agent: {e}"),
            Err(e) => {
                tracing::warn!("poll failed: {e}; retrying");
                ctx.backoff.pause().await;
            }
        }
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

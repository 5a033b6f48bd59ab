//! One job from the coordinator: download, verify, run the engine, report.
//!
//! The job is written to `<state>/job.json` before anything else, so an agent killed at
//! any instant knows on restart which job the engine's journal belongs to and reports
//! that job's one true outcome. Events are reported in order from an outbox; a report
//! that fails for a transient reason is retried with backoff, one over the coordinator's
//! cap waits its `Retry-After`.
//!
//! The reporter runs for the whole job, from the moment it is received: its heartbeat
//! keeps the lease alive during the download, the checks, a decision and every phase. A
//! job whose lease is lost before the engine's first change is never started (a download
//! under way is abandoned; the gate in `Bridge` stops the engine before its first change).
//! A lease lost after changes began cancels the engine as its phase allows (roll back in
//! `update-files`, finish forward from `post-precompile`); its outcome is then sent once,
//! and the coordinator records it on the lost job as late (docs/agent.md).

use super::Ctx;
use super::bridge::Bridge;
use super::client::CallError;
use super::download;
use super::finished;
use super::lease::Confirmed;
use super::logs::LogShipper;
use crate::engine::Engine;
use fleetup_proto::agent_api::{EventBatch, JobAssignment};
use fleetup_proto::{EngineEvent, InstallOutcome, InstallSummary, PhaseId, PhaseStatus};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Most events sent in one report.
const BATCH: usize = 200;
/// How long a report waits for a decision answer while the engine waits on one.
const ANSWER_WAIT: Duration = Duration::from_secs(20);

fn job_file(state_dir: &Path) -> PathBuf {
    state_dir.join("job.json")
}

/// The job this agent was working on when it stopped, if any.
pub fn unfinished(state_dir: &Path) -> anyhow::Result<Option<JobAssignment>> {
    match std::fs::read(job_file(state_dir)) {
        Ok(b) => {
            let job: JobAssignment = serde_json::from_slice(&b)?;
            // Written by this agent after the same check; checked again since the job id
            // names directories.
            job.check()?;
            Ok(Some(job))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn remember(state_dir: &Path, job: &JobAssignment) -> anyhow::Result<()> {
    let tmp = state_dir.join("job.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(job)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, job_file(state_dir))?;
    std::fs::File::open(state_dir)?.sync_all()?;
    Ok(())
}

/// The job has ended here: its final event (if it has one) joins the finished jobs, and
/// `job.json` goes.
fn forget(state_dir: &Path, job: &JobAssignment, bridge: &Bridge) {
    if let Some(last) = bridge.final_event()
        && let Err(e) = finished::record(state_dir, &job.job_id, &last)
    {
        tracing::error!(job = %job.job_id, "could not remember the finished job: {e}");
    }
    let _ = std::fs::remove_file(job_file(state_dir));
}

/// Runs a new job to its end (the install's outcome, if the engine gave one): refused before anything when it is a replay of a finished
/// job, has expired, or names another package than its bytes are.
pub async fn run(ctx: &Ctx, job: JobAssignment) -> anyhow::Result<Option<InstallOutcome>> {
    let state_dir = ctx.config.state_dir.clone();
    let bridge = Arc::new(Bridge::new(Duration::from_secs(job.lease_secs), job.expires_at));
    if let Some(earlier) = finished::lookup(&state_dir, &job.job_id) {
        tracing::warn!(job = %job.job_id, "this job already finished here ({}); reporting that outcome instead of installing again", earlier.message);
        bridge.requeue(vec![earlier]);
        report_all(ctx, &job, &bridge).await;
        return Ok(None);
    }
    remember(&state_dir, &job)?;
    let engine = Engine::new(bridge.clone(), bridge.clone());
    bridge.set_cancel(engine.cancel_handle());
    let body = {
        let (bridge, engine, job) = (bridge.clone(), engine.clone(), job.clone());
        async move {
            if bridge.expired() {
                bridge.emit_final(
                    &job,
                    &format!("the job expired at {} before it was started", job.expires_at.to_rfc3339()),
                );
                return None;
            }
            let package = fetch_package(ctx, &job, &bridge).await?;
            tracing::debug!(job = %job.job_id, "package downloaded");
            if let Err(why) = matches_job(ctx, &package, &job).await {
                bridge.emit_final(&job, &why);
                return None;
            }
            tracing::debug!(job = %job.job_id, "package matches the job");
            if bridge.lease.confirm().await == Confirmed::Lost {
                tracing::warn!(job = %job.job_id, "the coordinator took this job back; it is not started");
                return None;
            }
            tracing::debug!(job = %job.job_id, "lease confirmed: starting the engine");
            let req = ctx.install_request(package, &job);
            let install_id = job.job_id.clone();
            let handle = tokio::task::spawn_blocking(move || engine.install_as(&req, &install_id).map(Some));
            Some(handle.await)
        }
    };
    let outcome = drive(ctx, &job, &bridge, &engine, body).await;
    forget(&state_dir, &job, &bridge);
    Ok(outcome)
}

/// Downloads the job's package, retrying transient failures; `None` when the job ended
/// here (the lease was lost, or the package cannot be had: its final event is queued).
async fn fetch_package(ctx: &Ctx, job: &JobAssignment, bridge: &Bridge) -> Option<PathBuf> {
    let dir = ctx.config.state_dir.join("packages");
    loop {
        let attempt = download::fetch(&ctx.client, &job.package, &dir, ctx.config.download_floor);
        let result = tokio::select! {
            r = attempt => r,
            () = bridge.lease.lost() => {
                tracing::warn!(job = %job.job_id, "the coordinator took this job back during its download; it is not started");
                return None;
            }
        };
        match result {
            Ok(p) => return Some(p),
            Err(download::DownloadError::Transient(e)) => {
                tracing::warn!(job = %job.job_id, "package download: {e}; retrying");
                tokio::select! {
                    () = ctx.backoff.pause() => {}
                    () = bridge.lease.lost() => return None,
                }
            }
            Err(e) => {
                // The engine never ran: report the outcome as a failed check-system.
                bridge.emit_final(job, &e.to_string());
                return None;
            }
        }
    }
}

/// The package's signed manifest names the rollup and version of the job: a job for
/// `app 1.0.0` whose bytes are a (validly signed) `other 0.0.9` is refused here. A package
/// that does not verify is left to the engine, which reports exactly why.
async fn matches_job(ctx: &Ctx, package: &Path, job: &JobAssignment) -> Result<(), String> {
    let (path, trusted) = (package.to_path_buf(), ctx.config.trusted.clone());
    let verified = tokio::task::spawn_blocking(move || {
        fleetup_proto::package::verify_file(&path, &trusted, &fleetup_proto::package::Limits::default())
    })
    .await
    .map_err(|e| format!("verifying the package: {e}"))?;
    let Ok(verified) = verified else { return Ok(()) };
    let rollup = &verified.manifest.rollup;
    if rollup.name != job.package.name || rollup.version != job.package.version {
        return Err(format!(
            "the package is {} {} but the job is for {} {}: refused before installing (a coordinator or a link mixing packages)",
            rollup.name, rollup.version, job.package.name, job.package.version
        ));
    }
    Ok(())
}

/// Finishes a job interrupted by a restart: the engine's recovery, then reporting every
/// event of that install (the coordinator ignores those it already has).
pub async fn resume(ctx: &Ctx, job: JobAssignment) -> anyhow::Result<()> {
    let bridge = Arc::new(Bridge::new(Duration::from_secs(job.lease_secs), job.expires_at));
    let recorded = crate::engine::recorded_events(&ctx.config.state_dir, &job.job_id);
    let had_final = recorded.iter().any(|e| e.summary().is_some());
    bridge.requeue(recorded);
    let engine = Engine::new(bridge.clone(), bridge.clone());
    bridge.set_cancel(engine.cancel_handle());
    let body = {
        let (engine, state_dir) = (engine.clone(), ctx.config.state_dir.clone());
        async move { Some(tokio::task::spawn_blocking(move || engine.recover(&state_dir)).await) }
    };
    let recovered = drive(ctx, &job, &bridge, &engine, body).await;
    if recovered.is_none() && !had_final && !bridge.lease.is_lost() {
        // Killed before the engine recorded anything final: nothing changed on the
        // server (the journal would say otherwise), so run the job again if the lease
        // still stands.
        tracing::info!(job = %job.job_id, "no install was recorded for this job; running it");
        return run(ctx, job).await.map(drop);
    }
    forget(&ctx.config.state_dir, &job, &bridge);
    Ok(())
}

/// What the job's body gives back: the engine's result, or `None` when the engine never ran.
type EngineRun = Option<Result<Result<Option<InstallSummary>, crate::engine::EngineError>, tokio::task::JoinError>>;

/// Runs `body` (download and engine) while reporting from start to end; returns the
/// engine's outcome, if it produced one.
async fn drive(
    ctx: &Ctx,
    job: &JobAssignment,
    bridge: &Arc<Bridge>,
    engine: &Engine,
    body: impl std::future::Future<Output = EngineRun>,
) -> Option<InstallOutcome> {
    let shipper = LogShipper::new(&ctx.config.state_dir, &job.job_id);
    let cancel = engine.cancel_handle();
    *ctx.current.lock().expect("current job") = Some(cancel.clone());
    if ctx.is_stopping() {
        // The stop came while the package was downloading: end before any change.
        let _ = cancel.cancel();
    }
    let finished = Arc::new(tokio::sync::Notify::new());
    let reporter = {
        let finished = finished.clone();
        async move {
            let heartbeat = Duration::from_secs((job.lease_secs / 3).max(1));
            let mut last_sent = Instant::now();
            let mut done = false;
            let wait_done = finished.notified();
            tokio::pin!(wait_done);
            loop {
                if bridge.lease.is_lost() {
                    // Nothing more is accepted for this dispatch. Once the engine has
                    // ended, its outcome is sent once: the coordinator records it as late.
                    if !done {
                        (&mut wait_done).await;
                    }
                    match bridge.final_event() {
                        Some(last) => report_late(ctx, job, last).await,
                        None => {
                            tracing::warn!(job = %job.job_id, "the lease was lost and the install recorded no outcome");
                        }
                    }
                    break;
                }
                // Waiting on an answer with nothing else to say: hold a report open so
                // the operator's answer arrives the moment it is given.
                let waiting = bridge.waiting_on().is_some() && bridge.is_empty();
                if !bridge.is_empty() || waiting || bridge.lease.wanted() || last_sent.elapsed() >= heartbeat {
                    let wait = if waiting && !bridge.lease.wanted() { ANSWER_WAIT } else { Duration::ZERO };
                    match report_once_and_apply(ctx, job, bridge, Some(&cancel), wait).await {
                        Ok(()) => {
                            ctx.backoff.reset();
                            last_sent = Instant::now();
                        }
                        Err(CallError::Stale) => {}
                        Err(CallError::Busy(after)) => {
                            tracing::warn!(job = %job.job_id, "the coordinator asks to slow down; next report in {} s", after.as_secs());
                            tokio::time::sleep(after).await;
                        }
                        Err(e) => {
                            tracing::warn!(job = %job.job_id, "report failed: {e}; retrying");
                            ctx.backoff.pause().await;
                        }
                    }
                    continue;
                }
                shipper.ship(ctx, job).await;
                if done {
                    break;
                }
                let until_heartbeat = heartbeat.saturating_sub(last_sent.elapsed());
                tokio::select! {
                    () = bridge.wake.notified() => {}
                    () = bridge.lease.asked.notified() => {}
                    () = &mut wait_done, if !done => done = true,
                    () = tokio::time::sleep(until_heartbeat.min(Duration::from_secs(1))) => {}
                }
            }
        }
    };
    let engine_result = async {
        let r = body.await;
        finished.notify_one();
        r
    };
    let (result, ()) = tokio::join!(engine_result, reporter);
    *ctx.current.lock().expect("current job") = None;
    match result {
        Some(Ok(Ok(Some(summary)))) => {
            tracing::info!(job = %job.job_id, outcome = %summary.outcome, "install ended");
            Some(summary.outcome)
        }
        None | Some(Ok(Ok(None))) => None,
        Some(Ok(Err(e))) => {
            tracing::error!(job = %job.job_id, "engine could not run: {e}");
            None
        }
        Some(Err(e)) => {
            tracing::error!(job = %job.job_id, "engine thread failed: {e}");
            None
        }
    }
}

/// Sends every queued event, retrying transient failures with backoff, until all are
/// acknowledged or the lease is gone.
async fn report_all(ctx: &Ctx, job: &JobAssignment, bridge: &Bridge) {
    while !bridge.is_empty() {
        match report_once_and_apply(ctx, job, bridge, None, Duration::ZERO).await {
            Ok(()) => ctx.backoff.reset(),
            Err(CallError::Stale) => return,
            Err(CallError::Busy(after)) => tokio::time::sleep(after).await,
            Err(e) => {
                tracing::warn!(job = %job.job_id, "report failed: {e}; retrying");
                ctx.backoff.pause().await;
            }
        }
    }
}

/// Sends the outcome of an install whose lease was lost after it began: a few tries, then it
/// stays in the local events file and the finished jobs.
async fn report_late(ctx: &Ctx, job: &JobAssignment, last: EngineEvent) {
    let batch = EventBatch { fencing_token: job.fencing_token, events: vec![last] };
    for _ in 0..3 {
        match ctx.client.report(&job.job_id, &batch, Duration::ZERO).await {
            Ok(_) => {
                tracing::info!(job = %job.job_id, "outcome sent after the lease was lost: accepted");
                return;
            }
            Err(CallError::Stale) => {
                tracing::warn!(job = %job.job_id, "outcome sent after the lease was lost: refused as stale, recorded by the coordinator as late");
                return;
            }
            Err(CallError::Busy(after)) => tokio::time::sleep(after).await,
            Err(e) => {
                tracing::warn!(job = %job.job_id, "sending the late outcome: {e}");
                ctx.backoff.pause().await;
            }
        }
    }
}

async fn report_once_and_apply(
    ctx: &Ctx,
    job: &JobAssignment,
    bridge: &Bridge,
    cancel: Option<&crate::engine::CancelHandle>,
    wait: Duration,
) -> Result<(), CallError> {
    let events = bridge.peek(BATCH);
    let ticket = bridge.lease.ticket();
    let batch = EventBatch { fencing_token: job.fencing_token, events };
    match ctx.client.report(&job.job_id, &batch, wait).await {
        Ok(resp) => {
            bridge.lease.renewed(ticket);
            bridge.acknowledge(batch.events.len());
            bridge.answer(resp.decisions.iter().map(|d| (d.id, d.answer)));
            if resp.cancel {
                // A question open now gets the safe answer (cancel / exit).
                bridge.give_up();
            }
            if resp.cancel
                && let Some(c) = cancel
                && !c.is_requested()
            {
                match c.cancel() {
                    Ok(effect) => tracing::info!(job = %job.job_id, "{effect}"),
                    Err(refused) => tracing::warn!(job = %job.job_id, "{refused}"),
                }
            }
            Ok(())
        }
        Err(CallError::Stale) => {
            if !bridge.lease.is_lost() {
                tracing::warn!(job = %job.job_id, "the coordinator no longer holds this job's lease; cancelling as the phase allows");
            }
            bridge.lease.lose();
            bridge.give_up();
            if let Some(c) = cancel {
                let _ = c.cancel();
            }
            Err(CallError::Stale)
        }
        Err(CallError::Rejected { status, message }) => {
            // A report the coordinator refuses as malformed is never sent again unchanged:
            // the events are dropped (they stay in the local events file).
            tracing::error!(job = %job.job_id, "the coordinator refused {} event(s) ({status}: {message}); dropped", batch.events.len());
            bridge.acknowledge(batch.events.len());
            Err(CallError::Rejected { status, message })
        }
        Err(e) => Err(e),
    }
}

/// The final event of a job whose engine never ran: a failed check-system.
fn failure_event(rollup: &str, version: &str, error: &str) -> EngineEvent {
    let summary = InstallSummary {
        outcome: InstallOutcome::Failed,
        rollup: rollup.to_owned(),
        version: version.to_owned(),
        outage_ms: 0,
        total_ms: 0,
        phase_ms: std::collections::BTreeMap::new(),
        restart_required: false,
        failed_phase: Some(PhaseId::CheckSystem),
        error: Some(error.to_owned()),
    };
    EngineEvent {
        seq: 1,
        phase: PhaseId::CheckSystem,
        status: PhaseStatus::Failed,
        message: format!("the job was not started: {error}"),
        data: serde_json::json!({ "summary": summary }),
        at: chrono::Utc::now(),
    }
}

/// The final event of an assignment refused for a malformed field.
pub fn refusal_event(why: &str) -> EngineEvent {
    failure_event("", "", why)
}

impl Bridge {
    /// The final event of a job whose engine never ran (the package could not be had, or
    /// the job was refused before installing).
    pub fn emit_final(&self, job: &JobAssignment, error: &str) {
        tracing::warn!(job = %job.job_id, "{error}");
        crate::engine::EventSink::emit(self, &failure_event(&job.package.name, &job.package.version, error));
    }
}

/// An assignment for unit tests.
#[cfg(test)]
pub(crate) fn test_assignment() -> JobAssignment {
    JobAssignment {
        job_id: "job1".into(),
        rollout_id: "r1".into(),
        fencing_token: 1,
        lease_secs: 30,
        package: fleetup_proto::agent_api::PackageRef {
            id: "p1".into(),
            name: "demo-service".into(),
            version: "1.1.0".into(),
            sha256: "ab".repeat(32),
            size: 10,
            download_path: "/api/v1/agent/packages/p1".into(),
        },
        policies: fleetup_proto::agent_api::JobPolicies::default(),
        phase_timeouts: std::collections::BTreeMap::new(),
        allow_downgrade: false,
        expires_at: chrono::Utc::now() + chrono::Duration::hours(1),
    }
}

//! One job from the coordinator: download, verify, run the engine, report.
//!
//! The job is written to `<state>/job.json` before anything else, so an agent killed at
//! any instant knows on restart which job the engine's journal belongs to and reports
//! that job's one true outcome. Events are reported in order from an outbox; a report
//! that fails for a transient reason is retried with backoff; one refused for a stale
//! lease is never retried: the engine is asked to cancel (as its phase allows) and the
//! job is dropped.

use super::Ctx;
use super::bridge::Bridge;
use super::client::CallError;
use super::download;
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
        Ok(b) => Ok(Some(serde_json::from_slice(&b)?)),
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

fn forget(state_dir: &Path) {
    let _ = std::fs::remove_file(job_file(state_dir));
}

/// Runs a new job to its end; the install's outcome, if the engine gave one.
pub async fn run(ctx: &Ctx, job: JobAssignment) -> anyhow::Result<Option<InstallOutcome>> {
    remember(&ctx.config.state_dir, &job)?;
    let bridge = Arc::new(Bridge::default());
    let engine = Engine::new(bridge.clone(), bridge.clone());
    let package = loop {
        match download::fetch(&ctx.client, &job.package, &ctx.config.state_dir.join("packages")).await {
            Ok(p) => break p,
            Err(download::DownloadError::Transient(e)) => {
                tracing::warn!(job = %job.job_id, "package download: {e}; retrying");
                // Renew the lease meanwhile so a slow download is not declared lost.
                if let Err(CallError::Stale) = report_once(ctx, &job, &[], Duration::ZERO).await {
                    forget(&ctx.config.state_dir);
                    return Ok(None);
                }
                ctx.backoff.pause().await;
            }
            Err(e) => {
                // The engine never ran: report the outcome as a failed check-system.
                bridge.emit_final(&job, &e.to_string());
                report_all(ctx, &job, &bridge).await;
                forget(&ctx.config.state_dir);
                return Ok(Some(InstallOutcome::Failed));
            }
        }
    };
    let req = ctx.install_request(package, &job);
    let install_id = job.job_id.clone();
    let outcome =
        drive(ctx, &job, &bridge, &engine, move |engine| engine.install_as(&req, &install_id).map(Some)).await;
    forget(&ctx.config.state_dir);
    Ok(outcome)
}

/// Finishes a job interrupted by a restart: the engine's recovery, then reporting every
/// event of that install (the coordinator ignores those it already has).
pub async fn resume(ctx: &Ctx, job: JobAssignment) -> anyhow::Result<()> {
    let bridge = Arc::new(Bridge::default());
    bridge.requeue(crate::engine::recorded_events(&ctx.config.state_dir, &job.job_id));
    let engine = Engine::new(bridge.clone(), bridge.clone());
    let state_dir = ctx.config.state_dir.clone();
    let recovered = drive(ctx, &job, &bridge, &engine, move |engine| engine.recover(&state_dir)).await;
    if recovered.is_none()
        && !crate::engine::recorded_events(&ctx.config.state_dir, &job.job_id).iter().any(|e| e.summary().is_some())
    {
        // Killed before the engine recorded anything final: nothing changed on the
        // server (the journal would say otherwise), so run the job again if the lease
        // still stands.
        tracing::info!(job = %job.job_id, "no install was recorded for this job; running it");
        return run(ctx, job).await.map(drop);
    }
    forget(&ctx.config.state_dir);
    Ok(())
}

/// Runs `work` on the engine's blocking thread while reporting; returns the engine's
/// outcome, if it produced one.
async fn drive(
    ctx: &Ctx,
    job: &JobAssignment,
    bridge: &Arc<Bridge>,
    engine: &Engine,
    work: impl FnOnce(Engine) -> Result<Option<InstallSummary>, crate::engine::EngineError> + Send + 'static,
) -> Option<InstallOutcome> {
    let shipper = LogShipper::new(&ctx.config.state_dir, &job.job_id);
    let handle = {
        let engine = engine.clone();
        tokio::task::spawn_blocking(move || work(engine))
    };
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
                // Waiting on an answer with nothing else to say: hold a report open so
                // the operator's answer arrives the moment it is given.
                let waiting = bridge.waiting_on().is_some() && bridge.is_empty();
                if !bridge.is_empty() || waiting || last_sent.elapsed() >= heartbeat {
                    let wait = if waiting { ANSWER_WAIT } else { Duration::ZERO };
                    match report_once_and_apply(ctx, job, bridge, Some(&cancel), wait).await {
                        Ok(()) => {
                            ctx.backoff.reset();
                            last_sent = Instant::now();
                        }
                        Err(CallError::Stale) => break,
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
                    () = &mut wait_done, if !done => done = true,
                    () = tokio::time::sleep(until_heartbeat.min(Duration::from_secs(1))) => {}
                }
            }
        }
    };
    let engine_result = async {
        let r = handle.await;
        finished.notify_one();
        r
    };
    let (result, ()) = tokio::join!(engine_result, reporter);
    *ctx.current.lock().expect("current job") = None;
    match result {
        Ok(Ok(Some(summary))) => {
            tracing::info!(job = %job.job_id, outcome = %summary.outcome, "install ended");
            Some(summary.outcome)
        }
        Ok(Ok(None)) => None,
        Ok(Err(e)) => {
            tracing::error!(job = %job.job_id, "engine could not run: {e}");
            None
        }
        Err(e) => {
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
            Err(e) => {
                tracing::warn!(job = %job.job_id, "report failed: {e}; retrying");
                ctx.backoff.pause().await;
            }
        }
    }
}

async fn report_once(
    ctx: &Ctx,
    job: &JobAssignment,
    events: &[EngineEvent],
    wait: Duration,
) -> Result<fleetup_proto::agent_api::ReportResponse, CallError> {
    let batch = EventBatch { fencing_token: job.fencing_token, events: events.to_vec() };
    ctx.client.report(&job.job_id, &batch, wait).await
}

async fn report_once_and_apply(
    ctx: &Ctx,
    job: &JobAssignment,
    bridge: &Bridge,
    cancel: Option<&crate::engine::CancelHandle>,
    wait: Duration,
) -> Result<(), CallError> {
    let events = bridge.peek(BATCH);
    match report_once(ctx, job, &events, wait).await {
        Ok(resp) => {
            bridge.acknowledge(events.len());
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
            tracing::warn!(job = %job.job_id, "the coordinator no longer holds this job's lease; cancelling as the phase allows");
            bridge.give_up();
            if let Some(c) = cancel {
                let _ = c.cancel();
            }
            Err(CallError::Stale)
        }
        Err(e) => Err(e),
    }
}

impl Bridge {
    /// The final event of a job whose engine never ran (the package could not be had).
    fn emit_final(&self, job: &JobAssignment, error: &str) {
        let summary = InstallSummary {
            outcome: InstallOutcome::Failed,
            rollup: job.package.name.clone(),
            version: job.package.version.clone(),
            outage_ms: 0,
            total_ms: 0,
            phase_ms: std::collections::BTreeMap::new(),
            restart_required: false,
            failed_phase: Some(PhaseId::CheckSystem),
            error: Some(error.to_owned()),
        };
        let event = EngineEvent {
            seq: 1,
            phase: PhaseId::CheckSystem,
            status: PhaseStatus::Failed,
            message: format!("the package could not be used: {error}"),
            data: serde_json::json!({ "summary": summary }),
            at: chrono::Utc::now(),
        };
        crate::engine::EventSink::emit(self, &event);
    }
}

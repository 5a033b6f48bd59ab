//! The agent protocol under `/api/v1/agent` (wire types in `fleetup_proto::agent_api`).
//!
//! `poll` is the heartbeat too: it records the agent as seen in memory only (flushed in
//! batches) and, when no job is ready, performs reads only. A job the scheduler queues wakes
//! the held poll through the agent's `Notify` (and, across replicas, Postgres NOTIFY).

use crate::agent_limits::{MAX_EVENTS_PER_BATCH, MAX_LINES_PER_BATCH, MAX_LOG_BODY, retry_after_secs};
use crate::app::AppState;
use crate::auth::AgentCaller;
use crate::error::{ApiJson, ApiPath, ApiQuery, ApiResult, AppError};
use crate::model::{JobId, JobState, PackageId, now_ms};
use crate::ops;
use crate::routes::{Access, Routes};
use crate::store::ClaimedJob;
use axum::Json;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::handler::Handler as _;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fleetup_proto::agent_api::{
    EnrollRequest, EnrollResponse, EventBatch, JobAssignment, LogBatch, LogResponse, PackageRef, ReportResponse,
};
use std::time::Duration;
use tower::ServiceExt as _;

pub fn routes() -> Routes {
    Routes::new()
        .post("/enroll", Access::Public, enroll)
        .get("/poll", Access::Agent, poll)
        .post("/jobs/{id}/events", Access::Agent, events)
        .post("/jobs/{id}/logs", Access::Agent, logs.layer(axum::extract::DefaultBodyLimit::max(MAX_LOG_BODY)))
        .get("/packages/{id}", Access::Agent, download)
}

/// Enrolls an agent with an enrollment token (in the body): the answer holds its own token.
#[utoipa::path(post, path = "/api/v1/agent/enroll", operation_id = "enrollAgent", tag = "agent", request_body = EnrollRequest,
    responses((status = 201, description = "Enrolled", body = EnrollResponse),
        (status = 401, description = "The enrollment token is unknown, revoked, expired or used up: the detail says which", body = fleetup_proto::problem::Problem, content_type = "application/problem+json")))]
async fn enroll(
    State(state): State<AppState>,
    ApiJson(req): ApiJson<EnrollRequest>,
) -> ApiResult<(StatusCode, Json<EnrollResponse>)> {
    Ok((StatusCode::CREATED, Json(ops::agents::enroll(&state, req).await?)))
}

/// How long an agent has to start a job it was handed (`JobAssignment::expires_at`): an
/// assignment replayed later than this is refused by the agent (docs/decisions.md).
pub const JOB_START_WINDOW: Duration = Duration::from_hours(6);

/// `?wait=SECS`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct Wait {
    /// Seconds to hold the request open (capped by the server's `--max-poll-wait-secs`).
    #[serde(default)]
    wait: u64,
}

/// Long-polls for a job; also the agent's heartbeat.
#[utoipa::path(get, path = "/api/v1/agent/poll", operation_id = "pollForJob", tag = "agent", params(Wait),
    responses((status = 200, description = "A job to run", body = JobAssignment), (status = 204, description = "No job within the wait")))]
async fn poll(State(state): State<AppState>, agent: AgentCaller, ApiQuery(q): ApiQuery<Wait>) -> ApiResult<Response> {
    metrics::counter!("fleetup_polls_total").increment(1);
    state.seen(&agent.id, now_ms());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.min(state.config.max_poll_wait_secs));
    let held = state.polls.hold(&agent.id);
    let gauge = metrics::gauge!("fleetup_long_polls_held");
    gauge.increment(1.0);
    let result = async {
        loop {
            let notified = held.notify().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            // Pushed by the scheduler's pass (dispatched in its transaction): no claim to run.
            if let Some(c) = held.take() {
                metrics::counter!("fleetup_jobs_pushed_total").increment(1);
                return Ok::<_, AppError>(Some(c));
            }
            if let Some(c) = state.store.claim_job(&agent.id, now_ms()).await? {
                return Ok(Some(c));
            }
            tokio::select! {
                () = &mut notified => {}
                () = tokio::time::sleep_until(deadline) => break,
                () = state.shutdown.cancelled() => break,
            }
        }
        Ok(None)
    }
    .await;
    gauge.decrement(1.0);
    // Leaving at the deadline, the poll answers with what was pushed as it left.
    let result = match (result, held.release()) {
        (Ok(None), Some(c)) => {
            metrics::counter!("fleetup_jobs_pushed_total").increment(1);
            Ok(Some(c))
        }
        (result, _) => result,
    };
    state.seen(&agent.id, now_ms());
    Ok(match result? {
        Some(c) => {
            metrics::counter!("fleetup_jobs_dispatched_total").increment(1);
            Json(assignment(&c)).into_response()
        }
        None => StatusCode::NO_CONTENT.into_response(),
    })
}

/// What a poll hands the agent for a dispatched job.
fn assignment(c: &ClaimedJob) -> JobAssignment {
    JobAssignment {
        job_id: c.job_id.to_string(),
        rollout_id: c.rollout_id.to_string(),
        fencing_token: c.fencing_token,
        lease_secs: (c.lease_ms / 1000).max(1) as u64,
        package: PackageRef {
            id: c.package.id.to_string(),
            name: c.package.name.clone(),
            version: c.package.version.clone(),
            sha256: c.package.sha256.clone(),
            size: c.package.size,
            download_path: format!("/api/v1/agent/packages/{}", c.package.id),
        },
        policies: c.spec.policies,
        phase_timeouts: c.spec.phase_timeouts.clone(),
        // Refused at staging unless the rollout allows it (audited with its spec).
        allow_downgrade: c.spec.allow_downgrade,
        expires_at: crate::model::to_time(now_ms() + JOB_START_WINDOW.as_millis() as i64),
    }
}

/// Reports engine events of a job (with the job's fencing token); with `?wait=`, held while a decision is open.
#[utoipa::path(post, path = "/api/v1/agent/jobs/{id}/events", operation_id = "reportEvents", tag = "agent", params(("id" = JobId, Path), Wait),
    request_body = EventBatch, responses((status = 200, description = "Taken; any decision answer or cancel request", body = ReportResponse),
        (status = 409, description = "Stale lease: the job was taken away (fencing token too old)", body = fleetup_proto::problem::Problem, content_type = "application/problem+json")))]
async fn events(
    State(state): State<AppState>,
    agent: AgentCaller,
    ApiPath(job_id): ApiPath<JobId>,
    ApiQuery(q): ApiQuery<Wait>,
    ApiJson(batch): ApiJson<EventBatch>,
) -> ApiResult<Json<ReportResponse>> {
    let now = now_ms();
    state.seen(&agent.id, now);
    if batch.events.len() > MAX_EVENTS_PER_BATCH {
        return Err(AppError::TooLarge(format!(
            "{} events in one report; send at most {MAX_EVENTS_PER_BATCH} per report",
            batch.events.len()
        )));
    }
    capped(&state.agent_limits.events, &job_id, batch.events.len(), "events")?;
    let out = state.store.report_events(&job_id, &agent.id, batch.fencing_token, &batch.events, now).await?;
    if let Some(late) = out.late {
        return Err(AppError::StaleLease(format!(
            "job {job_id} was declared lost before this report; its outcome is recorded as late ({late}); stop reporting for this dispatch"
        )));
    }
    metrics::counter!("fleetup_events_accepted_total").increment(u64::from(out.accepted));
    metrics::counter!("fleetup_events_duplicate_total").increment(u64::from(out.duplicates));
    if let Some(ended) = out.ended {
        metrics::counter!("fleetup_jobs_ended_total", "outcome" => ended.as_str()).increment(1);
    }
    if out.finished.is_some() {
        state.scheduler_kick.notify_one();
    }
    // With `wait`, hold while the job waits for an operator and no cancel is requested.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(q.wait.min(state.config.max_poll_wait_secs));
    let notify = state.waker(&agent.id);
    let job = loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let job = state.store.get_job(&job_id).await?;
        if job.state != JobState::Waiting || job.cancel_requested {
            break job;
        }
        tokio::select! {
            () = &mut notified => {}
            () = tokio::time::sleep_until(deadline) => break job,
            () = state.shutdown.cancelled() => break job,
        }
    };
    let msgs = state.store.job_messages(&job_id).await?;
    let lease_secs = job.lease_expires_at.map_or(0, |at| ((at.timestamp_millis() - now) / 1000).max(0) as u64);
    Ok(Json(ReportResponse {
        accepted: out.accepted,
        duplicates: out.duplicates,
        cancel: msgs.cancel,
        decisions: msgs.decisions,
        lease_secs,
    }))
}

/// Reports a job's log lines.
#[utoipa::path(post, path = "/api/v1/agent/jobs/{id}/logs", operation_id = "reportLogs", tag = "agent", params(("id" = JobId, Path)),
    request_body = LogBatch, responses((status = 200, description = "Taken", body = LogResponse)))]
async fn logs(
    State(state): State<AppState>,
    agent: AgentCaller,
    ApiPath(job_id): ApiPath<JobId>,
    ApiJson(batch): ApiJson<LogBatch>,
) -> ApiResult<Json<LogResponse>> {
    state.seen(&agent.id, now_ms());
    if batch.lines.len() > MAX_LINES_PER_BATCH {
        return Err(AppError::TooLarge(format!(
            "{} log lines in one batch; send at most {MAX_LINES_PER_BATCH} per batch",
            batch.lines.len()
        )));
    }
    capped(&state.agent_limits.lines, &job_id, batch.lines.len(), "log lines")?;
    let (accepted, duplicates) = state.store.report_logs(&job_id, &agent.id, batch.fencing_token, &batch.lines).await?;
    Ok(Json(LogResponse { accepted, duplicates }))
}

/// Takes `n` items of a job's cap, or refuses with `429` and `Retry-After`.
fn capped(rate: &crate::agent_limits::JobRate, job_id: &JobId, n: usize, what: &str) -> ApiResult<()> {
    rate.take(job_id, n, std::time::Instant::now()).map_err(|wait| {
        metrics::counter!("fleetup_agent_capped_total").increment(1);
        let retry_after = retry_after_secs(wait);
        AppError::TooManyRequests {
            message: format!("job {job_id} sent {what} faster than its cap; send this batch again in {retry_after} s"),
            retry_after,
        }
    })
}

/// Downloads a package file (HTTP Range supported, to resume).
#[utoipa::path(get, path = "/api/v1/agent/packages/{id}", operation_id = "downloadPackage", tag = "agent", params(("id" = PackageId, Path)),
    responses((status = 200, description = "The package file", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 206, description = "The range asked", content_type = "application/octet-stream", body = Vec<u8>),
        (status = 416, description = "A range outside the file", body = fleetup_proto::problem::Problem, content_type = "application/problem+json")))]
async fn download(
    State(state): State<AppState>,
    agent: AgentCaller,
    ApiPath(id): ApiPath<PackageId>,
    req: Request,
) -> ApiResult<Response> {
    let package = state.store.get_package(&id).await?;
    if !state.store.agent_may_download(&agent.id, &id).await? {
        return Err(AppError::Forbidden(format!("package {id} is not part of any job of this agent")));
    }
    let path = ops::packages::package_path(&state, &package.sha256);
    let res =
        tower_http::services::ServeFile::new(path).oneshot(req).await.map_err(|e| AppError::Internal(e.to_string()))?;
    Ok(res.map(Body::new))
}

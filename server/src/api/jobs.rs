//! Jobs: `GET /jobs/{id}`, its events, logs and decisions, `POST /jobs/{id}/decision`,
//! `POST /jobs/{id}/cancel`, and the guided-failure answers `POST /jobs/{id}/retry`,
//! `/skip` and `/exclude`.

use crate::app::AppState;
use crate::error::{ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::model::{Decision, Job, JobId, Role};
use crate::ops::{self, Actor};
use crate::routes::{Access, Routes};
use axum::Json;
use axum::extract::State;
use fleetup_proto::agent_api::LogLine;
use fleetup_proto::{DecisionAnswer, EngineEvent};

pub fn routes() -> Routes {
    let (read, operate) = (Access::Token(Role::Viewer), Access::Token(Role::Operator));
    Routes::new()
        .get("/jobs/{id}", read, show)
        .get("/jobs/{id}/events", read, events)
        .get("/jobs/{id}/logs", read, logs)
        .get("/jobs/{id}/decisions", read, decisions)
        .post("/jobs/{id}/decision", operate, decide)
        .post("/jobs/{id}/cancel", operate, cancel)
        .post("/jobs/{id}/{action}", operate, guide)
}

/// A job: wave, state, current phase, every phase's status, warnings, error, outage.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", operation_id = "getJob", tag = "jobs", params(("id" = JobId, Path)),
    responses((status = 200, description = "The job", body = Job)))]
async fn show(State(state): State<AppState>, ApiPath(id): ApiPath<JobId>) -> ApiResult<Json<Job>> {
    Ok(Json(state.store.get_job(&id).await?))
}

/// A job's engine events, in order.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/events", operation_id = "listJobEvents", tag = "jobs", params(("id" = JobId, Path), super::Page),
    responses((status = 200, description = "Events after `after`", body = Vec<EngineEvent>)))]
async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<JobId>,
    ApiQuery(page): ApiQuery<super::Page>,
) -> ApiResult<Json<Vec<EngineEvent>>> {
    Ok(Json(state.store.list_events(&id, page.after, page.limit()?).await?))
}

/// A job's phase log lines, in order.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/logs", operation_id = "listJobLogs", tag = "jobs", params(("id" = JobId, Path), super::Page),
    responses((status = 200, description = "Lines after `after`", body = Vec<LogLine>)))]
async fn logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<JobId>,
    ApiQuery(page): ApiQuery<super::Page>,
) -> ApiResult<Json<Vec<LogLine>>> {
    Ok(Json(state.store.list_logs(&id, page.after, page.limit()?).await?))
}

/// A job's decisions and their answers.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/decisions", operation_id = "listJobDecisions", tag = "jobs", params(("id" = JobId, Path)),
    responses((status = 200, description = "Every decision of the job", body = Vec<Decision>)))]
async fn decisions(State(state): State<AppState>, ApiPath(id): ApiPath<JobId>) -> ApiResult<Json<Vec<Decision>>> {
    Ok(Json(state.store.list_decisions(&id).await?))
}

/// Body of `POST /jobs/{id}/decision`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Answer {
    /// `continue`, `cancel`, `retry`, `ignore` or `exit`.
    answer: DecisionAnswer,
    /// Which decision (default: the only open one).
    #[serde(default)]
    decision_id: Option<u32>,
}

/// Answers the job's open decision.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/decision", operation_id = "answerDecision", tag = "jobs", params(("id" = JobId, Path)),
    request_body = Answer, responses((status = 200, description = "The job", body = Job)))]
async fn decide(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(id): ApiPath<JobId>,
    ApiJson(body): ApiJson<Answer>,
) -> ApiResult<Json<Job>> {
    Ok(Json(ops::jobs::answer_decision(&state, &actor, &id, body.decision_id, body.answer).await?))
}

/// Cancels one job (an install in flight rolls back).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", operation_id = "cancelJob", tag = "jobs", params(("id" = JobId, Path)),
    responses((status = 200, description = "The job", body = Job)))]
async fn cancel(State(state): State<AppState>, actor: Actor, ApiPath(id): ApiPath<JobId>) -> ApiResult<Json<Job>> {
    Ok(Json(ops::jobs::cancel(&state, &actor, &id).await?))
}

/// Guided failure: `retry` tries the server again as a new attempt (the answer is the new job), `skip` makes the failure no longer count, `exclude` takes the server out of the rollout.
#[utoipa::path(post, path = "/api/v1/jobs/{id}/{action}", operation_id = "guideFailedJob", tag = "jobs",
    params(("id" = JobId, Path), ("action" = String, Path, description = "retry, skip or exclude", pattern = "^(retry|skip|exclude)$")),
    responses((status = 200, description = "The job (for retry: the new attempt)", body = Job)))]
async fn guide(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath((id, action)): ApiPath<(JobId, String)>,
) -> ApiResult<Json<Job>> {
    let action = crate::domain::job::JobAction::parse(&action).ok_or_else(|| {
        crate::error::AppError::NotFound(format!(
            "no job action '{action}': use cancel, decision, retry, skip or exclude"
        ))
    })?;
    Ok(Json(ops::jobs::guide(&state, &actor, &id, action).await?))
}

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

async fn show(State(state): State<AppState>, ApiPath(id): ApiPath<JobId>) -> ApiResult<Json<Job>> {
    Ok(Json(state.store.get_job(&id).await?))
}

async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<JobId>,
    ApiQuery(page): ApiQuery<super::Page>,
) -> ApiResult<Json<Vec<EngineEvent>>> {
    Ok(Json(state.store.list_events(&id, page.after, page.limit()?).await?))
}

async fn logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<JobId>,
    ApiQuery(page): ApiQuery<super::Page>,
) -> ApiResult<Json<Vec<LogLine>>> {
    Ok(Json(state.store.list_logs(&id, page.after, page.limit()?).await?))
}

async fn decisions(State(state): State<AppState>, ApiPath(id): ApiPath<JobId>) -> ApiResult<Json<Vec<Decision>>> {
    Ok(Json(state.store.list_decisions(&id).await?))
}

/// Body of `POST /jobs/{id}/decision`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Answer {
    /// `continue`, `cancel`, `retry`, `ignore` or `exit`.
    answer: DecisionAnswer,
    /// Which decision (default: the only open one).
    #[serde(default)]
    decision_id: Option<u32>,
}

async fn decide(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(id): ApiPath<JobId>,
    ApiJson(body): ApiJson<Answer>,
) -> ApiResult<Json<Job>> {
    Ok(Json(ops::jobs::answer_decision(&state, &actor, &id, body.decision_id, body.answer).await?))
}

async fn cancel(State(state): State<AppState>, actor: Actor, ApiPath(id): ApiPath<JobId>) -> ApiResult<Json<Job>> {
    Ok(Json(ops::jobs::cancel(&state, &actor, &id).await?))
}

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

//! Jobs: `GET /jobs/{id}`, its events, logs and decisions, `POST /jobs/{id}/decision`,
//! `POST /jobs/{id}/cancel`.

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::model::{Decision, Job};
use crate::store::NewAudit;
use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use fleetup_proto::agent_api::LogLine;
use fleetup_proto::{DecisionAnswer, EngineEvent};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/jobs/{id}", get(show))
        .route("/jobs/{id}/events", get(events))
        .route("/jobs/{id}/logs", get(logs))
        .route("/jobs/{id}/decisions", get(decisions))
        .route("/jobs/{id}/decision", post(decide))
        .route("/jobs/{id}/cancel", post(cancel))
}

async fn show(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Job>> {
    Ok(Json(state.store.get_job(&id).await?))
}

async fn events(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(page): ApiQuery<super::Page>,
) -> ApiResult<Json<Vec<EngineEvent>>> {
    Ok(Json(state.store.list_events(&id, page.after, page.limit()).await?))
}

async fn logs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(page): ApiQuery<super::Page>,
) -> ApiResult<Json<Vec<LogLine>>> {
    Ok(Json(state.store.list_logs(&id, page.after, page.limit()).await?))
}

async fn decisions(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Vec<Decision>>> {
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
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Answer>,
) -> ApiResult<Json<Job>> {
    let audit = NewAudit::new(
        &caller.actor,
        "job.decision",
        "job",
        &id,
        serde_json::json!({ "answer": body.answer, "decision_id": body.decision_id }),
    );
    let (job, agent) = state.store.answer_decision(&id, body.decision_id, body.answer, &audit).await?;
    state.wake_agents(&[agent]).await;
    Ok(Json(job))
}

async fn cancel(State(state): State<AppState>, caller: Caller, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Job>> {
    let audit = NewAudit::new(&caller.actor, "job.cancel", "job", &id, serde_json::json!({}));
    let job = state.store.cancel_job(&id, &audit).await?;
    state.wake_agents(std::slice::from_ref(&job.agent_id)).await;
    state.scheduler_kick.notify_one();
    Ok(Json(job))
}

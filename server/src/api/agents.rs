//! `GET /agents`, `GET /agents/{id}`, `PATCH /agents/{id}` (labels), `DELETE /agents/{id}`
//! (revoke, admin). Online/offline comes from the in-memory last-seen times.

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiJson, ApiPath, ApiResult};
use crate::model::{Agent, Role, now_ms, to_time};
use crate::store::NewAudit;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use std::collections::BTreeMap;

pub fn router() -> Router<AppState> {
    Router::new().route("/agents", get(list)).route("/agents/{id}", get(show).patch(update).delete(revoke))
}

fn decorate(state: &AppState, mut a: Agent) -> Agent {
    if let Some(seen) = state.last_seen_of(&a.id) {
        a.last_seen = a.last_seen.max(to_time(seen));
    }
    let horizon = now_ms() - i64::try_from(state.config.offline_after_secs).unwrap_or(90) * 1000;
    a.online = !a.revoked && a.last_seen.timestamp_millis() >= horizon;
    a
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<Agent>>> {
    let agents = state.store.list_agents().await?;
    Ok(Json(agents.into_iter().map(|a| decorate(&state, a)).collect()))
}

async fn show(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Agent>> {
    Ok(Json(decorate(&state, state.store.get_agent(&id).await?)))
}

/// Body of `PATCH /agents/{id}`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Patch {
    /// The new labels (replacing the old ones).
    labels: BTreeMap<String, String>,
}

async fn update(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
    ApiJson(body): ApiJson<Patch>,
) -> ApiResult<Json<Agent>> {
    let audit =
        NewAudit::new(&caller.actor, "agent.labels", "agent", &id, serde_json::json!({ "labels": body.labels }));
    let agent = state.store.set_agent_labels(&id, &body.labels, &audit).await?;
    Ok(Json(decorate(&state, agent)))
}

async fn revoke(State(state): State<AppState>, caller: Caller, ApiPath(id): ApiPath<String>) -> ApiResult<StatusCode> {
    caller.require(Role::Admin)?;
    let audit = NewAudit::new(&caller.actor, "agent.revoke", "agent", &id, serde_json::json!({}));
    state.store.revoke_agent(&id, &audit).await?;
    state.wake_local(std::slice::from_ref(&id));
    Ok(StatusCode::NO_CONTENT)
}

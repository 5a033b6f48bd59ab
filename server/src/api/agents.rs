//! `GET /agents`, `GET /agents/{id}`, `PATCH /agents/{id}` (labels), `DELETE /agents/{id}`
//! (revoke, admin). Online/offline comes from the in-memory last-seen times.

use crate::app::AppState;
use crate::error::{ApiJson, ApiPath, ApiResult};
use crate::model::{Agent, AgentId, Role};
use crate::ops::{self, Actor};
use crate::routes::{Access, Routes};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use std::collections::BTreeMap;

pub fn routes() -> Routes {
    Routes::new()
        .get("/agents", Access::Token(Role::Viewer), list)
        .get("/agents/{id}", Access::Token(Role::Viewer), show)
        .patch("/agents/{id}", Access::Token(Role::Operator), update)
        .delete("/agents/{id}", Access::Token(Role::Admin), revoke)
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<Agent>>> {
    Ok(Json(ops::agents::list(&state).await?))
}

async fn show(State(state): State<AppState>, ApiPath(id): ApiPath<AgentId>) -> ApiResult<Json<Agent>> {
    Ok(Json(ops::agents::decorate(&state, state.store.get_agent(&id).await?)))
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
    actor: Actor,
    ApiPath(id): ApiPath<AgentId>,
    ApiJson(body): ApiJson<Patch>,
) -> ApiResult<Json<Agent>> {
    Ok(Json(ops::agents::set_labels(&state, &actor, &id, &body.labels).await?))
}

async fn revoke(State(state): State<AppState>, actor: Actor, ApiPath(id): ApiPath<AgentId>) -> ApiResult<StatusCode> {
    ops::agents::revoke(&state, &actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

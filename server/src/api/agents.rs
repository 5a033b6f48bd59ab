//! `GET /agents`, `GET /agents/{id}`, `PATCH /agents/{id}` (labels), `DELETE /agents/{id}`
//! (revoke, admin). Online/offline comes from the in-memory last-seen times.

use super::paging;
use crate::app::AppState;
use crate::error::{ApiJson, ApiPath, ApiQuery, ApiResult, AppError};
use crate::model::{Agent, AgentId, Page, Role};
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

/// `GET /agents` query: filters, page size, cursor.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AgentsQuery {
    /// `key=value, …`: only agents carrying every pair.
    label: Option<String>,
    /// Only online (`true`) or offline (`false`) agents.
    online: Option<bool>,
    /// Only agents whose last installed rollup has this version (`none`: nothing installed).
    installed: Option<String>,
    /// Page size, 1 to 5000 (default 500).
    limit: Option<u64>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Refused (400): listings page by cursor.
    offset: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/agents", operation_id = "listAgents", tag = "agents", params(AgentsQuery),
    responses((status = 200, description = "A page of agents, by hostname", body = Page<Agent>)))]
/// `GET /agents`: by hostname (then id), paged by cursor. Filtered on the decorated list
/// (online comes from the in-memory last-seen times, which the database lags).
async fn list(State(state): State<AppState>, ApiQuery(q): ApiQuery<AgentsQuery>) -> ApiResult<Json<Page<Agent>>> {
    let labels =
        crate::domain::labels::parse_selector(q.label.as_deref().unwrap_or("")).map_err(AppError::BadRequest)?;
    let limit = super::page_limit(q.limit, 500)?;
    let scope = format!("{labels:?}|{:?}|{:?}", q.online, q.installed);
    let after = paging::after(&paging::AGENTS, &scope, q.cursor.as_deref(), q.offset.as_deref())?;
    let key = |a: &Agent| vec![a.hostname.clone(), a.id.to_string()];
    let mut all: Vec<Agent> = ops::agents::list(&state)
        .await?
        .into_iter()
        .filter(|a| crate::domain::labels::matches(&labels, &a.labels))
        .filter(|a| q.online.is_none_or(|o| a.online == o))
        .filter(|a| q.installed.as_deref().is_none_or(|v| ops::agents::installed_version(a) == v))
        .collect();
    all.sort_by_key(key);
    let items: Vec<Agent> = all
        .into_iter()
        .filter(|a| after.as_ref().is_none_or(|after| key(a) > *after))
        .take(usize::try_from(limit).unwrap_or(usize::MAX).saturating_add(1))
        .collect();
    Ok(Json(paging::page(items, limit, &paging::AGENTS, &scope, key)))
}

/// One agent.
#[utoipa::path(get, path = "/api/v1/agents/{id}", operation_id = "getAgent", tag = "agents", params(("id" = AgentId, Path)),
    responses((status = 200, description = "The agent", body = Agent)))]
async fn show(State(state): State<AppState>, ApiPath(id): ApiPath<AgentId>) -> ApiResult<Json<Agent>> {
    Ok(Json(ops::agents::decorate(&state, state.store.get_agent(&id).await?)))
}

/// Body of `PATCH /agents/{id}`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct Patch {
    /// The new labels (replacing the old ones).
    labels: BTreeMap<String, String>,
}

/// Replaces an agent's labels.
#[utoipa::path(patch, path = "/api/v1/agents/{id}", operation_id = "setAgentLabels", tag = "agents", params(("id" = AgentId, Path)),
    request_body = Patch, responses((status = 200, description = "The agent with its new labels", body = Agent)))]
async fn update(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(id): ApiPath<AgentId>,
    ApiJson(body): ApiJson<Patch>,
) -> ApiResult<Json<Agent>> {
    Ok(Json(ops::agents::set_labels(&state, &actor, &id, &body.labels).await?))
}

/// Revokes an agent: its token stops working at once.
#[utoipa::path(delete, path = "/api/v1/agents/{id}", operation_id = "revokeAgent", tag = "agents", params(("id" = AgentId, Path)),
    responses((status = 204, description = "Revoked")))]
async fn revoke(State(state): State<AppState>, actor: Actor, ApiPath(id): ApiPath<AgentId>) -> ApiResult<StatusCode> {
    ops::agents::revoke(&state, &actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

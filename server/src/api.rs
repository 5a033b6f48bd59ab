//! The HTTP surface: `/api/v1` (operator API, bearer API tokens), `/api/v1/agent` (agent
//! protocol, agent tokens), `/healthz`, `/metrics`. Each resource has its own `router()`.

mod agent;
mod agents;
mod audit;
mod enrollment;
mod idempotency;
mod jobs;
pub mod observe;
pub mod openapi;
mod packages;
mod paging;

mod rollouts;
mod webhooks;

mod access;

use crate::app::AppState;
use crate::error::AppError;
use crate::routes::{Access, Routes};
use axum::Router;
use axum::extract::State;
use fleetup_proto::api::Health;

/// Every route of the HTTP API with its access rule (the rules: [`crate::routes`]).
pub fn routes() -> Routes {
    let api = Routes::new()
        .merge(packages::routes())
        .merge(enrollment::routes())
        .merge(agents::routes())
        .merge(rollouts::routes())
        .merge(jobs::routes())
        .merge(audit::routes())
        .merge(openapi::routes())
        .merge(access::routes())
        .merge(webhooks::routes());
    Routes::new()
        .nest("/api/v1", api)
        .nest("/api/v1/agent", agent::routes())
        .get("/healthz", Access::Public, healthz)
        .get("/metrics", Access::Public, metrics)
}

/// The HTTP API's router.
pub fn router(state: AppState) -> Router {
    serve(routes(), state)
}

/// `routes`, guarded before anything else runs, with the API's fallback and layers.
pub(crate) fn serve(routes: Routes, state: AppState) -> Router {
    routes
        .guarded(state.clone())
        .fallback(not_found)
        .layer(axum::middleware::from_fn(crate::error::problems_everywhere))
        .layer(axum::middleware::from_fn_with_state(state.clone(), observe::observe))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

/// Liveness and a database check.
#[utoipa::path(get, path = "/healthz", operation_id = "health", tag = "ops",
    responses((status = 200, description = "Up, with the store's backend", body = Health)))]
async fn healthz(State(state): State<AppState>) -> Result<axum::Json<Health>, AppError> {
    state.store.ping().await?;
    Ok(axum::Json(Health { status: "ok".into(), backend: state.store.backend().into() }))
}

#[utoipa::path(get, path = "/metrics", operation_id = "metrics", tag = "ops",
    responses((status = 200, description = "Prometheus text exposition", content_type = "text/plain", body = String)))]
/// The Prometheus text (see [`crate::telemetry`]).
async fn metrics(State(state): State<AppState>) -> Result<String, AppError> {
    crate::telemetry::render(&state).await
}

async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::NotFound(crate::error::no_route(uri.path()))
}

/// Paging parameters of a job's events and logs (a rollout's jobs have their own,
/// cursor-paged: `rollouts::JobsQuery`).
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Page size (default 500, at most 5000).
    pub limit: Option<u64>,
    /// Items after this sequence number (events, logs).
    #[serde(default)]
    pub after: u64,
}

impl Page {
    /// The page size, refused outside its range.
    pub fn limit(&self) -> Result<u64, AppError> {
        page_limit(self.limit, 500)
    }
}

/// The largest page any list answers.
pub const MAX_PAGE: u64 = 5000;

/// `?limit=`: `default` when absent; outside 1..=[`MAX_PAGE`] a 400 that says the range
/// (never a silent clamp: a client asking 10,000 must learn it gets at most 5,000).
pub fn page_limit(limit: Option<u64>, default: u64) -> Result<u64, AppError> {
    match limit {
        None => Ok(default),
        Some(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
        Some(n) => Err(AppError::BadRequest(format!(
            "limit={n} is out of range: a page holds 1 to {MAX_PAGE} items (default {default}); page on with the cursor"
        ))),
    }
}

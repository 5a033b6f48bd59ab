//! The HTTP surface: `/api/v1` (operator API, bearer API tokens), `/api/v1/agent` (agent
//! protocol, agent tokens), `/healthz`, `/metrics`. Each resource has its own `router()`.

mod agent;
mod agents;
mod audit;
mod enrollment;
mod jobs;
mod openapi;
mod packages;

mod rollouts;

use crate::app::AppState;
use crate::error::AppError;
use axum::Router;
use axum::extract::State;
use axum::routing::get;

/// The whole application router.
pub fn router(state: AppState) -> Router {
    let api = Router::new()
        .merge(packages::router())
        .merge(enrollment::router())
        .merge(agents::router())
        .merge(rollouts::router())
        .merge(jobs::router())
        .merge(audit::router())
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), crate::auth::require_token));
    Router::new()
        .nest("/api/v1", api.merge(openapi::router()))
        .nest("/api/v1/agent", agent::router())
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Result<axum::Json<serde_json::Value>, AppError> {
    state.store.ping().await?;
    Ok(axum::Json(serde_json::json!({ "status": "ok", "backend": state.store.backend() })))
}

/// The Prometheus text. Gauges of what the database holds (stalled jobs) are read at
/// scrape time, so they are true of this coordinator's database whatever ran before.
async fn metrics(State(state): State<AppState>) -> Result<String, AppError> {
    metrics::gauge!("fleetup_jobs_stalled").set(state.store.stalled_jobs().await? as f64);
    Ok(state.metrics.render())
}

async fn not_found(uri: axum::http::Uri) -> AppError {
    AppError::NotFound(format!("no route {}; see /api/v1/openapi.json", uri.path()))
}

/// Paging parameters of a job's events and logs (a rollout's jobs have their own,
/// cursor-paged: `rollouts::JobsQuery`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Page {
    /// Page size (default 500, at most 5000).
    pub limit: Option<u64>,
    /// Items after this sequence number (events, logs).
    #[serde(default)]
    pub after: u64,
}

impl Page {
    /// The page size.
    pub fn limit(&self) -> u64 {
        self.limit.unwrap_or(500).clamp(1, 5000)
    }
}

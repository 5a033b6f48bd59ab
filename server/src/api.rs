//! The HTTP surface: `/api/v1` (operator API, bearer API tokens), `/api/v1/agent` (agent
//! protocol, agent tokens), `/healthz`, `/metrics`. Each resource has its own `router()`.

mod agent;
mod agents;
mod audit;
mod enrollment;
mod jobs;
mod openapi;
mod packages;
mod paging;

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
        .layer(axum::middleware::from_fn(crate::error::problems_everywhere))
        .layer(tower_http::trace::TraceLayer::new_for_http())
        .with_state(state)
}

async fn healthz(State(state): State<AppState>) -> Result<axum::Json<serde_json::Value>, AppError> {
    state.store.ping().await?;
    Ok(axum::Json(serde_json::json!({ "status": "ok", "backend": state.store.backend() })))
}

/// The Prometheus text (see [`crate::telemetry`]).
async fn metrics(State(state): State<AppState>) -> Result<String, AppError> {
    crate::telemetry::render(&state).await
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

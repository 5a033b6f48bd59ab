//! `GET /audit?limit=N&object_id=ID`: who did what, when, to which object.

use crate::app::AppState;
use crate::error::{ApiQuery, ApiResult};
use crate::model::AuditEntry;
use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

pub fn router() -> Router<AppState> {
    Router::new().route("/audit", get(list))
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Filter {
    limit: Option<u64>,
    object_id: Option<String>,
}

async fn list(State(state): State<AppState>, ApiQuery(f): ApiQuery<Filter>) -> ApiResult<Json<Vec<AuditEntry>>> {
    Ok(Json(state.store.list_audit(super::page_limit(f.limit, 200)?, f.object_id.as_deref()).await?))
}

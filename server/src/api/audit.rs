//! `GET /audit?limit=N&object_id=ID`: who did what, when, to which object.

use crate::app::AppState;
use crate::error::{ApiQuery, ApiResult};
use crate::model::AuditEntry;
use crate::model::Role;
use crate::routes::{Access, Routes};
use axum::Json;
use axum::extract::State;

pub fn routes() -> Routes {
    Routes::new().get("/audit", Access::Token(Role::Viewer), list)
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Filter {
    limit: Option<u64>,
    object_id: Option<String>,
}

async fn list(State(state): State<AppState>, ApiQuery(f): ApiQuery<Filter>) -> ApiResult<Json<Vec<AuditEntry>>> {
    Ok(Json(state.store.list_audit(f.limit.unwrap_or(200).clamp(1, 5000), f.object_id.as_deref()).await?))
}

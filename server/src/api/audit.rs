//! `GET /audit?actor=&action=&object=&since=&until=&limit=&cursor=`: who did what, when,
//! to which object.

use super::paging;
use crate::app::AppState;
use crate::error::{ApiQuery, ApiResult};
use crate::model::{AuditEntry, Page, Role};
use crate::routes::{Access, Routes};
use crate::store::AuditFilter;
use axum::Json;
use axum::extract::State;

pub fn routes() -> Routes {
    Routes::new().get("/audit", Access::Token(Role::Viewer), list)
}

/// `GET /audit` query: filters, page size, cursor.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// Exactly this actor (`token:ci`, `user:ada`, …).
    actor: Option<String>,
    /// Exactly this action (`rollout.start`, …).
    action: Option<String>,
    /// This object id, or every object of this type (`rollout`, `user`, …).
    object: Option<String>,
    /// Older name of `object`.
    object_id: Option<String>,
    /// At or after (RFC 3339).
    since: Option<chrono::DateTime<chrono::Utc>>,
    /// Before (RFC 3339).
    until: Option<chrono::DateTime<chrono::Utc>>,
    /// Page size, 1 to 5000 (default 200).
    limit: Option<u64>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Refused (400): listings page by cursor.
    offset: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/audit", operation_id = "listAudit", tag = "audit", params(AuditQuery),
    responses((status = 200, description = "A page of the audit log, newest first", body = Page<AuditEntry>)))]
/// `GET /audit`: newest first, paged by cursor (keyset in the database: page 100 costs
/// what page 1 does).
async fn list(State(state): State<AppState>, ApiQuery(q): ApiQuery<AuditQuery>) -> ApiResult<Json<Page<AuditEntry>>> {
    let limit = super::page_limit(q.limit, 200)?;
    let object = q.object.or(q.object_id).unwrap_or_default();
    let (since, until) = (q.since.map(|t| t.timestamp_millis()), q.until.map(|t| t.timestamp_millis()));
    let scope = format!("{:?}|{:?}|{object:?}|{since:?}|{until:?}", q.actor, q.action);
    let before = paging::after(&paging::AUDIT, &scope, q.cursor.as_deref(), q.offset.as_deref())?
        .map(|key| paging::pair(&key))
        .transpose()?;
    let filter = AuditFilter {
        actor: q.actor.unwrap_or_default(),
        action: q.action.unwrap_or_default(),
        object,
        before,
        since,
        until,
    };
    let items = state.store.audit_page(&filter, limit + 1).await?;
    Ok(Json(paging::page(items, limit, &paging::AUDIT, &scope, |e| {
        vec![e.at.timestamp_millis().to_string(), e.id.clone()]
    })))
}

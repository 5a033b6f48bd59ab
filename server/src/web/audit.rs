//! The audit log page: the latest records, newest first (every mutation made through the
//! API, the dashboard, the CLI or the scheduler).

use super::WebResult;
use super::session::User;
use super::view::{Nav, time};
use crate::app::AppState;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Query, State};

/// Records shown.
const LIMIT: u64 = 500;

/// One record.
#[derive(Debug)]
pub struct AuditLine {
    /// When.
    pub at: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// On what.
    pub object: String,
    /// Details, as compact JSON.
    pub detail: String,
}

/// `?object=ID`.
#[derive(Debug, serde::Deserialize)]
pub struct AuditQuery {
    object: Option<String>,
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "audit.html")]
pub struct AuditPage {
    nav: Nav,
    lines: Vec<AuditLine>,
    object: String,
}

/// `GET /audit`.
pub async fn page(State(state): State<AppState>, user: User, Query(q): Query<AuditQuery>) -> WebResult<AuditPage> {
    let object = q.object.unwrap_or_default();
    let lines = state
        .store
        .list_audit(LIMIT, Some(object.as_str()).filter(|o| !o.is_empty()))
        .await?
        .into_iter()
        .map(|e| {
            let mut detail = e.detail.to_string();
            if detail.len() > 300 {
                let cut = (0..=300).rev().find(|i| detail.is_char_boundary(*i)).unwrap_or(0);
                detail.truncate(cut);
                detail.push('…');
            }
            AuditLine {
                at: time(e.at),
                actor: e.actor,
                action: e.action,
                object: format!("{} {}", e.object_type, e.object_id),
                detail,
            }
        })
        .collect();
    Ok(AuditPage { nav: Nav::new(&user, "audit"), lines, object })
}

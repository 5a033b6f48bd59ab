//! The audit log page: who did what to which object and when, newest first, for every
//! mutation made through the API, the dashboard, the CLI or the scheduler, and every login.
//!
//! Made to be read by people: the object is a link where it has a page, the detail is a
//! one-line summary instead of raw JSON, and the log is paged by a keyset cursor (`before`,
//! the last record shown) and filtered by actor, action and object, so an audit log of a
//! year of rollouts loads one page at a time.

use super::WebResult;
use super::session::{User, form_urlencode};
use super::view::{Nav, time};
use crate::app::AppState;
use crate::error::AppError;
use crate::model::AuditEntry;
use crate::store::AuditFilter;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Query, State};

/// Records per page.
const PAGE: u64 = 50;
/// Longest summary of a record's detail, in characters.
const SUMMARY_CHARS: usize = 200;

/// One record as shown.
#[derive(Debug)]
pub struct AuditLine {
    /// When.
    pub at: String,
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// The object's kind (`rollout`, `job`, …).
    pub object_type: String,
    /// The object's id (full, for the filter and the title).
    pub object_id: String,
    /// Its page, if it has one.
    pub href: Option<String>,
    /// A short human summary of the detail (`name: demo 1.1 · role: admin`).
    pub summary: String,
    /// This page filtered to the record's actor, action and object.
    pub by_actor: String,
    /// See `by_actor`.
    pub by_action: String,
    /// See `by_actor`.
    pub by_object: String,
}

/// `?actor=&action=&object=&before=`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct AuditQuery {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    action: String,
    #[serde(default)]
    object: String,
    before: Option<String>,
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "audit.html")]
pub struct AuditPage {
    nav: Nav,
    lines: Vec<AuditLine>,
    actor: String,
    action: String,
    object: String,
    /// The link to the next (older) page, if there is one.
    older: Option<String>,
    /// This is not the first page.
    paged: bool,
}

/// The page an object has, if any.
fn object_href(object_type: &str, object_id: &str) -> Option<String> {
    if object_id.is_empty() {
        return None;
    }
    match object_type {
        "rollout" => Some(format!("/rollouts/{}", form_urlencode(object_id))),
        "job" => Some(format!("/jobs/{}", form_urlencode(object_id))),
        "agent" => Some("/agents".to_owned()),
        _ => None,
    }
}

/// One value of a detail in a few words.
fn value_words(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::Null => "none".into(),
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Array(a) if a.is_empty() => "none".into(),
        serde_json::Value::Array(a) if a.len() <= 3 && a.iter().all(|x| !x.is_object() && !x.is_array()) => {
            a.iter().map(value_words).collect::<Vec<_>>().join(", ")
        }
        serde_json::Value::Array(a) => format!("{} items", a.len()),
        serde_json::Value::Object(o) if o.is_empty() => "none".into(),
        serde_json::Value::Object(o) => {
            o.iter().map(|(k, v)| format!("{k}={}", value_words(v))).collect::<Vec<_>>().join(", ")
        }
        other => other.to_string(),
    }
}

/// A record's detail as `key: value · key: value`, cut to [`SUMMARY_CHARS`].
pub fn summary(detail: &serde_json::Value) -> String {
    let text = match detail {
        serde_json::Value::Object(o) => o
            .iter()
            .map(|(k, v)| format!("{}: {}", k.replace('_', " "), value_words(v)))
            .collect::<Vec<_>>()
            .join(" · "),
        serde_json::Value::Null => String::new(),
        other => value_words(other),
    };
    if text.chars().count() > SUMMARY_CHARS {
        let mut cut: String = text.chars().take(SUMMARY_CHARS).collect();
        cut.push('…');
        cut
    } else {
        text
    }
}

/// The cursor of a record: its time and id.
fn cursor(e: &AuditEntry) -> String {
    format!("{}.{}", e.at.timestamp_millis(), e.id)
}

fn parse_cursor(s: &str) -> Result<(i64, String), AppError> {
    s.split_once('.')
        .and_then(|(at, id)| Some((at.parse().ok()?, id.to_owned())))
        .ok_or_else(|| AppError::BadRequest("this page link is damaged (before=…); start again from the newest".into()))
}

/// `GET /audit`.
pub async fn page(State(state): State<AppState>, user: User, Query(q): Query<AuditQuery>) -> WebResult<AuditPage> {
    let filter = AuditFilter {
        actor: q.actor.trim().to_owned(),
        action: q.action.trim().to_owned(),
        object: q.object.trim().to_owned(),
        before: q.before.as_deref().filter(|b| !b.is_empty()).map(parse_cursor).transpose()?,
        ..AuditFilter::default()
    };
    let mut entries = state.store.audit_page(&filter, PAGE + 1).await?;
    let more = entries.len() > usize::try_from(PAGE).unwrap_or(usize::MAX);
    entries.truncate(usize::try_from(PAGE).unwrap_or(usize::MAX));
    let older = entries.last().filter(|_| more).map(|last| {
        let q = |k: &str, v: &str| format!("{k}={}", form_urlencode(v));
        format!(
            "/audit?{}&{}&{}&{}",
            q("actor", &filter.actor),
            q("action", &filter.action),
            q("object", &filter.object),
            q("before", &cursor(last))
        )
    });
    let lines = entries
        .into_iter()
        .map(|e| AuditLine {
            by_actor: format!("/audit?actor={}", form_urlencode(&e.actor)),
            by_action: format!("/audit?action={}", form_urlencode(&e.action)),
            by_object: format!("/audit?object={}", form_urlencode(&e.object_id)),
            at: time(e.at),
            href: object_href(&e.object_type, &e.object_id),
            summary: summary(&e.detail),
            actor: e.actor,
            action: e.action,
            object_type: e.object_type,
            object_id: e.object_id,
        })
        .collect();
    Ok(AuditPage {
        nav: Nav::new(&user, "audit"),
        lines,
        paged: filter.before.is_some(),
        actor: filter.actor,
        action: filter.action,
        object: filter.object,
        older,
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn details_read_as_a_line() {
        assert_eq!(super::summary(&json!({})), "");
        assert_eq!(super::summary(&json!({ "name": "ci", "role": "admin" })), "name: ci · role: admin");
        assert_eq!(
            super::summary(&json!({ "labels": { "env": "prod" }, "max_uses": null, "hosts": [1, 2, 3, 4] })),
            "hosts: 4 items · labels: env=prod · max uses: none"
        );
        let long = super::summary(&json!({ "text": "x".repeat(500) }));
        assert_eq!(long.chars().count(), super::SUMMARY_CHARS + 1);
    }

    #[test]
    fn objects_with_pages_link_to_them() {
        assert_eq!(super::object_href("rollout", "r1").as_deref(), Some("/rollouts/r1"));
        assert_eq!(super::object_href("job", "j1").as_deref(), Some("/jobs/j1"));
        assert_eq!(super::object_href("agent", "a1").as_deref(), Some("/agents"));
        assert_eq!(super::object_href("user", "u1"), None);
        assert_eq!(super::object_href("rollout", ""), None);
    }
}

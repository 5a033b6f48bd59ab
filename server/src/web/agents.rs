//! The agents page: every enrolled server, online or offline, last seen, labels, version,
//! paged on the server ([`PAGE_SIZE`] a page) with search and filters, so a fleet of
//! 10,000 ships one page of rows, not 10,000.
//!
//! Filtering runs in the coordinator over the agent list the store already reads for the
//! API (the online state mixes the store's last-seen time with the in-memory one of recent
//! polls, which SQL cannot see); the browser only ever gets the page it shows.

use super::WebResult;
use super::session::User;
use super::view::{Nav, time};
use crate::app::AppState;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Query, State};

/// Agents per page.
pub const PAGE_SIZE: usize = 100;

/// One line.
#[derive(Debug)]
pub struct AgentLine {
    /// Id.
    pub id: String,
    /// Host name.
    pub hostname: String,
    /// `online`, `offline` or `revoked`.
    pub status: &'static str,
    /// Its class.
    pub class: &'static str,
    /// Last poll or report.
    pub last_seen: String,
    /// `k=v, …`.
    pub labels: String,
    /// Agent version.
    pub version: String,
    /// Latest rollup installed through fleetup.
    pub installed: String,
}

/// `?q=&label=&status=&installed=&page=`.
#[derive(Debug, Default, Clone, serde::Deserialize)]
pub struct AgentQuery {
    /// Part of the host name or id.
    #[serde(default)]
    pub q: String,
    /// `key=value[, key=value]`: every pair must match.
    #[serde(default)]
    pub label: String,
    /// `online`, `offline` or `revoked`.
    #[serde(default)]
    pub status: String,
    /// Installed version (of the latest rollup), or `none`.
    #[serde(default)]
    pub installed: String,
    /// 1-based page.
    pub page: Option<usize>,
}

impl AgentQuery {
    /// The query string of page `page` with the same filters.
    fn href(&self, page: usize) -> String {
        let enc = |s: &str| -> String {
            s.bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() || b"-_.".contains(&b) {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect()
        };
        format!(
            "/agents?q={}&label={}&status={}&installed={}&page={page}",
            enc(&self.q),
            enc(&self.label),
            enc(&self.status),
            enc(&self.installed)
        )
    }

    fn filtered(&self) -> bool {
        !(self.q.is_empty() && self.label.is_empty() && self.status.is_empty() && self.installed.is_empty())
    }
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "agents.html")]
pub struct AgentsPage {
    nav: Nav,
    agents: Vec<AgentLine>,
    query: AgentQuery,
    filtered: bool,
    total: usize,
    matching: usize,
    online: usize,
    page: usize,
    pages: usize,
    prev: Option<String>,
    next: Option<String>,
    versions: Vec<String>,
    error: Option<String>,
}

/// Seen before this (unix ms), an agent is offline.
pub fn offline_horizon(state: &AppState) -> i64 {
    crate::model::now_ms() - (state.config.offline_after_secs as i64) * 1000
}

/// An agent's status word, its class and when it was last seen (the store's time or the
/// newer one of a recent poll this coordinator holds in memory).
pub fn status_of(state: &AppState, a: &crate::model::Agent, horizon: i64) -> (&'static str, &'static str, i64) {
    let seen = state.last_seen_of(&a.id).unwrap_or(0).max(a.last_seen.timestamp_millis());
    let (status, class) = if a.revoked {
        ("revoked", "st-cancel")
    } else if seen >= horizon {
        ("online", "st-ok")
    } else {
        ("offline", "st-fail")
    };
    (status, class, seen)
}

/// `GET /agents`.
pub async fn page(State(state): State<AppState>, user: User, Query(q): Query<AgentQuery>) -> WebResult<AgentsPage> {
    let horizon = offline_horizon(&state);
    let (labels, error) = match crate::domain::labels::parse_selector(&q.label) {
        Ok(l) => (l, None),
        Err(e) => (Vec::new(), Some(e)),
    };
    let needle = q.q.trim().to_lowercase();
    let mut all = state.store.list_agents().await?;
    all.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    let total = all.len();
    let mut versions: Vec<String> = all.iter().filter_map(|a| a.installed.last().map(|i| i.version.clone())).collect();
    versions.sort();
    versions.dedup();
    let mut online = 0;
    let mut kept = Vec::new();
    for a in all {
        let (status, class, seen) = status_of(&state, &a, horizon);
        let keep =
            (needle.is_empty() || a.hostname.to_lowercase().contains(&needle) || a.id.as_str().contains(&needle))
                && crate::domain::labels::matches(&labels, &a.labels)
                && (q.status.is_empty() || q.status == status)
                && (q.installed.is_empty() || q.installed == crate::ops::agents::installed_version(&a));
        if keep {
            online += usize::from(status == "online");
            kept.push((a, status, class, seen));
        }
    }
    let matching = kept.len();
    let pages = matching.div_ceil(PAGE_SIZE).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    // Only the page's lines are formatted (times, labels): at 10,000 agents, 100 of them.
    let agents = kept
        .into_iter()
        .skip((page - 1) * PAGE_SIZE)
        .take(PAGE_SIZE)
        .map(|(a, status, class, seen)| AgentLine {
            status,
            class,
            last_seen: time(crate::model::to_time(seen)),
            labels: a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
            installed: a.installed.last().map_or_else(|| "—".to_owned(), |i| format!("{} {}", i.rollup, i.version)),
            version: a.version,
            hostname: a.hostname,
            id: a.id.to_string(),
        })
        .collect();
    Ok(AgentsPage {
        nav: Nav::new(&user, "agents"),
        agents,
        filtered: q.filtered(),
        prev: (page > 1).then(|| q.href(page - 1)),
        next: (page < pages).then(|| q.href(page + 1)),
        query: q,
        total,
        matching,
        online,
        page,
        pages,
        versions,
        error,
    })
}

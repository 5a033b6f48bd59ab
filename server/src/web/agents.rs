//! The agents page: every enrolled server, online or offline, last seen, labels, version.

use super::WebResult;
use super::session::User;
use super::view::{Nav, time};
use crate::app::AppState;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;

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

#[derive(Debug, Template, WebTemplate)]
#[template(path = "agents.html")]
pub struct AgentsPage {
    nav: Nav,
    agents: Vec<AgentLine>,
    online: usize,
}

/// `GET /agents`.
pub async fn page(State(state): State<AppState>, user: User) -> WebResult<AgentsPage> {
    let horizon = crate::model::now_ms() - (state.config.offline_after_secs as i64) * 1000;
    let mut agents: Vec<AgentLine> = state
        .store
        .list_agents()
        .await?
        .into_iter()
        .map(|a| {
            let seen = state.last_seen_of(&a.id).unwrap_or(0).max(a.last_seen.timestamp_millis());
            let (status, class) = if a.revoked {
                ("revoked", "st-cancel")
            } else if seen >= horizon {
                ("online", "st-ok")
            } else {
                ("offline", "st-fail")
            };
            AgentLine {
                status,
                class,
                last_seen: time(crate::model::to_time(seen)),
                labels: a.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", "),
                installed: a.installed.last().map_or_else(|| "—".to_owned(), |i| format!("{} {}", i.rollup, i.version)),
                version: a.version,
                hostname: a.hostname,
                id: a.id.to_string(),
            }
        })
        .collect();
    agents.sort_by(|a, b| a.hostname.cmp(&b.hostname));
    let online = agents.iter().filter(|a| a.status == "online").count();
    Ok(AgentsPage { nav: Nav::new(&user, "agents"), agents, online })
}

//! Agents: enrollment, labels, revocation, and whether one is online.

use super::Actor;
use crate::app::App;
use crate::auth::{hash_secret, new_secret};
use crate::error::AppError;
use crate::model::{Agent, AgentId, Role, now_ms, to_time};
use crate::store::{NewAgent, NewAudit, StoreError};
use fleetup_proto::agent_api::{EnrollRequest, EnrollResponse};
use std::collections::BTreeMap;

/// An agent with its freshest last-seen time (the in-memory one may be newer than the
/// stored) and whether that is within `--offline-after-secs`.
pub fn decorate(app: &App, mut a: Agent) -> Agent {
    if let Some(seen) = app.last_seen_of(&a.id) {
        a.last_seen = a.last_seen.max(to_time(seen));
    }
    let horizon = now_ms() - i64::try_from(app.config.offline_after_secs).unwrap_or(90) * 1000;
    a.online = !a.revoked && a.last_seen.timestamp_millis() >= horizon;
    a
}

/// The version of the last rollup the agent installed, `none` when it installed nothing
/// (the value the agents filters of the API and the dashboard compare).
pub fn installed_version(a: &Agent) -> &str {
    a.installed.last().map_or("none", |i| i.version.as_str())
}

/// Every agent, decorated.
pub async fn list(app: &App) -> Result<Vec<Agent>, AppError> {
    Ok(app.store.list_agents().await?.into_iter().map(|a| decorate(app, a)).collect())
}

/// Enrolls an agent with a one-time enrollment token; its secret is returned once.
pub async fn enroll(app: &App, req: EnrollRequest) -> Result<EnrollResponse, AppError> {
    if req.hostname.trim().is_empty() {
        return Err(AppError::Unprocessable("hostname must not be empty".into()));
    }
    let secret = new_secret("fla");
    let agent = NewAgent {
        id: AgentId::new(),
        hostname: req.hostname.trim().to_owned(),
        secret_hash: hash_secret(&secret),
        labels: req.labels,
        facts: req.facts,
        version: req.version,
    };
    let enrolled = app.store.enroll_agent(&hash_secret(&req.token), &agent, now_ms()).await.map_err(|e| match e {
        StoreError::Refused(m) => AppError::Unauthorized(m),
        other => other.into(),
    })?;
    Ok(EnrollResponse { agent_id: enrolled.id.to_string(), agent_token: secret })
}

/// Replaces an agent's labels.
pub async fn set_labels(
    app: &App,
    actor: &Actor,
    id: &AgentId,
    labels: &BTreeMap<String, String>,
) -> Result<Agent, AppError> {
    actor.require(Role::Operator)?;
    let audit =
        NewAudit::new(&actor.name, "agent.labels", "agent", id.as_str(), serde_json::json!({ "labels": labels }));
    Ok(decorate(app, app.store.set_agent_labels(id, labels, &audit).await?))
}

/// Revokes an agent (admin): its token stops working, its unstarted jobs are cancelled, and
/// its held long-poll returns.
pub async fn revoke(app: &App, actor: &Actor, id: &AgentId) -> Result<(), AppError> {
    actor.require(Role::Admin)?;
    let audit = NewAudit::new(&actor.name, "agent.revoke", "agent", id.as_str(), serde_json::json!({}));
    app.store.revoke_agent(id, &audit).await?;
    app.wake_local(std::slice::from_ref(id));
    Ok(())
}

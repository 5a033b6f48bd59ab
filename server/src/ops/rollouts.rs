//! Rollouts: plan (the preview), stage, act (start, pause, resume, approve, cancel) and
//! retry the failed servers of a rollout as a new one.

use super::Actor;
use crate::app::App;
use crate::domain::plan::{PackageFacts, Plan, plan};
use crate::domain::rollout::RolloutAction;
use crate::error::AppError;
use crate::model::{Agent, AgentId, JobState, Role, Rollout, RolloutId, RolloutSpec, Targets};
use crate::store::{JobFilter, NewAudit, NewRollout, StoreError};

/// A checked spec, planned into waves, with the agents it was planned over (the preview
/// names them).
#[derive(Debug)]
pub struct Preview {
    /// The plan.
    pub plan: Plan,
    /// Every agent known when it was planned.
    pub agents: Vec<Agent>,
}

/// Checks a spec and plans its waves without writing anything: targets in agent order,
/// waves from the domain's rules. Staging and the dashboard's preview both plan here.
pub async fn preview(app: &App, spec: &RolloutSpec) -> Result<Preview, AppError> {
    let agents = app.store.list_agents().await?;
    preview_over(app, spec, agents).await
}

/// [`preview`] over agents the caller has just read (the staging form reads them to
/// resolve host names; reading 10,000 agents twice doubles the preview's time).
pub async fn preview_over(app: &App, spec: &RolloutSpec, agents: Vec<Agent>) -> Result<Preview, AppError> {
    let package = match app.store.get_package(&spec.package_id).await {
        Ok(p) => p,
        Err(StoreError::NotFound(_)) => {
            return Err(AppError::Unprocessable(format!(
                "package {} does not exist; upload it first (POST /api/v1/packages)",
                spec.package_id
            )));
        }
        Err(e) => return Err(e.into()),
    };
    let plan = plan(spec, &agents, &PackageFacts::of(&package)).map_err(AppError::Unprocessable)?;
    Ok(Preview { plan, agents })
}

/// Stages a rollout (state draft), audited as `rollout.create` (or `rollout.retry-failed`
/// when it retries another).
pub async fn stage(
    app: &App,
    actor: &Actor,
    spec: RolloutSpec,
    retry_of: Option<RolloutId>,
) -> Result<Rollout, AppError> {
    actor.require(Role::Operator)?;
    let Preview { plan, .. } = preview(app, &spec).await?;
    let id = RolloutId::new();
    let lease_secs = spec.lease_secs.unwrap_or(app.config.lease_secs).max(1);
    let delivery_secs = spec.delivery_timeout_secs.unwrap_or(app.config.delivery_timeout_secs).max(1);
    let audit = NewAudit::new(
        &actor.name,
        if retry_of.is_some() { "rollout.retry-failed" } else { "rollout.create" },
        "rollout",
        id.as_str(),
        serde_json::json!({ "spec": spec, "retry_of": retry_of }),
    );
    let new = NewRollout {
        id,
        spec,
        wave_sizes: plan.wave_sizes,
        jobs: plan.jobs,
        lease_ms: i64::try_from(lease_secs).unwrap_or(60) * 1000,
        delivery_ms: i64::try_from(delivery_secs).unwrap_or(900).saturating_mul(1000),
        retry_of,
        created_by: actor.name.clone(),
    };
    Ok(app.store.create_rollout(&new, &audit).await?)
}

/// Applies an operator action, wakes the agents asked to cancel and kicks the scheduler.
/// Applies an operator action; with `if_match`, only if the rollout is still that version.
pub async fn act(
    app: &App,
    actor: &Actor,
    id: &RolloutId,
    action: RolloutAction,
    if_match: Option<&str>,
) -> Result<Rollout, AppError> {
    actor.require(Role::Operator)?;
    let audit = NewAudit::new(
        &actor.name,
        &format!("rollout.{}", action.as_str()),
        "rollout",
        id.as_str(),
        serde_json::json!({}),
    );
    let (rollout, wake) = app.store.rollout_action(id, action, if_match, &audit).await?;
    app.wake_agents(&wake).await;
    app.scheduler_kick.notify_one();
    Ok(rollout)
}

/// Stages a new rollout of a rollout's failed, rolled-back, lost and undeliverable servers.
pub async fn retry_failed(app: &App, actor: &Actor, id: &RolloutId) -> Result<Rollout, AppError> {
    actor.require(Role::Operator)?;
    let old = app.store.get_rollout(id).await?;
    let agents = failed_agents(app, id).await?;
    if agents.is_empty() {
        return Err(AppError::Conflict(format!(
            "rollout {id} has no failed, rolled-back, lost or undeliverable job to retry"
        )));
    }
    let mut spec = old.spec.clone();
    spec.name = format!("{} (retry of failed)", old.spec.name);
    spec.targets = Targets { agents: Some(agents), labels: None };
    stage(app, actor, spec, Some(id.clone())).await
}

/// The agents of a rollout's failed, rolled-back, lost and undeliverable jobs, in listing
/// order.
async fn failed_agents(app: &App, id: &RolloutId) -> Result<Vec<AgentId>, StoreError> {
    let mut agents = Vec::new();
    for s in [JobState::Failed, JobState::RolledBack, JobState::Lost, JobState::Undeliverable] {
        let filter = JobFilter { state: Some(s), limit: u64::MAX >> 1, ..JobFilter::default() };
        agents.extend(app.store.list_job_summaries(id, &filter).await?.items.into_iter().map(|j| j.agent_id));
    }
    Ok(agents)
}

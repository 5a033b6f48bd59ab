//! One server's job: an operator's answer to a decision it asked, and its cancel.

use super::Actor;
use crate::app::App;
use crate::error::AppError;
use crate::model::{Job, JobId, Role};
use crate::store::NewAudit;
use fleetup_proto::DecisionAnswer;

/// Answers a job's open decision (the given one, or the only open one) and wakes its agent,
/// whose report is held waiting for the answer.
pub async fn answer_decision(
    app: &App,
    actor: &Actor,
    job_id: &JobId,
    decision_id: Option<u32>,
    answer: DecisionAnswer,
) -> Result<Job, AppError> {
    actor.require(Role::Operator)?;
    let detail = serde_json::json!({ "answer": answer, "decision_id": decision_id });
    let audit = NewAudit::new(&actor.name, "job.decision", "job", job_id.as_str(), detail);
    let (job, agent) = app.store.answer_decision(job_id, decision_id, answer, &audit).await?;
    app.wake_agents(&[agent]).await;
    Ok(job)
}

/// Cancels a job: at once when it has not started, otherwise by asking its agent (woken
/// now); the scheduler is kicked, since a slot may have freed.
pub async fn cancel(app: &App, actor: &Actor, job_id: &JobId) -> Result<Job, AppError> {
    actor.require(Role::Operator)?;
    let audit = NewAudit::new(&actor.name, "job.cancel", "job", job_id.as_str(), serde_json::json!({}));
    let job = app.store.cancel_job(job_id, &audit).await?;
    app.wake_agents(std::slice::from_ref(&job.agent_id)).await;
    app.scheduler_kick.notify_one();
    Ok(job)
}

/// Answers every open decision of a rollout that `filter` covers (one audit record with the
/// count) and wakes their agents. Answering none is not an error: the count says 0. With
/// `remember`, the answer stands for the rest of the rollout: the scheduler gives it to every
/// such decision asked later.
pub async fn answer_all(
    app: &App,
    actor: &Actor,
    rollout_id: &crate::model::RolloutId,
    filter: &crate::domain::decide::DecisionFilter,
    answer: DecisionAnswer,
    remember: bool,
) -> Result<u64, AppError> {
    actor.require(Role::Operator)?;
    filter.check(answer).map_err(AppError::Unprocessable)?;
    let detail = serde_json::json!({ "answer": answer, "filter": filter, "remember": remember });
    let audit = NewAudit::new(&actor.name, "rollout.decisions", "rollout", rollout_id.as_str(), detail);
    let (count, agents) = app.store.answer_rollout_decisions(rollout_id, filter, answer, remember, &audit).await?;
    app.wake_agents(&agents).await;
    Ok(count)
}

/// An operator's guided answer to one job (retry it now, skip its failure, exclude the
/// server), audited as `job.retry`, `job.skip` or `job.exclude`; the rollout goes on, so the
/// scheduler is kicked.
pub async fn guide(
    app: &App,
    actor: &Actor,
    job_id: &JobId,
    action: crate::domain::job::JobAction,
) -> Result<Job, AppError> {
    actor.require(Role::Operator)?;
    let audit =
        NewAudit::new(&actor.name, &format!("job.{}", action.as_str()), "job", job_id.as_str(), serde_json::json!({}));
    let job = app.store.guide_job(job_id, action, &audit).await?;
    app.scheduler_kick.notify_one();
    Ok(job)
}

//! Rollout control beyond the plan: new attempts (the scheduler's automatic retries of
//! transient failures, an operator's guided answers to one job), servers that join a
//! running rollout late, and the stall alarm's flags and learned history. What to do is
//! decided in [`crate::domain`] (`retry`, `job`, `plan::late_joiners`, `stall`); this file
//! reads and writes.

use super::audit::{commit_audited, record};
use super::jobs::{answer_open_decisions, lock_job};
use super::rows::AgentRow;
use super::scheduler::RunningPhase;
use super::{NewAudit, SchedulerPass, Store, StoreError, StoreResult, Tx, corrupt, from_json, stored_id, to_json};
use crate::domain::decide::DecisionFilter;
use crate::domain::job::{JobAction, guided_refused};
use crate::domain::plan::PackageFacts;
use crate::model::{Agent, AgentId, Job, JobId, JobState, Millis, RolloutId, RolloutState, Stall, now_ms};
use fleetup_proto::{DecisionAnswer, InstallSummary, PhaseId};
use std::collections::BTreeMap;

/// A failed job of a running rollout whose failure is not classified yet.
#[derive(Debug, Clone)]
pub struct Failure {
    /// The job.
    pub job_id: JobId,
    /// Its rollout.
    pub rollout_id: RolloutId,
    /// failed, rolled-back or lost.
    pub state: JobState,
    /// Its attempt number.
    pub attempt: u32,
    /// Its install ended asking to be retried later (a hook's exit code).
    pub retry_later: bool,
}

/// Finished installs of one package name the stall alarm learns from, newest first.
const HISTORY: i64 = 500;

/// Adds the next attempt of job `old` (a new pending job of the same server, wave and
/// rollout, listed after the others) and marks `old` retried; returns the new job's id.
async fn new_attempt(tx: &mut Tx, old: &JobId, not_before: Option<Millis>, now: Millis) -> StoreResult<JobId> {
    let id = JobId::new();
    sqlx::query(
        "insert into jobs (id, rollout_id, agent_id, wave, position, state, lease_ms, delivery_ms, phases, warnings, \
         created_at, updated_at, attempt, retry_of, not_before) \
         select $1, o.rollout_id, o.agent_id, o.wave, (select max(p.position) + 1 from jobs p where p.rollout_id = o.rollout_id), \
         'pending', o.lease_ms, o.delivery_ms, '{}', '[]', $2, $2, o.attempt + 1, o.id, $3 from jobs o where o.id = $4",
    )
    .bind(id.as_str())
    .bind(now)
    .bind(not_before)
    .bind(old.as_str())
    .execute(&mut **tx)
    .await?;
    sqlx::query("update jobs set state = 'retried', updated_at = $2, stalled_at = null where id = $1")
        .bind(old.as_str())
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(id)
}

/// A bulk answer kept standing for the rest of a rollout.
#[derive(Debug, Clone)]
pub struct StandingAnswer {
    /// The rollout.
    pub rollout_id: RolloutId,
    /// Which decisions it answers.
    pub filter: DecisionFilter,
    /// The answer.
    pub answer: DecisionAnswer,
    /// The operator who gave it.
    pub by: String,
}

impl SchedulerPass {
    /// The standing answers of rollouts still going, oldest first.
    pub async fn standing_answers(&mut self) -> StoreResult<Vec<StandingAnswer>> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "select s.rollout_id, s.filter, s.answer, s.created_by from standing_answers s \
             join rollouts r on r.id = s.rollout_id where r.state in ('running', 'paused', 'awaiting-approval') \
             order by s.created_at, s.id",
        )
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(rollout, filter, answer, by)| {
                Ok(StandingAnswer {
                    rollout_id: stored_id(&rollout)?,
                    filter: from_json(&filter, "standing answer filter")?,
                    answer: answer.parse().map_err(corrupt)?,
                    by,
                })
            })
            .collect()
    }

    /// Gives a standing answer to the open decisions it covers (audited as the scheduler's
    /// `rollout.decisions`, naming whose answer it is); returns the agents to wake.
    pub async fn apply_standing(&mut self, s: &StandingAnswer) -> StoreResult<Vec<AgentId>> {
        let now = self.now();
        let actor = format!("{} (standing answer)", s.by);
        let (n, agents) = answer_open_decisions(&mut self.tx, &s.rollout_id, &s.filter, s.answer, &actor, now).await?;
        if n > 0 {
            let detail =
                serde_json::json!({ "answer": s.answer, "filter": s.filter, "count": n, "standing_answer_of": s.by });
            let audit = NewAudit::new("scheduler", "rollout.decisions", "rollout", s.rollout_id.as_str(), detail);
            record(&mut self.tx, &audit, now).await?;
        }
        Ok(agents)
    }

    /// Failed, rolled-back and lost jobs of rollouts still going (running, paused or awaiting
    /// approval) that no pass has classified yet.
    pub async fn unclassified_failures(&mut self) -> StoreResult<Vec<Failure>> {
        let rows: Vec<(String, String, String, i64)> = sqlx::query_as(
            "select j.id, j.rollout_id, j.state, j.attempt from jobs j join rollouts r on r.id = j.rollout_id \
             where j.transient is null and j.state in ('failed', 'rolled-back', 'lost') \
             and r.state in ('running', 'paused', 'awaiting-approval')",
        )
        .fetch_all(&mut *self.tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, rollout, state, attempt) in rows {
            let state = JobState::parse(&state).ok_or_else(|| StoreError::Corrupt(format!("job state '{state}'")))?;
            // The install's last event carries `retry_later` in its data.
            let last: Option<(String,)> =
                sqlx::query_as("select data from events where job_id = $1 order by seq desc limit 1")
                    .bind(&id)
                    .fetch_optional(&mut *self.tx)
                    .await?;
            let retry_later = last
                .and_then(|(d,)| serde_json::from_str::<serde_json::Value>(&d).ok())
                .and_then(|d| d.get("retry_later").and_then(serde_json::Value::as_bool))
                .unwrap_or(false);
            out.push(Failure {
                job_id: stored_id(&id)?,
                rollout_id: stored_id(&rollout)?,
                state,
                attempt: attempt as u32,
                retry_later,
            });
        }
        Ok(out)
    }

    /// Records that a failure was classified (and, when transient, not retried: its retries
    /// are used up or the rollout has none), so later passes leave it alone.
    pub async fn classify(&mut self, job: &JobId, transient: bool) -> StoreResult<()> {
        sqlx::query("update jobs set transient = $2 where id = $1")
            .bind(job.as_str())
            .bind(i64::from(transient))
            .execute(&mut *self.tx)
            .await?;
        Ok(())
    }

    /// Tries a transient failure again as a new attempt that waits until `not_before`
    /// (audited as the scheduler's `job.retry`).
    pub async fn retry(&mut self, f: &Failure, not_before: Millis) -> StoreResult<JobId> {
        self.classify(&f.job_id, true).await?;
        let now = self.now();
        let new = new_attempt(&mut self.tx, &f.job_id, Some(not_before), now).await?;
        let detail = serde_json::json!({
            "rollout_id": f.rollout_id, "attempt": f.attempt + 1, "new_job_id": new,
            "not_before": crate::model::to_time(not_before), "was": f.state,
        });
        record(&mut self.tx, &NewAudit::new("scheduler", "job.retry", "job", f.job_id.as_str(), detail), now).await?;
        Ok(new)
    }

    /// What staging needs of the package a rollout installs.
    pub async fn rollout_package(&mut self, id: &RolloutId) -> StoreResult<PackageFacts> {
        let (name, version, manifest): (String, String, String) = sqlx::query_as(
            "select p.name, p.version, p.manifest from rollouts r join packages p on p.id = r.package_id where r.id = $1",
        )
        .bind(id.as_str())
        .fetch_one(&mut *self.tx)
        .await?;
        Ok(PackageFacts::from_manifest(name, version, &from_json(&manifest, "package manifest")?))
    }

    /// Enrolled agents with no job in the rollout.
    pub async fn outsiders(&mut self, id: &RolloutId) -> StoreResult<Vec<Agent>> {
        let rows: Vec<AgentRow> = sqlx::query_as(concat!(
            agent_select!(),
            " where revoked_at is null and not exists (select 1 from jobs j where j.rollout_id = $1 and j.agent_id = agents.id)"
        ))
        .bind(id.as_str())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.iter().map(AgentRow::to_agent).collect()
    }

    /// Adds a late joiner to the rollout's last wave (`skipped` when it already runs the
    /// version), audited as `rollout.join`.
    pub async fn join(&mut self, id: &RolloutId, agent: &Agent, skip: bool) -> StoreResult<()> {
        let now = self.now();
        let (wave, lease_ms, delivery_ms): (i64, i64, i64) = sqlx::query_as(
            "select max(number), (select max(lease_ms) from jobs where rollout_id = $1), \
             (select max(delivery_ms) from jobs where rollout_id = $1) from waves where rollout_id = $1",
        )
        .bind(id.as_str())
        .fetch_one(&mut *self.tx)
        .await?;
        sqlx::query(
            "insert into jobs (id, rollout_id, agent_id, wave, position, state, lease_ms, delivery_ms, phases, warnings, \
             error, created_at, updated_at, finished_at) values ($1, $2, $3, $4, \
             (select max(p.position) + 1 from jobs p where p.rollout_id = $2), $5, $6, $7, '{}', '[]', $8, $9, $9, $10)",
        )
        .bind(JobId::new().as_str())
        .bind(id.as_str())
        .bind(agent.id.as_str())
        .bind(wave)
        .bind(if skip { "skipped" } else { "pending" })
        .bind(lease_ms)
        .bind(delivery_ms)
        .bind(skip.then_some("the server already runs this version"))
        .bind(now)
        .bind(skip.then_some(now))
        .execute(&mut *self.tx)
        .await?;
        sqlx::query("update waves set size = size + 1 where rollout_id = $1 and number = $2")
            .bind(id.as_str())
            .bind(wave)
            .execute(&mut *self.tx)
            .await?;
        let detail =
            serde_json::json!({ "agent_id": agent.id, "hostname": agent.hostname, "wave": wave, "skipped": skip });
        record(&mut self.tx, &NewAudit::new("scheduler", "rollout.join", "rollout", id.as_str(), detail), now).await
    }

    /// How long each phase took (the engine's own measure, from the final summary) in the
    /// newest finished (succeeded) installs of a package name, with their servers: what the
    /// stall alarm learns from.
    pub async fn phase_history(&mut self, package_name: &str) -> StoreResult<Vec<(AgentId, BTreeMap<PhaseId, u64>)>> {
        let rows: Vec<(String, String)> = sqlx::query_as(
            "select j.agent_id, e.data from jobs j join rollouts r on r.id = j.rollout_id \
             join packages p on p.id = r.package_id \
             join events e on e.job_id = j.id and e.seq = (select max(x.seq) from events x where x.job_id = j.id) \
             where p.name = $1 and j.state = 'succeeded' order by j.finished_at desc limit $2",
        )
        .bind(package_name)
        .bind(HISTORY)
        .fetch_all(&mut *self.tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (agent, data) in rows {
            let summary: Option<InstallSummary> = serde_json::from_str::<serde_json::Value>(&data)
                .ok()
                .and_then(|d| serde_json::from_value(d.get("summary")?.clone()).ok());
            if let Some(s) = summary {
                out.push((stored_id(&agent)?, s.phase_ms));
            }
        }
        Ok(out)
    }

    /// Flags a running phase as stalled (once per phase), audited as `job.stalled`.
    pub async fn flag_stall(&mut self, job: &RunningPhase, stall: &Stall) -> StoreResult<()> {
        let now = self.now();
        sqlx::query("update jobs set stalled_at = $2, stall = $3 where id = $1")
            .bind(job.job_id.as_str())
            .bind(now)
            .bind(to_json(stall))
            .execute(&mut *self.tx)
            .await?;
        let detail = serde_json::json!({ "rollout_id": job.rollout_id, "stall": stall });
        let data = serde_json::json!({ "phase": job.phase, "stall": stall });
        super::events::emit_job(&mut self.tx, fleetup_proto::webhooks::JOB_STALLED, job.job_id.as_str(), data, now)
            .await?;
        record(&mut self.tx, &NewAudit::new("scheduler", "job.stalled", "job", job.job_id.as_str(), detail), now).await
    }
}

impl Store {
    /// Running jobs whose phase is flagged stalled.
    pub async fn stalled_jobs(&self) -> StoreResult<u64> {
        let (n,): (i64,) = sqlx::query_as(
            "select count(*) from jobs where stalled_at is not null and state in ('running', 'waiting')",
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(n as u64)
    }

    /// An operator's guided answer to one job: retry it now as a new attempt, skip its
    /// failure, or exclude the server from the rollout. Returns the job as it is afterwards
    /// (for a retry, the new attempt).
    #[tracing::instrument(skip_all)]
    pub async fn guide_job(&self, job_id: &JobId, action: JobAction, audit: &NewAudit) -> StoreResult<Job> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let job = lock_job(&mut tx, self.dialect, job_id).await?;
        let rollout: RolloutId = stored_id(&job.rollout_id)?;
        let (rstate,): (String,) = sqlx::query_as("select state from rollouts where id = $1")
            .bind(rollout.as_str())
            .fetch_one(&mut *tx)
            .await?;
        let rstate = RolloutState::parse(&rstate).ok_or_else(|| corrupt(format!("rollout state '{rstate}'")))?;
        let state = job.state()?;
        if let Some(why) = guided_refused(action, state, rstate) {
            return Err(StoreError::Conflict(format!("job {job_id} cannot be {}: {why}", past(action))));
        }
        let note = format!("{} by {} (it was {})", past(action), audit.actor, state.as_str());
        let mut audit = audit.clone();
        let result = match action {
            JobAction::Retry => {
                let new = new_attempt(&mut tx, job_id, None, now).await?;
                audit.detail = serde_json::json!({ "new_job_id": new, "attempt": job.attempt + 1, "was": state });
                new
            }
            JobAction::Skip | JobAction::Exclude => {
                sqlx::query(
                    "update jobs set state = $2, note = $3, transient = 0, queued_at = null, stalled_at = null, \
                     finished_at = coalesce(finished_at, $4), updated_at = $4 where id = $1",
                )
                .bind(job_id.as_str())
                .bind(if action == JobAction::Skip { "skipped" } else { "excluded" })
                .bind(&note)
                .bind(now)
                .execute(&mut *tx)
                .await?;
                audit.detail = serde_json::json!({ "was": state });
                job_id.clone()
            }
        };
        commit_audited(tx, &audit, now).await?;
        self.get_job(&result).await
    }
}

/// "retried", "skipped", "excluded".
fn past(action: JobAction) -> &'static str {
    match action {
        JobAction::Retry => "retried",
        JobAction::Skip => "skipped",
        JobAction::Exclude => "excluded",
    }
}

//! The scheduler's transaction: the facts a pass reads (expired leases, running phases,
//! running rollouts and their counts) and the steps it applies, in one transaction that
//! on Postgres also holds an advisory lock, so one replica schedules at a time. What to do
//! is decided by [`crate::domain::schedule`], called from [`crate::scheduler`]; this file
//! only reads and writes.

use super::agent_protocol::{DispatchedRow, Plans, claimed, dispatch_next};
use super::agents::lock_agents;
use super::audit::record;
use super::events::emit_job;
use super::rollouts::apply_effect;
use super::rows::RolloutRow;
use super::{ClaimedJob, Dialect, NewAudit, Store, StoreError, StoreResult, Tx, numbered, stored_id};
use crate::domain::schedule::{Counts, RolloutView, Step};
use crate::model::{AgentId, JobId, JobState, RolloutId};
use fleetup_proto::PhaseId;
use std::collections::HashSet;

/// Jobs dispatched per statement by [`SchedulerPass::dispatch`] (one placeholder each).
const DISPATCH_CHUNK: usize = 500;

/// Advisory lock key of the scheduler ("fleetup" in ASCII).
const SCHEDULER_LOCK: i64 = 0x0066_6c65_6574_7570;

/// One scheduler pass: an open transaction and the time it runs at.
#[derive(Debug)]
pub struct SchedulerPass {
    pub(super) tx: Tx,
    dialect: Dialect,
    now: i64,
    /// The agents of the jobs this pass queued.
    queued: Vec<AgentId>,
    /// Rollouts with a job this pass ended (lost, timed out): an ending one may settle.
    ended: std::collections::BTreeSet<String>,
}

/// A running job's current phase, for the phase timeouts.
#[derive(Debug, Clone)]
pub struct RunningPhase {
    /// The job.
    pub job_id: JobId,
    /// Its phase.
    pub phase: PhaseId,
    /// When that phase started.
    pub started_at: i64,
    /// Its rollout.
    pub rollout_id: RolloutId,
    /// Its server.
    pub agent_id: AgentId,
    /// The name of the package it installs (the stall alarm learns per name).
    pub package: String,
    /// The phase already flagged as stalled, if any.
    pub stalled_phase: Option<PhaseId>,
}

/// A running rollout as the scheduler sees it.
#[derive(Debug, Clone)]
pub struct RunningRollout {
    /// Id.
    pub id: RolloutId,
    /// Its spec (parsed into rules by the caller, once per rollout).
    pub spec_text: String,
    /// Where it stands.
    pub view: RolloutView,
}

impl Store {
    /// Begins a scheduler pass, or `None` when another replica holds the scheduler lock.
    pub async fn begin_scheduler_pass(&self, now: i64) -> StoreResult<Option<SchedulerPass>> {
        let mut tx = self.write_tx().await?;
        if self.dialect == Dialect::Postgres {
            let (got,): (bool,) =
                sqlx::query_as("select pg_try_advisory_xact_lock($1)").bind(SCHEDULER_LOCK).fetch_one(&mut *tx).await?;
            if !got {
                tx.rollback().await?;
                return Ok(None);
            }
        }
        Ok(Some(SchedulerPass {
            tx,
            dialect: self.dialect,
            now,
            queued: Vec::new(),
            ended: std::collections::BTreeSet::new(),
        }))
    }
}

impl SchedulerPass {
    /// The time of this pass.
    pub fn now(&self) -> i64 {
        self.now
    }

    /// Declares every job whose lease ran out `lost` (its fencing token moves on, so a late
    /// report is refused); returns how many.
    pub async fn expire_leases(&mut self) -> StoreResult<u64> {
        let now = self.now;
        let lost: Vec<(String, String, i64)> = sqlx::query_as(
            "select id, rollout_id, lease_ms from jobs where state in ('dispatched', 'running', 'waiting') and lease_expires_at < $1",
        )
        .bind(now)
        .fetch_all(&mut *self.tx)
        .await?;
        for (id, rollout, lease_ms) in &lost {
            sqlx::query(
                "update jobs set state = 'lost', fencing_token = fencing_token + 1, error = $3, lease_expires_at = null, \
                 finished_at = $2, updated_at = $2 where id = $1",
            )
            .bind(id)
            .bind(now)
            .bind(format!("the agent sent no report for {} s (its lease); the job is lost", lease_ms / 1000))
            .execute(&mut *self.tx)
            .await?;
            let audit = NewAudit::new("scheduler", "job.lost", "job", id, serde_json::json!({ "rollout_id": rollout }));
            record(&mut self.tx, &audit, now).await?;
            let data = serde_json::json!({ "error": format!("no report for {} s (the lease)", lease_ms / 1000) });
            emit_job(&mut self.tx, fleetup_proto::webhooks::JOB_LOST, id, data, now).await?;
            self.ended.insert(rollout.clone());
        }
        Ok(lost.len() as u64)
    }

    /// Declares every ready job its agent did not collect within its delivery timeout
    /// `undeliverable` (it frees its slot); returns how many.
    pub async fn expire_deliveries(&mut self) -> StoreResult<u64> {
        let now = self.now;
        let late: Vec<(String, String, i64, i64, String)> = sqlx::query_as(
            "select j.id, j.rollout_id, j.delivery_ms, a.last_seen, a.hostname from jobs j join agents a on a.id = j.agent_id \
             where j.state = 'queued' and j.queued_at + j.delivery_ms < $1",
        )
        .bind(now)
        .fetch_all(&mut *self.tx)
        .await?;
        for (id, rollout, delivery_ms, last_seen, hostname) in &late {
            let seen = crate::model::to_time(*last_seen).to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
            sqlx::query(
                "update jobs set state = 'undeliverable', error = $3, finished_at = $2, updated_at = $2 \
                 where id = $1 and state = 'queued'",
            )
            .bind(id)
            .bind(now)
            .bind(format!(
                "{hostname} did not collect its job within {} s (the delivery timeout); it was last seen at {seen}. \
                 Retry it when the agent is back",
                delivery_ms / 1000
            ))
            .execute(&mut *self.tx)
            .await?;
            let detail = serde_json::json!({ "rollout_id": rollout, "last_seen": seen });
            record(&mut self.tx, &NewAudit::new("scheduler", "job.undeliverable", "job", id, detail.clone()), now)
                .await?;
            emit_job(&mut self.tx, fleetup_proto::webhooks::JOB_UNDELIVERABLE, id, detail, now).await?;
        }
        Ok(late.len() as u64)
    }

    /// The running jobs' current phases.
    pub async fn running_phases(&mut self) -> StoreResult<Vec<RunningPhase>> {
        type Row = (String, Option<String>, Option<i64>, String, String, String, Option<String>);
        let rows: Vec<Row> = sqlx::query_as(
            "select j.id, j.current_phase, j.phase_started_at, j.rollout_id, j.agent_id, p.name, j.stall from jobs j \
             join rollouts r on r.id = j.rollout_id join packages p on p.id = r.package_id \
             where j.state = 'running' and j.phase_started_at is not null",
        )
        .fetch_all(&mut *self.tx)
        .await?;
        let mut out = Vec::with_capacity(rows.len());
        for (id, phase, started, rollout, agent, package, stall) in rows {
            let (Some(phase), Some(started_at)) = (phase, started) else { continue };
            let Ok(phase) = phase.parse() else { continue };
            let stalled_phase =
                stall.as_deref().map(|s| super::from_json::<crate::model::Stall>(s, "job stall")).transpose()?;
            out.push(RunningPhase {
                job_id: stored_id(&id)?,
                phase,
                started_at,
                rollout_id: stored_id(&rollout)?,
                agent_id: stored_id(&agent)?,
                package,
                stalled_phase: stalled_phase.map(|s| s.phase),
            });
        }
        Ok(out)
    }

    /// Fails a job whose phase ran past its time limit and asks the agent to cancel.
    pub async fn fail_timed_out(&mut self, job: &RunningPhase, limit_secs: u64) -> StoreResult<()> {
        sqlx::query(
            "update jobs set state = 'failed', cancel_requested = true, error = $3, lease_expires_at = null, \
             finished_at = $2, updated_at = $2 where id = $1",
        )
        .bind(job.job_id.as_str())
        .bind(self.now)
        .bind(format!("phase {} ran longer than its timeout of {limit_secs} s", job.phase))
        .execute(&mut *self.tx)
        .await?;
        let data = serde_json::json!({
            "phase": job.phase,
            "error": format!("phase {} ran longer than its timeout of {limit_secs} s", job.phase),
        });
        emit_job(&mut self.tx, fleetup_proto::webhooks::JOB_FAILED, job.job_id.as_str(), data, self.now).await?;
        self.ended.insert(job.rollout_id.to_string());
        let audit = NewAudit::new(
            "scheduler",
            "job.timeout",
            "job",
            job.job_id.as_str(),
            serde_json::json!({ "phase": job.phase }),
        );
        record(&mut self.tx, &audit, self.now).await
    }

    /// The spec of a rollout, as stored (for the phase timeouts of its jobs).
    pub async fn rollout_spec_text(&mut self, id: &RolloutId) -> StoreResult<String> {
        let (text,): (String,) = sqlx::query_as("select spec from rollouts where id = $1")
            .bind(id.as_str())
            .fetch_one(&mut *self.tx)
            .await?;
        Ok(text)
    }

    /// The running rollouts.
    pub async fn running_rollouts(&mut self) -> StoreResult<Vec<RunningRollout>> {
        let rows: Vec<RolloutRow> =
            sqlx::query_as(concat!(rollout_select!(), " where r.state = 'running'")).fetch_all(&mut *self.tx).await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in rows {
            let (wave_count, wave_done_at): (i64, Option<i64>) = sqlx::query_as(
                "select count(*), max(case when number = $2 then done_at end) from waves where rollout_id = $1",
            )
            .bind(&row.id)
            .bind(row.current_wave)
            .fetch_one(&mut *self.tx)
            .await?;
            out.push(RunningRollout {
                id: stored_id(&row.id)?,
                view: RolloutView {
                    current_wave: row.current_wave as u32,
                    wave_count: wave_count as u32,
                    approved_wave: row.approved_wave as u32,
                    failures_accepted: row.failures_accepted as u64,
                    gate_override_wave: row.gate_override_wave as u32,
                    wave_done_at,
                },
                spec_text: row.spec,
            });
        }
        Ok(out)
    }

    /// A rollout's job counts by (wave, state). A failure no pass has classified yet (it
    /// may be retried: [`SchedulerPass::unclassified_failures`]) counts as still running:
    /// on Postgres a job can fail between this pass's classification and this read (each
    /// statement sees what was committed before it began), and a wave must not be judged
    /// on a failure that the next pass turns into a retry.
    pub async fn counts(&mut self, id: &RolloutId) -> StoreResult<Counts> {
        let rows: Vec<(i64, String, i64)> = sqlx::query_as(
            "select wave, (case when transient is null and state in ('failed', 'rolled-back', 'lost') \
             then 'running' else state end) as counted, count(*) from jobs where rollout_id = $1 group by 1, 2",
        )
        .bind(id.as_str())
        .fetch_all(&mut *self.tx)
        .await?;
        rows.into_iter()
            .map(|(w, s, n)| {
                let s = JobState::parse(&s).ok_or_else(|| StoreError::Corrupt(format!("job state '{s}'")))?;
                Ok(((w as u32, s), n as u64))
            })
            .collect()
    }

    /// Applies one step to a rollout (audited as the scheduler); returns the agents to wake.
    pub async fn apply(&mut self, id: &RolloutId, current_wave: u32, step: &Step) -> StoreResult<Vec<AgentId>> {
        let (now, rid) = (self.now, id.as_str());
        let tx = &mut self.tx;
        let audit =
            |action: &str, detail: serde_json::Value| NewAudit::new("scheduler", action, "rollout", rid, detail);
        let mut wake = Vec::new();
        if !matches!(step, Step::Wait(..) | Step::Transition(_) | Step::AwaitApproval) {
            // The rollout waits no more: its reason goes. A running rollout has a reason only
            // while it waits, so this writes nothing unless it was waiting.
            sqlx::query(
                "update rollouts set state_reason = null, wait_until = null where id = $1 \
                 and (state_reason is not null or wait_until is not null)",
            )
            .bind(rid)
            .execute(&mut **tx)
            .await?;
        }
        match step {
            Step::Nothing => return Ok(wake),
            Step::Wait(reason, until) => {
                sqlx::query(
                    "update rollouts set state_reason = $2, wait_until = $3 where id = $1 \
                     and (coalesce(state_reason, '') <> $2 or coalesce(wait_until, -1) <> coalesce($3, -1))",
                )
                .bind(rid)
                .bind(reason)
                .bind(*until)
                .execute(&mut **tx)
                .await?;
            }
            Step::Soak(w) => {
                close_wave(tx, rid, *w, now).await?;
                record(tx, &audit("rollout.soak", serde_json::json!({ "wave": w })), now).await?;
            }
            Step::Transition(effect) => {
                wake = apply_effect(tx, id, effect, now).await?;
                let (action, reason) = match effect {
                    crate::domain::rollout::Effect::End(_, reason) => ("rollout.abort", reason.clone()),
                    crate::domain::rollout::Effect::Pause(reason) => ("rollout.pause", reason.clone()),
                    other => ("rollout.transition", format!("{other:?}")),
                };
                record(tx, &audit(action, serde_json::json!({ "reason": reason })), now).await?;
            }
            Step::Finish => {
                close_wave(tx, rid, current_wave, now).await?;
                sqlx::query("update rollouts set state = 'finished', finished_at = $2 where id = $1")
                    .bind(rid)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                super::events::emit_rollout_state(tx, rid, now).await?;
                record(tx, &audit("rollout.finish", serde_json::json!({})), now).await?;
            }
            Step::AwaitApproval => {
                close_wave(tx, rid, current_wave, now).await?;
                sqlx::query("update rollouts set state = 'awaiting-approval', state_reason = $2 where id = $1")
                    .bind(rid)
                    .bind(format!("wave {current_wave} is done; approve to open wave {}", current_wave + 1))
                    .execute(&mut **tx)
                    .await?;
                super::events::emit_rollout_state(tx, rid, now).await?;
                let detail = serde_json::json!({ "wave": current_wave });
                record(tx, &audit("rollout.await-approval", detail), now).await?;
            }
            Step::OpenWave(w) => {
                close_wave(tx, rid, current_wave, now).await?;
                sqlx::query("update waves set state = 'open', opened_at = $3 where rollout_id = $1 and number = $2")
                    .bind(rid)
                    .bind(i64::from(*w))
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                sqlx::query("update rollouts set current_wave = $2 where id = $1")
                    .bind(rid)
                    .bind(i64::from(*w))
                    .execute(&mut **tx)
                    .await?;
                super::events::emit_wave_opened(tx, rid, i64::from(*w), now).await?;
                record(tx, &audit("rollout.open-wave", serde_json::json!({ "wave": w })), now).await?;
            }
            Step::Queue(w, n) => {
                // One statement for the whole step, not one per job: a 10,000-server wave is
                // queued in one round trip (docs/benchmarks.md, P1).
                let ready: Vec<(String,)> = sqlx::query_as(
                    "update jobs set state = 'queued', queued_at = $4, updated_at = $4 where id in \
                     (select id from jobs where rollout_id = $1 and wave = $2 and state = 'pending' \
                      and (not_before is null or not_before <= $4) order by position limit $3) \
                     returning agent_id",
                )
                .bind(rid)
                .bind(i64::from(*w))
                .bind(*n as i64)
                .bind(now)
                .fetch_all(&mut **tx)
                .await?;
                wake = ready.iter().map(|(a,)| stored_id(a)).collect::<StoreResult<_>>()?;
                self.queued.extend(wake.iter().cloned());
            }
            Step::Unqueue(w) => {
                sqlx::query(
                    "update jobs set state = 'pending', queued_at = null, updated_at = $3 \
                     where rollout_id = $1 and wave = $2 and state = 'queued'",
                )
                .bind(rid)
                .bind(i64::from(*w))
                .bind(now)
                .execute(&mut **tx)
                .await?;
            }
        }
        Ok(wake)
    }

    /// The agents of the jobs this pass queued.
    pub fn queued_agents(&self) -> impl Iterator<Item = &AgentId> {
        self.queued.iter()
    }

    /// Dispatches, in this pass's transaction, a job to each agent in `held` (agents of the
    /// jobs it queued whose long-poll this process holds): each agent's next job, the one
    /// its claim would take, with its fencing token and lease as a claim would give them;
    /// none to an agent that already has one in flight. Returns the assignments, to hand to
    /// the held polls once the pass has committed ([`crate::mailbox`]); the other agents'
    /// jobs stay queued for their polls to claim.
    pub async fn dispatch(&mut self, held: &HashSet<AgentId>) -> StoreResult<Vec<(AgentId, ClaimedJob)>> {
        let mut agents: Vec<&str> = held.iter().map(AgentId::as_str).collect();
        agents.sort_unstable();
        agents.dedup();
        let mut out = Vec::with_capacity(agents.len());
        let mut plans = Plans::new();
        for chunk in agents.chunks(DISPATCH_CHUNK) {
            // The agents' rows first, in id order, as a claim locks its agent's: a claim on
            // another replica and this dispatch take turns per agent, and the second one's
            // `not exists` sees the first one's job in flight.
            lock_agents(&mut self.tx, self.dialect, chunk).await?;
            let mut q = sqlx::query_as::<_, (String, String, i64, i64, String)>(sqlx::AssertSqlSafe(
                dispatch_statement(chunk.len()),
            ))
            .bind(self.now);
            for id in chunk {
                q = q.bind(*id);
            }
            for (job, rollout, token, lease_ms, agent) in q.fetch_all(&mut *self.tx).await? {
                let row: DispatchedRow = (job, rollout, token, lease_ms);
                out.push((stored_id(&agent)?, claimed(&mut self.tx, &mut plans, row).await?));
            }
        }
        Ok(out)
    }

    /// Settles the ending rollouts whose last job this pass ended, then commits everything
    /// the pass applied.
    pub async fn commit(mut self) -> StoreResult<()> {
        for rollout in &self.ended {
            super::rollouts::settle_if_ending(&mut self.tx, rollout, self.now).await?;
        }
        self.tx.commit().await?;
        Ok(())
    }
}

/// The dispatch pass's statement for `agents` agents (`$1` now, `$2…` the agents): each
/// agent's job is the one its claim would take ([`dispatch_next`]). Public so that its plan can
/// be checked (`explain`).
pub fn dispatch_statement(agents: usize) -> String {
    dispatch_next(&format!("agent_id in ({})", numbered(2, agents)), "$1", ", agent_id")
}

/// Marks a wave done (once: a soaked wave keeps the time it passed its gate).
async fn close_wave(tx: &mut Tx, rollout_id: &str, wave: u32, now: i64) -> StoreResult<()> {
    sqlx::query(
        "update waves set state = 'done', done_at = coalesce(done_at, $3) where rollout_id = $1 and number = $2",
    )
    .bind(rollout_id)
    .bind(i64::from(wave))
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

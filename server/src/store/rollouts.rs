//! Rollouts: staging (the rollout, its waves and pending jobs in one transaction), reading
//! with waves and counts, and applying a transition the domain decided
//! ([`crate::domain::rollout::Effect`]), for an operator and for the scheduler alike.

use super::rows::RolloutRow;
use super::{Dialect, NewAudit, NewRollout, Store, StoreError, StoreResult, Tx, from_json, to_json};
use crate::domain::rollout::{Effect, RolloutAction, ending_state, operator_action, settled};
use crate::model::{AgentId, Millis, Rollout, RolloutId, RolloutState, now_ms};

/// Which rollouts to list (every field optional).
#[derive(Debug, Clone, Default)]
pub struct RolloutFilter {
    /// Only this state.
    pub state: Option<RolloutState>,
    /// Only rollouts whose target labels carry every pair.
    pub labels: Vec<(String, String)>,
    /// Created at or after.
    pub created_after: Option<Millis>,
    /// Created before.
    pub created_before: Option<Millis>,
    /// The keyset cursor: the (created, id) of the last rollout shown.
    pub after: Option<(Millis, String)>,
}

/// The rollout's row, locked for the transaction (Postgres).
pub(crate) async fn lock_rollout(tx: &mut Tx, dialect: Dialect, id: &RolloutId) -> StoreResult<RolloutRow> {
    let sql = format!(concat!(rollout_select!(), " where r.id = $1{}"), dialect.for_update());
    sqlx::query_as::<_, RolloutRow>(sqlx::AssertSqlSafe(sql))
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("rollout {id} not found")))
}

/// Applies a rollout transition inside `tx`; returns the agents to wake (cancel requests).
pub(crate) async fn apply_effect(tx: &mut Tx, id: &RolloutId, effect: &Effect, now: i64) -> StoreResult<Vec<AgentId>> {
    let id = id.as_str();
    match effect {
        Effect::Start => {
            sqlx::query("update rollouts set state = 'running', started_at = $2, current_wave = 1, approved_wave = 1 where id = $1")
                .bind(id)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            sqlx::query("update waves set state = 'open', opened_at = $2 where rollout_id = $1 and number = 1")
                .bind(id)
                .bind(now)
                .execute(&mut **tx)
                .await?;
            super::events::emit_rollout_state(tx, id, now).await?;
            super::events::emit_wave_opened(tx, id, 1, now).await?;
            return Ok(Vec::new());
        }
        Effect::Pause(reason) => {
            sqlx::query("update rollouts set state = 'paused', state_reason = $2, wait_until = null where id = $1")
                .bind(id)
                .bind(reason)
                .execute(&mut **tx)
                .await?;
            sqlx::query(
                "update jobs set state = 'pending', updated_at = $2 where rollout_id = $1 and state = 'queued'",
            )
            .bind(id)
            .bind(now)
            .execute(&mut **tx)
            .await?;
        }
        Effect::Resume => {
            let (failures,): (i64,) = sqlx::query_as(
                "select count(*) from jobs where rollout_id = $1 and state in ('failed', 'rolled-back', 'lost')",
            )
            .bind(id)
            .fetch_one(&mut **tx)
            .await?;
            sqlx::query(
                "update rollouts set state = 'running', state_reason = null, wait_until = null, failures_accepted = $2, \
                 gate_override_wave = current_wave where id = $1",
            )
            .bind(id)
            .bind(failures)
            .execute(&mut **tx)
            .await?;
        }
        Effect::Approve => {
            sqlx::query(
                "update rollouts set state = 'running', state_reason = null, wait_until = null, approved_wave = current_wave + 1 \
                 where id = $1",
            )
            .bind(id)
            .execute(&mut **tx)
            .await?;
        }
        Effect::End(target, reason) => {
            let in_flight = cancel_rollout_jobs(tx, id, now).await?;
            let state = ending_state(*target, in_flight.len());
            sqlx::query(
                "update rollouts set state = $2, state_reason = $3, wait_until = null, finished_at = $4 where id = $1",
            )
            .bind(id)
            .bind(state.as_str())
            .bind(reason)
            .bind(state.is_terminal().then_some(now))
            .execute(&mut **tx)
            .await?;
            super::events::emit_rollout_state(tx, id, now).await?;
            return Ok(in_flight);
        }
    }
    super::events::emit_rollout_state(tx, id, now).await?;
    Ok(Vec::new())
}

/// Ends a cancelling or aborting rollout whose last job in flight has just ended: called in
/// the transaction that ended a job, so a rollout never says `cancelling` after its last job
/// ended, nor `cancelled` before.
pub(crate) async fn settle_if_ending(tx: &mut Tx, rollout_id: &str, now: i64) -> StoreResult<()> {
    let row: Option<(String, i64)> = sqlx::query_as(
        "select r.state, (select count(*) from jobs j where j.rollout_id = r.id \
         and j.state in ('dispatched', 'running', 'waiting')) from rollouts r where r.id = $1",
    )
    .bind(rollout_id)
    .fetch_optional(&mut **tx)
    .await?;
    let Some((state, in_flight)) = row else { return Ok(()) };
    let state = crate::model::RolloutState::parse(&state)
        .ok_or_else(|| StoreError::Corrupt(format!("rollout state '{state}'")))?;
    if let Some(done) = settled(state, in_flight as u64) {
        sqlx::query("update rollouts set state = $2, finished_at = $3 where id = $1")
            .bind(rollout_id)
            .bind(done.as_str())
            .bind(now)
            .execute(&mut **tx)
            .await?;
        super::events::emit_rollout_state(tx, rollout_id, now).await?;
    }
    Ok(())
}

/// Cancels a rollout's unstarted jobs and asks its jobs in flight to cancel; returns the
/// agents to wake.
async fn cancel_rollout_jobs(tx: &mut Tx, id: &str, now: i64) -> StoreResult<Vec<AgentId>> {
    sqlx::query(
        "update jobs set state = 'cancelled', finished_at = $2, updated_at = $2 where rollout_id = $1 and state in ('pending', 'queued')",
    )
    .bind(id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    let agents: Vec<(String,)> = sqlx::query_as(
        "select agent_id from jobs where rollout_id = $1 and state in ('dispatched', 'running', 'waiting')",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    sqlx::query(
        "update jobs set cancel_requested = true, updated_at = $2 where rollout_id = $1 and state in ('dispatched', 'running', 'waiting')",
    )
    .bind(id)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    agents.iter().map(|(a,)| super::stored_id(a)).collect()
}

impl Store {
    /// Adds waves and counts to a rollout row.
    async fn rollout_view(&self, row: &RolloutRow) -> StoreResult<Rollout> {
        let waves: Vec<(i64, i64, String)> =
            sqlx::query_as("select number, size, state from waves where rollout_id = $1 order by number")
                .bind(&row.id)
                .fetch_all(&self.pool)
                .await?;
        let counts: Vec<(i64, String, i64)> =
            sqlx::query_as("select wave, state, count(*) from jobs where rollout_id = $1 group by wave, state")
                .bind(&row.id)
                .fetch_all(&self.pool)
                .await?;
        row.to_rollout(&waves, &counts)
    }

    /// Creates a rollout (state draft) with its waves and pending jobs.
    #[tracing::instrument(skip_all)]
    pub async fn create_rollout(&self, r: &NewRollout, audit: &NewAudit) -> StoreResult<Rollout> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        sqlx::query("insert into rollouts (id, name, package_id, state, spec, retry_of, created_by, created_at) values ($1, $2, $3, 'draft', $4, $5, $6, $7)")
            .bind(r.id.as_str())
            .bind(&r.spec.name)
            .bind(r.spec.package_id.as_str())
            .bind(to_json(&r.spec))
            .bind(r.retry_of.as_ref().map(RolloutId::as_str))
            .bind(&r.created_by)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        for (i, size) in r.wave_sizes.iter().enumerate() {
            sqlx::query("insert into waves (rollout_id, number, size, state) values ($1, $2, $3, 'pending')")
                .bind(r.id.as_str())
                .bind(i as i64 + 1)
                .bind(*size as i64)
                .execute(&mut *tx)
                .await?;
        }
        for (pos, job) in r.jobs.iter().enumerate() {
            sqlx::query(
                "insert into jobs (id, rollout_id, agent_id, wave, position, state, lease_ms, delivery_ms, phases, warnings, \
                 error, created_at, updated_at, finished_at) values ($1, $2, $3, $4, $5, $6, $7, $8, '{}', '[]', $9, $10, $10, $11)",
            )
            .bind(fleetup_proto::id::new_id())
            .bind(r.id.as_str())
            .bind(job.agent.as_str())
            .bind(i64::from(job.wave))
            .bind(pos as i64)
            .bind(if job.skip { "skipped" } else { "pending" })
            .bind(r.lease_ms)
            .bind(r.delivery_ms)
            .bind(job.skip.then_some("the server already runs this version"))
            .bind(now)
            .bind(job.skip.then_some(now))
            .execute(&mut *tx)
            .await?;
        }
        super::audit::commit_audited(tx, audit, now).await?;
        if self.dialect == Dialect::Postgres && r.jobs.len() >= super::rows::ANALYZE_AFTER_JOBS {
            // Fresh statistics for the planner: without them (a young database, before
            // autovacuum's next pass) Postgres guesses the jobs table is tiny and reads
            // a big rollout's pages by scanning and sorting all of its rows.
            if let Err(e) = sqlx::query("analyze jobs").execute(&self.pool).await {
                tracing::warn!(error = %e, "analyze jobs after staging a big rollout failed; plans may be poor until autovacuum analyzes");
            }
        }
        Self::get_rollout(self, &r.id).await
    }

    /// Up to `limit + 1` rollouts matching `f`, newest first (created, then id, both
    /// descending), after the keyset `f.after`: the API's page (the extra one says there is
    /// a next page). State and time are filtered in SQL; the label selector (on the
    /// rollout's target labels) on the rows, before the costlier views are read.
    #[tracing::instrument(skip_all)]
    pub async fn rollouts_page(&self, f: &RolloutFilter, limit: u64) -> StoreResult<Vec<Rollout>> {
        let (after_at, after_id) = f.after.clone().unwrap_or((i64::MAX, String::new()));
        let want = usize::try_from(limit).unwrap_or(usize::MAX).saturating_add(1);
        let sql_limit = if f.labels.is_empty() { i64::try_from(want).unwrap_or(i64::MAX) } else { i64::MAX };
        let rows: Vec<RolloutRow> = sqlx::query_as(concat!(
            rollout_select!(),
            " where ($1 = '' or r.state = $1) and r.created_at >= $2 and r.created_at < $3 \
              and (r.created_at < $4 or (r.created_at = $4 and r.id < $5)) \
              order by r.created_at desc, r.id desc limit $6"
        ))
        .bind(f.state.map_or("", RolloutState::as_str))
        .bind(f.created_after.unwrap_or(i64::MIN))
        .bind(f.created_before.unwrap_or(i64::MAX))
        .bind(after_at)
        .bind(after_id)
        .bind(sql_limit)
        .fetch_all(&self.pool)
        .await?;
        let mut out = Vec::new();
        for row in &rows {
            if !f.labels.is_empty() {
                let spec: fleetup_proto::api::RolloutSpec = from_json(&row.spec, "rollout spec")?;
                let targets = spec.targets.labels.unwrap_or_default();
                if !crate::domain::labels::matches(&f.labels, &targets) {
                    continue;
                }
            }
            out.push(self.rollout_view(row).await?);
            if out.len() == want {
                break;
            }
        }
        Ok(out)
    }

    /// All rollouts, newest first.
    #[tracing::instrument(skip_all)]
    pub async fn list_rollouts(&self) -> StoreResult<Vec<Rollout>> {
        let rows: Vec<RolloutRow> =
            sqlx::query_as(concat!(rollout_select!(), " order by r.created_at desc, r.id desc"))
                .fetch_all(&self.pool)
                .await?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            out.push(self.rollout_view(row).await?);
        }
        Ok(out)
    }

    /// One rollout.
    #[tracing::instrument(skip_all)]
    pub async fn get_rollout(&self, id: &RolloutId) -> StoreResult<Rollout> {
        let row: Option<RolloutRow> = sqlx::query_as(concat!(rollout_select!(), " where r.id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        let row = row.ok_or_else(|| StoreError::NotFound(format!("rollout {id} not found")))?;
        self.rollout_view(&row).await
    }

    /// Applies an operator action: refused with [`StoreError::Conflict`] when the rollout's
    /// state does not allow it (the domain says which do). Returns the rollout afterwards and
    /// the agents to wake (cancel requests).
    #[tracing::instrument(skip_all)]
    pub async fn rollout_action(
        &self,
        id: &RolloutId,
        action: RolloutAction,
        if_match: Option<&str>,
        audit: &NewAudit,
    ) -> StoreResult<(Rollout, Vec<AgentId>)> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let row = lock_rollout(&mut tx, self.dialect, id).await?;
        // Checked on the locked row, in the action's transaction: no change slips in between.
        if let Some(wanted) = if_match
            && !crate::domain::rollout::etag_matches(wanted, &row.etag())
        {
            return Err(StoreError::PreconditionFailed(format!(
                "rollout {id} changed since the version you named (If-Match: {wanted}; it is now {}, {}): read it \
                 again and decide on what it is now",
                row.etag(),
                row.state
            )));
        }
        let state = row.state()?;
        let effect = operator_action(state, action, &audit.actor)
            .map_err(|why| StoreError::Conflict(format!("rollout {id} is {}; {why}", state.as_str())))?;
        let wake = apply_effect(&mut tx, id, &effect, now).await?;
        super::audit::commit_audited(tx, audit, now).await?;
        Ok((self.get_rollout(id).await?, wake))
    }
}

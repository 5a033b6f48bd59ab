//! Jobs: listings (keyset pages, full or compact), one job with its events, logs and
//! decisions, an operator's answer to a decision and a job's cancel, and what the
//! dashboard reads (the live stamp, warned jobs, log tails, a server's other jobs).

use super::rows::{DecisionRow, JobRow, JobSummaryRow, cut_page, jobs_key_at_sql, jobs_page_sql, log_line};
use super::{Dialect, JobFilter, JobPage, NewAudit, Store, StoreError, StoreResult, Tx, corrupt, from_json, stored_id};
use crate::model::{AgentId, Decision, Job, JobId, JobState, JobSummary, RolloutId, now_ms, to_time};
use fleetup_proto::agent_api::LogLine;
use fleetup_proto::{DecisionAnswer, DecisionRequest, EngineEvent};

/// Answers, inside `tx`, every open decision of a rollout that `filter` covers and whose
/// question offers `answer`, as `actor`; jobs with nothing left open run again. Returns the
/// count and the agents to wake.
pub(crate) async fn answer_open_decisions(
    tx: &mut Tx,
    rollout_id: &RolloutId,
    filter: &crate::domain::decide::DecisionFilter,
    answer: DecisionAnswer,
    actor: &str,
    now: i64,
) -> StoreResult<(u64, Vec<AgentId>)> {
    let open: Vec<(String, String, i64, String)> = sqlx::query_as(
        "select d.job_id, j.agent_id, d.id, d.request from decisions d join jobs j on j.id = d.job_id \
         where j.rollout_id = $1 and d.answer is null and j.state = 'waiting' order by j.wave, j.position, d.id",
    )
    .bind(rollout_id.as_str())
    .fetch_all(&mut **tx)
    .await?;
    let mut answered = 0u64;
    let mut jobs: Vec<(String, String)> = Vec::new();
    for (job_id, agent_id, decision_id, request) in open {
        let req: DecisionRequest = from_json(&request, "decision request")?;
        if !filter.covers(&req) || !req.options.contains(&answer) {
            continue;
        }
        sqlx::query(
            "update decisions set answer = $3, answered_by = $4, answered_at = $5 where job_id = $1 and id = $2",
        )
        .bind(&job_id)
        .bind(decision_id)
        .bind(answer.as_str())
        .bind(actor)
        .bind(now)
        .execute(&mut **tx)
        .await?;
        answered += 1;
        if jobs.last().is_none_or(|(j, _)| *j != job_id) {
            jobs.push((job_id, agent_id));
        }
    }
    for (job_id, _) in &jobs {
        // Runs again when nothing is left open; changed either way (the live page's stamp).
        sqlx::query(
            "update jobs set updated_at = $2, state = case when exists \
             (select 1 from decisions d where d.job_id = $1 and d.answer is null) then state else 'running' end \
             where id = $1 and state = 'waiting'",
        )
        .bind(job_id)
        .bind(now)
        .execute(&mut **tx)
        .await?;
    }
    let agents = jobs.iter().map(|(_, a)| stored_id(a)).collect::<StoreResult<_>>()?;
    Ok((answered, agents))
}

/// The job's row, locked for the transaction (Postgres).
pub(crate) async fn lock_job(tx: &mut Tx, dialect: Dialect, id: &JobId) -> StoreResult<JobRow> {
    let lock = if dialect == Dialect::Postgres { " for update of j" } else { "" };
    sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(format!(concat!(job_select!(), " where j.id = $1{}"), lock)))
        .bind(id.as_str())
        .fetch_optional(&mut **tx)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("job {id} not found")))
}

impl Store {
    async fn jobs_page<R>(&self, rollout_id: &RolloutId, f: &JobFilter, summary: bool) -> StoreResult<Vec<R>>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::any::AnyRow> + Send + Unpin,
    {
        let (n,): (i64,) = sqlx::query_as("select count(*) from rollouts where id = $1")
            .bind(rollout_id.as_str())
            .fetch_one(&self.pool)
            .await?;
        if n == 0 {
            return Err(StoreError::NotFound(format!("rollout {rollout_id} not found")));
        }
        let state = f.state.map_or("", JobState::as_str);
        let wave = i64::from(f.wave.unwrap_or(0));
        let mut after = f.after.map_or((0, -1), |k| (i64::from(k.wave), k.position as i64));
        if f.offset > 0 {
            // Skip by key: the last skipped job's key, then a keyset page after it.
            let key: Option<(i64, i64)> = sqlx::query_as(jobs_key_at_sql(f.state.is_some()))
                .bind(rollout_id.as_str())
                .bind(state)
                .bind(wave)
                .bind(after.0)
                .bind(after.1)
                .bind((f.offset - 1).min(i64::MAX as u64) as i64)
                .fetch_optional(&self.pool)
                .await?;
            match key {
                Some(k) => after = k,
                None => return Ok(Vec::new()),
            }
        }
        let sql = jobs_page_sql(self.dialect, summary, f.state.is_some());
        Ok(sqlx::query_as::<_, R>(sql)
            .bind(rollout_id.as_str())
            .bind(state)
            .bind(wave)
            .bind(after.0)
            .bind(after.1)
            .bind(f.limit.saturating_add(1).min(i64::MAX as u64) as i64)
            .fetch_all(&self.pool)
            .await?)
    }

    /// A page of a rollout's jobs, full view.
    #[tracing::instrument(skip_all)]
    pub async fn list_jobs(&self, rollout_id: &RolloutId, f: &JobFilter) -> StoreResult<JobPage<Job>> {
        let rows: Vec<JobRow> = self.jobs_page(rollout_id, f, false).await?;
        cut_page(rows, f.limit, JobRow::key, JobRow::to_job)
    }

    /// A page of a rollout's jobs, compact view (no phase map, no warning texts).
    #[tracing::instrument(skip_all)]
    pub async fn list_job_summaries(&self, rollout_id: &RolloutId, f: &JobFilter) -> StoreResult<JobPage<JobSummary>> {
        let rows: Vec<JobSummaryRow> = self.jobs_page(rollout_id, f, true).await?;
        cut_page(rows, f.limit, JobSummaryRow::key, JobSummaryRow::to_summary)
    }

    /// One job.
    #[tracing::instrument(skip_all)]
    pub async fn get_job(&self, id: &JobId) -> StoreResult<Job> {
        let row: Option<JobRow> = sqlx::query_as(concat!(job_select!(), " where j.id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.ok_or_else(|| StoreError::NotFound(format!("job {id} not found")))?.to_job()
    }

    /// A job's events after `after_seq`.
    #[tracing::instrument(skip_all)]
    pub async fn list_events(&self, job_id: &JobId, after_seq: u64, limit: u64) -> StoreResult<Vec<EngineEvent>> {
        self.get_job(job_id).await?;
        let rows: Vec<(i64, String, String, String, String, i64)> = sqlx::query_as("select seq, phase, status, message, data, at from events where job_id = $1 and seq > $2 order by seq limit $3")
            .bind(job_id.as_str())
            .bind(after_seq as i64)
            .bind(limit as i64)
            .fetch_all(&self.pool)
            .await?;
        rows.into_iter()
            .map(|(seq, phase, status, message, data, at)| {
                Ok(EngineEvent {
                    seq: seq as u64,
                    phase: phase.parse().map_err(corrupt)?,
                    status: status.parse().map_err(corrupt)?,
                    message,
                    data: from_json(&data, "event data")?,
                    at: to_time(at),
                })
            })
            .collect()
    }

    /// A job's log lines after `after_seq`.
    #[tracing::instrument(skip_all)]
    pub async fn list_logs(&self, job_id: &JobId, after_seq: u64, limit: u64) -> StoreResult<Vec<LogLine>> {
        self.get_job(job_id).await?;
        let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "select seq, phase, line, at from logs where job_id = $1 and seq > $2 order by seq limit $3",
        )
        .bind(job_id.as_str())
        .bind(after_seq as i64)
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(log_line).collect()
    }

    /// A job's decisions.
    #[tracing::instrument(skip_all)]
    pub async fn list_decisions(&self, job_id: &JobId) -> StoreResult<Vec<Decision>> {
        self.get_job(job_id).await?;
        let rows: Vec<DecisionRow> = sqlx::query_as("select id, phase, kind, request, answer, answered_by, asked_at, answered_at from decisions where job_id = $1 order by id")
            .bind(job_id.as_str())
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(DecisionRow::to_decision).collect()
    }

    /// Answers a job's open decision (the given one, or the only open one). Returns the agent.
    #[tracing::instrument(skip_all)]
    pub async fn answer_decision(
        &self,
        job_id: &JobId,
        decision_id: Option<u32>,
        answer: DecisionAnswer,
        audit: &NewAudit,
    ) -> StoreResult<(Job, AgentId)> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let job = lock_job(&mut tx, self.dialect, job_id).await?;
        let open: Vec<DecisionRow> = sqlx::query_as("select id, phase, kind, request, answer, answered_by, asked_at, answered_at from decisions where job_id = $1 and answer is null order by id")
            .bind(job_id.as_str())
            .fetch_all(&mut *tx)
            .await?;
        let target = match (decision_id, open.as_slice()) {
            (_, []) => {
                return Err(StoreError::Conflict(format!("job {job_id} has no open decision (it is {})", job.state)));
            }
            (Some(d), rows) => rows
                .iter()
                .find(|r| r.id == i64::from(d))
                .ok_or_else(|| StoreError::Conflict(format!("decision {d} of job {job_id} is not open")))?,
            (None, [one]) => one,
            (None, _) => {
                return Err(StoreError::Conflict(format!(
                    "job {job_id} has several open decisions; say which with decision_id"
                )));
            }
        };
        let request: DecisionRequest = from_json(&target.request, "decision request")?;
        if !request.options.contains(&answer) {
            let allowed: Vec<&str> = request.options.iter().map(|o| o.as_str()).collect();
            return Err(StoreError::Refused(format!(
                "'{answer}' does not answer this {} decision; allowed: {}",
                target.kind,
                allowed.join(", ")
            )));
        }
        sqlx::query(
            "update decisions set answer = $3, answered_by = $4, answered_at = $5 where job_id = $1 and id = $2",
        )
        .bind(job_id.as_str())
        .bind(target.id)
        .bind(answer.as_str())
        .bind(&audit.actor)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        // The job runs again when this was its last open question; it changed either way
        // (the live page's stamp).
        let state = if open.len() == 1 && job.state == "waiting" { "running" } else { job.state.as_str() };
        sqlx::query("update jobs set state = $2, updated_at = $3 where id = $1")
            .bind(job_id.as_str())
            .bind(state)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        super::audit::commit_audited(tx, audit, now).await?;
        Ok((self.get_job(job_id).await?, stored_id(&job.agent_id)?))
    }

    /// Answers every open decision of a rollout that `filter` covers (audited once, with the
    /// count) and, when `remember`, keeps the answer standing: the scheduler gives it to every
    /// such decision asked later in the rollout. Returns the count and the agents to wake.
    #[tracing::instrument(skip_all)]
    pub async fn answer_rollout_decisions(
        &self,
        rollout_id: &RolloutId,
        filter: &crate::domain::decide::DecisionFilter,
        answer: DecisionAnswer,
        remember: bool,
        audit: &NewAudit,
    ) -> StoreResult<(u64, Vec<AgentId>)> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        super::rollouts::lock_rollout(&mut tx, self.dialect, rollout_id).await?;
        if remember {
            sqlx::query(
                "insert into standing_answers (id, rollout_id, filter, answer, created_by, created_at) \
                 values ($1, $2, $3, $4, $5, $6)",
            )
            .bind(fleetup_proto::id::new_id())
            .bind(rollout_id.as_str())
            .bind(super::to_json(filter))
            .bind(answer.as_str())
            .bind(&audit.actor)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        }
        let (answered, agents) = answer_open_decisions(&mut tx, rollout_id, filter, answer, &audit.actor, now).await?;
        if answered > 0 || remember {
            let mut audit = audit.clone();
            audit.detail["count"] = serde_json::json!(answered);
            super::audit::record(&mut tx, &audit, now).await?;
        }
        tx.commit().await?;
        Ok((answered, agents))
    }

    /// Cancels one job (unstarted: at once; in flight: asks the agent).
    #[tracing::instrument(skip_all)]
    pub async fn cancel_job(&self, job_id: &JobId, audit: &NewAudit) -> StoreResult<Job> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let job = lock_job(&mut tx, self.dialect, job_id).await?;
        match job.state()? {
            JobState::Pending | JobState::Queued => {
                sqlx::query(
                    "update jobs set state = 'cancelled', error = $3, finished_at = $2, updated_at = $2 where id = $1",
                )
                .bind(job_id.as_str())
                .bind(now)
                .bind(format!("cancelled by {} before it started", audit.actor))
                .execute(&mut *tx)
                .await?;
            }
            s if s.is_terminal() => {
                return Err(StoreError::Conflict(format!(
                    "job {job_id} has already ended ({}); nothing to cancel",
                    s.as_str()
                )));
            }
            _ => {
                let phase = job.current_phase.as_deref().map(str::parse).transpose().map_err(corrupt)?;
                if let Some(why) = crate::domain::job::cancel_refused(phase) {
                    return Err(StoreError::Conflict(format!("job {job_id} cannot be cancelled: {why}")));
                }
                sqlx::query("update jobs set cancel_requested = true, updated_at = $2 where id = $1")
                    .bind(job_id.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
            }
        }
        super::audit::commit_audited(tx, audit, now).await?;
        self.get_job(job_id).await
    }

    /// A cheap fingerprint of everything the rollout page shows: it changes when a job,
    /// a decision or the rollout's state changes (the dashboard's live updates poll it).
    #[tracing::instrument(skip_all)]
    pub async fn rollout_stamp(&self, rollout_id: &RolloutId) -> StoreResult<String> {
        let row: Option<(String, String, i64, i64)> = sqlx::query_as(
            "select r.state, coalesce(r.state_reason, ''), r.current_wave, \
             (select coalesce(max(j.updated_at), 0) from jobs j where j.rollout_id = r.id) \
             from rollouts r where r.id = $1",
        )
        .bind(rollout_id.as_str())
        .fetch_optional(&self.pool)
        .await?;
        let (state, reason, wave, updated) =
            row.ok_or_else(|| StoreError::NotFound(format!("rollout {rollout_id} not found")))?;
        Ok(format!("{state}|{wave}|{updated}|{reason}"))
    }

    /// Jobs of a rollout that reported warnings, in dispatch order, and how many there are.
    #[tracing::instrument(skip_all)]
    pub async fn list_warned_jobs(&self, rollout_id: &RolloutId, limit: u64) -> StoreResult<(Vec<Job>, u64)> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            job_select!(),
            " where j.rollout_id = $1 and j.warnings <> '[]' order by j.wave, j.position limit $2"
        ))
        .bind(rollout_id.as_str())
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        let (n,): (i64,) = sqlx::query_as("select count(*) from jobs where rollout_id = $1 and warnings <> '[]'")
            .bind(rollout_id.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok((rows.iter().map(JobRow::to_job).collect::<StoreResult<Vec<_>>>()?, n as u64))
    }

    /// The last `limit` log lines of a job, oldest first.
    #[tracing::instrument(skip_all)]
    pub async fn tail_logs(&self, job_id: &JobId, limit: u64) -> StoreResult<Vec<LogLine>> {
        let rows: Vec<(i64, String, String, i64)> = sqlx::query_as(
            "select seq, phase, line, at from logs where job_id = $1 order by at desc, seq desc limit $2",
        )
        .bind(job_id.as_str())
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        // By the time each line was written (agents ship phase logs file by file).
        rows.into_iter().rev().map(log_line).collect()
    }

    /// Jobs of one agent across rollouts, newest first (the server page's previous installs).
    #[tracing::instrument(skip_all)]
    pub async fn list_agent_jobs(&self, agent_id: &AgentId, limit: u64) -> StoreResult<Vec<Job>> {
        let rows: Vec<JobRow> = sqlx::query_as(concat!(
            job_select!(),
            " where j.agent_id = $1 order by j.created_at desc, j.id desc limit $2"
        ))
        .bind(agent_id.as_str())
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(JobRow::to_job).collect()
    }
}

//! The agent protocol's writes: a poll's claim of its next job, an event report folded into
//! its job ([`crate::domain::report::fold`] decides what the events mean), log lines, and
//! what the agent must hear back (cancel, answered decisions). Claims and reports are
//! group-committed: `claim_batch` writes many claims in one transaction ([`batch_tx!`]);
//! reports are written by [`super::ingest::report_batch`], in multi-row statements for the
//! common case and by [`report_tx`] here for the rest.

use super::ingest::{JobUpdate, by_seq, conclude, insert_events, progress_of, split_fresh, update_jobs};
use super::jobs::lock_job;
use super::packages::package_on;
use super::rollouts::settle_if_ending;
use super::rows::JobRow;
use super::{
    ClaimRequest, ClaimedJob, Dialect, JobMessages, ReportOutcome, ReportRequest, Store, StoreError, StoreResult, Tx,
    Writes, corrupt, from_json, stored_id, to_json,
};
use crate::domain::report::{auto_answer, fold, settled_state};
use crate::model::{AgentId, InstalledRollup, JobId, JobState, Package, RolloutId, RolloutSpec, now_ms};
use fleetup_proto::agent_api::{DecisionReply, LogLine};
use fleetup_proto::{DecisionKind, EngineEvent};
use std::collections::{BTreeSet, HashMap};

/// Plans and packages read once per claim batch (a wave's claims share one rollout).
pub(super) type Plans = HashMap<String, (RolloutSpec, Package)>;

/// Claims: each request in the batch claims its agent's next job.
pub(crate) async fn claim_batch(
    writes: Writes,
    reqs: Vec<ClaimRequest>,
) -> StoreResult<Vec<StoreResult<Option<ClaimedJob>>>> {
    let dialect = writes.dialect();
    let mut plans = Plans::new();
    batch_tx!(writes.begin(), reqs, key = |r| r.agent_id.clone(), |tx, r| claim_tx(
        &mut tx,
        dialect,
        &mut plans,
        &r.agent_id,
        r.now
    )
    .await)
}

/// What follows from a batch's reports, written after all of them: the rollups finished
/// installs put on their agents, and the ending rollouts whose last job in flight just ended.
pub(super) async fn after_reports(
    tx: &mut Tx,
    dialect: Dialect,
    results: &[Option<StoreResult<ReportOutcome>>],
    reqs: &[ReportRequest],
) -> StoreResult<()> {
    let written: Vec<(&ReportOutcome, &ReportRequest)> = results
        .iter()
        .zip(reqs)
        .filter_map(|(result, r)| match result {
            Some(Ok(out)) => Some((out, r)),
            _ => None,
        })
        .collect();
    let mut installed: Vec<(&AgentId, &InstalledRollup)> =
        written.iter().filter_map(|(out, r)| out.installed.as_ref().map(|i| (&r.agent_id, i))).collect();
    installed.sort_by_key(|(agent, _)| *agent);
    add_installed(tx, dialect, &installed).await?;
    let mut ended: Vec<&RolloutId> = written.iter().filter_map(|(out, _)| out.finished.as_ref()).collect();
    ended.sort();
    ended.dedup();
    for rollout in ended {
        settle_if_ending(tx, rollout.as_str(), now_ms()).await?;
    }
    Ok(())
}

/// Dispatches the agent's next ready job, or hands over again the one dispatched to it that
/// it never started.
async fn claim_tx(
    tx: &mut Tx,
    dialect: Dialect,
    plans: &mut Plans,
    agent_id: &AgentId,
    now: i64,
) -> StoreResult<Option<ClaimedJob>> {
    // `fetch_all`, not `fetch_optional`, on `returning`: SQLite must step the statement to
    // its end (see docs/decisions.md, SQLite durability). The claim returns what the
    // assignment needs, so a claim is one statement (a wave's claims share the plan and
    // package read below once per batch). A claim only takes its own agent's jobs, so
    // claims of different agents touch different rows.
    // At most one active job per agent, held by the store: the agent's row is locked first,
    // so two coordinators claiming for one agent at once take turns, and the second one's
    // `not exists` sees the first one's dispatch (each Postgres statement reads what was
    // committed before it began). SQLite's `BEGIN IMMEDIATE` already gives one writer.
    let agent_lock = format!("select id from agents where id = $1{}", dialect.for_update());
    sqlx::query(sqlx::AssertSqlSafe(agent_lock)).bind(agent_id.as_str()).fetch_all(&mut **tx).await?;
    // The agent's jobs are read through the agent alone (`dispatch_next`).
    let dispatched: Vec<DispatchedRow> = sqlx::query_as(sqlx::AssertSqlSafe(claim_statement()))
        .bind(agent_id.as_str())
        .bind(now)
        .fetch_all(&mut **tx)
        .await?;
    let claim = if let Some(claim) = dispatched.into_iter().next() {
        claim
    } else {
        // A job dispatched to this agent that it never started means the answer to the poll
        // that claimed it was lost (a handler error after the claim, a dropped connection).
        // An agent polls only while it holds no job, so the same dispatch, fencing token and
        // all, is handed over again instead of stranding the job until its lease runs out
        // (docs/benchmarks.md, defect 1).
        let undelivered: Option<DispatchedRow> = sqlx::query_as(
            "select id, rollout_id, fencing_token, lease_ms from jobs where agent_id = $1 and state = 'dispatched' \
             order by dispatched_at limit 1",
        )
        .bind(agent_id.as_str())
        .fetch_optional(&mut **tx)
        .await?;
        let Some(claim) = undelivered else { return Ok(None) };
        claim
    };
    Ok(Some(claimed(tx, plans, claim).await?))
}

/// The statement that dispatches their next job to the agents `which` selects (a condition
/// on `agent_id`) at `now` (a placeholder): state `dispatched`, fencing token + 1, the lease;
/// it returns `id, rollout_id, fencing_token, lease_ms` and then `returning_more`. Shared by
/// the claim (one agent) and the dispatch pass (many).
///
/// Three common tables: `mine`, the agents' jobs; `flagged`, the same with `busy` for agents
/// with a job dispatched, running or waiting; and `next (next_id)`, each agent's next job:
/// its oldest queued job of a running rollout (an agent in several rollouts takes them in
/// order), for agents that are not busy. `busy` is a window over the agent's jobs, not a
/// `not exists` over `mine`: Postgres ran that as a nested loop over the common table, one
/// scan of all of `mine` per job, quadratic in the statement's agents (a 5,000-agent
/// dispatch took seconds; docs/benchmarks.md, issue 17 run 4).
///
/// The jobs are found through the agents alone: a condition on `state` that the planner can
/// serve from an index lets Postgres pick `jobs_state_lease` for `state = 'queued'` whenever
/// its statistics date from before a wave was queued (`analyze jobs` runs after staging,
/// when every job is `pending`, so `queued` looks empty), and read every queued job of the
/// fleet for each agent: a 10,000-server wave's dispatch pass took 31.6 s so
/// (docs/benchmarks.md, issue 17 run 3). `materialized` keeps the state conditions out of
/// the scan, and the update joins `next` by id. Its check that the row is still queued (a
/// pause or a cancel of the rollout may have committed since `mine` was read; Postgres
/// re-evaluates it on the row's newest version) is written `(state || '')` so that no index
/// can serve it either.
pub(super) fn dispatch_next(which: &str, now: &str, returning_more: &str) -> String {
    format!(
        "with mine as materialized (select id, agent_id, rollout_id, state, created_at, position from jobs where {which}), \
         flagged as (select m.*, max(case when m.state in ('dispatched', 'running', 'waiting') then 1 else 0 end) \
         over (partition by m.agent_id) as busy from mine m), \
         next (next_id) as (select id from (select f.id, row_number() over \
         (partition by f.agent_id order by f.created_at, f.position) as n from flagged f join rollouts r on r.id = f.rollout_id \
         where f.state = 'queued' and r.state = 'running' and f.busy = 0) ranked where n = 1) \
         update jobs set state = 'dispatched', fencing_token = fencing_token + 1, lease_expires_at = {now} + lease_ms, \
         dispatched_at = {now}, updated_at = {now} \
         from next where id = next_id and (state || '') = 'queued' \
         returning id, rollout_id, fencing_token, lease_ms{returning_more}"
    )
}

/// The claim's statement (`$1` the agent, `$2` now), built once: every poll that claims
/// runs it. Public so that its plan can be checked (`explain`).
pub fn claim_statement() -> &'static str {
    static CLAIM: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| dispatch_next("agent_id = $1", "$2", ""));
    &CLAIM
}

/// A dispatched job as its assignment needs it: (id, rollout id, fencing token, lease ms).
pub(super) type DispatchedRow = (String, String, i64, i64);

/// The assignment of a job just dispatched (its rollout's plan and package read once per
/// rollout into `plans`).
pub(super) async fn claimed(tx: &mut Tx, plans: &mut Plans, row: DispatchedRow) -> StoreResult<ClaimedJob> {
    let (job_id, rollout_id, fencing_token, lease_ms) = row;
    if !plans.contains_key(&rollout_id) {
        // The dispatch has written: a missing package now is corruption, not a refusal.
        let (spec, package_id): (String, String) =
            sqlx::query_as("select spec, package_id from rollouts where id = $1")
                .bind(&rollout_id)
                .fetch_one(&mut **tx)
                .await?;
        let package = package_on(tx, &stored_id(&package_id)?).await.map_err(corrupt)?;
        plans.insert(rollout_id.clone(), (from_json(&spec, "rollout spec")?, package));
    }
    let (spec, package) = plans[&rollout_id].clone();
    Ok(ClaimedJob {
        job_id: stored_id(&job_id)?,
        rollout_id: stored_id(&rollout_id)?,
        fencing_token: fencing_token as u64,
        spec,
        package,
        lease_ms,
    })
}

/// Records one report's events: the per-report path of [`super::ingest`], for the reports
/// its batched statements leave aside (late, after the end, asking decisions, …). Refusals
/// (unknown job, another agent's job, a stale fencing token) come before any write, as
/// `batch_tx!` requires.
pub(super) async fn report_tx(tx: &mut Tx, dialect: Dialect, r: &ReportRequest) -> StoreResult<ReportOutcome> {
    let row = lock_job(tx, dialect, &r.job_id).await?;
    if let Some(late) = late_outcome(&row, r) {
        return record_late(tx, &row, r, late).await;
    }
    check_lease(&row, &r.agent_id, r.fencing_token)?;
    let was = row.state()?;
    let job_id = r.job_id.as_str();
    if was.is_terminal() {
        refuse_after_end(tx, &row, &r.events).await?;
    }
    let mut out = ReportOutcome::default();
    let sorted = by_seq(&r.events);
    let rows: Vec<(&str, &EngineEvent)> = sorted.iter().map(|e| (job_id, *e)).collect();
    let new = insert_events(tx, dialect, &rows).await?.remove(job_id).unwrap_or_default();
    let fresh = split_fresh(sorted, new, &mut out);
    if was.is_terminal() {
        // Only resends of what was recorded get this far (`refuse_after_end`).
        return Ok(out);
    }
    let folded = fold(progress_of(&row)?, &fresh, r.now);
    if !folded.asked.is_empty() {
        record_decisions(tx, &row, &folded.asked, r.now).await?;
    }
    // Decisions are asked only in reports, and a report that leaves one open leaves the job
    // `waiting`: a job that was not waiting and asked nothing now has none open.
    let open = if was == JobState::Waiting || !folded.asked.is_empty() {
        let (open,): (i64,) = sqlx::query_as("select count(*) from decisions where job_id = $1 and answer is null")
            .bind(job_id)
            .fetch_one(&mut **tx)
            .await?;
        open > 0
    } else {
        false
    };
    let state = settled_state(folded.outcome, open);
    update_jobs(tx, dialect, &[JobUpdate::after(&row, &folded, state, r.now)]).await?;
    let ended_as = match state {
        JobState::Failed => Some(fleetup_proto::webhooks::JOB_FAILED),
        JobState::RolledBack => Some(fleetup_proto::webhooks::JOB_ROLLED_BACK),
        _ => None,
    };
    if let Some(event_type) = ended_as.filter(|_| was != state) {
        let p = &folded.progress;
        let data = serde_json::json!({ "error": p.error, "phase": p.current_phase });
        super::events::emit_job(tx, event_type, job_id, data, r.now).await?;
    }
    conclude(&mut out, &row, r, folded)?;
    Ok(out)
}

/// Stores the decisions a report asked, each answered at once when the rollout's policy
/// answers it (`policy`), or left open for an operator.
async fn record_decisions(
    tx: &mut Tx,
    row: &JobRow,
    asked: &[(fleetup_proto::DecisionRequest, &'static str)],
    now: i64,
) -> StoreResult<()> {
    let (text,): (String,) =
        sqlx::query_as("select spec from rollouts where id = $1").bind(&row.rollout_id).fetch_one(&mut **tx).await?;
    let spec: RolloutSpec = from_json(&text, "rollout spec")?;
    let (earlier,): (i64,) =
        sqlx::query_as("select count(*) from decisions where job_id = $1 and kind = 'files-in-use'")
            .bind(&row.id)
            .fetch_one(&mut **tx)
            .await?;
    let mut earlier = earlier as u32;
    for (req, kind) in asked {
        let auto = auto_answer(&spec.policies, &req.kind, earlier);
        if matches!(req.kind, DecisionKind::FilesInUse { .. }) {
            earlier += 1;
        }
        let inserted = sqlx::query(
            "insert into decisions (job_id, id, phase, kind, request, answer, answered_by, asked_at, answered_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict (job_id, id) do nothing",
        )
        .bind(&row.id)
        .bind(i64::from(req.id))
        .bind(req.phase.as_str())
        .bind(*kind)
        .bind(to_json(req))
        .bind(auto.map(fleetup_proto::DecisionAnswer::as_str))
        .bind(auto.map(|_| "policy"))
        .bind(now)
        .bind(auto.map(|_| now))
        .execute(&mut **tx)
        .await?;
        if auto.is_none() && inserted.rows_affected() > 0 {
            let data = serde_json::json!({
                "decision_id": req.id, "kind": kind, "phase": req.phase, "message": req.message,
                "options": req.options,
            });
            super::events::emit_job(tx, fleetup_proto::webhooks::DECISION_NEEDED, &row.id, data, now).await?;
        }
    }
    Ok(())
}

/// Adds installed rollups to their agents' lists (in the given order).
async fn add_installed(tx: &mut Tx, dialect: Dialect, installed: &[(&AgentId, &InstalledRollup)]) -> StoreResult<()> {
    let select = format!("select installed from agents where id = $1{}", dialect.for_update());
    for (agent_id, inst) in installed {
        let (text,): (String,) =
            sqlx::query_as(sqlx::AssertSqlSafe(select.as_str())).bind(agent_id.as_str()).fetch_one(&mut **tx).await?;
        let mut list: Vec<InstalledRollup> = from_json(&text, "agent installed")?;
        list.push((*inst).clone());
        sqlx::query("update agents set installed = $2 where id = $1")
            .bind(agent_id.as_str())
            .bind(to_json(&list))
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// After a job's final event only resends of recorded events are answered (a retry whose
/// answer was lost); an empty report (a lease renewal) or any event not recorded is refused
/// with `409`: nothing may change a finished job. A read only, before any write.
async fn refuse_after_end(tx: &mut Tx, row: &JobRow, events: &[EngineEvent]) -> StoreResult<()> {
    let ended = || {
        StoreError::Conflict(format!(
            "job {} has ended ({}): no report is accepted after its final event; stop reporting for it",
            row.id, row.state
        ))
    };
    let seqs: BTreeSet<u64> = events.iter().map(|e| e.seq).collect();
    if seqs.is_empty() {
        return Err(ended());
    }
    let list: Vec<String> = (0..seqs.len()).map(|i| format!("${}", i + 2)).collect();
    let sql = format!("select count(*) from events where job_id = $1 and seq in ({})", list.join(", "));
    let mut count = sqlx::query_as::<_, (i64,)>(sqlx::AssertSqlSafe(sql)).bind(&row.id);
    for seq in &seqs {
        count = count.bind(*seq as i64);
    }
    let (recorded,) = count.fetch_one(&mut **tx).await?;
    if recorded as usize == seqs.len() { Ok(()) } else { Err(ended()) }
}

/// A report on the dispatch that was declared lost (its fencing token is the one before the
/// current) that carries the install's outcome: the agent finished after its lease ran out
/// (an install that had begun changing the server ends by the engine's cancel rules). That
/// outcome is true of the server, so it is recorded on the job as late, though the job stays
/// `lost` and the agent is told its lease is stale.
pub(super) fn late_outcome(row: &JobRow, r: &ReportRequest) -> Option<fleetup_proto::InstallSummary> {
    let lost_dispatch = row.state == "lost" && row.fencing_token as u64 == r.fencing_token.wrapping_add(1);
    if !lost_dispatch || row.agent_id != r.agent_id.as_str() {
        return None;
    }
    r.events.iter().find_map(EngineEvent::summary)
}

async fn record_late(
    tx: &mut Tx,
    row: &JobRow,
    r: &ReportRequest,
    summary: fleetup_proto::InstallSummary,
) -> StoreResult<ReportOutcome> {
    let late = format!(
        "the agent reported after the job was lost: {} {} {}{}",
        summary.rollup,
        summary.version,
        summary.outcome,
        summary.error.as_deref().map(|e| format!(" ({e})")).unwrap_or_default()
    );
    let earlier = row.error.clone().unwrap_or_default();
    if !earlier.contains(&late) {
        let error = if earlier.is_empty() { late.clone() } else { format!("{earlier}; {late}") };
        sqlx::query("update jobs set error = $2, updated_at = $3 where id = $1")
            .bind(&row.id)
            .bind(&error)
            .bind(r.now)
            .execute(&mut **tx)
            .await?;
        let detail =
            serde_json::json!({ "rollout_id": row.rollout_id, "outcome": summary.outcome, "version": summary.version });
        let audit = super::NewAudit::new(&format!("agent:{}", r.agent_id), "job.late-report", "job", &row.id, detail);
        super::audit::record(tx, &audit, r.now).await?;
    }
    Ok(ReportOutcome { late: Some(late), ..ReportOutcome::default() })
}

/// Checks that `agent_id` holds the current lease of the job.
pub(super) fn check_lease(row: &JobRow, agent_id: &AgentId, fencing_token: u64) -> StoreResult<()> {
    if row.agent_id != agent_id.as_str() {
        return Err(StoreError::Forbidden(format!(
            "job {} belongs to another agent; an agent token reaches only its own jobs",
            row.id
        )));
    }
    if row.fencing_token as u64 != fencing_token || row.state == "lost" {
        return Err(StoreError::StaleLease(format!(
            "fencing token {fencing_token} is stale: job {} is {} with token {}; stop reporting for this dispatch",
            row.id, row.state, row.fencing_token
        )));
    }
    Ok(())
}

impl Store {
    /// Hands the agent its next ready job, if any. An idle call writes nothing.
    #[tracing::instrument(skip_all)]
    pub async fn claim_job(&self, agent_id: &AgentId, now: i64) -> StoreResult<Option<ClaimedJob>> {
        // A read first: an idle poll must not write (or even take SQLite's write lock).
        let (ready,): (i64,) =
            sqlx::query_as("select count(*) from jobs where agent_id = $1 and state in ('queued', 'dispatched')")
                .bind(agent_id.as_str())
                .fetch_one(&self.pool)
                .await?;
        if ready == 0 {
            return Ok(None);
        }
        self.claims.submit(ClaimRequest { agent_id: agent_id.clone(), now }).await
    }

    /// Records a batch of events from the agent holding the job's lease.
    #[tracing::instrument(skip_all)]
    pub async fn report_events(
        &self,
        job_id: &JobId,
        agent_id: &AgentId,
        fencing_token: u64,
        events: &[EngineEvent],
        now: i64,
    ) -> StoreResult<ReportOutcome> {
        let request = ReportRequest {
            job_id: job_id.clone(),
            agent_id: agent_id.clone(),
            fencing_token,
            events: events.to_vec(),
            now,
        };
        self.reports.submit(request).await
    }

    /// Records log lines from the agent holding the job's lease: (accepted, duplicates).
    #[tracing::instrument(skip_all)]
    pub async fn report_logs(
        &self,
        job_id: &JobId,
        agent_id: &AgentId,
        fencing_token: u64,
        lines: &[LogLine],
    ) -> StoreResult<(u32, u32)> {
        let mut tx = self.write_tx().await?;
        let row = lock_job(&mut tx, self.dialect, job_id).await?;
        check_lease(&row, agent_id, fencing_token)?;
        let (mut accepted, mut duplicates) = (0u32, 0u32);
        for l in lines {
            let n = sqlx::query(
                "insert into logs (job_id, seq, phase, line, at) values ($1, $2, $3, $4, $5) on conflict (job_id, seq) do nothing",
            )
            .bind(job_id.as_str())
            .bind(l.seq as i64)
            .bind(l.phase.as_str())
            .bind(&l.line)
            .bind(l.at.timestamp_millis())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                duplicates += 1;
            } else {
                accepted += 1;
            }
        }
        tx.commit().await?;
        Ok((accepted, duplicates))
    }

    /// Cancel request and answered decisions of a job.
    #[tracing::instrument(skip_all)]
    pub async fn job_messages(&self, job_id: &JobId) -> StoreResult<JobMessages> {
        let (cancel,): (i64,) =
            sqlx::query_as("select (case when cancel_requested then 1 else 0 end) from jobs where id = $1")
                .bind(job_id.as_str())
                .fetch_one(&self.pool)
                .await?;
        let rows: Vec<(i64, String)> =
            sqlx::query_as("select id, answer from decisions where job_id = $1 and answer is not null order by id")
                .bind(job_id.as_str())
                .fetch_all(&self.pool)
                .await?;
        let decisions = rows
            .into_iter()
            .map(|(id, a)| Ok(DecisionReply { id: id as u32, answer: a.parse().map_err(corrupt)? }))
            .collect::<StoreResult<Vec<_>>>()?;
        Ok(JobMessages { cancel: cancel != 0, decisions })
    }
}

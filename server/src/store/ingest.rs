//! Batched ingest of agent reports: a group-commit batch of reports written in a handful of
//! multi-row statements instead of a few statements per report.
//!
//! Why: group commit ([`super::group_commit`]) shares one commit among many reports, but
//! each report still ran its own statements (lock its job, insert its events, update its
//! job): about 3 round trips per report. On SQLite a statement is a function call; on
//! Postgres it is a network round trip, and a batch of 256 reports paid ~770 of them
//! before its one commit, which capped Postgres ingest well below SQLite's (issue 17).
//! Here a batch costs, whatever its size (up to the bind-parameter limits, then chunked):
//! one locking select of all its jobs (`where id in (…) order by id for update`), one
//! insert of all its events (`on conflict do nothing returning job_id, seq`, which tells
//! which are new), the fold of each report in memory ([`crate::domain::report::fold`]),
//! and one update of all its jobs from a `values` list.
//!
//! Postgres only (on SQLite, where a statement costs no round trip, the batched statements
//! measured slower than report by report; see `report_batch`). Only the common case goes
//! this way: a live job (dispatched or running) whose report asks
//! no decision and does not end the job failed or rolled back, and the first report of each
//! job in the batch. Everything else (refusals aside, which are answered here before any
//! write) goes through the per-report path, [`super::agent_protocol::report_tx`], which
//! keeps the exceptional rules in one place: late reports of a lost dispatch, reports after
//! the final event, decisions and their policy answers, the open-decision count, the
//! failure webhooks. A later report of a job in the same batch takes that path too, after
//! the batched writes, so it sees the job as the earlier one left it, as before.
//!
//! If a batched statement fails, which report broke it is unknown: the transaction is
//! rolled back and the batch written again one report at a time, so the failing report is
//! answered with its error alone (the contract of [`batch_tx!`]).

use super::agent_protocol::{after_reports, check_lease, late_outcome, report_tx};
use super::rows::JobRow;
use super::{
    Dialect, ReportOutcome, ReportRequest, StoreError, StoreResult, Tx, Writes, numbered, stored_id, to_json,
    values_placeholders,
};
use crate::domain::report::{Fold, Progress, fold, outcome_state, settled_state};
use crate::model::{InstalledRollup, JobState};
use fleetup_proto::EngineEvent;
use fleetup_proto::agent_api::decision_in;
use std::collections::{HashMap, HashSet};

/// Writes a group-commit batch of reports in one transaction (see the module's comment);
/// one result per request, in the requests' order.
pub(crate) async fn report_batch(
    writes: Writes,
    reqs: Vec<ReportRequest>,
) -> StoreResult<Vec<StoreResult<ReportOutcome>>> {
    let dialect = writes.dialect();
    // Row locks in one order in every transaction, so none waits on another in a cycle
    // (Postgres): first the jobs, in id order (byte order: the locking select sorts with
    // `collate "C"`); then the agents whose install ended, and the rollouts whose last job
    // ended, each in id order (`after_reports`).
    let mut order: Vec<usize> = (0..reqs.len()).collect();
    order.sort_by(|a, b| reqs[*a].job_id.as_str().cmp(reqs[*b].job_id.as_str()));
    let mut failed: Vec<Option<StoreError>> = Vec::new();
    failed.resize_with(reqs.len(), || None);
    // Postgres only: there each statement is a round trip, and batching measured +7-32 %
    // per-phase events/s (bench P2 small, 2026-12-07); on SQLite a statement is a function
    // call, and the batched path measured 45 % slower than report by report (3,264-4,072
    // against 5,758-7,623 events/s), so SQLite keeps the per-report path.
    let mut batched = dialect == Dialect::Postgres;
    'attempt: loop {
        let mut tx = writes.begin().await?;
        let mut results: Vec<Option<StoreResult<ReportOutcome>>> = Vec::new();
        results.resize_with(reqs.len(), || None);
        let mut written_batched = 0u64;
        if batched {
            let live: Vec<usize> = order.iter().copied().filter(|&i| failed[i].is_none()).collect();
            match write_batched(&mut tx, dialect, &reqs, &live).await {
                Ok(answered) => {
                    for (i, result) in answered {
                        written_batched += u64::from(result.is_ok());
                        results[i] = Some(result);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "batched report ingest failed; writing the batch one report at a time");
                    tx.rollback().await?;
                    batched = false;
                    continue 'attempt;
                }
            }
        }
        let mut written_alone = 0u64;
        for &i in &order {
            if failed[i].is_some() || results[i].is_some() {
                continue;
            }
            match report_tx(&mut tx, dialect, &reqs[i]).await {
                Err(e) if !e.is_refusal() => {
                    tx.rollback().await?;
                    failed[i] = Some(e);
                    continue 'attempt;
                }
                result => {
                    written_alone += u64::from(result.is_ok());
                    results[i] = Some(result);
                }
            }
        }
        after_reports(&mut tx, dialect, &results, &reqs).await?;
        tx.commit().await?;
        metrics::counter!("fleetup_reports_written_total", "path" => "batched").increment(written_batched);
        metrics::counter!("fleetup_reports_written_total", "path" => "per-report").increment(written_alone);
        break 'attempt Ok(results
            .into_iter()
            .zip(failed)
            .map(|(result, error)| match (error, result) {
                (Some(e), _) => Err(e),
                (None, Some(result)) => result,
                (None, None) => Err(StoreError::Batch("a report of the batch was not written (a bug)".into())),
            })
            .collect());
    }
}

/// What the batched path does with one report.
enum Route {
    /// Refused before any write.
    Refused(StoreError),
    /// Written by the per-report path.
    Alone,
    /// Written by the batched statements.
    Batched,
}

/// Routes a report on its job's locked row (`None`: no such job). `earlier`: an earlier
/// report of the same job in this batch was routed to be written.
fn route(row: Option<&JobRow>, r: &ReportRequest, earlier: bool) -> StoreResult<Route> {
    if earlier {
        // Written after the batched statements, on the job as the earlier report left it.
        return Ok(Route::Alone);
    }
    let Some(row) = row else {
        return Ok(Route::Refused(StoreError::NotFound(format!("job {} not found", r.job_id))));
    };
    if late_outcome(row, r).is_some() {
        return Ok(Route::Alone);
    }
    if let Err(e) = check_lease(row, &r.agent_id, r.fencing_token) {
        return Ok(Route::Refused(e));
    }
    let state = row.state()?;
    // A waiting job needs the open-decision count; an ended one, `refuse_after_end`.
    if state.is_terminal() || state == JobState::Waiting {
        return Ok(Route::Alone);
    }
    // Decisions (and their policy answers) and the failure webhooks are written per report.
    let exceptional = |e: &EngineEvent| {
        decision_in(e).is_some()
            || e.summary().is_some_and(|s| matches!(outcome_state(s.outcome), JobState::Failed | JobState::RolledBack))
    };
    if r.events.iter().any(exceptional) { Ok(Route::Alone) } else { Ok(Route::Batched) }
}

/// Locks the jobs of the reports at `live` (indexes into `reqs`), answers the refusals and
/// writes the reports of the common case; returns (index, result) for those, leaving the
/// rest to the per-report path. A refusal has written nothing; an error means the
/// transaction must be rolled back.
async fn write_batched(
    tx: &mut Tx,
    dialect: Dialect,
    reqs: &[ReportRequest],
    live: &[usize],
) -> StoreResult<Vec<(usize, StoreResult<ReportOutcome>)>> {
    let mut ids: Vec<&str> = live.iter().map(|&i| reqs[i].job_id.as_str()).collect();
    ids.dedup();
    let rows = lock_jobs(tx, dialect, &ids).await?;
    let mut answered = Vec::new();
    let mut batch: Vec<(usize, &JobRow)> = Vec::new();
    let mut routed: HashSet<&str> = HashSet::new();
    for &i in live {
        let r = &reqs[i];
        let row = rows.get(r.job_id.as_str());
        match route(row, r, routed.contains(r.job_id.as_str()))? {
            Route::Refused(e) => answered.push((i, Err(e))),
            Route::Alone => {
                routed.insert(r.job_id.as_str());
            }
            Route::Batched => {
                routed.insert(r.job_id.as_str());
                batch.push((i, row.expect("a routed report has its row")));
            }
        }
    }
    if batch.is_empty() {
        return Ok(answered);
    }
    let sorted: Vec<(usize, Vec<&EngineEvent>)> = batch.iter().map(|&(i, _)| (i, by_seq(&reqs[i].events))).collect();
    let all: Vec<(&str, &EngineEvent)> =
        sorted.iter().flat_map(|(i, evs)| evs.iter().map(|e| (reqs[*i].job_id.as_str(), *e))).collect();
    let mut new = insert_events(tx, dialect, &all).await?;
    let mut updates = Vec::with_capacity(batch.len());
    for ((i, row), (_, events)) in batch.iter().zip(sorted) {
        let r = &reqs[*i];
        let mut out = ReportOutcome::default();
        let fresh = split_fresh(events, new.remove(r.job_id.as_str()).unwrap_or_default(), &mut out);
        let folded = fold(progress_of(row)?, &fresh, r.now);
        // Routed here only when no event asks a decision and the job is not waiting: none is open.
        debug_assert!(folded.asked.is_empty());
        let state = settled_state(folded.outcome, false);
        updates.push(JobUpdate::after(row, &folded, state, r.now));
        conclude(&mut out, row, r, folded)?;
        answered.push((*i, Ok(out)));
    }
    update_jobs(tx, dialect, &updates).await?;
    Ok(answered)
}

/// Reads and locks the jobs `ids` (sorted, unique), in id order on Postgres; SQLite's
/// `BEGIN IMMEDIATE` already holds the write lock.
async fn lock_jobs(tx: &mut Tx, dialect: Dialect, ids: &[&str]) -> StoreResult<HashMap<String, JobRow>> {
    let lock = if dialect == Dialect::Postgres { " order by j.id collate \"C\" for update of j" } else { "" };
    let mut rows = HashMap::with_capacity(ids.len());
    for chunk in ids.chunks(dialect.max_binds()) {
        let sql = format!(concat!(job_select!(), " where j.id in ({}){}"), numbered(1, chunk.len()), lock);
        let mut select = sqlx::query_as::<_, JobRow>(sqlx::AssertSqlSafe(sql));
        for id in chunk {
            select = select.bind(*id);
        }
        rows.extend(select.fetch_all(&mut **tx).await?.into_iter().map(|row| (row.id.clone(), row)));
    }
    Ok(rows)
}

/// A report's events by sequence number (stable: of several events with one seq, the
/// first sent is the one stored).
pub(super) fn by_seq(events: &[EngineEvent]) -> Vec<&EngineEvent> {
    let mut sorted: Vec<&EngineEvent> = events.iter().collect();
    sorted.sort_by_key(|e| e.seq);
    sorted
}

/// Inserts `(job id, event)` rows, of one job or many, as many per statement as the bind
/// limit allows; returns the sequence numbers that were new, by job.
pub(super) async fn insert_events(
    tx: &mut Tx,
    dialect: Dialect,
    events: &[(&str, &EngineEvent)],
) -> StoreResult<HashMap<String, HashSet<u64>>> {
    const COLUMNS: usize = 7;
    let mut new: HashMap<String, HashSet<u64>> = HashMap::new();
    for chunk in events.chunks(dialect.max_binds() / COLUMNS) {
        // `fetch_all` on `returning`: SQLite must step the statement to its end.
        let sql = format!(
            "insert into events (job_id, seq, phase, status, message, data, at) values {} \
             on conflict (job_id, seq) do nothing returning job_id, seq",
            values_placeholders(chunk.len(), COLUMNS)
        );
        let mut insert = sqlx::query_as::<_, (String, i64)>(sqlx::AssertSqlSafe(sql));
        for (job_id, ev) in chunk {
            insert = insert
                .bind(*job_id)
                .bind(ev.seq as i64)
                .bind(ev.phase.as_str())
                .bind(ev.status.as_str())
                .bind(ev.message.as_str())
                .bind(to_json(&ev.data))
                .bind(ev.at.timestamp_millis());
        }
        for (job_id, seq) in insert.fetch_all(&mut **tx).await? {
            new.entry(job_id).or_default().insert(seq as u64);
        }
    }
    Ok(new)
}

/// The events of a report (sorted by seq) that were new, `new` being their sequence
/// numbers; counts the others in `out` as accepted or duplicates.
pub(super) fn split_fresh<'a>(
    sorted: Vec<&'a EngineEvent>,
    mut new: HashSet<u64>,
    out: &mut ReportOutcome,
) -> Vec<&'a EngineEvent> {
    let mut fresh = Vec::with_capacity(new.len());
    for ev in sorted {
        // The first of several events with one seq is the one stored.
        if new.remove(&ev.seq) {
            fresh.push(ev);
        } else {
            out.duplicates += 1;
        }
    }
    out.accepted = fresh.len() as u32;
    fresh
}

/// A job's install progress as stored.
pub(super) fn progress_of(row: &JobRow) -> StoreResult<Progress> {
    let job = row.to_job()?;
    Ok(Progress {
        phases: job.phases,
        current_phase: job.current_phase,
        phase_started_at: row.phase_started_at,
        warnings: job.warnings,
        outage_secs: job.outage_secs,
        error: job.error,
        restart_required: job.restart_required,
    })
}

/// Fills in what a written report changed beyond its event counts: the rollout of a job it
/// ended, the install's outcome, the rollup it installed.
pub(super) fn conclude(out: &mut ReportOutcome, row: &JobRow, r: &ReportRequest, folded: Fold) -> StoreResult<()> {
    out.finished = folded.outcome.is_some().then(|| stored_id(&row.rollout_id)).transpose()?;
    out.ended = folded.install_outcome;
    out.installed = folded.installed.map(|i| InstalledRollup {
        rollup: i.rollup,
        version: i.version,
        job_id: r.job_id.clone(),
        at: i.at,
    });
    Ok(())
}

/// A job's row after a report: its new state and progress, its lease extended (or ended
/// with the job), a cancel request kept only while the job goes on.
pub(super) struct JobUpdate<'a> {
    id: &'a str,
    state: JobState,
    progress: Progress,
    lease_expires_at: Option<i64>,
    finished_at: Option<i64>,
    keep_cancel: bool,
    now: i64,
}

impl<'a> JobUpdate<'a> {
    /// The update of `row` after `folded` settled it in `state` at `now`.
    pub(super) fn after(row: &'a JobRow, folded: &Fold, state: JobState, now: i64) -> Self {
        let ended = folded.outcome.is_some();
        JobUpdate {
            id: &row.id,
            state,
            progress: folded.progress.clone(),
            lease_expires_at: (!ended).then_some(now + row.lease_ms),
            finished_at: ended.then_some(now),
            keep_cancel: !ended,
            now,
        }
    }
}

/// The columns of [`update_jobs`]' `values` list, with the type each is cast to in its first
/// row (Postgres types a `values` column from its rows; the casts read the same on SQLite).
const UPDATE_COLUMNS: [(&str, &str); 13] = [
    ("id", "text"),
    ("state", "text"),
    ("current_phase", "text"),
    ("phase_started_at", "bigint"),
    ("phases", "text"),
    ("warnings", "text"),
    ("outage_ms", "bigint"),
    ("error", "text"),
    ("restart_required", "boolean"),
    ("lease_expires_at", "bigint"),
    ("finished_at", "bigint"),
    ("keep_cancel", "boolean"),
    ("updated_at", "bigint"),
];

/// Writes jobs' rows after their reports: one statement per bind-limit's worth of jobs,
/// `with v (…) as (values …) update jobs … from v` (SQLite has `update … from` since 3.33;
/// the bundled one is 3.51). Each job at most once: with two rows for one job, which one an
/// `update … from` applies is unspecified.
pub(super) async fn update_jobs(tx: &mut Tx, dialect: Dialect, updates: &[JobUpdate<'_>]) -> StoreResult<()> {
    let columns: Vec<&str> = UPDATE_COLUMNS.iter().map(|(c, _)| *c).collect();
    let set: Vec<String> = columns[1..]
        .iter()
        .map(|c| match *c {
            "keep_cancel" => "cancel_requested = (jobs.cancel_requested and v.keep_cancel)".to_owned(),
            c => format!("{c} = v.{c}"),
        })
        .collect();
    const N: usize = UPDATE_COLUMNS.len();
    let tuple = |r: usize| {
        let cols: Vec<String> = UPDATE_COLUMNS
            .iter()
            .enumerate()
            .map(
                |(c, (_, ty))| if r == 0 { format!("cast(${} as {ty})", c + 1) } else { format!("${}", r * N + c + 1) },
            )
            .collect();
        format!("({})", cols.join(", "))
    };
    for chunk in updates.chunks(dialect.max_binds() / N) {
        let rows: Vec<String> = (0..chunk.len()).map(tuple).collect();
        let sql = format!(
            "with v ({}) as (values {}) update jobs set {} from v where jobs.id = v.id",
            columns.join(", "),
            rows.join(", "),
            set.join(", ")
        );
        let mut update = sqlx::query(sqlx::AssertSqlSafe(sql));
        for u in chunk {
            let p = &u.progress;
            update = update
                .bind(u.id)
                .bind(u.state.as_str())
                .bind(p.current_phase.map(fleetup_proto::PhaseId::as_str))
                .bind(p.phase_started_at)
                .bind(to_json(&p.phases))
                .bind(to_json(&p.warnings))
                .bind(p.outage_secs.map(|s| (s * 1000.0) as i64))
                .bind(p.error.as_deref())
                .bind(p.restart_required)
                .bind(u.lease_expires_at)
                .bind(u.finished_at)
                .bind(u.keep_cancel)
                .bind(u.now);
        }
        let done = update.execute(&mut **tx).await?.rows_affected();
        if done != chunk.len() as u64 {
            return Err(StoreError::Corrupt(format!("{done} of {} jobs updated after their reports", chunk.len())));
        }
    }
    Ok(())
}

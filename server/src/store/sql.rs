//! The queries both backends share, written once. `store_impl!` expands into a backend's
//! `impl Store`; the backend supplies `begin_write(pool)` (a transaction that may write:
//! SQLite `BEGIN IMMEDIATE`, so a read-then-write never upgrades a lock and deadlocks),
//! `scheduler_tx()` (Postgres: also takes the advisory lock), `WRITERS` (writer tasks per
//! group commit) and the wake-up plumbing. `$fu_job` / `$fu` are the row-locking clauses
//! (`for update …` on Postgres, empty on SQLite, whose write transaction already excludes
//! other writers); `$skip_locked` makes concurrent claims pass over each other's rows.
//!
//! Claims and event reports are written by group commit ([`super::group_commit`]): each
//! backend's store starts one queue per kind, and `claim_batch` / `report_batch` write a
//! batch of requests in one transaction (see `batch_tx!`).

use crate::model::{
    Agent, AuditEntry, Decision, EnrollmentToken, InstalledRollup, Job, JobState, JobSummary, Package, PhaseState,
    Rollout, RolloutSpec, RolloutState, Wave, to_time,
};
use crate::store::{JobKey, JobPage, StoreError, StoreResult};
use serde::Serialize;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;

pub(crate) fn to_json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

pub(crate) fn from_json<T: DeserializeOwned>(s: &str, what: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

pub(crate) fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

macro_rules! job_select {
    () => {
        "select j.id, j.rollout_id, j.agent_id, a.hostname, j.wave, j.position, j.state, j.fencing_token, j.lease_ms, \
         j.lease_expires_at, j.current_phase, j.phase_started_at, j.phases, j.warnings, j.outage_ms, j.error, \
         j.restart_required, j.cancel_requested, j.dispatched_at, j.finished_at \
         from jobs j join agents a on a.id = j.agent_id"
    };
}

/// The compact job view. Each backend reads the current phase's status and the number of
/// warnings out of the JSON columns itself, so the phase map and the warning texts never
/// leave the database.
macro_rules! job_summary_select {
    (sqlite) => {
        "select j.id, j.agent_id, a.hostname, j.wave, j.position, j.state, j.current_phase, \
         json_extract(j.phases, '$.\"' || j.current_phase || '\".status') as phase_status, j.outage_ms, \
         json_array_length(j.warnings) as warning_count \
         from jobs j join agents a on a.id = j.agent_id"
    };
    (postgres) => {
        "select j.id, j.agent_id, a.hostname, j.wave, j.position, j.state, j.current_phase, \
         (j.phases::json -> j.current_phase ->> 'status') as phase_status, j.outage_ms, \
         json_array_length(j.warnings::json)::bigint as warning_count \
         from jobs j join agents a on a.id = j.agent_id"
    };
}

/// The conditions and order of a rollout's job listing: `$1` rollout, `$2` state (`''`:
/// any), `$3` wave (0: any), `($4, $5)` the (wave, position) to start after. With a state,
/// the condition is a plain equality, so the `(rollout_id, state, wave, position)` index
/// serves it; without, the state column is not mentioned at all, so the
/// `(rollout_id, wave, position)` index serves it (and covers the key lookup below).
macro_rules! jobs_where {
    (any_state) => {
        " where j.rollout_id = $1 and $2 = '' and ($3 = 0 or j.wave = $3) \
         and (j.wave, j.position) > ($4, $5) order by j.wave, j.position"
    };
    (one_state) => {
        " where j.rollout_id = $1 and j.state = $2 and ($3 = 0 or j.wave = $3) \
         and (j.wave, j.position) > ($4, $5) order by j.wave, j.position"
    };
}

/// The text of a job page query (`$6` limit): full or compact view, for this backend, with or
/// without a state filter.
pub(crate) fn jobs_page_sql(backend: &str, summary: bool, one_state: bool) -> &'static str {
    match (summary, backend == "postgres", one_state) {
        (false, _, false) => concat!(job_select!(), jobs_where!(any_state), " limit $6"),
        (false, _, true) => concat!(job_select!(), jobs_where!(one_state), " limit $6"),
        (true, false, false) => concat!(job_summary_select!(sqlite), jobs_where!(any_state), " limit $6"),
        (true, false, true) => concat!(job_summary_select!(sqlite), jobs_where!(one_state), " limit $6"),
        (true, true, false) => concat!(job_summary_select!(postgres), jobs_where!(any_state), " limit $6"),
        (true, true, true) => concat!(job_summary_select!(postgres), jobs_where!(one_state), " limit $6"),
    }
}

/// The (wave, position) of the job `$6` rows into a listing: turns the dashboard's numbered
/// pages into keyset pages. It reads the index alone, however deep the page.
pub(crate) fn jobs_key_at_sql(one_state: bool) -> &'static str {
    if one_state {
        concat!("select j.wave, j.position from jobs j", jobs_where!(one_state), " limit 1 offset $6")
    } else {
        concat!("select j.wave, j.position from jobs j", jobs_where!(any_state), " limit 1 offset $6")
    }
}

/// Staging a rollout of at least this many jobs refreshes the jobs table's planner
/// statistics on Postgres (`analyze jobs`).
pub(crate) const ANALYZE_AFTER_JOBS: usize = 1000;

/// Cuts a page fetched with one row more than `limit`: the extra row only says there is a
/// next page, which starts after the last row kept.
pub(crate) fn cut_page<R, T>(
    mut rows: Vec<R>,
    limit: u64,
    key: impl Fn(&R) -> JobKey,
    convert: impl Fn(&R) -> StoreResult<T>,
) -> StoreResult<JobPage<T>> {
    let more = rows.len() as u64 > limit;
    rows.truncate(limit as usize);
    let next = if more { rows.last().map(&key) } else { None };
    Ok(JobPage { items: rows.iter().map(convert).collect::<StoreResult<_>>()?, next })
}

macro_rules! rollout_select {
    () => {
        "select r.id, r.name, r.package_id, r.state, r.state_reason, r.spec, r.current_wave, r.approved_wave, \
         r.failures_accepted, r.gate_override_wave, r.retry_of, r.created_by, r.created_at, r.started_at, r.finished_at \
         from rollouts r"
    };
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct JobRow {
    pub id: String,
    pub rollout_id: String,
    pub agent_id: String,
    pub hostname: String,
    pub wave: i64,
    pub position: i64,
    pub state: String,
    pub fencing_token: i64,
    pub lease_ms: i64,
    pub lease_expires_at: Option<i64>,
    pub current_phase: Option<String>,
    pub phase_started_at: Option<i64>,
    pub phases: String,
    pub warnings: String,
    pub outage_ms: Option<i64>,
    pub error: Option<String>,
    pub restart_required: bool,
    pub cancel_requested: bool,
    pub dispatched_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl JobRow {
    pub(crate) fn state(&self) -> StoreResult<JobState> {
        JobState::parse(&self.state).ok_or_else(|| StoreError::Corrupt(format!("job state '{}'", self.state)))
    }

    pub(crate) fn to_job(&self) -> StoreResult<Job> {
        Ok(Job {
            id: self.id.clone(),
            rollout_id: self.rollout_id.clone(),
            agent_id: self.agent_id.clone(),
            hostname: self.hostname.clone(),
            wave: self.wave as u32,
            state: self.state()?,
            current_phase: self.current_phase.as_deref().map(str::parse).transpose().map_err(corrupt)?,
            phases: from_json(&self.phases, "job phases")?,
            warnings: from_json(&self.warnings, "job warnings")?,
            outage_secs: self.outage_ms.map(|ms| ms as f64 / 1000.0),
            error: self.error.clone(),
            restart_required: self.restart_required,
            cancel_requested: self.cancel_requested,
            fencing_token: self.fencing_token as u64,
            lease_expires_at: self.lease_expires_at.map(to_time),
            dispatched_at: self.dispatched_at.map(to_time),
            finished_at: self.finished_at.map(to_time),
        })
    }
}

impl JobRow {
    pub(crate) fn key(&self) -> JobKey {
        JobKey { wave: self.wave as u32, position: self.position as u64 }
    }
}

/// A row of [`job_summary_select!`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct JobSummaryRow {
    pub id: String,
    pub agent_id: String,
    pub hostname: String,
    pub wave: i64,
    pub position: i64,
    pub state: String,
    pub current_phase: Option<String>,
    pub phase_status: Option<String>,
    pub outage_ms: Option<i64>,
    pub warning_count: i64,
}

impl JobSummaryRow {
    pub(crate) fn key(&self) -> JobKey {
        JobKey { wave: self.wave as u32, position: self.position as u64 }
    }

    pub(crate) fn to_summary(&self) -> StoreResult<JobSummary> {
        Ok(JobSummary {
            id: self.id.clone(),
            agent_id: self.agent_id.clone(),
            hostname: self.hostname.clone(),
            wave: self.wave as u32,
            state: JobState::parse(&self.state)
                .ok_or_else(|| StoreError::Corrupt(format!("job state '{}'", self.state)))?,
            current_phase: self.current_phase.as_deref().map(str::parse).transpose().map_err(corrupt)?,
            phase_status: self.phase_status.as_deref().map(str::parse).transpose().map_err(corrupt)?,
            outage_secs: self.outage_ms.map(|ms| ms as f64 / 1000.0),
            warning_count: self.warning_count as u64,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RolloutRow {
    pub id: String,
    pub name: String,
    pub package_id: String,
    pub state: String,
    pub state_reason: Option<String>,
    pub spec: String,
    pub current_wave: i64,
    pub approved_wave: i64,
    pub failures_accepted: i64,
    pub gate_override_wave: i64,
    pub retry_of: Option<String>,
    pub created_by: String,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

impl RolloutRow {
    pub(crate) fn state(&self) -> StoreResult<RolloutState> {
        RolloutState::parse(&self.state).ok_or_else(|| StoreError::Corrupt(format!("rollout state '{}'", self.state)))
    }

    pub(crate) fn spec(&self) -> StoreResult<RolloutSpec> {
        from_json(&self.spec, "rollout spec")
    }

    /// Assembles the API view from the row, its waves and (wave, state, count) rows.
    pub(crate) fn to_rollout(
        &self,
        waves: &[(i64, i64, String)],
        counts: &[(i64, String, i64)],
    ) -> StoreResult<Rollout> {
        let mut total: BTreeMap<JobState, u64> = BTreeMap::new();
        let mut per_wave: BTreeMap<i64, BTreeMap<JobState, u64>> = BTreeMap::new();
        for (wave, state, n) in counts {
            let s = JobState::parse(state).ok_or_else(|| StoreError::Corrupt(format!("job state '{state}'")))?;
            *total.entry(s).or_default() += *n as u64;
            *per_wave.entry(*wave).or_default().entry(s).or_default() += *n as u64;
        }
        Ok(Rollout {
            id: self.id.clone(),
            name: self.name.clone(),
            package_id: self.package_id.clone(),
            state: self.state()?,
            state_reason: self.state_reason.clone(),
            current_wave: self.current_wave as u32,
            spec: self.spec()?,
            waves: waves
                .iter()
                .map(|(number, size, state)| Wave {
                    number: *number as u32,
                    size: *size as u64,
                    state: state.clone(),
                    counts: per_wave.remove(number).unwrap_or_default(),
                })
                .collect(),
            counts: total,
            retry_of: self.retry_of.clone(),
            created_by: self.created_by.clone(),
            created_at: to_time(self.created_at),
            started_at: self.started_at.map(to_time),
            finished_at: self.finished_at.map(to_time),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AgentRow {
    pub id: String,
    pub hostname: String,
    pub labels: String,
    pub facts: String,
    pub version: String,
    pub installed: String,
    pub enrolled_at: i64,
    pub last_seen: i64,
    pub revoked_at: Option<i64>,
}

impl AgentRow {
    pub(crate) fn to_agent(&self) -> StoreResult<Agent> {
        Ok(Agent {
            id: self.id.clone(),
            hostname: self.hostname.clone(),
            labels: from_json(&self.labels, "agent labels")?,
            facts: from_json(&self.facts, "agent facts")?,
            version: self.version.clone(),
            installed: from_json::<Vec<InstalledRollup>>(&self.installed, "agent installed")?,
            enrolled_at: to_time(self.enrolled_at),
            last_seen: to_time(self.last_seen),
            online: false,
            revoked: self.revoked_at.is_some(),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct PackageRow {
    pub id: String,
    pub name: String,
    pub version: String,
    pub sha256: String,
    pub size: i64,
    pub key_id: String,
    pub manifest: String,
    pub uploaded_by: String,
    pub uploaded_at: i64,
}

impl PackageRow {
    pub(crate) fn to_package(&self) -> StoreResult<Package> {
        Ok(Package {
            id: self.id.clone(),
            name: self.name.clone(),
            version: self.version.clone(),
            sha256: self.sha256.clone(),
            size: self.size as u64,
            key_id: self.key_id.clone(),
            manifest: from_json(&self.manifest, "package manifest")?,
            uploaded_by: self.uploaded_by.clone(),
            uploaded_at: to_time(self.uploaded_at),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EnrollmentRow {
    pub id: String,
    pub name: String,
    pub labels: String,
    pub expires_at: Option<i64>,
    pub max_uses: Option<i64>,
    pub uses: i64,
    pub revoked_at: Option<i64>,
}

impl EnrollmentRow {
    pub(crate) fn to_token(&self) -> StoreResult<EnrollmentToken> {
        Ok(EnrollmentToken {
            id: self.id.clone(),
            name: self.name.clone(),
            labels: from_json(&self.labels, "token labels")?,
            expires_at: self.expires_at.map(to_time),
            max_uses: self.max_uses.map(|n| n as u64),
            uses: self.uses as u64,
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DecisionRow {
    pub id: i64,
    pub phase: String,
    pub kind: String,
    pub request: String,
    pub answer: Option<String>,
    pub answered_by: Option<String>,
    pub asked_at: i64,
    pub answered_at: Option<i64>,
}

impl DecisionRow {
    pub(crate) fn to_decision(&self) -> StoreResult<Decision> {
        Ok(Decision {
            id: self.id as u32,
            phase: self.phase.parse().map_err(corrupt)?,
            kind: self.kind.clone(),
            request: from_json(&self.request, "decision request")?,
            answer: self.answer.clone(),
            answered_by: self.answered_by.clone(),
            asked_at: to_time(self.asked_at),
            answered_at: self.answered_at.map(to_time),
        })
    }
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct AuditRow {
    pub id: String,
    pub at: i64,
    pub actor: String,
    pub action: String,
    pub object_type: String,
    pub object_id: String,
    pub detail: String,
}

impl AuditRow {
    pub(crate) fn to_entry(&self) -> StoreResult<AuditEntry> {
        Ok(AuditEntry {
            id: self.id.clone(),
            at: to_time(self.at),
            actor: self.actor.clone(),
            action: self.action.clone(),
            object_type: self.object_type.clone(),
            object_id: self.object_id.clone(),
            detail: from_json(&self.detail, "audit detail")?,
        })
    }
}

/// The phase map of a job, updated by one event (out-of-order safe: a phase keeps the status
/// of its highest-numbered event).
pub(crate) fn apply_phase(phases: &mut BTreeMap<fleetup_proto::PhaseId, PhaseState>, ev: &fleetup_proto::EngineEvent) {
    let newer = phases.get(&ev.phase).is_none_or(|p| p.seq < ev.seq);
    if newer {
        phases.insert(ev.phase, PhaseState { status: ev.status, seq: ev.seq, at: ev.at });
    }
}

/// The job state an install outcome ends in.
pub(crate) fn outcome_state(outcome: fleetup_proto::InstallOutcome) -> JobState {
    use fleetup_proto::InstallOutcome as O;
    match outcome {
        O::Succeeded => JobState::Succeeded,
        O::Failed | O::RecoveryRequired => JobState::Failed,
        O::RolledBack => JobState::RolledBack,
        O::Cancelled => JobState::Cancelled,
    }
}

/// Most requests a group-commit transaction holds. A batch of claims or reports costs a few
/// statements per request plus one commit, so larger batches add latency without adding
/// much throughput once the commit is amortised.
pub(crate) const MAX_BATCH: usize = 256;

/// The body of a group-commit batch function: the requests written in one transaction
/// begun with `$begin`, in the order of `$key` (concurrent batches on Postgres lock rows in
/// the same order, so they cannot deadlock each other), then `$then` (optional: writes that
/// follow from all the results, before the commit), then one commit. Evaluates to the
/// results in the requests' order.
///
/// A request refused by validation (stale token, unknown job: [`StoreError::is_refusal`])
/// has written nothing, by the contract of the request functions, and is answered with its
/// refusal while the others go on. Any other error may have left part of the request written
/// (and on Postgres aborts the transaction): the transaction is rolled back, that request
/// is answered with its error, and the others are written again in a new transaction. No
/// savepoints: they cost two round trips per request, and on Postgres more than 64 in one
/// transaction overflow the subtransaction cache and slow every session.
macro_rules! batch_tx {
    ($begin:expr, $reqs:ident, key = |$k:ident| $key:expr, |$tx:ident, $r:ident| $body:expr) => {
        batch_tx!(
            $begin,
            $reqs,
            key = |$k| $key,
            |$tx, $r| $body,
            then = |_results| Ok::<(), $crate::store::StoreError>(())
        )
    };
    ($begin:expr, $reqs:ident, key = |$k:ident| $key:expr, |$tx:ident, $r:ident| $body:expr, then = |$results:ident| $then:expr) => {{
        let mut order: Vec<usize> = (0..$reqs.len()).collect();
        order.sort_by_key(|i| {
            let $k = &$reqs[*i];
            $key
        });
        let mut failed: Vec<Option<$crate::store::StoreError>> = Vec::new();
        failed.resize_with($reqs.len(), || None);
        'attempt: loop {
            let mut $tx = $begin.await?;
            let mut results = Vec::new();
            results.resize_with($reqs.len(), || None);
            for &i in &order {
                if failed[i].is_some() {
                    continue;
                }
                let $r = &$reqs[i];
                match $body {
                    Err(e) if !e.is_refusal() => {
                        $tx.rollback().await?;
                        failed[i] = Some(e);
                        continue 'attempt;
                    }
                    result => results[i] = Some(result),
                }
            }
            {
                let $results = &results;
                $then?;
            }
            $tx.commit().await?;
            break 'attempt Ok(results
                .into_iter()
                .zip(failed)
                .filter_map(|(result, error)| error.map(Err).or(result))
                .collect());
        }
    }};
}

/// Expands into `impl Store for $store` (see the module doc).
macro_rules! store_impl {
    ($store:ty, $db:ty, fu_job = $fu_job:literal, fu = $fu:literal, skip_locked = $skip_locked:literal) => {
        impl $store {
            /// The store over `pool`, with the group commits of claims and reports started.
            fn with_writers(pool: sqlx::Pool<$db>) -> Self {
                use $crate::store::group_commit::GroupCommit;
                use $crate::store::sql::MAX_BATCH;
                let (claim_pool, report_pool) = (pool.clone(), pool.clone());
                Self {
                    claims: GroupCommit::spawn("claim", MAX_BATCH, Self::WRITERS, move |reqs| Self::claim_batch(claim_pool.clone(), reqs)),
                    reports: GroupCommit::spawn("report", MAX_BATCH, Self::WRITERS, move |reqs| Self::report_batch(report_pool.clone(), reqs)),
                    pool,
                }
            }

            async fn write_tx(&self) -> Result<sqlx::Transaction<'static, $db>, sqlx::Error> {
                Self::begin_write(&self.pool).await
            }

            async fn package_on(conn: &mut <$db as sqlx::Database>::Connection, id: &str) -> $crate::store::StoreResult<$crate::model::Package> {
                let row: Option<$crate::store::sql::PackageRow> = sqlx::query_as("select id, name, version, sha256, size, key_id, manifest, uploaded_by, uploaded_at from packages where id = $1")
                    .bind(id)
                    .fetch_optional(&mut *conn)
                    .await?;
                row.ok_or_else(|| $crate::store::StoreError::NotFound(format!("package {id} not found")))?.to_package()
            }

            /// Claims: each request in the batch claims its agent's next job.
            async fn claim_batch(pool: sqlx::Pool<$db>, reqs: Vec<$crate::store::ClaimRequest>) -> $crate::store::StoreResult<Vec<$crate::store::StoreResult<Option<$crate::store::ClaimedJob>>>> {
                // A wave's claims share one rollout: read its plan and package once per batch.
                let mut plans = std::collections::HashMap::new();
                batch_tx!(Self::begin_write(&pool), reqs, key = |r| r.agent_id.clone(), |tx, r| Self::claim_tx(&mut tx, &mut plans, &r.agent_id, r.now).await)
            }

            /// Reports: each request in the batch records its events.
            async fn report_batch(pool: sqlx::Pool<$db>, reqs: Vec<$crate::store::ReportRequest>) -> $crate::store::StoreResult<Vec<$crate::store::StoreResult<$crate::store::ReportOutcome>>> {
                // Row locks in one order in every transaction, so none waits on another in a
                // cycle (Postgres): first the jobs, in id order; then the agents whose install
                // ended, in id order, as `touch_agents` does.
                batch_tx!(Self::begin_write(&pool), reqs, key = |r| r.job_id.clone(), |tx, r| Self::report_tx(&mut tx, r).await, then = |results| {
                    let mut installed: Vec<(&str, &$crate::model::InstalledRollup)> = results
                        .iter()
                        .zip(&reqs)
                        .filter_map(|(result, r)| match result {
                            Some(Ok(out)) => out.installed.as_ref().map(|i| (r.agent_id.as_str(), i)),
                            _ => None,
                        })
                        .collect();
                    installed.sort_by_key(|(agent, _)| *agent);
                    Self::add_installed(&mut tx, &installed).await
                })
            }

            /// Dispatches the agent's next ready job, or hands over again the one dispatched
            /// to it that it never started.
            async fn claim_tx(
                tx: &mut sqlx::Transaction<'static, $db>,
                plans: &mut std::collections::HashMap<String, ($crate::model::RolloutSpec, $crate::model::Package)>,
                agent_id: &str,
                now: i64,
            ) -> $crate::store::StoreResult<Option<$crate::store::ClaimedJob>> {
                // `fetch_all`, not `fetch_optional`, on `returning`: SQLite must step the
                // statement to its end (see docs/decisions.md, SQLite durability). The claim
                // returns what the assignment needs, so a claim is one statement (a wave's
                // claims share the plan and package read below once per batch).
                let claimed: Vec<(String, String, i64, i64)> = sqlx::query_as(concat!(
                    "update jobs set state = 'dispatched', fencing_token = fencing_token + 1, lease_expires_at = $2 + lease_ms, \
                     dispatched_at = $2, updated_at = $2 \
                     where id = (select j.id from jobs j join rollouts r on r.id = j.rollout_id \
                         where j.agent_id = $1 and j.state = 'queued' and r.state = 'running' \
                         and not exists (select 1 from jobs b where b.agent_id = $1 and b.state in ('dispatched', 'running', 'waiting')) \
                         order by j.created_at, j.position limit 1",
                    $skip_locked,
                    ") and state = 'queued' returning id, rollout_id, fencing_token, lease_ms"
                ))
                .bind(agent_id)
                .bind(now)
                .fetch_all(&mut **tx)
                .await?;
                let (job_id, rollout_id, fencing_token, lease_ms) = match claimed.into_iter().next() {
                    Some(claim) => claim,
                    // A job dispatched to this agent that it never started means the answer to
                    // the poll that claimed it was lost (a handler error after the claim, a
                    // dropped connection). An agent polls only while it holds no job, so the
                    // same dispatch, fencing token and all, is handed over again instead of
                    // stranding the job until its lease runs out (docs/benchmarks.md, defect 1).
                    None => {
                        let undelivered: Option<(String, String, i64, i64)> = sqlx::query_as("select id, rollout_id, fencing_token, lease_ms from jobs where agent_id = $1 and state = 'dispatched' order by dispatched_at limit 1")
                            .bind(agent_id)
                            .fetch_optional(&mut **tx)
                            .await?;
                        match undelivered {
                            Some(claim) => claim,
                            None => return Ok(None),
                        }
                    }
                };
                if !plans.contains_key(&rollout_id) {
                    // The claim has written: a missing package now is corruption, not a refusal.
                    let (spec, package_id): (String, String) = sqlx::query_as("select spec, package_id from rollouts where id = $1").bind(&rollout_id).fetch_one(&mut **tx).await?;
                    let package = Self::package_on(&mut **tx, &package_id).await.map_err($crate::store::sql::corrupt)?;
                    plans.insert(rollout_id.clone(), ($crate::store::sql::from_json(&spec, "rollout spec")?, package));
                }
                let (spec, package) = plans[&rollout_id].clone();
                Ok(Some($crate::store::ClaimedJob { job_id, rollout_id, fencing_token: fencing_token as u64, spec, package, lease_ms }))
            }
            async fn audit_tx(tx: &mut sqlx::Transaction<'static, $db>, a: &$crate::store::NewAudit, now: i64) -> $crate::store::StoreResult<()> {
                sqlx::query("insert into audit_log (id, at, actor, action, object_type, object_id, detail) values ($1, $2, $3, $4, $5, $6, $7)")
                    .bind($crate::store::sql::new_id())
                    .bind(now)
                    .bind(&a.actor)
                    .bind(&a.action)
                    .bind(&a.object_type)
                    .bind(&a.object_id)
                    .bind($crate::store::sql::to_json(&a.detail))
                    .execute(&mut **tx)
                    .await?;
                Ok(())
            }

            async fn job_tx(tx: &mut sqlx::Transaction<'static, $db>, id: &str) -> $crate::store::StoreResult<$crate::store::sql::JobRow> {
                sqlx::query_as::<_, $crate::store::sql::JobRow>(concat!(job_select!(), " where j.id = $1", $fu_job))
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or_else(|| $crate::store::StoreError::NotFound(format!("job {id} not found")))
            }

            async fn rollout_row_tx(tx: &mut sqlx::Transaction<'static, $db>, id: &str) -> $crate::store::StoreResult<$crate::store::sql::RolloutRow> {
                sqlx::query_as::<_, $crate::store::sql::RolloutRow>(concat!(rollout_select!(), " where r.id = $1", $fu))
                    .bind(id)
                    .fetch_optional(&mut **tx)
                    .await?
                    .ok_or_else(|| $crate::store::StoreError::NotFound(format!("rollout {id} not found")))
            }

            async fn rollout_view(&self, row: &$crate::store::sql::RolloutRow) -> $crate::store::StoreResult<$crate::model::Rollout> {
                let waves: Vec<(i64, i64, String)> = sqlx::query_as("select number, size, state from waves where rollout_id = $1 order by number")
                    .bind(&row.id)
                    .fetch_all(&self.pool)
                    .await?;
                let counts: Vec<(i64, String, i64)> = sqlx::query_as("select wave, state, count(*) from jobs where rollout_id = $1 group by wave, state")
                    .bind(&row.id)
                    .fetch_all(&self.pool)
                    .await?;
                row.to_rollout(&waves, &counts)
            }

            /// One page of a rollout's jobs (full or compact rows), one row more than the
            /// filter's limit (see `cut_page`); `NotFound` when the rollout does not exist.
            async fn jobs_page<R>(&self, rollout_id: &str, f: &$crate::store::JobFilter, summary: bool) -> $crate::store::StoreResult<Vec<R>>
            where
                R: for<'r> sqlx::FromRow<'r, <$db as sqlx::Database>::Row> + Send + Unpin,
            {
                let (n,): (i64,) = sqlx::query_as("select count(*) from rollouts where id = $1").bind(rollout_id).fetch_one(&self.pool).await?;
                if n == 0 {
                    return Err($crate::store::StoreError::NotFound(format!("rollout {rollout_id} not found")));
                }
                let state = f.state.clone().unwrap_or_default();
                let wave = i64::from(f.wave.unwrap_or(0));
                let mut after = f.after.map_or((0, -1), |k| (i64::from(k.wave), k.position as i64));
                if f.offset > 0 {
                    // Skip by key: the last skipped job's key, then a keyset page after it.
                    let key: Option<(i64, i64)> = sqlx::query_as($crate::store::sql::jobs_key_at_sql(f.state.is_some()))
                        .bind(rollout_id)
                        .bind(&state)
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
                let sql = $crate::store::sql::jobs_page_sql(Self::BACKEND, summary, f.state.is_some());
                Ok(sqlx::query_as::<_, R>(sql)
                    .bind(rollout_id)
                    .bind(&state)
                    .bind(wave)
                    .bind(after.0)
                    .bind(after.1)
                    .bind(f.limit.saturating_add(1).min(i64::MAX as u64) as i64)
                    .fetch_all(&self.pool)
                    .await?)
            }

            /// Cancels a rollout's unstarted jobs and asks its jobs in flight to cancel;
            /// returns the agents to wake.
            async fn cancel_rollout_jobs(tx: &mut sqlx::Transaction<'static, $db>, id: &str, now: i64) -> $crate::store::StoreResult<Vec<String>> {
                sqlx::query("update jobs set state = 'cancelled', finished_at = $2, updated_at = $2 where rollout_id = $1 and state in ('pending', 'queued')")
                    .bind(id)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                let agents: Vec<(String,)> = sqlx::query_as("select agent_id from jobs where rollout_id = $1 and state in ('dispatched', 'running', 'waiting')")
                    .bind(id)
                    .fetch_all(&mut **tx)
                    .await?;
                sqlx::query("update jobs set cancel_requested = true, updated_at = $2 where rollout_id = $1 and state in ('dispatched', 'running', 'waiting')")
                    .bind(id)
                    .bind(now)
                    .execute(&mut **tx)
                    .await?;
                Ok(agents.into_iter().map(|(a,)| a).collect())
            }

            /// Records one report's events. Refusals (unknown job, another agent's job, a
            /// stale fencing token) come before any write, as `batch_tx!` requires.
            async fn report_tx(tx: &mut sqlx::Transaction<'static, $db>, r: &$crate::store::ReportRequest) -> $crate::store::StoreResult<$crate::store::ReportOutcome> {
                use $crate::model::JobState;
                let (job_id, agent_id, fencing_token, events, now) = (r.job_id.as_str(), r.agent_id.as_str(), r.fencing_token, r.events.as_slice(), r.now);
                let row = Self::job_tx(tx, job_id).await?;
                Self::check_lease(&row, agent_id, fencing_token)?;
                let was = row.state()?;
                let mut job = row.to_job()?;
                let mut phase_started_at = row.phase_started_at;
                // Read only when needed: most reports carry no decision (statements cost a
                // round trip each inside the group-commit transaction).
                let mut spec: Option<$crate::model::RolloutSpec> = None;
                let mut asked = false;
                let mut sorted: Vec<&fleetup_proto::EngineEvent> = events.iter().collect();
                sorted.sort_by_key(|e| e.seq);
                let mut out = $crate::store::ReportOutcome::default();
                let mut max_seq = job.phases.values().map(|p| p.seq).max().unwrap_or(0);
                let mut final_state = None;
                let mut installed = None;
                // One statement per 500 events (a round trip each inside the shared
                // transaction); `returning` tells which were new.
                let mut new_seqs = std::collections::BTreeSet::new();
                for chunk in sorted.chunks(500) {
                    let mut insert = sqlx::QueryBuilder::<$db>::new("insert into events (job_id, seq, phase, status, message, data, at) ");
                    insert.push_values(chunk, |mut row, ev| {
                        row.push_bind(job_id)
                            .push_bind(ev.seq as i64)
                            .push_bind(ev.phase.as_str())
                            .push_bind(ev.status.as_str())
                            .push_bind(ev.message.as_str())
                            .push_bind($crate::store::sql::to_json(&ev.data))
                            .push_bind(ev.at.timestamp_millis());
                    });
                    insert.push(" on conflict (job_id, seq) do nothing returning seq");
                    let rows: Vec<(i64,)> = insert.build_query_as().fetch_all(&mut **tx).await?;
                    new_seqs.extend(rows.into_iter().map(|(seq,)| seq as u64));
                }
                for ev in sorted {
                    // The first of several events with one seq is the one stored.
                    if !new_seqs.remove(&ev.seq) {
                        out.duplicates += 1;
                        continue;
                    }
                    out.accepted += 1;
                    if was.is_terminal() {
                        continue;
                    }
                    $crate::store::sql::apply_phase(&mut job.phases, ev);
                    if ev.seq > max_seq {
                        max_seq = ev.seq;
                        if job.current_phase != Some(ev.phase) {
                            phase_started_at = Some(now);
                        }
                        job.current_phase = Some(ev.phase);
                    }
                    if ev.status == fleetup_proto::PhaseStatus::Warning {
                        job.warnings.push(serde_json::json!({ "seq": ev.seq, "phase": ev.phase, "message": ev.message, "data": ev.data, "at": ev.at }));
                    }
                    if let Some(req) = fleetup_proto::agent_api::decision_in(ev) {
                        let kind = match &req.kind {
                            fleetup_proto::DecisionKind::Warning { .. } => "warning",
                            fleetup_proto::DecisionKind::FilesInUse { .. } => "files-in-use",
                        };
                        if spec.is_none() {
                            let (text,): (String,) = sqlx::query_as("select spec from rollouts where id = $1").bind(&row.rollout_id).fetch_one(&mut **tx).await?;
                            spec = Some($crate::store::sql::from_json(&text, "rollout spec")?);
                        }
                        let policies = spec.as_ref().map(|s| &s.policies).ok_or_else(|| $crate::store::StoreError::Corrupt("rollout spec".into()))?;
                        let (earlier,): (i64,) = sqlx::query_as("select count(*) from decisions where job_id = $1 and kind = 'files-in-use'").bind(job_id).fetch_one(&mut **tx).await?;
                        let auto = $crate::scheduler::auto_answer(policies, &req.kind, earlier as u32);
                        asked = true;
                        sqlx::query("insert into decisions (job_id, id, phase, kind, request, answer, answered_by, asked_at, answered_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9) on conflict (job_id, id) do nothing")
                            .bind(job_id)
                            .bind(i64::from(req.id))
                            .bind(req.phase.as_str())
                            .bind(kind)
                            .bind($crate::store::sql::to_json(&req))
                            .bind(auto.map(|a| a.as_str()))
                            .bind(auto.map(|_| "policy"))
                            .bind(now)
                            .bind(auto.map(|_| now))
                            .execute(&mut **tx)
                            .await?;
                    }
                    if let Some(summary) = ev.summary() {
                        let state = $crate::store::sql::outcome_state(summary.outcome);
                        final_state = Some(state);
                        job.outage_secs = Some(summary.outage_ms as f64 / 1000.0);
                        job.restart_required = summary.restart_required;
                        job.error = summary.error.clone().or_else(|| {
                            (state != JobState::Succeeded).then(|| format!("install ended {}", summary.outcome))
                        });
                        if state == JobState::Succeeded {
                            installed = Some($crate::model::InstalledRollup { rollup: summary.rollup.clone(), version: summary.version.clone(), job_id: job_id.to_owned(), at: ev.at });
                        }
                    }
                }
                if !was.is_terminal() {
                    // Decisions are asked only in reports, and a report that leaves one open
                    // leaves the job `waiting`: a job that was not waiting and asked nothing
                    // now has none open.
                    let open = if was == JobState::Waiting || asked {
                        let (open,): (i64,) = sqlx::query_as("select count(*) from decisions where job_id = $1 and answer is null").bind(job_id).fetch_one(&mut **tx).await?;
                        open
                    } else {
                        0
                    };
                    let (state, lease, finished) = match final_state {
                        Some(s) => (s, None, Some(now)),
                        None if open > 0 => (JobState::Waiting, Some(now + row.lease_ms), None),
                        None => (JobState::Running, Some(now + row.lease_ms), None),
                    };
                    out.finished = final_state.is_some();
                    sqlx::query("update jobs set state = $2, current_phase = $3, phase_started_at = $4, phases = $5, warnings = $6, outage_ms = $7, error = $8, restart_required = $9, lease_expires_at = $10, finished_at = $11, cancel_requested = (cancel_requested and $12), updated_at = $13 where id = $1")
                        .bind(job_id)
                        .bind(state.as_str())
                        .bind(job.current_phase.map(|p| p.as_str()))
                        .bind(phase_started_at)
                        .bind($crate::store::sql::to_json(&job.phases))
                        .bind($crate::store::sql::to_json(&job.warnings))
                        .bind(job.outage_secs.map(|s| (s * 1000.0) as i64))
                        .bind(&job.error)
                        .bind(job.restart_required)
                        .bind(lease)
                        .bind(finished)
                        .bind(final_state.is_none())
                        .bind(now)
                        .execute(&mut **tx)
                        .await?;
                    out.installed = installed;
                }
                Ok(out)
            }

            /// Adds installed rollups to their agents' lists (in the given order).
            async fn add_installed(tx: &mut sqlx::Transaction<'static, $db>, installed: &[(&str, &$crate::model::InstalledRollup)]) -> $crate::store::StoreResult<()> {
                for (agent_id, inst) in installed {
                    let (text,): (String,) = sqlx::query_as(concat!("select installed from agents where id = $1", $fu)).bind(agent_id).fetch_one(&mut **tx).await?;
                    let mut list: Vec<$crate::model::InstalledRollup> = $crate::store::sql::from_json(&text, "agent installed")?;
                    list.push((*inst).clone());
                    sqlx::query("update agents set installed = $2 where id = $1").bind(agent_id).bind($crate::store::sql::to_json(&list)).execute(&mut **tx).await?;
                }
                Ok(())
            }

            /// Checks that `agent_id` holds the current lease of the job.
            fn check_lease(row: &$crate::store::sql::JobRow, agent_id: &str, fencing_token: u64) -> $crate::store::StoreResult<()> {
                if row.agent_id != agent_id {
                    return Err($crate::store::StoreError::Forbidden(format!(
                        "job {} belongs to another agent; an agent token reaches only its own jobs",
                        row.id
                    )));
                }
                if row.fencing_token as u64 != fencing_token || row.state == "lost" {
                    return Err($crate::store::StoreError::StaleLease(format!(
                        "fencing token {fencing_token} is stale: job {} is {} with token {}; stop reporting for this dispatch",
                        row.id, row.state, row.fencing_token
                    )));
                }
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            fn backend(&self) -> &'static str {
                Self::BACKEND
            }

            #[tracing::instrument(skip_all)]
            async fn create_api_token(&self, id: &str, name: &str, role: $crate::model::Role, token_hash: &str, audit: &$crate::store::NewAudit) -> $crate::store::StoreResult<()> {
                let now = $crate::model::now_ms();
                let mut tx = self.write_tx().await?;
                sqlx::query("insert into api_tokens (id, name, role, token_hash, created_at) values ($1, $2, $3, $4, $5)")
                    .bind(id)
                    .bind(name)
                    .bind(role.as_str())
                    .bind(token_hash)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                Self::audit_tx(&mut tx, audit, now).await?;
                tx.commit().await?;
                Ok(())
            }

            #[tracing::instrument(skip_all)]
            async fn api_token_by_hash(&self, token_hash: &str) -> $crate::store::StoreResult<Option<$crate::store::ApiTokenInfo>> {
                let row: Option<(String, String, String)> = sqlx::query_as("select id, name, role from api_tokens where token_hash = $1 and revoked_at is null")
                    .bind(token_hash)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|(id, name, role)| {
                    let role = $crate::model::Role::parse(&role).ok_or_else(|| $crate::store::StoreError::Corrupt(format!("role '{role}'")))?;
                    Ok($crate::store::ApiTokenInfo { id, name, role })
                })
                .transpose()
            }

            #[tracing::instrument(skip_all)]
            async fn create_enrollment_token(&self, t: &$crate::store::NewEnrollmentToken, audit: &$crate::store::NewAudit) -> $crate::store::StoreResult<$crate::model::EnrollmentToken> {
                let now = $crate::model::now_ms();
                let mut tx = self.write_tx().await?;
                sqlx::query("insert into enrollment_tokens (id, name, token_hash, labels, expires_at, max_uses, uses, created_by, created_at) values ($1, $2, $3, $4, $5, $6, 0, $7, $8)")
                    .bind(&t.id)
                    .bind(&t.name)
                    .bind(&t.token_hash)
                    .bind($crate::store::sql::to_json(&t.labels))
                    .bind(t.expires_at)
                    .bind(t.max_uses.map(|n| n as i64))
                    .bind(&audit.actor)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                Self::audit_tx(&mut tx, audit, now).await?;
                tx.commit().await?;
                Ok($crate::model::EnrollmentToken {
                    id: t.id.clone(),
                    name: t.name.clone(),
                    labels: t.labels.clone(),
                    expires_at: t.expires_at.map($crate::model::to_time),
                    max_uses: t.max_uses,
                    uses: 0,
                })
            }

            #[tracing::instrument(skip_all)]
            async fn list_enrollment_tokens(&self) -> $crate::store::StoreResult<Vec<$crate::model::EnrollmentToken>> {
                let rows: Vec<$crate::store::sql::EnrollmentRow> = sqlx::query_as("select id, name, labels, expires_at, max_uses, uses, revoked_at from enrollment_tokens order by created_at desc")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::store::sql::EnrollmentRow::to_token).collect()
            }

            #[tracing::instrument(skip_all)]
            async fn enroll_agent(&self, token_hash: &str, agent: &$crate::store::NewAgent, now: i64) -> $crate::store::StoreResult<$crate::model::Agent> {
                let mut tx = self.write_tx().await?;
                let tok: Option<$crate::store::sql::EnrollmentRow> = sqlx::query_as(concat!("select id, name, labels, expires_at, max_uses, uses, revoked_at from enrollment_tokens where token_hash = $1", $fu))
                    .bind(token_hash)
                    .fetch_optional(&mut *tx)
                    .await?;
                let refused = |m: &str| Err($crate::store::StoreError::Refused(m.to_owned()));
                let Some(tok) = tok else { return refused("the enrollment token is not valid; ask an admin for a new one (POST /api/v1/enrollment-tokens)") };
                if tok.revoked_at.is_some() {
                    return refused("the enrollment token was revoked; ask an admin for a new one");
                }
                if tok.expires_at.is_some_and(|e| e <= now) {
                    return refused("the enrollment token has expired; ask an admin for a new one");
                }
                if tok.max_uses.is_some_and(|m| tok.uses >= m) {
                    return refused("the enrollment token has been used as many times as it allows; ask an admin for a new one");
                }
                sqlx::query("update enrollment_tokens set uses = uses + 1 where id = $1").bind(&tok.id).execute(&mut *tx).await?;
                let mut labels = agent.labels.clone();
                labels.extend($crate::store::sql::from_json::<BTreeMap<String, String>>(&tok.labels, "token labels")?);
                sqlx::query("insert into agents (id, hostname, secret_hash, labels, facts, version, installed, enrolled_at, last_seen) values ($1, $2, $3, $4, $5, $6, '[]', $7, $7)")
                    .bind(&agent.id)
                    .bind(&agent.hostname)
                    .bind(&agent.secret_hash)
                    .bind($crate::store::sql::to_json(&labels))
                    .bind($crate::store::sql::to_json(&agent.facts))
                    .bind(&agent.version)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                let audit = $crate::store::NewAudit::new(
                    &format!("enrollment-token:{}", tok.name),
                    "agent.enroll",
                    "agent",
                    &agent.id,
                    serde_json::json!({ "hostname": agent.hostname, "labels": labels, "version": agent.version }),
                );
                Self::audit_tx(&mut tx, &audit, now).await?;
                tx.commit().await?;
                $crate::store::Store::get_agent(self, &agent.id).await
            }

            #[tracing::instrument(skip_all)]
            async fn agent_by_secret_hash(&self, secret_hash: &str) -> $crate::store::StoreResult<Option<(String, String)>> {
                Ok(sqlx::query_as("select id, hostname from agents where secret_hash = $1 and revoked_at is null")
                    .bind(secret_hash)
                    .fetch_optional(&self.pool)
                    .await?)
            }

            #[tracing::instrument(skip_all)]
            async fn list_agents(&self) -> $crate::store::StoreResult<Vec<$crate::model::Agent>> {
                let rows: Vec<$crate::store::sql::AgentRow> = sqlx::query_as("select id, hostname, labels, facts, version, installed, enrolled_at, last_seen, revoked_at from agents order by hostname, id")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::store::sql::AgentRow::to_agent).collect()
            }

            #[tracing::instrument(skip_all)]
            async fn get_agent(&self, id: &str) -> $crate::store::StoreResult<$crate::model::Agent> {
                let row: Option<$crate::store::sql::AgentRow> = sqlx::query_as("select id, hostname, labels, facts, version, installed, enrolled_at, last_seen, revoked_at from agents where id = $1")
                    .bind(id)
                    .fetch_optional(&self.pool)
                    .await?;
                row.ok_or_else(|| $crate::store::StoreError::NotFound(format!("agent {id} not found")))?.to_agent()
            }

            #[tracing::instrument(skip_all)]
            async fn set_agent_labels(&self, id: &str, labels: &BTreeMap<String, String>, audit: &$crate::store::NewAudit) -> $crate::store::StoreResult<$crate::model::Agent> {
                let now = $crate::model::now_ms();
                let mut tx = self.write_tx().await?;
                let n = sqlx::query("update agents set labels = $2 where id = $1")
                    .bind(id)
                    .bind($crate::store::sql::to_json(labels))
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                if n == 0 {
                    return Err($crate::store::StoreError::NotFound(format!("agent {id} not found")));
                }
                Self::audit_tx(&mut tx, audit, now).await?;
                tx.commit().await?;
                $crate::store::Store::get_agent(self, id).await
            }

            #[tracing::instrument(skip_all)]
            async fn revoke_agent(&self, id: &str, audit: &$crate::store::NewAudit) -> $crate::store::StoreResult<()> {
                let now = $crate::model::now_ms();
                let mut tx = self.write_tx().await?;
                let row: Option<(Option<i64>,)> = sqlx::query_as(concat!("select revoked_at from agents where id = $1", $fu)).bind(id).fetch_optional(&mut *tx).await?;
                match row {
                    None => return Err($crate::store::StoreError::NotFound(format!("agent {id} not found"))),
                    Some((Some(_),)) => return Err($crate::store::StoreError::Conflict(format!("agent {id} is already revoked"))),
                    Some((None,)) => {}
                }
                sqlx::query("update agents set revoked_at = $2 where id = $1").bind(id).bind(now).execute(&mut *tx).await?;
                sqlx::query("update jobs set state = 'cancelled', error = 'agent revoked', finished_at = $2, updated_at = $2 where agent_id = $1 and state in ('pending', 'queued')")
                    .bind(id)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                Self::audit_tx(&mut tx, audit, now).await?;
                tx.commit().await?;
                Ok(())
            }

            #[tracing::instrument(skip_all)]
            async fn touch_agents(&self, seen: &[(String, i64)]) -> $crate::store::StoreResult<()> {
                if seen.is_empty() {
                    return Ok(());
                }
                // In id order, like report batches (see `report_batch`): no lock-order deadlock.
                let mut seen: Vec<&(String, i64)> = seen.iter().collect();
                seen.sort_unstable();
                let mut tx = self.write_tx().await?;
                for (id, at) in seen {
                    sqlx::query("update agents set last_seen = $2 where id = $1 and last_seen < $2").bind(id).bind(*at).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                Ok(())
            }

            #[tracing::instrument(skip_all)]
            async fn insert_package(&self, p: &$crate::store::NewPackage, audit: &$crate::store::NewAudit) -> $crate::store::StoreResult<$crate::model::Package> {
                let now = $crate::model::now_ms();
                let mut tx = self.write_tx().await?;
                let existing: Option<(String,)> = sqlx::query_as("select id from packages where sha256 = $1").bind(&p.sha256).fetch_optional(&mut *tx).await?;
                if let Some((id,)) = existing {
                    return Err($crate::store::StoreError::Conflict(format!("this package file was already uploaded as package {id}")));
                }
                sqlx::query("insert into packages (id, name, version, sha256, size, key_id, manifest, uploaded_by, uploaded_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
                    .bind(&p.id)
                    .bind(&p.name)
                    .bind(&p.version)
                    .bind(&p.sha256)
                    .bind(p.size as i64)
                    .bind(&p.key_id)
                    .bind($crate::store::sql::to_json(&p.manifest))
                    .bind(&p.uploaded_by)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                Self::audit_tx(&mut tx, audit, now).await?;
                tx.commit().await?;
                $crate::store::Store::get_package(self, &p.id).await
            }

            #[tracing::instrument(skip_all)]
            async fn list_packages(&self) -> $crate::store::StoreResult<Vec<$crate::model::Package>> {
                let rows: Vec<$crate::store::sql::PackageRow> = sqlx::query_as("select id, name, version, sha256, size, key_id, manifest, uploaded_by, uploaded_at from packages order by uploaded_at desc, id desc")
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::store::sql::PackageRow::to_package).collect()
            }

            #[tracing::instrument(skip_all)]
            async fn get_package(&self, id: &str) -> $crate::store::StoreResult<$crate::model::Package> {
                Self::package_on(&mut *self.pool.acquire().await?, id).await
            }

            #[tracing::instrument(skip_all)]
            async fn agent_may_download(&self, agent_id: &str, package_id: &str) -> $crate::store::StoreResult<bool> {
                let (n,): (i64,) = sqlx::query_as("select count(*) from jobs j join rollouts r on r.id = j.rollout_id where j.agent_id = $1 and r.package_id = $2")
                    .bind(agent_id)
                    .bind(package_id)
                    .fetch_one(&self.pool)
                    .await?;
                Ok(n > 0)
            }

            #[tracing::instrument(skip_all)]
            async fn create_rollout(&self, r: &$crate::store::NewRollout, audit: &$crate::store::NewAudit) -> $crate::store::StoreResult<$crate::model::Rollout> {
                let now = $crate::model::now_ms();
                let mut tx = self.write_tx().await?;
                sqlx::query("insert into rollouts (id, name, package_id, state, spec, retry_of, created_by, created_at) values ($1, $2, $3, 'draft', $4, $5, $6, $7)")
                    .bind(&r.id)
                    .bind(&r.spec.name)
                    .bind(&r.spec.package_id)
                    .bind($crate::store::sql::to_json(&r.spec))
                    .bind(&r.retry_of)
                    .bind(&r.created_by)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                for (i, size) in r.wave_sizes.iter().enumerate() {
                    sqlx::query("insert into waves (rollout_id, number, size, state) values ($1, $2, $3, 'pending')")
                        .bind(&r.id)
                        .bind(i as i64 + 1)
                        .bind(*size as i64)
                        .execute(&mut *tx)
                        .await?;
                }
                for (pos, (agent, wave)) in r.jobs.iter().enumerate() {
                    sqlx::query("insert into jobs (id, rollout_id, agent_id, wave, position, state, lease_ms, phases, warnings, created_at, updated_at) values ($1, $2, $3, $4, $5, 'pending', $6, '{}', '[]', $7, $7)")
                        .bind($crate::store::sql::new_id())
                        .bind(&r.id)
                        .bind(agent)
                        .bind(i64::from(*wave))
                        .bind(pos as i64)
                        .bind(r.lease_ms)
                        .bind(now)
                        .execute(&mut *tx)
                        .await?;
                }
                Self::audit_tx(&mut tx, audit, now).await?;
                tx.commit().await?;
                if Self::BACKEND == "postgres" && r.jobs.len() >= $crate::store::sql::ANALYZE_AFTER_JOBS {
                    // Fresh statistics for the planner: without them (a young database, before
                    // autovacuum's next pass) Postgres guesses the jobs table is tiny and reads
                    // a big rollout's pages by scanning and sorting all of its rows.
                    if let Err(e) = sqlx::query("analyze jobs").execute(&self.pool).await {
                        tracing::warn!(error = %e, "analyze jobs after staging a big rollout failed; plans may be poor until autovacuum analyzes");
                    }
                }
                $crate::store::Store::get_rollout(self, &r.id).await
            }

            #[tracing::instrument(skip_all)]
            async fn list_rollouts(&self) -> $crate::store::StoreResult<Vec<$crate::model::Rollout>> {
                let rows: Vec<$crate::store::sql::RolloutRow> = sqlx::query_as(concat!(rollout_select!(), " order by r.created_at desc, r.id desc")).fetch_all(&self.pool).await?;
                let mut out = Vec::with_capacity(rows.len());
                for row in &rows {
                    out.push(self.rollout_view(row).await?);
                }
                Ok(out)
            }

            #[tracing::instrument(skip_all)]
            async fn get_rollout(&self, id: &str) -> $crate::store::StoreResult<$crate::model::Rollout> {
                let row: Option<$crate::store::sql::RolloutRow> = sqlx::query_as(concat!(rollout_select!(), " where r.id = $1")).bind(id).fetch_optional(&self.pool).await?;
                let row = row.ok_or_else(|| $crate::store::StoreError::NotFound(format!("rollout {id} not found")))?;
                self.rollout_view(&row).await
            }

            #[tracing::instrument(skip_all)]
            async fn rollout_action(&self, id: &str, action: $crate::store::RolloutAction, audit: &$crate::store::NewAudit) -> $crate::store::StoreResult<($crate::model::Rollout, Vec<String>)> {
                use $crate::model::RolloutState as S;
                use $crate::store::RolloutAction as A;
                let now = $crate::model::now_ms();
                let mut tx = self.write_tx().await?;
                let row = Self::rollout_row_tx(&mut tx, id).await?;
                let state = row.state()?;
                let conflict = |why: &str| {
                    Err($crate::store::StoreError::Conflict(format!("rollout {id} is {}; {why}", state.as_str())))
                };
                let mut wake = Vec::new();
                match (action, state) {
                    (A::Start, S::Draft) => {
                        sqlx::query("update rollouts set state = 'running', started_at = $2, current_wave = 1, approved_wave = 1 where id = $1").bind(id).bind(now).execute(&mut *tx).await?;
                        sqlx::query("update waves set state = 'open', opened_at = $2 where rollout_id = $1 and number = 1").bind(id).bind(now).execute(&mut *tx).await?;
                    }
                    (A::Start, _) => return conflict("only a draft rollout can be started"),
                    (A::Pause, S::Running | S::AwaitingApproval) => {
                        sqlx::query("update rollouts set state = 'paused', state_reason = $2 where id = $1").bind(id).bind(format!("paused by {}", audit.actor)).execute(&mut *tx).await?;
                        sqlx::query("update jobs set state = 'pending', updated_at = $2 where rollout_id = $1 and state = 'queued'").bind(id).bind(now).execute(&mut *tx).await?;
                    }
                    (A::Pause, _) => return conflict("only a running rollout can be paused"),
                    (A::Resume, S::Paused) => {
                        let (failures,): (i64,) = sqlx::query_as("select count(*) from jobs where rollout_id = $1 and state in ('failed', 'rolled-back', 'lost')").bind(id).fetch_one(&mut *tx).await?;
                        sqlx::query("update rollouts set state = 'running', state_reason = null, failures_accepted = $2, gate_override_wave = current_wave where id = $1").bind(id).bind(failures).execute(&mut *tx).await?;
                    }
                    (A::Resume, _) => return conflict("only a paused rollout can be resumed"),
                    (A::Approve, S::AwaitingApproval) => {
                        sqlx::query("update rollouts set state = 'running', state_reason = null, approved_wave = current_wave + 1 where id = $1").bind(id).execute(&mut *tx).await?;
                    }
                    (A::Approve, _) => return conflict("approve applies only to a rollout awaiting approval for its next wave"),
                    (A::Cancel, s) if !s.is_terminal() => {
                        sqlx::query("update rollouts set state = 'cancelled', state_reason = $2, finished_at = $3 where id = $1").bind(id).bind(format!("cancelled by {}", audit.actor)).bind(now).execute(&mut *tx).await?;
                        wake = Self::cancel_rollout_jobs(&mut tx, id, now).await?;
                    }
                    (A::Cancel, _) => return conflict("it has already ended"),
                }
                Self::audit_tx(&mut tx, audit, now).await?;
                tx.commit().await?;
                Ok(($crate::store::Store::get_rollout(self, id).await?, wake))
            }

            #[tracing::instrument(skip_all)]
            async fn list_jobs(&self, rollout_id: &str, f: &$crate::store::JobFilter) -> $crate::store::StoreResult<$crate::store::JobPage<$crate::model::Job>> {
                let rows: Vec<$crate::store::sql::JobRow> = self.jobs_page(rollout_id, f, false).await?;
                $crate::store::sql::cut_page(rows, f.limit, $crate::store::sql::JobRow::key, $crate::store::sql::JobRow::to_job)
            }

            #[tracing::instrument(skip_all)]
            async fn list_job_summaries(&self, rollout_id: &str, f: &$crate::store::JobFilter) -> $crate::store::StoreResult<$crate::store::JobPage<$crate::model::JobSummary>> {
                let rows: Vec<$crate::store::sql::JobSummaryRow> = self.jobs_page(rollout_id, f, true).await?;
                $crate::store::sql::cut_page(rows, f.limit, $crate::store::sql::JobSummaryRow::key, $crate::store::sql::JobSummaryRow::to_summary)
            }

            #[tracing::instrument(skip_all)]
            async fn get_job(&self, id: &str) -> $crate::store::StoreResult<$crate::model::Job> {
                let row: Option<$crate::store::sql::JobRow> = sqlx::query_as(concat!(job_select!(), " where j.id = $1")).bind(id).fetch_optional(&self.pool).await?;
                row.ok_or_else(|| $crate::store::StoreError::NotFound(format!("job {id} not found")))?.to_job()
            }

            #[tracing::instrument(skip_all)]
            async fn list_events(&self, job_id: &str, after_seq: u64, limit: u64) -> $crate::store::StoreResult<Vec<fleetup_proto::EngineEvent>> {
                $crate::store::Store::get_job(self, job_id).await?;
                let rows: Vec<(i64, String, String, String, String, i64)> = sqlx::query_as("select seq, phase, status, message, data, at from events where job_id = $1 and seq > $2 order by seq limit $3")
                    .bind(job_id)
                    .bind(after_seq as i64)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter()
                    .map(|(seq, phase, status, message, data, at)| {
                        Ok(fleetup_proto::EngineEvent {
                            seq: seq as u64,
                            phase: phase.parse().map_err($crate::store::sql::corrupt)?,
                            status: status.parse().map_err($crate::store::sql::corrupt)?,
                            message,
                            data: $crate::store::sql::from_json(&data, "event data")?,
                            at: $crate::model::to_time(at),
                        })
                    })
                    .collect()
            }

            #[tracing::instrument(skip_all)]
            async fn list_logs(&self, job_id: &str, after_seq: u64, limit: u64) -> $crate::store::StoreResult<Vec<fleetup_proto::agent_api::LogLine>> {
                $crate::store::Store::get_job(self, job_id).await?;
                let rows: Vec<(i64, String, String, i64)> = sqlx::query_as("select seq, phase, line, at from logs where job_id = $1 and seq > $2 order by seq limit $3")
                    .bind(job_id)
                    .bind(after_seq as i64)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.into_iter()
                    .map(|(seq, phase, line, at)| {
                        Ok(fleetup_proto::agent_api::LogLine { seq: seq as u64, phase: phase.parse().map_err($crate::store::sql::corrupt)?, line, at: $crate::model::to_time(at) })
                    })
                    .collect()
            }

            #[tracing::instrument(skip_all)]
            async fn list_decisions(&self, job_id: &str) -> $crate::store::StoreResult<Vec<$crate::model::Decision>> {
                $crate::store::Store::get_job(self, job_id).await?;
                let rows: Vec<$crate::store::sql::DecisionRow> = sqlx::query_as("select id, phase, kind, request, answer, answered_by, asked_at, answered_at from decisions where job_id = $1 order by id")
                    .bind(job_id)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::store::sql::DecisionRow::to_decision).collect()
            }

            #[tracing::instrument(skip_all)]
            async fn answer_decision(&self, job_id: &str, decision_id: Option<u32>, answer: fleetup_proto::DecisionAnswer, audit: &$crate::store::NewAudit) -> $crate::store::StoreResult<($crate::model::Job, String)> {
                let now = $crate::model::now_ms();
                let mut tx = self.write_tx().await?;
                let job = Self::job_tx(&mut tx, job_id).await?;
                let open: Vec<$crate::store::sql::DecisionRow> = sqlx::query_as("select id, phase, kind, request, answer, answered_by, asked_at, answered_at from decisions where job_id = $1 and answer is null order by id")
                    .bind(job_id)
                    .fetch_all(&mut *tx)
                    .await?;
                let target = match (decision_id, open.as_slice()) {
                    (_, []) => return Err($crate::store::StoreError::Conflict(format!("job {job_id} has no open decision (it is {})", job.state))),
                    (Some(d), rows) => rows.iter().find(|r| r.id == i64::from(d)).ok_or_else(|| $crate::store::StoreError::Conflict(format!("decision {d} of job {job_id} is not open")))?,
                    (None, [one]) => one,
                    (None, _) => return Err($crate::store::StoreError::Conflict(format!("job {job_id} has several open decisions; say which with decision_id"))),
                };
                let request: fleetup_proto::DecisionRequest = $crate::store::sql::from_json(&target.request, "decision request")?;
                if !request.options.contains(&answer) {
                    let allowed: Vec<&str> = request.options.iter().map(|o| o.as_str()).collect();
                    return Err($crate::store::StoreError::Refused(format!("'{answer}' does not answer this {} decision; allowed: {}", target.kind, allowed.join(", "))));
                }
                sqlx::query("update decisions set answer = $3, answered_by = $4, answered_at = $5 where job_id = $1 and id = $2")
                    .bind(job_id)
                    .bind(target.id)
                    .bind(answer.as_str())
                    .bind(&audit.actor)
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                if open.len() == 1 && job.state == "waiting" {
                    sqlx::query("update jobs set state = 'running', updated_at = $2 where id = $1").bind(job_id).bind(now).execute(&mut *tx).await?;
                }
                Self::audit_tx(&mut tx, audit, now).await?;
                tx.commit().await?;
                Ok(($crate::store::Store::get_job(self, job_id).await?, job.agent_id))
            }

            #[tracing::instrument(skip_all)]
            async fn cancel_job(&self, job_id: &str, audit: &$crate::store::NewAudit) -> $crate::store::StoreResult<$crate::model::Job> {
                let now = $crate::model::now_ms();
                let mut tx = self.write_tx().await?;
                let job = Self::job_tx(&mut tx, job_id).await?;
                match job.state()? {
                    $crate::model::JobState::Pending | $crate::model::JobState::Queued => {
                        sqlx::query("update jobs set state = 'cancelled', error = $3, finished_at = $2, updated_at = $2 where id = $1")
                            .bind(job_id)
                            .bind(now)
                            .bind(format!("cancelled by {} before it started", audit.actor))
                            .execute(&mut *tx)
                            .await?;
                    }
                    s if s.is_terminal() => {
                        return Err($crate::store::StoreError::Conflict(format!("job {job_id} has already ended ({}); nothing to cancel", s.as_str())));
                    }
                    _ => {
                        sqlx::query("update jobs set cancel_requested = true, updated_at = $2 where id = $1").bind(job_id).bind(now).execute(&mut *tx).await?;
                    }
                }
                Self::audit_tx(&mut tx, audit, now).await?;
                tx.commit().await?;
                $crate::store::Store::get_job(self, job_id).await
            }

            #[tracing::instrument(skip_all)]
            async fn claim_job(&self, agent_id: &str, now: i64) -> $crate::store::StoreResult<Option<$crate::store::ClaimedJob>> {
                // A read first: an idle poll must not write (or even take SQLite's write lock).
                let (ready,): (i64,) = sqlx::query_as("select count(*) from jobs where agent_id = $1 and state in ('queued', 'dispatched')").bind(agent_id).fetch_one(&self.pool).await?;
                if ready == 0 {
                    return Ok(None);
                }
                self.claims.submit($crate::store::ClaimRequest { agent_id: agent_id.to_owned(), now }).await
            }

            #[tracing::instrument(skip_all)]
            async fn report_events(&self, job_id: &str, agent_id: &str, fencing_token: u64, events: &[fleetup_proto::EngineEvent], now: i64) -> $crate::store::StoreResult<$crate::store::ReportOutcome> {
                let request = $crate::store::ReportRequest { job_id: job_id.to_owned(), agent_id: agent_id.to_owned(), fencing_token, events: events.to_vec(), now };
                self.reports.submit(request).await
            }

            #[tracing::instrument(skip_all)]
            async fn report_logs(&self, job_id: &str, agent_id: &str, fencing_token: u64, lines: &[fleetup_proto::agent_api::LogLine]) -> $crate::store::StoreResult<(u32, u32)> {
                let mut tx = self.write_tx().await?;
                let row = Self::job_tx(&mut tx, job_id).await?;
                Self::check_lease(&row, agent_id, fencing_token)?;
                let (mut accepted, mut dup) = (0u32, 0u32);
                for l in lines {
                    let n = sqlx::query("insert into logs (job_id, seq, phase, line, at) values ($1, $2, $3, $4, $5) on conflict (job_id, seq) do nothing")
                        .bind(job_id)
                        .bind(l.seq as i64)
                        .bind(l.phase.as_str())
                        .bind(&l.line)
                        .bind(l.at.timestamp_millis())
                        .execute(&mut *tx)
                        .await?
                        .rows_affected();
                    if n == 0 { dup += 1 } else { accepted += 1 }
                }
                tx.commit().await?;
                Ok((accepted, dup))
            }

            #[tracing::instrument(skip_all)]
            async fn job_messages(&self, job_id: &str) -> $crate::store::StoreResult<$crate::store::JobMessages> {
                let (cancel,): (bool,) = sqlx::query_as("select cancel_requested from jobs where id = $1").bind(job_id).fetch_one(&self.pool).await?;
                let rows: Vec<(i64, String)> = sqlx::query_as("select id, answer from decisions where job_id = $1 and answer is not null order by id").bind(job_id).fetch_all(&self.pool).await?;
                let decisions = rows
                    .into_iter()
                    .map(|(id, a)| Ok(fleetup_proto::agent_api::DecisionReply { id: id as u32, answer: a.parse().map_err($crate::store::sql::corrupt)? }))
                    .collect::<$crate::store::StoreResult<Vec<_>>>()?;
                Ok($crate::store::JobMessages { cancel, decisions })
            }

            #[tracing::instrument(skip_all)]
            async fn create_user(&self, u: &$crate::store::NewUser, audit: &$crate::store::NewAudit) -> $crate::store::StoreResult<()> {
                let now = $crate::model::now_ms();
                let mut tx = self.write_tx().await?;
                let (taken,): (i64,) = sqlx::query_as("select count(*) from users where username = $1").bind(&u.username).fetch_one(&mut *tx).await?;
                if taken > 0 {
                    return Err($crate::store::StoreError::Conflict(format!("user '{}' already exists", u.username)));
                }
                sqlx::query("insert into users (id, username, password_hash, role, created_at) values ($1, $2, $3, $4, $5)")
                    .bind(&u.id)
                    .bind(&u.username)
                    .bind(&u.password_hash)
                    .bind(u.role.as_str())
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                Self::audit_tx(&mut tx, audit, now).await?;
                tx.commit().await?;
                Ok(())
            }

            #[tracing::instrument(skip_all)]
            async fn user_by_name(&self, username: &str) -> $crate::store::StoreResult<Option<$crate::store::UserRecord>> {
                let row: Option<(String, String, String, String, Option<i64>)> = sqlx::query_as("select id, username, password_hash, role, disabled_at from users where username = $1")
                    .bind(username)
                    .fetch_optional(&self.pool)
                    .await?;
                row.map(|(id, username, password_hash, role, disabled_at)| {
                    let role = $crate::model::Role::parse(&role).ok_or_else(|| $crate::store::StoreError::Corrupt(format!("role '{role}'")))?;
                    Ok($crate::store::UserRecord { id, username, password_hash, role, disabled: disabled_at.is_some() })
                })
                .transpose()
            }

            #[tracing::instrument(skip_all)]
            async fn create_session(&self, sess: &$crate::store::NewSession, audit: &$crate::store::NewAudit) -> $crate::store::StoreResult<()> {
                let now = $crate::model::now_ms();
                let mut tx = self.write_tx().await?;
                sqlx::query("insert into sessions (id, user_id, token_hash, csrf_token, created_at, expires_at) values ($1, $2, $3, $4, $5, $6)")
                    .bind(&sess.id)
                    .bind(&sess.user_id)
                    .bind(&sess.token_hash)
                    .bind(&sess.csrf_token)
                    .bind(now)
                    .bind(sess.expires_at)
                    .execute(&mut *tx)
                    .await?;
                Self::audit_tx(&mut tx, audit, now).await?;
                tx.commit().await?;
                Ok(())
            }

            #[tracing::instrument(skip_all)]
            async fn session_by_hash(&self, token_hash: &str, now: i64) -> $crate::store::StoreResult<Option<$crate::store::SessionInfo>> {
                let row: Option<(String, String, String, String, String)> = sqlx::query_as(
                    "select s.id, u.id, u.username, u.role, s.csrf_token from sessions s join users u on u.id = s.user_id \
                     where s.token_hash = $1 and s.expires_at > $2 and u.disabled_at is null",
                )
                .bind(token_hash)
                .bind(now)
                .fetch_optional(&self.pool)
                .await?;
                row.map(|(id, user_id, username, role, csrf_token)| {
                    let role = $crate::model::Role::parse(&role).ok_or_else(|| $crate::store::StoreError::Corrupt(format!("role '{role}'")))?;
                    Ok($crate::store::SessionInfo { id, user_id, username, role, csrf_token })
                })
                .transpose()
            }

            #[tracing::instrument(skip_all)]
            async fn delete_session(&self, token_hash: &str, now: i64) -> $crate::store::StoreResult<()> {
                sqlx::query("delete from sessions where token_hash = $1 or expires_at <= $2").bind(token_hash).bind(now).execute(&self.pool).await?;
                Ok(())
            }

            #[tracing::instrument(skip_all)]
            async fn rollout_stamp(&self, rollout_id: &str) -> $crate::store::StoreResult<String> {
                let row: Option<(String, String, i64, i64, i64)> = sqlx::query_as(
                    "select r.state, coalesce(r.state_reason, ''), r.current_wave, \
                     (select coalesce(max(j.updated_at), 0) from jobs j where j.rollout_id = r.id), \
                     (select count(*) from decisions d join jobs j on j.id = d.job_id where j.rollout_id = r.id and d.answer is null) \
                     from rollouts r where r.id = $1",
                )
                .bind(rollout_id)
                .fetch_optional(&self.pool)
                .await?;
                let (state, reason, wave, updated, open) = row.ok_or_else(|| $crate::store::StoreError::NotFound(format!("rollout {rollout_id} not found")))?;
                Ok(format!("{state}|{wave}|{updated}|{open}|{reason}"))
            }

            #[tracing::instrument(skip_all)]
            async fn list_warned_jobs(&self, rollout_id: &str, limit: u64) -> $crate::store::StoreResult<(Vec<$crate::model::Job>, u64)> {
                let rows: Vec<$crate::store::sql::JobRow> = sqlx::query_as(concat!(job_select!(), " where j.rollout_id = $1 and j.warnings <> '[]' order by j.wave, j.position limit $2"))
                    .bind(rollout_id)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                let (n,): (i64,) = sqlx::query_as("select count(*) from jobs where rollout_id = $1 and warnings <> '[]'").bind(rollout_id).fetch_one(&self.pool).await?;
                Ok((rows.iter().map($crate::store::sql::JobRow::to_job).collect::<$crate::store::StoreResult<Vec<_>>>()?, n as u64))
            }

            #[tracing::instrument(skip_all)]
            async fn tail_logs(&self, job_id: &str, limit: u64) -> $crate::store::StoreResult<Vec<fleetup_proto::agent_api::LogLine>> {
                let rows: Vec<(i64, String, String, i64)> = sqlx::query_as("select seq, phase, line, at from logs where job_id = $1 order by at desc, seq desc limit $2")
                    .bind(job_id)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                // By the time each line was written (agents ship phase logs file by file).
                rows.into_iter()
                    .rev()
                    .map(|(seq, phase, line, at)| {
                        Ok(fleetup_proto::agent_api::LogLine { seq: seq as u64, phase: phase.parse().map_err($crate::store::sql::corrupt)?, line, at: $crate::model::to_time(at) })
                    })
                    .collect()
            }

            #[tracing::instrument(skip_all)]
            async fn list_agent_jobs(&self, agent_id: &str, limit: u64) -> $crate::store::StoreResult<Vec<$crate::model::Job>> {
                let rows: Vec<$crate::store::sql::JobRow> = sqlx::query_as(concat!(job_select!(), " where j.agent_id = $1 order by j.created_at desc, j.id desc limit $2"))
                    .bind(agent_id)
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::store::sql::JobRow::to_job).collect()
            }

            #[tracing::instrument(skip_all)]
            async fn list_audit(&self, limit: u64, object_id: Option<&str>) -> $crate::store::StoreResult<Vec<$crate::model::AuditEntry>> {
                let rows: Vec<$crate::store::sql::AuditRow> = sqlx::query_as("select id, at, actor, action, object_type, object_id, detail from audit_log where ($1 = '' or object_id = $1) order by at desc, id desc limit $2")
                    .bind(object_id.unwrap_or_default())
                    .bind(limit as i64)
                    .fetch_all(&self.pool)
                    .await?;
                rows.iter().map($crate::store::sql::AuditRow::to_entry).collect()
            }

            #[tracing::instrument(skip_all)]
            async fn scheduler_tick(&self, settings: $crate::store::TickSettings) -> $crate::store::StoreResult<$crate::store::TickReport> {
                use $crate::model::JobState;
                use $crate::scheduler::Step;
                let now = settings.now;
                let Some(mut tx) = self.scheduler_tx().await? else { return Ok($crate::store::TickReport::default()) };
                let mut report = $crate::store::TickReport { ran: true, ..Default::default() };
                // Leases.
                let lost: Vec<(String, String, i64)> = sqlx::query_as("select id, rollout_id, lease_ms from jobs where state in ('dispatched', 'running', 'waiting') and lease_expires_at < $1")
                    .bind(now)
                    .fetch_all(&mut *tx)
                    .await?;
                for (id, rollout, lease_ms) in &lost {
                    sqlx::query("update jobs set state = 'lost', fencing_token = fencing_token + 1, error = $3, lease_expires_at = null, finished_at = $2, updated_at = $2 where id = $1")
                        .bind(id)
                        .bind(now)
                        .bind(format!("the agent sent no report for {} s (its lease); the job is lost", lease_ms / 1000))
                        .execute(&mut *tx)
                        .await?;
                    Self::audit_tx(&mut tx, &$crate::store::NewAudit::new("scheduler", "job.lost", "job", id, serde_json::json!({ "rollout_id": rollout })), now).await?;
                }
                report.lost = lost.len() as u64;
                // Phase timeouts.
                let running: Vec<(String, Option<String>, Option<i64>, String)> = sqlx::query_as("select j.id, j.current_phase, j.phase_started_at, r.spec from jobs j join rollouts r on r.id = j.rollout_id where j.state = 'running' and j.phase_started_at is not null")
                    .fetch_all(&mut *tx)
                    .await?;
                for (id, phase, started, spec) in running {
                    let (Some(phase), Some(started)) = (phase, started) else { continue };
                    let spec: $crate::model::RolloutSpec = $crate::store::sql::from_json(&spec, "rollout spec")?;
                    let Ok(p) = phase.parse::<fleetup_proto::PhaseId>() else { continue };
                    if let Some(limit) = spec.phase_timeouts.get(&p)
                        && now - started > (*limit as i64) * 1000
                    {
                        sqlx::query("update jobs set state = 'failed', cancel_requested = true, error = $3, lease_expires_at = null, finished_at = $2, updated_at = $2 where id = $1")
                            .bind(&id)
                            .bind(now)
                            .bind(format!("phase {phase} ran longer than its timeout of {limit} s"))
                            .execute(&mut *tx)
                            .await?;
                        Self::audit_tx(&mut tx, &$crate::store::NewAudit::new("scheduler", "job.timeout", "job", &id, serde_json::json!({ "phase": phase })), now).await?;
                    }
                }
                // Rollouts.
                let rollouts: Vec<$crate::store::sql::RolloutRow> = sqlx::query_as(concat!(rollout_select!(), " where r.state = 'running'")).fetch_all(&mut *tx).await?;
                for row in rollouts {
                    let spec = row.spec()?;
                    let in_window = spec.maintenance_window.as_ref().is_none_or(|w| $crate::scheduler::window_open(w, $crate::model::to_time(now)));
                    let (wave_count,): (i64,) = sqlx::query_as("select count(*) from waves where rollout_id = $1").bind(&row.id).fetch_one(&mut *tx).await?;
                    let mut view = $crate::scheduler::RolloutView {
                        current_wave: row.current_wave as u32,
                        wave_count: wave_count as u32,
                        approved_wave: row.approved_wave as u32,
                        failures_accepted: row.failures_accepted as u64,
                        gate_override_wave: row.gate_override_wave as u32,
                    };
                    for _ in 0..=wave_count {
                        let rows: Vec<(i64, String, i64)> = sqlx::query_as("select wave, state, count(*) from jobs where rollout_id = $1 group by wave, state").bind(&row.id).fetch_all(&mut *tx).await?;
                        let mut counts = BTreeMap::new();
                        for (w, s, n) in rows {
                            let s = JobState::parse(&s).ok_or_else(|| $crate::store::StoreError::Corrupt(format!("job state '{s}'")))?;
                            counts.insert((w as u32, s), n as u64);
                        }
                        let step = $crate::scheduler::next_step(&view, &spec, &counts, in_window);
                        let audit = |action: &str, detail: serde_json::Value| $crate::store::NewAudit::new("scheduler", action, "rollout", &row.id, detail);
                        match step {
                            Step::Nothing => break,
                            Step::Pause(reason) => {
                                sqlx::query("update rollouts set state = 'paused', state_reason = $2 where id = $1").bind(&row.id).bind(&reason).execute(&mut *tx).await?;
                                sqlx::query("update jobs set state = 'pending', updated_at = $2 where rollout_id = $1 and state = 'queued'").bind(&row.id).bind(now).execute(&mut *tx).await?;
                                Self::audit_tx(&mut tx, &audit("rollout.pause", serde_json::json!({ "reason": reason })), now).await?;
                                break;
                            }
                            Step::Abort(reason) => {
                                sqlx::query("update rollouts set state = 'aborted', state_reason = $2, finished_at = $3 where id = $1").bind(&row.id).bind(&reason).bind(now).execute(&mut *tx).await?;
                                report.wake_agents.extend(Self::cancel_rollout_jobs(&mut tx, &row.id, now).await?);
                                Self::audit_tx(&mut tx, &audit("rollout.abort", serde_json::json!({ "reason": reason })), now).await?;
                                break;
                            }
                            Step::Finish => {
                                sqlx::query("update waves set state = 'done', done_at = $3 where rollout_id = $1 and number = $2").bind(&row.id).bind(i64::from(view.current_wave)).bind(now).execute(&mut *tx).await?;
                                sqlx::query("update rollouts set state = 'finished', finished_at = $2 where id = $1").bind(&row.id).bind(now).execute(&mut *tx).await?;
                                Self::audit_tx(&mut tx, &audit("rollout.finish", serde_json::json!({})), now).await?;
                                break;
                            }
                            Step::AwaitApproval => {
                                sqlx::query("update waves set state = 'done', done_at = $3 where rollout_id = $1 and number = $2").bind(&row.id).bind(i64::from(view.current_wave)).bind(now).execute(&mut *tx).await?;
                                sqlx::query("update rollouts set state = 'awaiting-approval', state_reason = $2 where id = $1")
                                    .bind(&row.id)
                                    .bind(format!("wave {} is done; approve to open wave {}", view.current_wave, view.current_wave + 1))
                                    .execute(&mut *tx)
                                    .await?;
                                Self::audit_tx(&mut tx, &audit("rollout.await-approval", serde_json::json!({ "wave": view.current_wave })), now).await?;
                                break;
                            }
                            Step::OpenWave(w) => {
                                sqlx::query("update waves set state = 'done', done_at = $3 where rollout_id = $1 and number = $2").bind(&row.id).bind(i64::from(view.current_wave)).bind(now).execute(&mut *tx).await?;
                                sqlx::query("update waves set state = 'open', opened_at = $3 where rollout_id = $1 and number = $2").bind(&row.id).bind(i64::from(w)).bind(now).execute(&mut *tx).await?;
                                sqlx::query("update rollouts set current_wave = $2 where id = $1").bind(&row.id).bind(i64::from(w)).execute(&mut *tx).await?;
                                Self::audit_tx(&mut tx, &audit("rollout.open-wave", serde_json::json!({ "wave": w })), now).await?;
                                view.current_wave = w;
                            }
                            Step::Queue(w, n) => {
                                // One statement for the whole step, not one per job: a 10,000-server
                                // wave is queued in one round trip (docs/benchmarks.md, P1).
                                let ready: Vec<(String,)> = sqlx::query_as(
                                    "update jobs set state = 'queued', updated_at = $4 where id in \
                                     (select id from jobs where rollout_id = $1 and wave = $2 and state = 'pending' order by position limit $3) \
                                     returning agent_id",
                                )
                                .bind(&row.id)
                                .bind(i64::from(w))
                                .bind(n as i64)
                                .bind(now)
                                .fetch_all(&mut *tx)
                                .await?;
                                report.wake_agents.extend(ready.into_iter().map(|(agent,)| agent));
                                break;
                            }
                            Step::Unqueue(w) => {
                                sqlx::query("update jobs set state = 'pending', updated_at = $3 where rollout_id = $1 and wave = $2 and state = 'queued'").bind(&row.id).bind(i64::from(w)).bind(now).execute(&mut *tx).await?;
                                break;
                            }
                        }
                    }
                }
                tx.commit().await?;
                Ok(report)
            }

            async fn publish_wakeups(&self, agent_ids: &[String]) -> $crate::store::StoreResult<()> {
                self.publish_wakeups_impl(agent_ids).await
            }

            async fn wakeup_listener(&self) -> $crate::store::StoreResult<Option<futures_util::stream::BoxStream<'static, String>>> {
                self.wakeup_listener_impl().await
            }
        }
    };
}

/// A stored id that no longer parses.
pub(crate) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

#[cfg(test)]
mod tests {
    use crate::store::{StoreError, StoreResult};

    /// Writes `v`; 2 fails after writing (a database-like failure), 3 is refused before writing.
    async fn write(tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>, v: i64) -> StoreResult<i64> {
        if v == 3 {
            return Err(StoreError::StaleLease("3 is stale".into()));
        }
        sqlx::query("insert into t (v) values ($1)").bind(v).execute(&mut **tx).await?;
        if v == 2 {
            return Err(StoreError::Corrupt("2 broke after writing".into()));
        }
        Ok(v * 10)
    }

    async fn batch(pool: &sqlx::SqlitePool, reqs: &[i64]) -> StoreResult<Vec<StoreResult<i64>>> {
        batch_tx!(pool.begin(), reqs, key = |r| *r, |tx, r| write(&mut tx, *r).await)
    }

    /// A request that fails after writing leaves nothing behind and fails alone; a refusal
    /// fails alone; the others are committed, and each answer is in its request's place.
    #[tokio::test]
    async fn a_failing_request_is_rolled_back_alone() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap();
        sqlx::query("create table t (v integer primary key)").execute(&pool).await.unwrap();
        let results = batch(&pool, &[4, 3, 2, 1]).await.unwrap();
        let shown: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(v) => v.to_string(),
                Err(e) => e.to_string(),
            })
            .collect();
        assert_eq!(shown, ["40", "3 is stale", "corrupt stored data: 2 broke after writing", "10"]);
        let stored: Vec<(i64,)> = sqlx::query_as("select v from t order by v").fetch_all(&pool).await.unwrap();
        assert_eq!(stored, [(1,), (4,)]);
    }
}

//! Rows as the queries read them, and their conversion into the API's types. The select
//! lists live beside the rows they fill.

use super::{Dialect, StoreError, StoreResult, corrupt, from_json, stored_id};
use crate::model::{
    Agent, AuditEntry, Decision, EnrollmentToken, InstalledRollup, Job, JobState, JobSummary, Package, Rollout,
    RolloutSpec, RolloutState, Wave, to_time,
};
use crate::store::{JobKey, JobPage};
use fleetup_proto::agent_api::LogLine;
use std::collections::BTreeMap;

macro_rules! job_select {
    () => {
        "select j.id, j.rollout_id, j.agent_id, a.hostname, j.wave, j.position, j.state, j.fencing_token, j.lease_ms, \
         j.lease_expires_at, j.current_phase, j.phase_started_at, j.phases, j.warnings, j.outage_ms, j.error, \
         (case when j.restart_required then 1 else 0 end) as restart_required, \
         (case when j.cancel_requested then 1 else 0 end) as cancel_requested, j.dispatched_at, j.finished_at, \
         j.attempt, j.retry_of, j.not_before, j.stall, j.note \
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
         json_array_length(j.warnings) as warning_count, j.attempt, \
         (case when j.stalled_at is not null and j.state in ('running', 'waiting') then 1 else 0 end) as stalled \
         from jobs j join agents a on a.id = j.agent_id"
    };
    (postgres) => {
        "select j.id, j.agent_id, a.hostname, j.wave, j.position, j.state, j.current_phase, \
         (j.phases::json -> j.current_phase ->> 'status') as phase_status, j.outage_ms, \
         json_array_length(j.warnings::json)::bigint as warning_count, j.attempt, \
         (case when j.stalled_at is not null and j.state in ('running', 'waiting') then 1 else 0 end) as stalled \
         from jobs j join agents a on a.id = j.agent_id"
    };
}

/// The conditions and order of a rollout's job listing: `$1` rollout, `$2` state (`''`:
/// any but `retried`, the superseded attempts), `$3` wave (0: any), `($4, $5)` the (wave,
/// position) to start after. With a state, the condition is a plain equality, so the
/// `(rollout_id, state, wave, position)` index serves it; without, the
/// `(rollout_id, wave, position)` index serves it, the state only filtering its rows.
macro_rules! jobs_where {
    (any_state) => {
        " where j.rollout_id = $1 and $2 = '' and j.state <> 'retried' and ($3 = 0 or j.wave = $3) \
         and (j.wave, j.position) > ($4, $5) order by j.wave, j.position"
    };
    (one_state) => {
        " where j.rollout_id = $1 and j.state = $2 and ($3 = 0 or j.wave = $3) \
         and (j.wave, j.position) > ($4, $5) order by j.wave, j.position"
    };
}

/// The text of a job page query (`$6` limit): full or compact view, for this backend, with or
/// without a state filter.
pub(crate) fn jobs_page_sql(dialect: Dialect, summary: bool, one_state: bool) -> &'static str {
    match (summary, dialect == Dialect::Postgres, one_state) {
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
         r.failures_accepted, r.gate_override_wave, r.retry_of, r.created_by, r.created_at, r.started_at, r.finished_at, r.wait_until \
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
    /// 0 or 1 (read as an integer: the Any driver types SQLite booleans as integers).
    pub restart_required: i64,
    /// 0 or 1.
    pub cancel_requested: i64,
    pub dispatched_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub attempt: i64,
    pub retry_of: Option<String>,
    pub not_before: Option<i64>,
    /// The stall's figures (JSON), when the running phase is flagged.
    pub stall: Option<String>,
    pub note: Option<String>,
}

impl JobRow {
    pub(crate) fn state(&self) -> StoreResult<JobState> {
        JobState::parse(&self.state).ok_or_else(|| StoreError::Corrupt(format!("job state '{}'", self.state)))
    }

    pub(crate) fn to_job(&self) -> StoreResult<Job> {
        Ok(Job {
            id: stored_id(&self.id)?,
            rollout_id: stored_id(&self.rollout_id)?,
            agent_id: stored_id(&self.agent_id)?,
            hostname: self.hostname.clone(),
            wave: self.wave as u32,
            state: self.state()?,
            current_phase: self.current_phase.as_deref().map(str::parse).transpose().map_err(corrupt)?,
            phases: from_json(&self.phases, "job phases")?,
            warnings: from_json(&self.warnings, "job warnings")?,
            outage_secs: self.outage_ms.map(|ms| ms as f64 / 1000.0),
            error: self.error.clone(),
            restart_required: self.restart_required != 0,
            cancel_requested: self.cancel_requested != 0,
            fencing_token: self.fencing_token as u64,
            lease_expires_at: self.lease_expires_at.map(to_time),
            dispatched_at: self.dispatched_at.map(to_time),
            finished_at: self.finished_at.map(to_time),
            attempt: self.attempt as u32,
            retry_of: self.retry_of.as_deref().map(stored_id).transpose()?,
            not_before: self.not_before.map(to_time),
            // A flag is about a running phase: an ended job is not stalled.
            stalled: match self.state()? {
                JobState::Running | JobState::Waiting => {
                    self.stall.as_deref().map(|s| from_json(s, "job stall")).transpose()?
                }
                _ => None,
            },
            note: self.note.clone(),
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
    pub attempt: i64,
    /// 0 or 1.
    pub stalled: i64,
}

impl JobSummaryRow {
    pub(crate) fn key(&self) -> JobKey {
        JobKey { wave: self.wave as u32, position: self.position as u64 }
    }

    pub(crate) fn to_summary(&self) -> StoreResult<JobSummary> {
        Ok(JobSummary {
            id: stored_id(&self.id)?,
            agent_id: stored_id(&self.agent_id)?,
            hostname: self.hostname.clone(),
            wave: self.wave as u32,
            state: JobState::parse(&self.state)
                .ok_or_else(|| StoreError::Corrupt(format!("job state '{}'", self.state)))?,
            current_phase: self.current_phase.as_deref().map(str::parse).transpose().map_err(corrupt)?,
            phase_status: self.phase_status.as_deref().map(str::parse).transpose().map_err(corrupt)?,
            outage_secs: self.outage_ms.map(|ms| ms as f64 / 1000.0),
            warning_count: self.warning_count as u64,
            attempt: self.attempt as u32,
            stalled: self.stalled != 0,
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
    pub wait_until: Option<i64>,
}

impl RolloutRow {
    /// The entity tag of the rollout's control state: a hash of the whole row (quoted,
    /// as HTTP writes it).
    pub(crate) fn etag(&self) -> String {
        use sha2::Digest as _;
        let digest = sha2::Sha256::digest(format!("{self:?}").as_bytes());
        format!("\"{}\"", hex::encode(&digest[..12]))
    }

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
            etag: self.etag(),
            id: stored_id(&self.id)?,
            name: self.name.clone(),
            package_id: stored_id(&self.package_id)?,
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
            retry_of: self.retry_of.as_deref().map(stored_id).transpose()?,
            created_by: self.created_by.clone(),
            created_at: to_time(self.created_at),
            started_at: self.started_at.map(to_time),
            finished_at: self.finished_at.map(to_time),
            wait_until: self.wait_until.map(to_time),
        })
    }
}

macro_rules! agent_select {
    () => {
        "select id, hostname, labels, facts, version, installed, enrolled_at, last_seen, revoked_at from agents"
    };
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
            id: stored_id(&self.id)?,
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
            id: stored_id(&self.id)?,
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

macro_rules! enrollment_select {
    () => {
        "select id, name, labels, expires_at, max_uses, uses, revoked_at from enrollment_tokens"
    };
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
            id: stored_id(&self.id)?,
            name: self.name.clone(),
            labels: from_json(&self.labels, "token labels")?,
            expires_at: self.expires_at.map(to_time),
            max_uses: self.max_uses.map(|n| n as u64),
            uses: self.uses as u64,
            revoked_at: self.revoked_at.map(to_time),
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

/// A stored log line: (seq, phase, line, at), as `select seq, phase, line, at from logs` reads it.
pub(crate) fn log_line((seq, phase, line, at): (i64, String, String, i64)) -> StoreResult<LogLine> {
    Ok(LogLine { seq: seq as u64, phase: phase.parse().map_err(corrupt)?, line, at: to_time(at) })
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

//! Reads for the dashboard's grouped panels: every open decision, every warned job and
//! every failed job of a rollout, in dispatch order, with only the columns the grouping
//! needs (no phase map for decisions, no warnings for failures). The dashboard groups them
//! by cause (`web/groups.rs`) and shows counts and one page of hosts per group, so a
//! rollout of 10,000 servers with the same unreachable CRL endpoint is one line.
//!
//! These are new functions beside the job listings rather than options on them: the
//! listings page by key and carry whole jobs; these read every matching row once, narrow.
//! Servers hit by one cause carry the same stored text (the decision request the engine
//! asked, the data of the warning it raised), so each distinct text is parsed once and
//! shared: at 10,000 servers with one unreachable CRL endpoint that is one parse, not
//! 3,334 (the page's server-time budget, docs/benchmarks.md).

use super::{Store, StoreResult, from_json, stored_id};
use crate::model::{JobId, JobState, RolloutId, to_time};
use chrono::{DateTime, Utc};
use fleetup_proto::{DecisionRequest, PhaseId, PhaseStatus};
use serde::Deserialize;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// An open decision of a job waiting for it.
#[derive(Debug, Clone)]
pub struct OpenDecision {
    /// The job.
    pub job_id: JobId,
    /// Its server.
    pub hostname: String,
    /// The question (shared by the decisions whose stored text is the same).
    pub request: Arc<DecisionRequest>,
}

/// A job that reported warnings.
#[derive(Debug, Clone)]
pub struct WarnedJob {
    /// The job.
    pub job_id: JobId,
    /// Its server.
    pub hostname: String,
    /// Its state.
    pub state: JobState,
    /// Its warnings, as the report fold stored them.
    pub warnings: Vec<StoredWarning>,
}

/// A warning as the report fold stored it (`domain::report`), read for grouping.
#[derive(Debug, Clone)]
pub struct StoredWarning {
    /// The phase that raised it.
    pub phase: String,
    /// What it says.
    pub message: String,
    /// What its event data says about it (shared by the warnings whose data is the same).
    pub detail: Arc<WarningDetail>,
}

/// What a warning's event data says: the decision it asked or the warning it raised.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WarningDetail {
    /// `crl-unreachable`, `prerequisite`, ...; `None` for a bare warning.
    pub code: Option<String>,
    /// How to fix it.
    pub remediation: Option<String>,
    /// The workaround the engine applied, if it applied one.
    pub applied: Option<String>,
}

impl WarningDetail {
    /// Reads an event's data, which is the agent's (any shape): fields that are missing or
    /// not text are `None`.
    pub fn of(data: &serde_json::Value) -> Self {
        let detail = data.get("decision").or_else(|| data.get("warning"));
        let text = |v: Option<&serde_json::Value>, key: &str| v.and_then(|d| d[key].as_str()).map(str::to_owned);
        Self {
            code: text(detail, "code"),
            remediation: text(detail, "remediation"),
            applied: text(data.get("warning"), "applied"),
        }
    }
}

impl StoredWarning {
    /// One stored warning, already parsed (a job's page reads the job's warnings whole).
    pub fn of(w: &serde_json::Value) -> Self {
        let text = |key: &str| w[key].as_str().unwrap_or_default().to_owned();
        Self { phase: text("phase"), message: text("message"), detail: Arc::new(WarningDetail::of(&w["data"])) }
    }
}

/// A stored warning with its data left unparsed (see the module doc).
#[derive(Deserialize)]
struct RawWarning<'a> {
    #[serde(default, borrow)]
    phase: Cow<'a, str>,
    #[serde(default, borrow)]
    message: Cow<'a, str>,
    #[serde(default, borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// A phase's status, the rest of what the fold stores for it unread.
#[derive(Deserialize)]
struct StatusOnly {
    status: PhaseStatus,
}

/// A failed, rolled-back or lost job.
#[derive(Debug, Clone)]
pub struct FailedJob {
    /// The job.
    pub job_id: JobId,
    /// Its server.
    pub hostname: String,
    /// Its state.
    pub state: JobState,
    /// Phase of its latest event.
    pub current_phase: Option<PhaseId>,
    /// The first phase, in install order, whose latest status is failed.
    pub failed_phase: Option<PhaseId>,
    /// Why it failed.
    pub error: Option<String>,
}

/// One server of a rollout as the fleet overview shows it.
#[derive(Debug, Clone)]
pub struct MosaicCell {
    /// The job.
    pub job_id: JobId,
    /// Its server.
    pub hostname: String,
    /// Its wave.
    pub wave: u32,
    /// Its state.
    pub state: JobState,
    /// The server's labels (search by label).
    pub labels: BTreeMap<String, String>,
}

/// A running job's current phase and since when it runs.
#[derive(Debug, Clone)]
pub struct RunningPhase {
    /// The phase.
    pub phase: PhaseId,
    /// When it started.
    pub since: DateTime<Utc>,
}

impl Store {
    /// Every open decision of the rollout's waiting jobs, in dispatch order.
    #[tracing::instrument(skip_all)]
    pub async fn open_decisions(&self, rollout_id: &RolloutId) -> StoreResult<Vec<OpenDecision>> {
        let rows: Vec<(String, String, String)> = sqlx::query_as(
            "select d.job_id, a.hostname, d.request from decisions d join jobs j on j.id = d.job_id \
             join agents a on a.id = j.agent_id \
             where j.rollout_id = $1 and j.state = 'waiting' and d.answer is null order by j.wave, j.position, d.id",
        )
        .bind(rollout_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut parsed: HashMap<String, Arc<DecisionRequest>> = HashMap::new();
        rows.into_iter()
            .map(|(job, hostname, text)| {
                let request = parsed_once(&mut parsed, &text, |t| from_json(t, "decision request"))?;
                Ok(OpenDecision { job_id: stored_id(&job)?, hostname, request })
            })
            .collect()
    }

    /// Every job of the rollout that reported warnings and is not waiting for a decision
    /// (those are in [`Store::open_decisions`]), in dispatch order.
    #[tracing::instrument(skip_all)]
    pub async fn warned_jobs(&self, rollout_id: &RolloutId) -> StoreResult<Vec<WarnedJob>> {
        let rows: Vec<(String, String, String, String)> = sqlx::query_as(
            "select j.id, a.hostname, j.state, j.warnings from jobs j join agents a on a.id = j.agent_id \
             where j.rollout_id = $1 and j.warnings <> '[]' and j.state <> 'waiting' order by j.wave, j.position",
        )
        .bind(rollout_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        let mut details: HashMap<String, Arc<WarningDetail>> = HashMap::new();
        rows.into_iter()
            .map(|(job, hostname, state, text)| {
                let raw: Vec<RawWarning> =
                    serde_json::from_str(&text).map_err(|e| super::corrupt(format!("job warnings: {e}")))?;
                let warnings = raw
                    .into_iter()
                    .map(|w| {
                        let data = w.data.map_or("null", serde_json::value::RawValue::get);
                        let detail =
                            parsed_once(&mut details, data, |t| Ok(WarningDetail::of(&from_json(t, "warning data")?)))?;
                        Ok(StoredWarning { phase: w.phase.into_owned(), message: w.message.into_owned(), detail })
                    })
                    .collect::<StoreResult<_>>()?;
                Ok(WarnedJob { job_id: stored_id(&job)?, hostname, state: parse_state(&state)?, warnings })
            })
            .collect()
    }

    /// Every failed, rolled-back or lost job of the rollout, in dispatch order.
    #[tracing::instrument(skip_all)]
    pub async fn failed_jobs(&self, rollout_id: &RolloutId) -> StoreResult<Vec<FailedJob>> {
        let rows: Vec<FailedRow> = sqlx::query_as(
            "select j.id, a.hostname, j.state, j.current_phase, j.phases, j.error from jobs j \
             join agents a on a.id = j.agent_id \
             where j.rollout_id = $1 and j.state in ('failed', 'rolled-back', 'lost') order by j.wave, j.position",
        )
        .bind(rollout_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(job, hostname, state, phase, phases, error)| {
                Ok(FailedJob {
                    job_id: stored_id(&job)?,
                    hostname,
                    state: parse_state(&state)?,
                    current_phase: phase.map(|p| p.parse().map_err(super::corrupt)).transpose()?,
                    failed_phase: first_failed(&from_json(&phases, "job phases")?),
                    error,
                })
            })
            .collect()
    }

    /// Every job of the rollout but superseded attempts, in dispatch order (the grid's
    /// order): the fleet overview's cells.
    #[tracing::instrument(skip_all)]
    pub async fn mosaic(&self, rollout_id: &RolloutId) -> StoreResult<Vec<MosaicCell>> {
        let rows: Vec<(String, String, i64, String, String)> = sqlx::query_as(
            "select j.id, a.hostname, j.wave, j.state, a.labels from jobs j join agents a on a.id = j.agent_id \
             where j.rollout_id = $1 and j.state <> 'retried' order by j.wave, j.position",
        )
        .bind(rollout_id.as_str())
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(job, hostname, wave, state, labels)| {
                Ok(MosaicCell {
                    job_id: stored_id(&job)?,
                    hostname,
                    wave: u32::try_from(wave).map_err(super::corrupt)?,
                    state: parse_state(&state)?,
                    labels: from_json(&labels, "agent labels")?,
                })
            })
            .collect()
    }

    /// The current phase and its start of the rollout's running jobs (at most `limit`), for
    /// the elapsed times the rollout page shows.
    #[tracing::instrument(skip_all)]
    pub async fn running_phases(&self, rollout_id: &RolloutId, limit: u64) -> StoreResult<Vec<RunningPhase>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "select j.current_phase, j.phase_started_at from jobs j where j.rollout_id = $1 \
             and j.state = 'running' and j.current_phase is not null and j.phase_started_at is not null \
             order by j.phase_started_at limit $2",
        )
        .bind(rollout_id.as_str())
        .bind(limit.min(i64::MAX as u64) as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|(phase, at)| Ok(RunningPhase { phase: phase.parse().map_err(super::corrupt)?, since: to_time(at) }))
            .collect()
    }
}

/// id, hostname, state, current phase, phases, error.
type FailedRow = (String, String, String, Option<String>, String, Option<String>);

/// `text` parsed by `parse`, once per distinct text: later copies share the first's value.
fn parsed_once<T>(
    cache: &mut HashMap<String, Arc<T>>,
    text: &str,
    parse: impl FnOnce(&str) -> StoreResult<T>,
) -> StoreResult<Arc<T>> {
    if let Some(v) = cache.get(text) {
        return Ok(Arc::clone(v));
    }
    let v = Arc::new(parse(text)?);
    cache.insert(text.to_owned(), Arc::clone(&v));
    Ok(v)
}

/// The first phase, in install order, whose status is failed.
fn first_failed(phases: &BTreeMap<PhaseId, StatusOnly>) -> Option<PhaseId> {
    PhaseId::ALL.iter().copied().find(|p| phases.get(p).is_some_and(|s| s.status == PhaseStatus::Failed))
}

fn parse_state(s: &str) -> StoreResult<JobState> {
    JobState::parse(s).ok_or_else(|| super::StoreError::Corrupt(format!("unknown job state '{s}'")))
}

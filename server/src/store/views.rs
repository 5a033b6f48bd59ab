//! Reads for the dashboard's grouped panels: every open decision, every warned job and
//! every failed job of a rollout, in dispatch order, with only the columns the grouping
//! needs (no phase map for decisions, no warnings for failures). The dashboard groups them
//! by cause (`web/groups.rs`) and shows counts and one page of hosts per group, so a
//! rollout of 10,000 servers with the same unreachable CRL endpoint is one line.
//!
//! These are new functions beside the job listings rather than options on them: the
//! listings page by key and carry whole jobs; these read every matching row once, narrow.

use super::{Store, StoreResult, from_json, stored_id};
use crate::model::{JobId, JobState, RolloutId, to_time};
use chrono::{DateTime, Utc};
use fleetup_proto::api::PhaseState;
use fleetup_proto::{DecisionRequest, PhaseId};
use std::collections::BTreeMap;

/// An open decision of a job waiting for it.
#[derive(Debug, Clone)]
pub struct OpenDecision {
    /// The job.
    pub job_id: JobId,
    /// Its server.
    pub hostname: String,
    /// The question.
    pub request: DecisionRequest,
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
    /// Its warnings (phase, message, data), as the report fold stored them.
    pub warnings: Vec<serde_json::Value>,
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
    /// Latest status of every phase.
    pub phases: BTreeMap<PhaseId, PhaseState>,
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
        rows.into_iter()
            .map(|(job, hostname, request)| {
                Ok(OpenDecision {
                    job_id: stored_id(&job)?,
                    hostname,
                    request: from_json(&request, "decision request")?,
                })
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
        rows.into_iter()
            .map(|(job, hostname, state, warnings)| {
                Ok(WarnedJob {
                    job_id: stored_id(&job)?,
                    hostname,
                    state: parse_state(&state)?,
                    warnings: from_json(&warnings, "job warnings")?,
                })
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
                    phases: from_json(&phases, "job phases")?,
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

fn parse_state(s: &str) -> StoreResult<JobState> {
    JobState::parse(s).ok_or_else(|| super::StoreError::Corrupt(format!("unknown job state '{s}'")))
}

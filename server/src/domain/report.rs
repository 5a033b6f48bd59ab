//! How an agent's engine events fold into its job: the phase map (out-of-order safe), the
//! current phase and when it started, warnings, the decisions asked and the policy's answer
//! to each, and the outcome the final summary carries. The store reads the job, dedupes the
//! events by sequence number, calls [`fold`] on the new ones and writes the result.

use crate::model::{JobState, Millis, PhaseState};
use chrono::{DateTime, Utc};
use fleetup_proto::agent_api::{FilesInUsePolicy, JobPolicies, WarningPolicy, decision_in};
use fleetup_proto::{DecisionAnswer, DecisionKind, DecisionRequest, EngineEvent, InstallOutcome, PhaseId, PhaseStatus};
use std::collections::BTreeMap;

/// What a job shows of its install so far.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    /// Latest status of every phase reported so far.
    pub phases: BTreeMap<PhaseId, PhaseState>,
    /// Phase of the newest event.
    pub current_phase: Option<PhaseId>,
    /// When the current phase started (the coordinator's clock).
    pub phase_started_at: Option<Millis>,
    /// Warnings reported (phase, message, data).
    pub warnings: Vec<serde_json::Value>,
    /// Measured outage in seconds (from the final summary).
    pub outage_secs: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Processes kept replaced files open: restart the server.
    pub restart_required: bool,
}

/// The rollup a succeeded job installed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Installed {
    /// Rollup name.
    pub rollup: String,
    /// Version.
    pub version: String,
    /// When (the agent's clock).
    pub at: DateTime<Utc>,
}

/// The result of folding a report's new events into a job.
#[derive(Debug, Clone, PartialEq)]
pub struct Fold {
    /// The job's progress afterwards.
    pub progress: Progress,
    /// Decisions the events asked, in order.
    pub asked: Vec<(DecisionRequest, &'static str)>,
    /// The state the final summary ends the job in, if the report carried it.
    pub outcome: Option<JobState>,
    /// The final summary's install outcome (finer than the state: `recovery-required` is a
    /// failed job).
    pub install_outcome: Option<InstallOutcome>,
    /// What a successful install put on the agent.
    pub installed: Option<Installed>,
}

/// The stored kind of a decision (`warning` or `files-in-use`).
pub fn decision_kind(kind: &DecisionKind) -> &'static str {
    match kind {
        DecisionKind::Warning { .. } => "warning",
        DecisionKind::FilesInUse { .. } => "files-in-use",
    }
}

/// The job state an install outcome ends in.
pub fn outcome_state(outcome: InstallOutcome) -> JobState {
    match outcome {
        InstallOutcome::Succeeded => JobState::Succeeded,
        InstallOutcome::Failed | InstallOutcome::RecoveryRequired => JobState::Failed,
        InstallOutcome::RolledBack => JobState::RolledBack,
        InstallOutcome::Cancelled => JobState::Cancelled,
        // The engine confirmed what staging decides for servers on the version.
        InstallOutcome::AlreadyInstalled => JobState::Skipped,
    }
}

/// Folds events new to the job (deduped, in any order) into its progress. A phase keeps the
/// status of its highest-numbered event; the current phase is that of the newest event, and
/// changing it restarts the phase clock at `now`.
pub fn fold(mut progress: Progress, new_events: &[&EngineEvent], now: Millis) -> Fold {
    let mut events = new_events.to_vec();
    events.sort_by_key(|e| e.seq);
    let mut max_seq = progress.phases.values().map(|p| p.seq).max().unwrap_or(0);
    let (mut asked, mut outcome, mut installed, mut install_outcome) = (Vec::new(), None, None, None);
    for ev in events {
        if progress.phases.get(&ev.phase).is_none_or(|p| p.seq < ev.seq) {
            progress.phases.insert(ev.phase, PhaseState { status: ev.status, seq: ev.seq, at: ev.at });
        }
        if ev.seq > max_seq {
            max_seq = ev.seq;
            if progress.current_phase != Some(ev.phase) {
                progress.phase_started_at = Some(now);
            }
            progress.current_phase = Some(ev.phase);
        }
        if ev.status == PhaseStatus::Warning {
            progress.warnings.push(serde_json::json!({
                "seq": ev.seq, "phase": ev.phase, "message": ev.message, "data": ev.data, "at": ev.at
            }));
        }
        if let Some(req) = decision_in(ev) {
            let kind = decision_kind(&req.kind);
            asked.push((req, kind));
        }
        if let Some(summary) = ev.summary() {
            let state = outcome_state(summary.outcome);
            outcome = Some(state);
            install_outcome = Some(summary.outcome);
            progress.outage_secs = Some(summary.outage_ms as f64 / 1000.0);
            progress.restart_required = summary.restart_required;
            progress.error = summary
                .error
                .clone()
                .or_else(|| (!summary.outcome.is_success()).then(|| format!("install ended {}", summary.outcome)));
            if summary.outcome.is_success() {
                installed =
                    Some(Installed { rollup: summary.rollup.clone(), version: summary.version.clone(), at: ev.at });
            }
        }
    }
    Fold { progress, asked, outcome, install_outcome, installed }
}

/// The state a job is in after a report: its outcome if it ended, `waiting` while a decision
/// is open, `running` otherwise.
pub fn settled_state(outcome: Option<JobState>, open_decisions: bool) -> JobState {
    match outcome {
        Some(s) => s,
        None if open_decisions => JobState::Waiting,
        None => JobState::Running,
    }
}

/// The answer a policy gives to a decision, or `None` when an operator must answer.
/// `earlier_files_in_use` counts the job's files-in-use decisions before this one.
pub fn auto_answer(policies: &JobPolicies, kind: &DecisionKind, earlier_files_in_use: u32) -> Option<DecisionAnswer> {
    match kind {
        DecisionKind::Warning { .. } => match policies.warning {
            WarningPolicy::Ask => None,
            WarningPolicy::Continue => Some(DecisionAnswer::Continue),
            WarningPolicy::Cancel => Some(DecisionAnswer::Cancel),
        },
        DecisionKind::FilesInUse { .. } => match policies.files_in_use {
            FilesInUsePolicy::Ask => None,
            FilesInUsePolicy::Retry { times } => {
                Some(if earlier_files_in_use < times { DecisionAnswer::Retry } else { DecisionAnswer::Exit })
            }
            FilesInUsePolicy::Ignore => Some(DecisionAnswer::Ignore),
            FilesInUsePolicy::Exit => Some(DecisionAnswer::Exit),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetup_proto::InstallSummary;

    fn ev(seq: u64, phase: PhaseId, status: PhaseStatus) -> EngineEvent {
        EngineEvent {
            seq,
            phase,
            status,
            message: format!("event {seq}"),
            data: serde_json::Value::Null,
            at: Utc::now(),
        }
    }

    #[test]
    fn phases_keep_their_newest_status_whatever_the_order() {
        let first = ev(1, PhaseId::CheckSystem, PhaseStatus::Running);
        let second = ev(2, PhaseId::CheckSystem, PhaseStatus::Succeeded);
        let third = ev(3, PhaseId::PrePrecompile, PhaseStatus::Running);
        let f = fold(Progress::default(), &[&third, &first, &second], 100);
        assert_eq!(f.progress.phases[&PhaseId::CheckSystem].status, PhaseStatus::Succeeded);
        assert_eq!(f.progress.current_phase, Some(PhaseId::PrePrecompile));
        assert_eq!(f.progress.phase_started_at, Some(100));
        // A late, older event changes neither the phase's status nor the current phase.
        let late = ev(1, PhaseId::PrePrecompile, PhaseStatus::Failed);
        let g = fold(f.progress.clone(), &[&late], 200);
        assert_eq!(g.progress, f.progress);
        assert_eq!((g.outcome, g.installed), (None, None));
    }

    #[test]
    fn warnings_and_decisions_are_collected() {
        let mut w = ev(4, PhaseId::CheckSystem, PhaseStatus::Warning);
        let req = DecisionRequest {
            id: 1,
            phase: PhaseId::CheckSystem,
            kind: DecisionKind::Warning { code: "crl".into(), remediation: None },
            message: "CRL endpoint unreachable".into(),
            options: vec![DecisionAnswer::Continue, DecisionAnswer::Cancel],
        };
        w.data = serde_json::json!({ fleetup_proto::agent_api::DECISION_DATA_KEY: req });
        let f = fold(Progress::default(), &[&w], 5);
        assert_eq!(f.progress.warnings.len(), 1);
        assert_eq!(f.asked, vec![(req, "warning")]);
        assert_eq!(settled_state(f.outcome, true), JobState::Waiting);
        assert_eq!(settled_state(f.outcome, false), JobState::Running);
    }

    #[test]
    fn the_summary_ends_the_job() {
        let table = [
            (InstallOutcome::Succeeded, JobState::Succeeded, None),
            (InstallOutcome::RolledBack, JobState::RolledBack, Some("install ended rolled-back")),
            (InstallOutcome::RecoveryRequired, JobState::Failed, Some("install ended recovery-required")),
            (InstallOutcome::Cancelled, JobState::Cancelled, Some("install ended cancelled")),
            // The engine found the version already there: a success, counted as skipped.
            (InstallOutcome::AlreadyInstalled, JobState::Skipped, None),
        ];
        for (outcome, state, error) in table {
            let summary = InstallSummary {
                outcome,
                rollup: "demo".into(),
                version: "1.1.0".into(),
                outage_ms: 1500,
                total_ms: 3000,
                phase_ms: BTreeMap::new(),
                restart_required: true,
                failed_phase: None,
                error: None,
            };
            let mut last = ev(9, PhaseId::Cleanup, PhaseStatus::Succeeded);
            last.data = serde_json::json!({ "summary": summary });
            let f = fold(Progress::default(), &[&last], 1);
            assert_eq!(f.outcome, Some(state), "{outcome}");
            assert_eq!(settled_state(f.outcome, true), state);
            assert_eq!(f.progress.error.as_deref(), error, "{outcome}");
            assert_eq!(f.progress.outage_secs, Some(1.5));
            assert!(f.progress.restart_required);
            assert_eq!(f.installed.is_some(), outcome.is_success(), "{outcome}");
        }
    }

    #[test]
    fn policies_answer_or_ask() {
        let p = JobPolicies { files_in_use: FilesInUsePolicy::Retry { times: 2 }, ..JobPolicies::default() };
        let fiu = DecisionKind::FilesInUse { processes: vec![] };
        assert_eq!(auto_answer(&p, &fiu, 0), Some(DecisionAnswer::Retry));
        assert_eq!(auto_answer(&p, &fiu, 2), Some(DecisionAnswer::Exit));
        let warning = DecisionKind::Warning { code: "crl".into(), remediation: None };
        assert_eq!(auto_answer(&p, &warning, 0), None);
        let cont = JobPolicies { warning: WarningPolicy::Continue, ..JobPolicies::default() };
        assert_eq!(auto_answer(&cont, &warning, 0), Some(DecisionAnswer::Continue));
    }
}

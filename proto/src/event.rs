//! The engine event: the one record of progress that flows from the install engine to
//! the terminal (`--json`), the agent, the coordinator and the dashboard.
//!
//! Events are numbered per install (`seq`, from 1, no gaps) so a report retried after a
//! network fault is recorded once: the receiver keeps the highest `seq` it stored.

use crate::phase::{PhaseId, PhaseStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One step of progress of one install.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EngineEvent {
    /// Per-install sequence number, starting at 1, without gaps.
    pub seq: u64,
    /// The phase this event is about.
    pub phase: PhaseId,
    /// The phase's status after this event.
    pub status: PhaseStatus,
    /// A sentence for the operator.
    pub message: String,
    /// Structured detail (warnings, decision requests, the final summary, …); `null` if none.
    #[serde(default)]
    pub data: serde_json::Value,
    /// When it happened (RFC 3339, UTC).
    pub at: DateTime<Utc>,
}

impl EngineEvent {
    /// The install summary, if this is the final event of an install.
    pub fn summary(&self) -> Option<InstallSummary> {
        let summary = self.data.get("summary")?;
        serde_json::from_value(summary.clone()).ok()
    }
}

/// How an install ended. Exactly one is reported per install, even across crashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum InstallOutcome {
    /// Every phase finished; the root holds the new version.
    Succeeded,
    /// Ended before changing anything (a fatal check, a failing pre-hook, …).
    Failed,
    /// Changes were made, then undone; the root holds the old version again.
    RolledBack,
    /// Ended by a cancel; the root holds the old version.
    Cancelled,
    /// A rollback could not complete: a person must look at this server.
    RecoveryRequired,
    /// The server already had this version (the engine's record of its last install, or
    /// the manifest's from-version file, says so): nothing was changed. A success; the
    /// coordinator counts the job as skipped.
    AlreadyInstalled,
}

impl InstallOutcome {
    /// The stable kebab-case id.
    pub const fn as_str(self) -> &'static str {
        match self {
            InstallOutcome::Succeeded => "succeeded",
            InstallOutcome::Failed => "failed",
            InstallOutcome::RolledBack => "rolled-back",
            InstallOutcome::Cancelled => "cancelled",
            InstallOutcome::RecoveryRequired => "recovery-required",
            InstallOutcome::AlreadyInstalled => "already-installed",
        }
    }

    /// Whether the server ends on the version installed (succeeded, or already there).
    pub const fn is_success(self) -> bool {
        matches!(self, InstallOutcome::Succeeded | InstallOutcome::AlreadyInstalled)
    }
}

impl std::fmt::Display for InstallOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Carried as `data.summary` by the final event of an install.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstallSummary {
    /// How the install ended.
    pub outcome: InstallOutcome,
    /// The rollup name and version that was being installed.
    pub rollup: String,
    /// The version being installed.
    pub version: String,
    /// Milliseconds from the start of `stop-services` to the end of `start-services`
    /// (0 when services were never stopped).
    pub outage_ms: u64,
    /// Milliseconds from the first event to the last.
    pub total_ms: u64,
    /// Duration of every phase that ran, in milliseconds.
    pub phase_ms: BTreeMap<PhaseId, u64>,
    /// Processes were left holding replaced files (files-in-use "ignore"): restart needed.
    #[serde(default)]
    pub restart_required: bool,
    /// The phase that failed or was cancelled, if any.
    #[serde(default)]
    pub failed_phase: Option<PhaseId>,
    /// Why it did not succeed, for the operator.
    #[serde(default)]
    pub error: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_wire_shape_is_stable() {
        let at = DateTime::parse_from_rfc3339("2026-11-21T10:00:00Z").unwrap().to_utc();
        let ev = EngineEvent {
            seq: 3,
            phase: PhaseId::StopServices,
            status: PhaseStatus::Running,
            message: "Stopping demo".into(),
            data: serde_json::Value::Null,
            at,
        };
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "seq": 3, "phase": "stop-services", "status": "running",
                "message": "Stopping demo", "data": null, "at": "2026-11-21T10:00:00Z"
            })
        );
        let back: EngineEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
    }

    #[test]
    fn summary_is_found_in_final_event() {
        let summary = InstallSummary {
            outcome: InstallOutcome::RolledBack,
            rollup: "demo".into(),
            version: "1.1.0".into(),
            outage_ms: 1200,
            total_ms: 9000,
            phase_ms: BTreeMap::from([(PhaseId::UpdateFiles, 30)]),
            restart_required: false,
            failed_phase: Some(PhaseId::StartServices),
            error: Some("health check failed".into()),
        };
        let ev = EngineEvent {
            seq: 40,
            phase: PhaseId::Rollback,
            status: PhaseStatus::Succeeded,
            message: "rolled back".into(),
            data: serde_json::json!({ "summary": summary }),
            at: Utc::now(),
        };
        assert_eq!(ev.summary(), Some(summary));
        let json = serde_json::to_string(&ev).unwrap();
        assert!(json.contains("\"outcome\":\"rolled-back\""), "{json}");
        assert!(json.contains("\"start-services\""), "{json}");
    }
}

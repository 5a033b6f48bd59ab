//! The agent protocol: the request and response bodies exchanged between `fleetup-agent`
//! and the coordinator under `/api/v1/agent`.
//!
//! They live here, beside the engine event, so both sides compile against one definition.
//! The flow:
//!
//! 1. `POST /api/v1/agent/enroll` with an [`EnrollRequest`] (no bearer token: the enrollment
//!    token is in the body) → [`EnrollResponse`]. From then on every request carries
//!    `Authorization: Bearer <agent_token>`.
//! 2. `GET /api/v1/agent/poll?wait=SECS` is the long-poll and the heartbeat: `204` when no job
//!    became ready within `wait` seconds, `200` with a [`JobAssignment`] otherwise.
//! 3. `POST /api/v1/agent/jobs/{id}/events[?wait=SECS]` with an [`EventBatch`] → [`ReportResponse`].
//!    An empty batch renews the lease. With `wait`, the call is held (up to `wait` seconds)
//!    until a cancel request or a decision answer is there for the agent: that is how a
//!    waiting agent hears an operator's answer at once. A stale fencing token (the job was
//!    declared lost, or finished) gets `409` with error code `stale-lease`: stop reporting.
//! 4. `POST /api/v1/agent/jobs/{id}/logs` with a [`LogBatch`] → [`LogResponse`].
//! 5. `GET /api/v1/agent/packages/{id}` downloads the package file (HTTP `Range` honoured);
//!    the agent checks the announced size and sha256, and verifies the signature against its
//!    own pinned keys.
//!
//! Decision requests travel inside engine events: an event whose `data` holds a
//! [`DECISION_DATA_KEY`] member with a [`DecisionRequest`] asks a question. The final event
//! carries `data.summary` ([`crate::InstallSummary`]), which ends the job.

use crate::decision::{DecisionAnswer, DecisionRequest};
use crate::event::EngineEvent;
use crate::phase::PhaseId;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The member of [`EngineEvent::data`] that carries a [`DecisionRequest`].
pub const DECISION_DATA_KEY: &str = "decision";

/// The error code of a `409` answer to a report with a stale fencing token.
pub const STALE_LEASE_CODE: &str = "stale-lease";

/// `POST /api/v1/agent/enroll`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollRequest {
    /// The enrollment token an operator created with `POST /api/v1/enrollment-tokens`.
    pub token: String,
    /// The server's host name, shown to operators.
    pub hostname: String,
    /// Labels the agent proposes (`k=v` from its command line); the token's labels win on
    /// a conflict.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Free-form facts about the host (OS, kernel, CPU count, …), shown to operators.
    #[serde(default)]
    pub facts: BTreeMap<String, serde_json::Value>,
    /// The agent's version.
    #[serde(default)]
    pub version: String,
}

/// Answer to [`EnrollRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    /// The agent's id.
    pub agent_id: String,
    /// The agent's secret bearer token. Shown once; the coordinator keeps only a hash.
    pub agent_token: String,
}

/// What to do when a warning asks a decision (a warning prerequisite, an unreachable CRL).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum WarningPolicy {
    /// Wait for an operator's answer (the job is `waiting`).
    #[default]
    Ask,
    /// Answer `continue`.
    Continue,
    /// Answer `cancel`.
    Cancel,
}

/// What to do when files about to be replaced are held by running processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "mode", rename_all = "kebab-case")]
pub enum FilesInUsePolicy {
    /// Wait for an operator's answer (the job is `waiting`).
    #[default]
    Ask,
    /// Answer `retry` up to `times` times, then `exit`.
    Retry {
        /// How many retries before giving up.
        times: u32,
    },
    /// Answer `ignore`: replace anyway, the server needs a restart afterwards.
    Ignore,
    /// Answer `exit`: restart the services and end the install.
    Exit,
}

/// How the engine deals with an unreachable CRL endpoint (the seeds' 40–60 minute stall).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum CrlRemediation {
    /// Report the warning only (the warning policy decides).
    #[default]
    None,
    /// Map the CRL host to 127.0.0.1 in the hosts file for the install only, restored exactly
    /// afterwards; no decision is asked.
    HostsFile,
}

/// The rollout's policies, as the engine needs them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobPolicies {
    /// Warning decisions.
    #[serde(default)]
    pub warning: WarningPolicy,
    /// Files-in-use decisions.
    #[serde(default)]
    pub files_in_use: FilesInUsePolicy,
    /// CRL remediation.
    #[serde(default)]
    pub crl_remediation: CrlRemediation,
}

/// The package a job installs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackageRef {
    /// Package id.
    pub id: String,
    /// Rollup name (from the manifest).
    pub name: String,
    /// Rollup version (from the manifest).
    pub version: String,
    /// Hex sha256 of the package file: check it after download.
    pub sha256: String,
    /// Size of the package file in bytes: never download more.
    pub size: u64,
    /// Path of the download, relative to the server URL (`/api/v1/agent/packages/{id}`).
    pub download_path: String,
}

/// `200` answer to `GET /api/v1/agent/poll`: a job for this agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobAssignment {
    /// Job id (path parameter of the report endpoints).
    pub job_id: String,
    /// The rollout the job belongs to.
    pub rollout_id: String,
    /// Fencing token of this dispatch: send it with every report. A report with any other
    /// token is refused with `409`.
    pub fencing_token: u64,
    /// The lease: report (an empty event batch is enough) at least this often, or the job is
    /// declared `lost`.
    pub lease_secs: u64,
    /// What to install.
    pub package: PackageRef,
    /// How decisions are answered, and CRL remediation.
    pub policies: JobPolicies,
    /// Per-phase time limits in seconds; a phase that runs longer fails the job. Phases
    /// absent from the map have no limit beyond the engine's own deadlines.
    #[serde(default)]
    pub phase_timeouts: BTreeMap<PhaseId, u64>,
    /// The rollout explicitly allows installing a version older than the agent's
    /// high-water mark for this rollup (an audited operator choice). Without it the
    /// engine refuses a downgrade in `check-system`.
    #[serde(default)]
    pub allow_downgrade: bool,
    /// The agent starts the job before this instant or not at all: an assignment replayed
    /// (or delayed) past it is refused. Set by the coordinator when it hands the job over.
    pub expires_at: DateTime<Utc>,
}

/// Longest rollup name or version the agent accepts from a coordinator.
pub const MAX_NAME_LEN: usize = 128;

/// Why an assignment from the coordinator was refused before anything was done with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the coordinator's job assignment is refused: {0}")]
pub struct AssignmentError(pub String);

impl JobAssignment {
    /// Checks every field the agent uses as a path, a URL or a bound, to its strict format:
    /// the ids by [`crate::id`]'s syntax, `sha256` as 64 lowercase hex digits, the name and
    /// version as printable text without `/`, `download_path` as an absolute path on the
    /// coordinator (never a URL, `//host` or `@host`), a lease of 1 s to 1 day.
    pub fn check(&self) -> Result<(), AssignmentError> {
        let bad = |m: String| AssignmentError(m);
        crate::id::check_id("job", &self.job_id).map_err(|e| bad(e.to_string()))?;
        crate::id::check_id("rollout", &self.rollout_id).map_err(|e| bad(e.to_string()))?;
        crate::id::check_id("package", &self.package.id).map_err(|e| bad(e.to_string()))?;
        let p = &self.package;
        if p.sha256.len() != 64 || !p.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(bad(format!("sha256 '{}' is not 64 lowercase hex digits", shown(&p.sha256))));
        }
        for (what, v) in [("name", &p.name), ("version", &p.version)] {
            let ok = !v.is_empty()
                && v.len() <= MAX_NAME_LEN
                && v.chars().all(|c| !c.is_control() && !c.is_whitespace() && c != '/' && c != '\\');
            if !ok || v == "." || v == ".." {
                return Err(bad(format!(
                    "package {what} '{}' is not a name (1 to {MAX_NAME_LEN} printable characters, no '/')",
                    shown(v)
                )));
            }
        }
        let path = &p.download_path;
        let ok = path.starts_with('/')
            && !path.starts_with("//")
            && path.bytes().all(|b| b.is_ascii_graphic() && b != b'@' && b != b'\\' && b != b'#')
            && !path.split('/').any(|seg| seg == "..");
        if !ok {
            return Err(bad(format!(
                "download_path '{}' is not a path on the coordinator (it must start with one '/' and hold no '@', '\\', '..' or spaces)",
                shown(path)
            )));
        }
        if self.lease_secs == 0 || self.lease_secs > 86_400 {
            return Err(bad(format!("lease of {} s is outside 1 s to 1 day", self.lease_secs)));
        }
        Ok(())
    }
}

/// A refused value, cut to a readable length, control characters replaced.
fn shown(s: &str) -> String {
    s.chars().take(80).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect()
}

/// `POST /api/v1/agent/jobs/{id}/events`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventBatch {
    /// The fencing token from the [`JobAssignment`].
    pub fencing_token: u64,
    /// Engine events in any order; an event whose `seq` was already recorded is ignored.
    #[serde(default)]
    pub events: Vec<EngineEvent>,
}

/// An operator's or a policy's answer to a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DecisionReply {
    /// The [`DecisionRequest::id`] answered.
    pub id: u32,
    /// The answer.
    pub answer: DecisionAnswer,
}

/// Answer to [`EventBatch`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ReportResponse {
    /// Events of the batch recorded now.
    pub accepted: u32,
    /// Events of the batch that were already recorded (retries).
    pub duplicates: u32,
    /// The operator (or the rollout) asked this job to stop: cancel as the phase allows.
    pub cancel: bool,
    /// Every answered decision of the job so far (apply each id once).
    pub decisions: Vec<DecisionReply>,
    /// The lease, renewed from now.
    pub lease_secs: u64,
}

/// One line of a phase log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogLine {
    /// Per-job line number from 1; a line whose number was already recorded is ignored.
    pub seq: u64,
    /// The phase that wrote it.
    pub phase: PhaseId,
    /// The text, without the trailing newline.
    pub line: String,
    /// When it was written.
    pub at: DateTime<Utc>,
}

/// `POST /api/v1/agent/jobs/{id}/logs`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogBatch {
    /// The fencing token from the [`JobAssignment`].
    pub fencing_token: u64,
    /// Lines in any order.
    pub lines: Vec<LogLine>,
}

/// Answer to [`LogBatch`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogResponse {
    /// Lines recorded now.
    pub accepted: u32,
    /// Lines already recorded.
    pub duplicates: u32,
}

/// Reads the decision request an event carries, if any.
pub fn decision_in(event: &EngineEvent) -> Option<DecisionRequest> {
    let v = event.data.get(DECISION_DATA_KEY)?;
    serde_json::from_value(v.clone()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_wire_shape() {
        let p = JobPolicies {
            warning: WarningPolicy::Continue,
            files_in_use: FilesInUsePolicy::Retry { times: 3 },
            crl_remediation: CrlRemediation::HostsFile,
        };
        let v = serde_json::to_value(p).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"warning": "continue", "files_in_use": {"mode": "retry", "times": 3}, "crl_remediation": "hosts-file"})
        );
        assert_eq!(serde_json::from_value::<JobPolicies>(serde_json::json!({})).unwrap(), JobPolicies::default());
    }

    fn assignment() -> JobAssignment {
        JobAssignment {
            job_id: "01a2-job".into(),
            rollout_id: "r1".into(),
            fencing_token: 1,
            lease_secs: 60,
            package: PackageRef {
                id: "p1".into(),
                name: "demo-service".into(),
                version: "1.1.0".into(),
                sha256: "ab".repeat(32),
                size: 10,
                download_path: "/api/v1/agent/packages/p1".into(),
            },
            policies: JobPolicies::default(),
            phase_timeouts: BTreeMap::new(),
            allow_downgrade: false,
            expires_at: Utc::now(),
        }
    }

    /// Issue 14, defect 4: each field the agent uses as a path, a URL or a bound is held
    /// to its format; a hostile value is refused with the field named.
    #[test]
    fn hostile_assignment_fields_are_refused() {
        assignment().check().unwrap();
        type Spoil = Box<dyn Fn(&mut JobAssignment)>;
        let cases: Vec<(&str, Spoil)> = vec![
            ("job id", Box::new(|j| j.job_id = "../../../x".into())),
            ("rollout id", Box::new(|j| j.rollout_id = "a/b".into())),
            ("package id", Box::new(|j| j.package.id = "p1/../..".into())),
            ("sha256", Box::new(|j| j.package.sha256 = "../../../x".into())),
            ("sha256", Box::new(|j| j.package.sha256 = "AB".repeat(32))),
            ("name", Box::new(|j| j.package.name = "../etc".into())),
            ("version", Box::new(|j| j.package.version = "1.0\n".replace("\\n", "\n"))),
            ("download_path", Box::new(|j| j.package.download_path = "@127.0.0.2:9/api/v1/agent/packages/p1".into())),
            ("download_path", Box::new(|j| j.package.download_path = "//127.0.0.2/x".into())),
            ("download_path", Box::new(|j| j.package.download_path = "http://127.0.0.2/x".into())),
            ("download_path", Box::new(|j| j.package.download_path = "/api/../../x".into())),
            ("lease", Box::new(|j| j.lease_secs = 0)),
        ];
        for (what, spoil) in cases {
            let mut j = assignment();
            spoil(&mut j);
            let err = j.check().expect_err(what).to_string();
            let named = what.split(' ').next().unwrap();
            assert!(err.contains(named), "{what}: {err}");
        }
    }
}

//! Decisions: the points where an install stops and asks.
//!
//! The seeds' installer asked with dialogs (continue/cancel on a warning; retry/ignore/exit
//! when files are in use). fleetup asks through one interface, so the same engine can be
//! answered by a terminal prompt, `--yes`, a rollout policy, or an operator in the dashboard.

use crate::phase::PhaseId;
use serde::{Deserialize, Serialize};

/// An answer to a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum DecisionAnswer {
    /// Go on despite the warning.
    Continue,
    /// End the install (services are left, or put back, as they were).
    Cancel,
    /// Look again (files in use).
    Retry,
    /// Replace the files anyway; the server needs a restart afterwards (files in use).
    Ignore,
    /// Restart the services and end the install (files in use).
    Exit,
}

impl DecisionAnswer {
    /// The stable kebab-case id.
    pub const fn as_str(self) -> &'static str {
        match self {
            DecisionAnswer::Continue => "continue",
            DecisionAnswer::Cancel => "cancel",
            DecisionAnswer::Retry => "retry",
            DecisionAnswer::Ignore => "ignore",
            DecisionAnswer::Exit => "exit",
        }
    }
}

impl std::fmt::Display for DecisionAnswer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for DecisionAnswer {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        [
            DecisionAnswer::Continue,
            DecisionAnswer::Cancel,
            DecisionAnswer::Retry,
            DecisionAnswer::Ignore,
            DecisionAnswer::Exit,
        ]
        .into_iter()
        .find(|a| a.as_str() == s)
        .ok_or_else(|| format!("unknown decision '{s}'; expected continue, cancel, retry, ignore or exit"))
    }
}

/// A process holding a file that is about to be replaced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HoldingProcess {
    /// Process id.
    pub pid: u32,
    /// Process name (from /proc/PID/comm).
    pub name: String,
    /// The files (paths under the install root) it holds.
    pub files: Vec<String>,
}

/// What kind of question is asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DecisionKind {
    /// A non-fatal warning: a warning prerequisite, an unreachable CRL endpoint.
    Warning {
        /// Stable code of the warning (`crl-unreachable`, `prerequisite`, …).
        code: String,
        /// Text the operator can copy to fix the cause (never a link: the server may have
        /// no browser and no internet, as the seeds explain).
        #[serde(default)]
        remediation: Option<String>,
    },
    /// Files about to be replaced are held by running processes.
    FilesInUse {
        /// Who holds what.
        processes: Vec<HoldingProcess>,
    },
}

/// A question the engine asks before it goes on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DecisionRequest {
    /// Per-install id of the question (stable across retries of the same report).
    pub id: u32,
    /// The phase that asks.
    pub phase: PhaseId,
    /// The question, for the operator.
    pub message: String,
    /// What is asked.
    #[serde(flatten)]
    pub kind: DecisionKind,
    /// The answers that are allowed.
    pub options: Vec<DecisionAnswer>,
}

impl DecisionRequest {
    /// The answers allowed for a kind of question.
    pub fn options_for(kind: &DecisionKind) -> Vec<DecisionAnswer> {
        match kind {
            DecisionKind::Warning { .. } => vec![DecisionAnswer::Continue, DecisionAnswer::Cancel],
            DecisionKind::FilesInUse { .. } => {
                vec![DecisionAnswer::Retry, DecisionAnswer::Ignore, DecisionAnswer::Exit]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decision_request_wire_shape() {
        let kind = DecisionKind::FilesInUse {
            processes: vec![HoldingProcess { pid: 42, name: "tail".into(), files: vec!["lib/a".into()] }],
        };
        let req = DecisionRequest {
            id: 1,
            phase: PhaseId::ValidateFiles,
            message: "files in use".into(),
            options: DecisionRequest::options_for(&kind),
            kind,
        };
        let v = serde_json::to_value(&req).unwrap();
        assert_eq!(v["kind"], "files-in-use");
        assert_eq!(v["options"], serde_json::json!(["retry", "ignore", "exit"]));
        assert_eq!(v["processes"][0]["pid"], 42);
        let back: DecisionRequest = serde_json::from_value(v).unwrap();
        assert_eq!(back, req);
        assert!("maybe".parse::<DecisionAnswer>().unwrap_err().contains("continue"));
    }
}

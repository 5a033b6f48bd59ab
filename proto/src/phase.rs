//! The install phases and their statuses: the one list every part of fleetup uses.
//!
//! The kebab-case ids are a stable contract (API, dashboard, logs, tests); never rename
//! one. The order of [`PhaseId::INSTALL`] is the order the engine runs them in.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// One phase of a rollup install, or the rollback that undoes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum PhaseId {
    /// Disk space, package integrity, permissions, prerequisites, CRL reachability.
    CheckSystem,
    /// Unpack and verify the payload into staging; run pre-install precompile commands.
    PrePrecompile,
    /// Operator-defined pre-install scripts.
    PreHooks,
    /// Stop the declared services, remembering which were running.
    StopServices,
    /// Find processes holding files that are about to be replaced.
    ValidateFiles,
    /// Back up and atomically replace files from staging; journaled.
    UpdateFiles,
    /// Post-install precompile commands on the new files.
    PostPrecompile,
    /// Start the services that were running before; health checks.
    StartServices,
    /// Operator-defined post-install scripts.
    PostHooks,
    /// Declared edits to configuration files.
    PatchConfig,
    /// Deploy the web app into a new versioned directory and switch to it.
    PatchWebapp,
    /// Remove backups and staging.
    Cleanup,
    /// Restore backups in reverse order and services to their prior state.
    Rollback,
}

/// What a cancel request does while a phase runs (DESIGN.md, "cancel" column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum Cancellability {
    /// Nothing has changed yet: the install simply ends.
    Immediate,
    /// The phase finishes stopping services, then restarts them and the install ends.
    AfterStopping,
    /// Services are restarted and the install ends.
    RestartServices,
    /// Everything done so far is rolled back.
    Rollback,
    /// Cancel is refused: undoing now would cost more than finishing.
    Refused,
}

impl PhaseId {
    /// The twelve install phases in the order the engine runs them.
    pub const INSTALL: [PhaseId; 12] = [
        PhaseId::CheckSystem,
        PhaseId::PrePrecompile,
        PhaseId::PreHooks,
        PhaseId::StopServices,
        PhaseId::ValidateFiles,
        PhaseId::UpdateFiles,
        PhaseId::PostPrecompile,
        PhaseId::StartServices,
        PhaseId::PostHooks,
        PhaseId::PatchConfig,
        PhaseId::PatchWebapp,
        PhaseId::Cleanup,
    ];

    /// Every phase id, install phases first, then `rollback`.
    pub const ALL: [PhaseId; 13] = [
        PhaseId::CheckSystem,
        PhaseId::PrePrecompile,
        PhaseId::PreHooks,
        PhaseId::StopServices,
        PhaseId::ValidateFiles,
        PhaseId::UpdateFiles,
        PhaseId::PostPrecompile,
        PhaseId::StartServices,
        PhaseId::PostHooks,
        PhaseId::PatchConfig,
        PhaseId::PatchWebapp,
        PhaseId::Cleanup,
        PhaseId::Rollback,
    ];

    /// The stable kebab-case id.
    pub const fn as_str(self) -> &'static str {
        match self {
            PhaseId::CheckSystem => "check-system",
            PhaseId::PrePrecompile => "pre-precompile",
            PhaseId::PreHooks => "pre-hooks",
            PhaseId::StopServices => "stop-services",
            PhaseId::ValidateFiles => "validate-files",
            PhaseId::UpdateFiles => "update-files",
            PhaseId::PostPrecompile => "post-precompile",
            PhaseId::StartServices => "start-services",
            PhaseId::PostHooks => "post-hooks",
            PhaseId::PatchConfig => "patch-config",
            PhaseId::PatchWebapp => "patch-webapp",
            PhaseId::Cleanup => "cleanup",
            PhaseId::Rollback => "rollback",
        }
    }

    /// 1-based position in the install sequence; `None` for `rollback`.
    pub fn number(self) -> Option<usize> {
        PhaseId::INSTALL.iter().position(|p| *p == self).map(|i| i + 1)
    }

    /// Short operator-facing title, in the words of the seeds' installer.
    pub const fn title(self) -> &'static str {
        match self {
            PhaseId::CheckSystem => "Checking system",
            PhaseId::PrePrecompile => "Staging and pre-install precompile",
            PhaseId::PreHooks => "Running custom scripts before patching",
            PhaseId::StopServices => "Stopping services",
            PhaseId::ValidateFiles => "Validating installation (files in use)",
            PhaseId::UpdateFiles => "Updating files",
            PhaseId::PostPrecompile => "Post-install precompile",
            PhaseId::StartServices => "Starting services",
            PhaseId::PostHooks => "Running custom scripts after patching",
            PhaseId::PatchConfig => "Patching configuration files",
            PhaseId::PatchWebapp => "Patching the web app",
            PhaseId::Cleanup => "Removing backup files",
            PhaseId::Rollback => "Rolling back",
        }
    }

    /// What a cancel does while this phase runs.
    pub const fn cancellability(self) -> Cancellability {
        match self {
            PhaseId::CheckSystem | PhaseId::PrePrecompile | PhaseId::PreHooks => Cancellability::Immediate,
            PhaseId::StopServices => Cancellability::AfterStopping,
            PhaseId::ValidateFiles => Cancellability::RestartServices,
            PhaseId::UpdateFiles => Cancellability::Rollback,
            _ => Cancellability::Refused,
        }
    }

    /// True while services are (or may be) down: from `stop-services` to `start-services`.
    pub const fn in_outage(self) -> bool {
        matches!(
            self,
            PhaseId::StopServices
                | PhaseId::ValidateFiles
                | PhaseId::UpdateFiles
                | PhaseId::PostPrecompile
                | PhaseId::StartServices
        )
    }
}

impl fmt::Display for PhaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown phase or status id.
#[derive(Debug, thiserror::Error)]
#[error("unknown {what} '{value}'; expected one of: {expected}")]
pub struct UnknownId {
    what: &'static str,
    value: String,
    expected: String,
}

impl FromStr for PhaseId {
    type Err = UnknownId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PhaseId::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownId {
            what: "phase",
            value: s.to_owned(),
            expected: PhaseId::ALL.map(PhaseId::as_str).join(", "),
        })
    }
}

/// The status of one phase of one install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum PhaseStatus {
    /// Not reached yet.
    Pending,
    /// Under way.
    Running,
    /// Finished without a problem.
    Succeeded,
    /// Finished, or waiting, with something the operator should see (a decision may be asked).
    Warning,
    /// Failed; the install ends (after rollback where one is due).
    Failed,
    /// Not needed for this rollup (e.g. no web app declared).
    Skipped,
    /// Ended by a cancel.
    Cancelled,
}

impl PhaseStatus {
    /// Every status, for listings and validation.
    pub const ALL: [PhaseStatus; 7] = [
        PhaseStatus::Pending,
        PhaseStatus::Running,
        PhaseStatus::Succeeded,
        PhaseStatus::Warning,
        PhaseStatus::Failed,
        PhaseStatus::Skipped,
        PhaseStatus::Cancelled,
    ];

    /// The stable kebab-case id.
    pub const fn as_str(self) -> &'static str {
        match self {
            PhaseStatus::Pending => "pending",
            PhaseStatus::Running => "running",
            PhaseStatus::Succeeded => "succeeded",
            PhaseStatus::Warning => "warning",
            PhaseStatus::Failed => "failed",
            PhaseStatus::Skipped => "skipped",
            PhaseStatus::Cancelled => "cancelled",
        }
    }

    /// True once the phase will not change any more.
    pub const fn is_terminal(self) -> bool {
        matches!(self, PhaseStatus::Succeeded | PhaseStatus::Failed | PhaseStatus::Skipped | PhaseStatus::Cancelled)
    }
}

impl fmt::Display for PhaseStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for PhaseStatus {
    type Err = UnknownId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PhaseStatus::ALL.into_iter().find(|p| p.as_str() == s).ok_or_else(|| UnknownId {
            what: "phase status",
            value: s.to_owned(),
            expected: PhaseStatus::ALL.map(PhaseStatus::as_str).join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_names_match_as_str_and_parse_back() {
        for p in PhaseId::ALL {
            let json = serde_json::to_string(&p).unwrap();
            assert_eq!(json, format!("\"{}\"", p.as_str()));
            assert_eq!(p.as_str().parse::<PhaseId>().unwrap(), p);
        }
        for s in PhaseStatus::ALL {
            let json = serde_json::to_string(&s).unwrap();
            assert_eq!(json, format!("\"{}\"", s.as_str()));
            assert_eq!(s.as_str().parse::<PhaseStatus>().unwrap(), s);
        }
    }

    #[test]
    fn install_order_is_the_designed_one() {
        let ids: Vec<_> = PhaseId::INSTALL.iter().map(|p| p.as_str()).collect();
        assert_eq!(
            ids,
            [
                "check-system",
                "pre-precompile",
                "pre-hooks",
                "stop-services",
                "validate-files",
                "update-files",
                "post-precompile",
                "start-services",
                "post-hooks",
                "patch-config",
                "patch-webapp",
                "cleanup"
            ]
        );
        assert_eq!(PhaseId::CheckSystem.number(), Some(1));
        assert_eq!(PhaseId::Rollback.number(), None);
    }

    #[test]
    fn cancel_is_refused_from_post_precompile_on() {
        let from = PhaseId::PostPrecompile.number().unwrap() - 1;
        for p in &PhaseId::INSTALL[from..] {
            assert_eq!(p.cancellability(), Cancellability::Refused, "{p}");
        }
        for p in &PhaseId::INSTALL[..from] {
            assert_ne!(p.cancellability(), Cancellability::Refused, "{p}");
        }
    }

    #[test]
    fn unknown_phase_error_lists_the_valid_ids() {
        let err = "stop-everything".parse::<PhaseId>().unwrap_err().to_string();
        assert!(err.contains("stop-everything") && err.contains("check-system"), "{err}");
    }
}

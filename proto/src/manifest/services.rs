//! `[[services]]`: what is stopped before and started after the file update, how, and
//! how its health is told.

use super::{ManifestError, check_relative, invalid};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;

/// `[[services]]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Service name, used in logs and the dashboard.
    pub name: String,
    /// systemd unit (default `<name>.service`) for the `systemd` backend.
    #[serde(default)]
    pub systemd_unit: Option<String>,
    /// How the `exec` backend runs the service.
    #[serde(default)]
    pub exec: Option<ExecService>,
    /// Deadline for the service to stop, in seconds.
    #[serde(default = "default_service_deadline")]
    pub stop_deadline_secs: u64,
    /// Deadline for the service to start, in seconds.
    #[serde(default = "default_service_deadline")]
    pub start_deadline_secs: u64,
    /// How to tell the started service is healthy.
    #[serde(default)]
    pub health: Option<HealthCheck>,
}

fn default_service_deadline() -> u64 {
    30
}

/// `[services.exec]`: a service run by the agent itself, for hosts without systemd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecService {
    /// Foreground command that is the service (run detached with `sh -c`).
    pub start: String,
    /// Command that stops it (default: SIGTERM to the pid in `pidfile`, then SIGKILL at the deadline).
    #[serde(default)]
    pub stop: Option<String>,
    /// Command whose exit status 0 means running (default: the pid in `pidfile` is alive).
    #[serde(default)]
    pub status: Option<String>,
    /// Pid file, relative to the install root.
    pub pidfile: String,
}

/// `[services.health]`: exactly one of `http` or `command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// URL answered with 2xx when healthy.
    #[serde(default)]
    pub http: Option<String>,
    /// Command that exits 0 when healthy.
    #[serde(default)]
    pub command: Option<String>,
    /// Text the HTTP body must contain (e.g. the new version).
    #[serde(default)]
    pub expect: Option<String>,
    /// How long to keep trying, in seconds.
    #[serde(default = "default_health_deadline")]
    pub deadline_secs: u64,
}

fn default_health_deadline() -> u64 {
    20
}

/// Names listed once, pidfiles inside the root, exactly one health probe.
pub(super) fn validate(services: &[Service]) -> Result<(), ManifestError> {
    let mut names = BTreeSet::new();
    for (i, s) in services.iter().enumerate() {
        if !names.insert(s.name.as_str()) {
            return Err(invalid(format!("services[{i}].name"), format!("'{}' is listed twice", s.name)));
        }
        if let Some(exec) = &s.exec {
            check_relative(&format!("services[{i}].exec.pidfile"), &exec.pidfile)?;
        }
        if let Some(h) = &s.health
            && h.http.is_some() == h.command.is_some()
        {
            return Err(invalid(format!("services[{i}].health"), "give exactly one of `http` or `command`"));
        }
    }
    Ok(())
}

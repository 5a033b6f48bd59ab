//! What `check-system` is told to verify before anything changes: the `[target]`, the
//! `[check]` settings with the from-version precondition, `[[prerequisites]]` and `[crl]`.

use super::{ManifestError, check_relative, invalid};
use serde::{Deserialize, Serialize};

/// `[target]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Operating system (`linux`); empty means any.
    #[serde(default)]
    pub os: String,
    /// Device class (matched against the agent's `device-class` label); empty means any.
    #[serde(default)]
    pub device_class: String,
}

/// `[check]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSettings {
    /// Free space required beyond payload + backups, in MiB.
    #[serde(default = "default_margin_mb")]
    pub free_space_margin_mb: u64,
    /// The versions this rollup upgrades from; any other installed version stops the
    /// install in `check-system`, before anything changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<FromVersion>,
}

impl Default for CheckSettings {
    fn default() -> Self {
        Self { free_space_margin_mb: default_margin_mb(), from_version: None }
    }
}

/// `[check.from_version]`: where the installed version is written, and which it may be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromVersion {
    /// A file under the install root whose content (trimmed) is the installed version.
    pub file: String,
    /// The versions this rollup may be installed over.
    pub versions: Vec<String>,
}

fn default_margin_mb() -> u64 {
    16
}

/// How bad a failed prerequisite is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// The install stops in `check-system`.
    Fatal,
    /// A decision is asked: continue or cancel.
    Warning,
}

/// What a prerequisite checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PrerequisiteCheck {
    /// An absolute path, or one relative to the install root, exists.
    FileExists {
        /// The path.
        path: String,
    },
    /// A command exits 0.
    CommandSucceeds {
        /// The command (`sh -c`).
        command: String,
    },
    /// A Debian package is installed at `min_version` or later (dpkg).
    PackageVersion {
        /// The dpkg package name.
        package: String,
        /// Lowest acceptable version (dpkg version ordering).
        min_version: String,
    },
}

/// `[[prerequisites]]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prerequisite {
    /// What is checked.
    #[serde(flatten)]
    pub check: PrerequisiteCheck,
    /// Fatal or warning.
    pub severity: Severity,
    /// What the operator is told when it fails, ideally with how to fix it.
    pub message: String,
}

/// `[crl]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlSettings {
    /// Whether certificate revocation checking is on for this software; when off,
    /// the endpoints are not probed.
    #[serde(default = "yes")]
    pub revocation_checking: bool,
    /// CRL URLs that the software contacts while installing or starting.
    pub endpoints: Vec<String>,
    /// Deadline of each probe (all run in parallel), in seconds.
    #[serde(default = "default_crl_deadline")]
    pub probe_deadline_secs: u64,
}

fn yes() -> bool {
    true
}

fn default_crl_deadline() -> u64 {
    3
}

/// The checks' own rules: a from-version file inside the root with at least one version,
/// CRL URLs and deadlines in range.
pub(super) fn validate(check: &CheckSettings, crl: Option<&CrlSettings>) -> Result<(), ManifestError> {
    if let Some(crl) = crl {
        for (i, url) in crl.endpoints.iter().enumerate() {
            // A placeholder may supply the scheme; the engine checks again after expansion.
            if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("${")) {
                return Err(invalid(format!("crl.endpoints[{i}]"), format!("'{url}' is not an http(s) URL")));
            }
        }
        if crl.probe_deadline_secs == 0 || crl.probe_deadline_secs > 60 {
            return Err(invalid("crl.probe_deadline_secs", "must be between 1 and 60 seconds"));
        }
    }
    if let Some(f) = &check.from_version {
        check_relative("check.from_version.file", &f.file)?;
        if f.versions.is_empty() {
            return Err(invalid("check.from_version.versions", "list at least one version to upgrade from"));
        }
    }
    Ok(())
}

//! The rollup manifest (`manifest.toml`): what a package installs and how.
//!
//! Documented field by field in `docs/manifest.md`. Every path in a manifest is relative:
//! install paths to the install root, sources to the package. [`Manifest::validate`]
//! rejects anything that could reach outside either, so the engine never has to.
//!
//! Strings that the engine runs or fetches (commands, health URLs) may use `${name}`
//! placeholders, filled by [`expand`] from the built-in variables (`root`, `staging`,
//! `state_dir`, `version`) and the host's own variables (`--var name=value`).

//!
//! One file per concept: [`files`], [`services`], [`checks`] (target, preconditions,
//! prerequisites, CRL), [`hooks`] (precompile and scripts), [`patches`], [`webapp`] and
//! [`paths`] (relative paths and placeholders). Each has its own part of the validation;
//! [`Manifest::validate`] runs them all.

mod checks;
mod files;
mod hooks;
mod patches;
mod paths;
mod services;
#[cfg(test)]
mod tests;
mod webapp;

pub use checks::{CheckSettings, CrlSettings, FromVersion, Prerequisite, PrerequisiteCheck, Severity, Target};
pub use files::{FileAction, FileChange, parse_mode};
pub use hooks::{Command, Precompile, Scripts};
pub use patches::{ConfigPatch, PatchEdit};
pub use paths::{check_relative, expand, normal_path};
pub use services::{ExecService, HealthCheck, Service};
pub use webapp::Webapp;

use serde::{Deserialize, Serialize};

/// A parsed rollup manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Name and version of the rollup.
    pub rollup: Rollup,
    /// Which servers it is for.
    #[serde(default)]
    pub target: Target,
    /// Tunables of `check-system`.
    #[serde(default)]
    pub check: CheckSettings,
    /// Files added, replaced or removed under the install root.
    #[serde(default)]
    pub files: Vec<FileChange>,
    /// Services to stop before and start after the file update.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Conditions checked in `check-system`.
    #[serde(default)]
    pub prerequisites: Vec<Prerequisite>,
    /// Certificate revocation list endpoints probed in `check-system`.
    #[serde(default)]
    pub crl: Option<CrlSettings>,
    /// Commands run before (on staging) and after (on the new files) the update.
    #[serde(default)]
    pub precompile: Precompile,
    /// Scripts shipped in the package, run as hooks.
    #[serde(default)]
    pub scripts: Scripts,
    /// Edits to configuration files under the install root.
    #[serde(default)]
    pub config_patches: Vec<ConfigPatch>,
    /// A web application deployed into a new versioned directory.
    #[serde(default)]
    pub webapp: Option<Webapp>,
}

/// `[rollup]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollup {
    /// Product name, e.g. `demo-service`.
    pub name: String,
    /// Version this rollup installs, e.g. `1.1.0`.
    pub version: String,
    /// One line for the operator.
    #[serde(default)]
    pub description: String,
}

/// A manifest that cannot be used, with what is wrong and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// Not valid TOML or not the schema.
    #[error("manifest.toml is not valid: {0}")]
    Parse(String),
    /// A field has a value that is not allowed.
    #[error("manifest.toml: {field}: {problem}")]
    Invalid {
        /// Which field, e.g. `files[2].path`.
        field: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ManifestError {
    ManifestError::Invalid { field: field.into(), problem: problem.into() }
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Serialises to TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a manifest always serialises")
    }

    /// Checks everything serde cannot: relative safe paths, no duplicates, exactly one
    /// health probe, parsable modes, absolute URLs.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.rollup.name.trim().is_empty() {
            return Err(invalid("rollup.name", "must not be empty"));
        }
        check_version(&self.rollup.version)?;
        files::validate(&self.files)?;
        services::validate(&self.services)?;
        checks::validate(&self.check, self.crl.as_ref())?;
        hooks::validate(&self.precompile, &self.scripts)?;
        patches::validate(&self.config_patches)?;
        if let Some(w) = &self.webapp {
            webapp::validate(w)?;
        }
        Ok(())
    }

    /// The package directories of `tree` entries.
    pub fn referenced_package_dirs(&self) -> Vec<String> {
        self.files.iter().filter(|f| f.action == FileAction::Tree).map(FileChange::source_path).collect()
    }

    /// Every path inside the package that the manifest refers to (payload sources,
    /// scripts, the web app directory prefix is not included).
    pub fn referenced_package_files(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .files
            .iter()
            .filter(|f| matches!(f.action, FileAction::Add | FileAction::Replace))
            .map(FileChange::source_path)
            .collect();
        out.extend(self.scripts.all().cloned());
        out
    }
}

/// A version names a directory (`<web_root>/releases/<version>`) and is shown
/// everywhere: letters, digits and `.` `_` `+` `~` `-`, starting with a letter or digit,
/// at most 64 characters. `../../..` or `1.0/x` would put the web app elsewhere.
pub fn check_version(version: &str) -> Result<(), ManifestError> {
    let field = "rollup.version";
    if version.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    let first_ok = version.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let chars_ok = version.chars().all(|c| c.is_ascii_alphanumeric() || "._+~-".contains(c));
    if !first_ok || !chars_ok || version.len() > 64 {
        return Err(invalid(
            field,
            format!(
                "'{version}' is not a version: use letters, digits and . _ + ~ - (starting with a letter or digit, \
                 at most 64 characters), e.g. 1.1.0"
            ),
        ));
    }
    Ok(())
}

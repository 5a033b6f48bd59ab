//! Commands the engine runs: `[precompile]` before and after the file update, and the
//! `[scripts]` hooks shipped in the package.

use super::{ManifestError, check_relative, invalid};
use serde::{Deserialize, Serialize};

/// `[precompile]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Precompile {
    /// Run in `pre-precompile`, on the staged files, while services still run.
    #[serde(default)]
    pub before: Vec<Command>,
    /// Run in `post-precompile`, on the installed files.
    #[serde(default)]
    pub after: Vec<Command>,
}

/// A command with a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Run with `sh -c`, working directory the install root (or staging for `before`).
    pub command: String,
    /// Killed (with its process group) after this many seconds.
    #[serde(default = "default_command_deadline")]
    pub deadline_secs: u64,
    /// (`precompile.after` only) Run once the services have started and are healthy,
    /// outside the outage, instead of in `post-precompile` before they start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_start: bool,
}

fn default_command_deadline() -> u64 {
    300
}

/// `[scripts]`: hook scripts shipped in the package (paths in the package).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scripts {
    /// Run in `pre-hooks`, after the host's `pre-install.d` scripts.
    #[serde(default)]
    pub pre_install: Vec<String>,
    /// Run in `post-hooks`, after the host's `post-install.d` scripts.
    #[serde(default)]
    pub post_install: Vec<String>,
    /// Run during `rollback`, after files are restored and before services start.
    #[serde(default)]
    pub rollback: Vec<String>,
    /// Run at the end of `post-hooks`, once the services are healthy and the other
    /// post-install hooks passed: the point of commit (Mender's ArtifactCommit). A
    /// failure still rolls back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commit: Vec<String>,
    /// Run when an install ends without success, after any rollback (Mender's `_Error`
    /// states): to alert or clean up. Their own failure is reported, never changes the
    /// outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error: Vec<String>,
    /// Deadline of each script, in seconds.
    #[serde(default = "default_command_deadline")]
    pub deadline_secs: u64,
}

impl Scripts {
    /// Every script, in the order the hooks are listed.
    pub fn all(&self) -> impl Iterator<Item = &String> {
        self.pre_install.iter().chain(&self.post_install).chain(&self.rollback).chain(&self.commit).chain(&self.error)
    }
}

/// Only `after` commands may run after the start; scripts are package paths.
pub(super) fn validate(precompile: &Precompile, scripts: &Scripts) -> Result<(), ManifestError> {
    if let Some(i) = precompile.before.iter().position(|c| c.after_start) {
        return Err(invalid(
            format!("precompile.before[{i}].after_start"),
            "only a `precompile.after` command can run after the start",
        ));
    }
    for (i, s) in scripts.all().enumerate() {
        check_relative(&format!("scripts[{i}]"), s)?;
    }
    Ok(())
}

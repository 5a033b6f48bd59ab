//! Operator hooks: the host's own scripts (`<state-dir>/hooks/<kind>.d/*`, sorted) and the
//! package's (`[scripts]`), in that order, each with the scripts' deadline.
//!
//! Four moments, after Mender's states: `pre-install` (nothing changed yet), `post-install`
//! and `commit` (the services are up and healthy; a failure rolls back), and `error` (the
//! install ended without success, after any rollback: alerting and cleanup, never changing
//! the outcome). A hook that exits 75 (EX_TEMPFAIL) asks to retry the install later.

use super::run::{PhaseResult, Run, Stop};
use fleetup_proto::{InstallOutcome, PhaseId, PhaseStatus};
use std::fs;
use std::path::PathBuf;

impl Run<'_> {
    /// The host's hooks of `kind`, then the package's `scripts` (staged paths).
    fn hook_scripts(&self, kind: &str, package: &[String]) -> Vec<PathBuf> {
        let mut scripts: Vec<PathBuf> = fs::read_dir(self.state_dir.join("hooks").join(format!("{kind}.d")))
            .map(|rd| rd.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect())
            .unwrap_or_default();
        scripts.sort();
        scripts.extend(package.iter().map(|s| self.pkg().join(s)));
        scripts
    }

    /// Runs `scripts` in order for phase `p`; the first failure stops them.
    fn run_hooks(&mut self, p: PhaseId, scripts: &[PathBuf]) -> Result<(), Stop> {
        let deadline = self.manifest().scripts.deadline_secs;
        for s in scripts {
            self.check_cancel(p)?;
            let cmd = format!("sh '{}'", s.display());
            self.shell_named(p, &cmd, &format!("hook {} failed", s.display()), &self.root, deadline)?;
            self.em.emit(p, PhaseStatus::Running, format!("hook {} done", s.display()), serde_json::Value::Null);
        }
        self.check_cancel(p)
    }

    pub(crate) fn pre_hooks(&mut self) -> PhaseResult {
        let scripts = self.hook_scripts("pre-install", &self.manifest().scripts.pre_install.clone());
        if scripts.is_empty() {
            return Ok((PhaseStatus::Skipped, "no hooks".into()));
        }
        self.run_hooks(PhaseId::PreHooks, &scripts)?;
        Ok((PhaseStatus::Succeeded, format!("{} hook(s) ran", scripts.len())))
    }

    /// Post-install hooks, then the commit hooks (the point of commit).
    pub(crate) fn post_hooks(&mut self) -> PhaseResult {
        let m = self.manifest().clone();
        let post = self.hook_scripts("post-install", &m.scripts.post_install);
        let commit = self.hook_scripts("commit", &m.scripts.commit);
        if post.is_empty() && commit.is_empty() {
            return Ok((PhaseStatus::Skipped, "no hooks".into()));
        }
        self.run_hooks(PhaseId::PostHooks, &post)?;
        self.run_hooks(PhaseId::PostHooks, &commit)?;
        Ok((PhaseStatus::Succeeded, format!("{} post-install and {} commit hook(s) ran", post.len(), commit.len())))
    }

    /// The error hooks of an install that ended with `outcome`; each one's failure is
    /// reported as a warning and the next still runs. `FLEETUP_OUTCOME` and
    /// `FLEETUP_ERROR` tell them what happened.
    pub(crate) fn error_hooks(&mut self, outcome: InstallOutcome, p: PhaseId, error: &str) {
        // The package's scripts exist only once staged.
        let package = match &self.manifest {
            Some(m) if self.pkg().exists() => m.scripts.error.clone(),
            _ => Vec::new(),
        };
        let scripts = self.hook_scripts("error", &package);
        let deadline = self.manifest.as_ref().map_or(300, |m| m.scripts.deadline_secs);
        for s in &scripts {
            let cmd = format!(
                "FLEETUP_OUTCOME='{}' FLEETUP_ERROR='{}' sh '{}'",
                outcome,
                error.replace('\'', "'\\''"),
                s.display()
            );
            // Run as part of the rollback (never cancelled: the cancel may be why the
            // install ended), logged to rollback.log; reported under the phase that ended it.
            let what = format!("error hook {}", s.display());
            let result = self.shell_named(PhaseId::Rollback, &cmd, &what, &self.root, deadline);
            let (status, msg) = match result {
                Ok(()) => (PhaseStatus::Running, format!("error hook {} done", s.display())),
                Err(Stop::Failed(e) | Stop::Cancelled(e) | Stop::Exit(e) | Stop::AlreadyInstalled(e)) => {
                    (PhaseStatus::Warning, format!("{e} (the outcome stays {outcome})"))
                }
            };
            self.em.emit(p, status, msg, serde_json::Value::Null);
        }
    }
}

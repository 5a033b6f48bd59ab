//! Commit hooks after the health checks, error hooks apart from rollback, and the exit
//! status that means "retry later".

use crate::support::{Fixture, crl_stub_ok, parse_events, tree};
use fleetup_agent::engine::AutoDecider;
use fleetup_proto::{EngineEvent, InstallOutcome, PhaseId};
use std::sync::Arc;

#[test]
fn a_commit_hook_runs_with_the_new_service_up_and_error_hooks_only_on_failure() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let committed = fx.tmp.path().join("committed");
    let errored = fx.tmp.path().join("errored");
    fx.host_hook(
        "commit.d",
        "10-commit",
        &format!("kill -0 \"$(cat run/demo.pid)\" && touch '{}'", committed.display()),
    );
    fx.host_hook("error.d", "10-alert", &format!("echo \"$FLEETUP_OUTCOME\" > '{}'", errored.display()));
    let (summary, _) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
    assert!(committed.exists(), "the commit hook did not run with the service up");
    assert!(!errored.exists(), "the error hook ran after a success");
}

#[test]
fn a_failing_commit_hook_rolls_back_and_the_error_hook_is_told() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let errored = fx.tmp.path().join("errored");
    fx.host_hook("commit.d", "10-commit", "echo 'smoke test failed' >&2; exit 3");
    fx.host_hook("error.d", "10-alert", &format!("echo \"$FLEETUP_OUTCOME\" > '{}'", errored.display()));
    let before = tree(&fx.root);
    let (summary, _) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::RolledBack, "{summary:?}");
    assert_eq!(summary.failed_phase, Some(PhaseId::PostHooks));
    assert_eq!(tree(&fx.root), before);
    assert_eq!(std::fs::read_to_string(&errored).unwrap(), "rolled-back\n");
    fx.wait_version("1.0.0");
}

#[test]
fn a_hook_exiting_75_ends_the_install_with_retry_later_and_exit_75() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    fx.host_hook("pre-install.d", "10-window", "echo 'outside the maintenance window' >&2; exit 75");
    let before = tree(&fx.root);
    let out = fx.cli().output().unwrap();
    assert_eq!(out.status.code(), Some(75), "{}", String::from_utf8_lossy(&out.stderr));
    let events = parse_events(&out.stdout);
    let last = events.last().unwrap();
    let summary = last.summary().unwrap();
    assert_eq!(summary.outcome, InstallOutcome::Failed);
    assert!(summary.error.as_deref().unwrap().starts_with("retry later:"), "{summary:?}");
    assert_eq!(last.data["retry_later"], true);
    assert!(!events.iter().any(|e: &EngineEvent| e.phase == PhaseId::StopServices));
    assert_eq!(tree(&fx.root), before);
}

//! Failures before any change leave everything untouched; failures after roll back.

use crate::support::{Fixture, crl_stub_ok, tree};
use fleetup_agent::engine::{AutoDecider, ScriptedDecider};
use fleetup_proto::{DecisionAnswer, DecisionKind, InstallOutcome, PhaseId, PhaseStatus};
use std::sync::Arc;

#[test]
fn failing_pre_hook_leaves_everything_untouched() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    fx.host_hook("pre-install.d", "50-fail", "echo 'backup target unavailable' >&2; exit 7");
    let before = tree(&fx.root);
    let pid = fx.service_pid();
    let (summary, events) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Failed, "{summary:?}");
    assert_eq!(summary.failed_phase, Some(PhaseId::PreHooks));
    let error = summary.error.as_deref().unwrap();
    assert_eq!(error.matches("50-fail").count(), 1, "the hook is named once: {error}");
    assert!(error.contains("failed: exit status: 7"), "{error}");
    assert_eq!(tree(&fx.root), before);
    assert_eq!(fx.service_pid(), pid, "the service was restarted");
    assert!(fx.service_running());
    assert!(!events.iter().any(|e| e.phase == PhaseId::StopServices || e.phase == PhaseId::Rollback));
    assert!(fx.leftover_staging().is_empty());
}

#[test]
fn failing_health_check_rolls_back() {
    let fx = Fixture::new(&crl_stub_ok(), |t| {
        t.replace("deadline_secs = 8\n\n[[prerequisites]]", "deadline_secs = 2\n\n[[prerequisites]]")
    });
    // The new version is listed as unhealthy on this host: /health answers 503.
    fx.mark_unhealthy("1.1.0");
    let before = tree(&fx.root);
    let (summary, events) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::RolledBack, "{summary:?}");
    assert_eq!(summary.failed_phase, Some(PhaseId::StartServices));
    assert!(summary.error.as_deref().unwrap().contains("503"), "{summary:?}");
    assert!(events.iter().any(|e| e.phase == PhaseId::Rollback && e.status == PhaseStatus::Succeeded));
    assert!(events.iter().any(|e| e.phase == PhaseId::Rollback && e.message.contains("rollback script")));
    // The outage lasts until the rollback has the old version running again, not only
    // until the new one failed to start.
    let stop = events.iter().find(|e| e.phase == PhaseId::StopServices).unwrap().at;
    let since_stop = |e: &fleetup_proto::EngineEvent| (e.at - stop).num_milliseconds() as u64;
    let again = events.iter().find(|e| e.phase == PhaseId::Rollback && e.message.contains("running again")).unwrap();
    let last = events.iter().rev().find(|e| e.phase == PhaseId::Rollback).unwrap();
    assert!(
        (since_stop(again)..=since_stop(last)).contains(&summary.outage_ms),
        "outage {} ms; the old version ran again at {} ms, the rollback ended at {} ms",
        summary.outage_ms,
        since_stop(again),
        since_stop(last)
    );
    assert_eq!(tree(&fx.root), before);
    assert!(fx.leftover_staging().is_empty());
    fx.wait_version("1.0.0");
}

#[test]
fn missing_fatal_prerequisite_stops_in_check_system() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    std::fs::remove_file(fx.root.join("etc/demo.conf")).unwrap();
    let before = tree(&fx.root);
    let (summary, events) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Failed);
    assert_eq!(summary.failed_phase, Some(PhaseId::CheckSystem));
    assert!(summary.error.as_deref().unwrap().contains("etc/demo.conf is missing"), "{summary:?}");
    assert!(events.iter().all(|e| e.phase == PhaseId::CheckSystem), "a phase after check-system ran");
    assert_eq!(tree(&fx.root), before);
    assert!(fx.leftover_staging().is_empty());
    fx.wait_version("1.0.0");
}

#[test]
fn warning_prerequisite_asks_and_cancel_ends_untouched() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    std::fs::write(fx.root.join("etc/maintenance-mode"), "ops is on it\n").unwrap();
    let before = tree(&fx.root);
    let decider = Arc::new(ScriptedDecider::new(|_| DecisionAnswer::Cancel));
    let (summary, events) = fx.install_lib(decider.clone(), |_, _| {});
    let asked = decider.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0].phase, PhaseId::CheckSystem);
    assert!(matches!(&asked[0].kind, DecisionKind::Warning { code, .. } if code == "prerequisite"));
    assert!(asked[0].message.contains("maintenance mode"));
    // What the operator reads (the question and its copyable text) says it once.
    let DecisionKind::Warning { remediation, .. } = &asked[0].kind else { unreachable!() };
    let shown = format!("{}\n{}", asked[0].message, remediation.as_deref().unwrap_or_default());
    assert_eq!(shown.matches("in maintenance mode").count(), 1, "{shown}");
    assert_eq!(asked[0].options, vec![DecisionAnswer::Continue, DecisionAnswer::Cancel]);
    assert!(events.iter().any(|e| e.data.get("decision").is_some()), "decision not in the event stream");
    assert_eq!(summary.outcome, InstallOutcome::Cancelled);
    assert_eq!(tree(&fx.root), before);
    fx.wait_version("1.0.0");
}

#[test]
fn warning_prerequisite_continue_installs() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    std::fs::write(fx.root.join("etc/maintenance-mode"), "done\n").unwrap();
    let decider = Arc::new(ScriptedDecider::new(|_| DecisionAnswer::Continue));
    let (summary, events) = fx.install_lib(decider, |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
    assert!(events.iter().any(|e| e.phase == PhaseId::CheckSystem && e.status == PhaseStatus::Warning));
    fx.wait_version("1.1.0");
}

#[test]
fn a_rollback_with_a_missing_or_replaced_backup_is_recovery_required_naming_the_files() {
    let fx = Fixture::new(&crl_stub_ok(), |t| {
        t.replace("deadline_secs = 8\n\n[[prerequisites]]", "deadline_secs = 2\n\n[[prerequisites]]")
    });
    fx.mark_unhealthy("1.1.0");
    let tmp = fx.tmp.path().to_path_buf();
    // Once the files are in place, one backup disappears and another is overwritten.
    let (summary, events) = fx.install_lib(Arc::new(AutoDecider::default()), move |ev, _| {
        if ev.phase == PhaseId::StartServices && ev.data.get("number").is_some() {
            let backup = Fixture::staging_dir(&tmp).join("backup/lib/demo");
            std::fs::remove_file(backup.join("legacy.txt")).unwrap();
            let other = backup.join("messages.other");
            std::fs::write(&other, "not the old messages\n").unwrap();
            std::fs::rename(&other, backup.join("messages.txt")).unwrap();
        }
    });
    assert_eq!(summary.outcome, InstallOutcome::RecoveryRequired, "{summary:?}");
    let error = summary.error.unwrap_or_default();
    for want in ["lib/demo/legacy.txt: its backup", "is missing", "lib/demo/messages.txt: its backup", "another file"] {
        assert!(error.contains(want), "the error does not say '{want}': {error}");
    }
    assert!(
        !events.iter().any(|e| e.message.contains("holds the previous version")),
        "the rollback claimed the previous version"
    );
    assert!(!fx.root.join("lib/demo/legacy.txt").exists());
    // What could be restored was, and the old version runs again.
    fx.wait_version("1.0.0");
}

#[test]
fn config_patches_are_in_place_when_the_services_start_and_the_health_check_covers_them() {
    // A second edit of etc/demo.conf lists the new version as unhealthy: the new service
    // must start on the patched file, fail its health check, and roll everything back.
    let fx = Fixture::new(&crl_stub_ok(), |t| {
        t.replace("deadline_secs = 8\n\n[[prerequisites]]", "deadline_secs = 2\n\n[[prerequisites]]")
            + "\n[[config_patches]]\nfile = \"etc/demo.conf\"\nformat = \"key-value\"\nkey = \"unhealthy_versions\"\nvalue = \"1.1.0\"\n"
    });
    let before = tree(&fx.root);
    let (summary, events) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::RolledBack, "{summary:?}");
    assert_eq!(summary.failed_phase, Some(PhaseId::StartServices), "{summary:?}");
    assert!(summary.error.as_deref().unwrap_or_default().contains("503"), "{summary:?}");
    assert!(!events.iter().any(|e| e.phase == PhaseId::PatchConfig), "patch-config ran after the start");
    assert_eq!(tree(&fx.root), before, "the config files are not the originals again");
    fx.wait_version("1.0.0");
}

#[test]
fn a_from_version_precondition_stops_an_install_over_another_version() {
    let from = |versions: &'static str| {
        move |t: String| {
            t.replace(
                "free_space_margin_mb = 8\n",
                &format!("free_space_margin_mb = 8\n\n[check.from_version]\nfile = \"lib/demo/VERSION\"\nversions = {versions}\n"),
            )
        }
    };
    let fx = Fixture::new(&crl_stub_ok(), from(r#"["0.9.0", "0.9.1"]"#));
    let before = tree(&fx.root);
    let (summary, _) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Failed, "{summary:?}");
    assert_eq!(summary.failed_phase, Some(PhaseId::CheckSystem));
    let error = summary.error.unwrap_or_default();
    assert!(
        error.contains("upgrades from 0.9.0, 0.9.1, but lib/demo/VERSION says the installed version is 1.0.0"),
        "{error}"
    );
    assert_eq!(tree(&fx.root), before);

    let fx = Fixture::new(&crl_stub_ok(), from(r#"["1.0.0"]"#));
    let (summary, _) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
}

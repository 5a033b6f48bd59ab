//! A cancel in each cancellable phase leaves the root byte-identical and the service as
//! it was; from post-precompile on a cancel is refused with the reason.

use crate::support::{Fixture, crl_stub_ok, tree};
use fleetup_agent::engine::AutoDecider;
use fleetup_proto::{InstallOutcome, PhaseId, PhaseStatus};
use std::sync::{Arc, Mutex};

fn cancel_in(phase: PhaseId) {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let before = tree(&fx.root);
    let hosts_before = std::fs::read(&fx.hosts).unwrap();
    let (summary, events) = fx.install_lib(Arc::new(AutoDecider::default()), move |ev, cancel| {
        let start = ev.status == PhaseStatus::Running && ev.data.get("number").is_some();
        let trigger = if phase == PhaseId::UpdateFiles {
            // Mid-phase: on a progress event, i.e. after files were renamed into place
            // and before `committed` (the set is small: its only progress event is the
            // last file's).
            ev.phase == phase && ev.data.pointer("/progress/done").is_some()
        } else {
            ev.phase == phase && start
        };
        if trigger {
            cancel.cancel().unwrap();
        }
    });
    assert_eq!(summary.outcome, InstallOutcome::Cancelled, "{phase}: {summary:?}");
    assert_eq!(summary.failed_phase, Some(phase));
    assert!(
        events.iter().any(|e| e.phase == phase && e.status == PhaseStatus::Cancelled),
        "{phase}: no cancelled event"
    );
    assert_eq!(tree(&fx.root), before, "{phase}: root changed");
    assert_eq!(std::fs::read(&fx.hosts).unwrap(), hosts_before);
    assert!(fx.leftover_staging().is_empty(), "{phase}: staging left");
    assert!(fx.service_running(), "{phase}: service not running");
    fx.wait_version("1.0.0");
    let rolled = events.iter().any(|e| e.phase == PhaseId::Rollback);
    assert_eq!(rolled, phase == PhaseId::UpdateFiles, "{phase}: rollback only when files changed");
    let stopped = events.iter().any(|e| e.phase == PhaseId::StopServices);
    assert_eq!(stopped, phase >= PhaseId::StopServices, "{phase}: services touched before stop-services");
}

#[test]
fn cancel_in_check_system() {
    cancel_in(PhaseId::CheckSystem);
}

#[test]
fn cancel_in_pre_precompile() {
    cancel_in(PhaseId::PrePrecompile);
}

#[test]
fn cancel_in_pre_hooks() {
    cancel_in(PhaseId::PreHooks);
}

#[test]
fn cancel_in_stop_services_finishes_stopping_then_restarts() {
    cancel_in(PhaseId::StopServices);
}

#[test]
fn cancel_in_validate_files_restarts_services() {
    cancel_in(PhaseId::ValidateFiles);
}

#[test]
fn cancel_in_update_files_rolls_back_completely() {
    cancel_in(PhaseId::UpdateFiles);
}

#[test]
fn cancel_is_refused_from_post_precompile_on() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let refusals = Arc::new(Mutex::new(Vec::new()));
    let r = refusals.clone();
    let (summary, _) = fx.install_lib(Arc::new(AutoDecider::default()), move |ev, cancel| {
        if ev.status == PhaseStatus::Running && ev.data.get("number").is_some() && ev.phase >= PhaseId::PostPrecompile {
            r.lock().unwrap().push((ev.phase, cancel.cancel()));
        }
    });
    assert_eq!(summary.outcome, InstallOutcome::Succeeded);
    let refusals = refusals.lock().unwrap();
    assert_eq!(refusals.len(), 6);
    for (phase, result) in refusals.iter() {
        let msg = result.as_ref().unwrap_err();
        assert!(msg.contains("refused") && msg.contains(phase.as_str()) && msg.contains("new files"), "{msg}");
    }
    fx.wait_version("1.1.0");
}

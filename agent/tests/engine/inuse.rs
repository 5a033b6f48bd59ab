//! Files in use: asked while the services still run (thinking time is not outage); the
//! holding process is named; retry after it exits proceeds; exit changes nothing; an
//! ignored holder is not asked about again after the services stop.

use crate::support::{Fixture, crl_stub_ok, tree};
use fleetup_agent::engine::ScriptedDecider;
use fleetup_proto::{DecisionAnswer, DecisionKind, InstallOutcome, PhaseId};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// `tail -f` on a file the rollup replaces, in the root; waits until it has it open.
fn hold(fx: &Fixture) -> Child {
    let child = Command::new("tail")
        .args(["-f", "lib/demo/messages.txt"])
        .current_dir(&fx.root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let target = fx.root.join("lib/demo/messages.txt").canonicalize().unwrap();
    let fd_dir = format!("/proc/{}/fd", child.id());
    fleetup_e2e::wait_for("tail to open the file", Duration::from_secs(5), || {
        std::fs::read_dir(&fd_dir)
            .ok()?
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).ok().as_ref() == Some(&target))
            .then_some(())
    });
    child
}

#[test]
fn holder_is_named_and_retry_after_it_exits_proceeds() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let holder = Arc::new(Mutex::new(Some(hold(&fx))));
    let pid = holder.lock().unwrap().as_ref().unwrap().id();
    let h = holder.clone();
    let service = fx.service_pid().unwrap();
    let service_up_when_asked = Arc::new(Mutex::new(None));
    let up = service_up_when_asked.clone();
    let decider = Arc::new(ScriptedDecider::new(move |req| {
        if let DecisionKind::FilesInUse { .. } = req.kind
            && let Some(mut c) = h.lock().unwrap().take()
        {
            *up.lock().unwrap() = Some(fleetup_agent::engine::pid_alive(service));
            c.kill().unwrap();
            c.wait().unwrap();
        }
        DecisionAnswer::Retry
    }));
    let (summary, _) = fx.install_lib(decider.clone(), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
    assert!(!summary.restart_required);
    let asked = decider.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].phase, PhaseId::StopServices);
    assert_eq!(*service_up_when_asked.lock().unwrap(), Some(true), "asked after the service was stopped");
    assert!(asked[0].message.contains("services still running"), "{}", asked[0].message);
    assert_eq!(asked[0].options, vec![DecisionAnswer::Retry, DecisionAnswer::Ignore, DecisionAnswer::Exit]);
    let DecisionKind::FilesInUse { processes } = &asked[0].kind else { panic!() };
    let p = processes.iter().find(|p| p.pid == pid).unwrap_or_else(|| panic!("holder {pid} not named: {processes:?}"));
    assert_eq!(p.name, "tail");
    assert_eq!(p.files, vec!["lib/demo/messages.txt".to_owned()]);
    assert!(asked[0].message.contains("tail") && asked[0].message.contains(&pid.to_string()));
    fx.wait_version("1.1.0");
}

#[test]
fn exit_restores_services_and_changes_nothing() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let mut holder = hold(&fx);
    let before = tree(&fx.root);
    let service = fx.service_pid();
    let decider = Arc::new(ScriptedDecider::new(|_| DecisionAnswer::Exit));
    let (summary, _) = fx.install_lib(decider.clone(), |_, _| {});
    let asked = decider.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert_eq!(asked[0].phase, PhaseId::StopServices, "{asked:?}");
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(summary.outcome, InstallOutcome::Cancelled, "{summary:?}");
    assert_eq!(summary.failed_phase, Some(PhaseId::StopServices));
    assert_eq!(fx.service_pid(), service, "the service was stopped and started again");
    assert!(summary.error.as_deref().unwrap().contains("tail"), "{summary:?}");
    assert_eq!(tree(&fx.root), before);
    assert!(fx.service_running());
    fx.wait_version("1.0.0");
}

#[test]
fn ignore_marks_restart_required() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let mut holder = hold(&fx);
    let decider = Arc::new(ScriptedDecider::new(|_| DecisionAnswer::Ignore));
    let (summary, _) = fx.install_lib(decider.clone(), |_, _| {});
    holder.kill().unwrap();
    holder.wait().unwrap();
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
    assert!(summary.restart_required);
    let asked = decider.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "the ignored holder was asked about again: {asked:?}");
    fx.wait_version("1.1.0");
}

//! One install per state dir and root: a second `install` or a `recover` while an install
//! runs is refused with the holder's pid, and touches nothing; once the holder dies
//! (SIGKILL: the kernel drops its lock), recovery proceeds.

use crate::support::{Fixture, crl_stub_ok, parse_events, spawn_paused, tree};
use fleetup_agent::engine::PAUSE_RENAME_ENV;
use fleetup_proto::{EngineEvent, InstallOutcome};
use std::process::Command;

fn recover_cmd(fx: &Fixture) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_fleetup-agent"));
    c.arg("recover").arg("--state-dir").arg(&fx.state).arg("--json");
    c
}

/// Runs `cmd` and checks it was refused because `pid` holds `what`, leaving the tree alone.
fn assert_refused(mut cmd: Command, label: &str, pid: u32, what: &str) {
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{label}: exit status; stderr: {stderr}");
    assert!(parse_events(&out.stdout).is_empty(), "{label}: the refused engine reported events");
    for want in [what, &format!("pid {pid} (install"), "in use by another fleetup engine"] {
        assert!(stderr.contains(want), "{label}: stderr does not say '{want}': {stderr}");
    }
}

#[test]
fn a_second_install_or_recover_is_refused_while_an_install_runs() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let old_tree = tree(&fx.root);
    // The first install stops in the middle of update-files: services down, files mixed.
    let mut first = spawn_paused(fx.cli(), PAUSE_RENAME_ENV, 2, "rename 2 of 12");
    let mid_tree = tree(&fx.root);
    assert_ne!(mid_tree, old_tree);
    let state = std::fs::canonicalize(&fx.state).unwrap();

    assert_refused(fx.cli(), "second install", first.id(), &format!("state dir {}", state.display()));
    assert_refused(recover_cmd(&fx), "recover", first.id(), &format!("state dir {}", state.display()));
    // Another state dir, the same root.
    let other = fx.cli_with_state(&fx.tmp.path().join("other-state"));
    let root = std::fs::canonicalize(&fx.root).unwrap();
    assert_refused(other, "install with another state dir", first.id(), &format!("install root {}", root.display()));
    assert_eq!(tree(&fx.root), mid_tree, "a refused engine changed the root");
    assert!(fx.state.join("journal.jsonl").exists(), "the running install's journal was closed");

    // The holder dies: the kernel releases its lock and recovery finishes its install.
    first.kill().unwrap();
    first.wait().unwrap();
    let out = recover_cmd(&fx).output().unwrap();
    let summary = parse_events(&out.stdout).last().and_then(EngineEvent::summary);
    assert_eq!(
        summary.map(|s| s.outcome),
        Some(InstallOutcome::RolledBack),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tree(&fx.root), old_tree);
    fx.wait_version("1.0.0");
}

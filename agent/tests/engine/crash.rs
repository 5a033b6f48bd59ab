//! SIGKILL of the real `fleetup-agent install --json` at every journal step, then a
//! restart: the root is wholly old or wholly new, the service runs, one outcome.
//!
//! Kill points are deterministic: `FLEETUP_ENGINE_PAUSE_AFTER_JOURNAL_STEP=N` makes the
//! engine stop right after journal record N is durable (before the change it announces);
//! the test waits for that line on stderr and sends SIGKILL.

use crate::support::{Fixture, crl_stub_ok, parse_events, tree};
use fleetup_agent::engine::PAUSE_ENV;
use fleetup_proto::{EngineEvent, InstallOutcome};
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::Stdio;
use std::sync::OnceLock;
use std::time::Duration;

/// Events persisted by the engine for every install in a state dir.
fn persisted_events(state: &Path) -> Vec<Vec<EngineEvent>> {
    let mut dirs: Vec<_> = std::fs::read_dir(state.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("events.jsonl").exists())
        .collect();
    dirs.sort();
    dirs.iter().map(|d| parse_events(&std::fs::read(d.join("events.jsonl")).unwrap())).collect()
}

/// (number of journal records of a whole install, tree after it) — from one reference run.
fn reference() -> &'static (usize, std::collections::BTreeMap<String, String>) {
    static REF: OnceLock<(usize, std::collections::BTreeMap<String, String>)> = OnceLock::new();
    REF.get_or_init(|| {
        let fx = Fixture::new(&crl_stub_ok(), |t| t);
        let out = fx.cli().output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let logs = std::fs::read_dir(fx.state.join("logs"))
            .unwrap()
            .flatten()
            .find(|e| e.path().join("journal.jsonl").exists())
            .unwrap();
        let steps = std::fs::read_to_string(logs.path().join("journal.jsonl")).unwrap().lines().count();
        (steps, tree(&fx.root))
    })
}

fn kill_at(step: usize) {
    let (_, new_tree) = reference();
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let old_tree = tree(&fx.root);
    let mut child =
        fx.cli().env(PAUSE_ENV, step.to_string()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = child.stderr.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let want = format!("paused after journal step {step} ");
    let mut seen = Vec::new();
    loop {
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(l) if l.contains(&want) => break,
            Ok(l) => seen.push(l),
            Err(e) => panic!("step {step}: engine never paused ({e}); stderr: {seen:?}; status {:?}", child.try_wait()),
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    // Restart: the same command finishes the interrupted install and reports it.
    let out = fx.cli().output().unwrap();
    let stdout_events = parse_events(&out.stdout);
    let installs = persisted_events(&fx.state);
    assert_eq!(installs.len(), 1, "step {step}: more than one install");
    let events = &installs[0];
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "step {step}: seq gap");
    }
    let outcomes: Vec<_> = events.iter().filter_map(EngineEvent::summary).collect();
    assert_eq!(outcomes.len(), 1, "step {step}: {} outcomes", outcomes.len());
    let outcome = outcomes[0].outcome;
    assert_eq!(out.status.success(), outcome == InstallOutcome::Succeeded, "step {step}: exit status vs {outcome}");
    if !stdout_events.is_empty() {
        assert!(stdout_events.last().unwrap().summary().is_some(), "step {step}: restart did not report the outcome");
    }
    let now = tree(&fx.root);
    if outcome == InstallOutcome::Succeeded {
        assert_eq!(&now, new_tree, "step {step}: succeeded but the tree is not the new one");
        fx.wait_version("1.1.0");
    } else {
        assert_eq!(now, old_tree, "step {step}: {outcome} but the tree is not the old one");
        fx.wait_version("1.0.0");
    }
    assert!(fx.service_running(), "step {step}: service not running");
    assert!(fx.leftover_staging().is_empty(), "step {step}: staging left: {:?}", fx.leftover_staging());
    assert!(!fx.state.join("journal.jsonl").exists(), "step {step}: journal still open");
}

fn kill_steps(shard: usize, shards: usize) {
    let (steps, _) = reference();
    assert!(*steps > 20, "only {steps} journal steps?");
    for step in (1..=*steps).filter(|s| s % shards == shard) {
        kill_at(step);
    }
}

#[test]
fn sigkill_at_every_journal_step_converges_shard_0() {
    kill_steps(0, 3);
}

#[test]
fn sigkill_at_every_journal_step_converges_shard_1() {
    kill_steps(1, 3);
}

#[test]
fn sigkill_at_every_journal_step_converges_shard_2() {
    kill_steps(2, 3);
}

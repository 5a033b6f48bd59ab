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

/// Spawns the CLI paused at `step`, waits for the pause, SIGKILLs it.
fn spawn_and_kill(mut cmd: std::process::Command, step: usize) {
    let mut child = cmd.env(PAUSE_ENV, step.to_string()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let stderr = BufReader::new(child.stderr.take().unwrap());
    let want = format!("paused after journal step {step} ");
    let mut paused = false;
    for line in stderr.lines().map_while(Result::ok) {
        if line.contains(&want) {
            paused = true;
            break;
        }
    }
    assert!(paused, "engine never paused at step {step}");
    child.kill().unwrap();
    child.wait().unwrap();
}

#[test]
fn sigkill_at_the_start_of_a_rollback_then_restart_finishes_it() {
    let unhealthy = |fx: &Fixture| {
        let conf = fx.root.join("etc/demo.conf");
        let text = std::fs::read_to_string(&conf).unwrap() + "unhealthy_versions = 1.1.0\n";
        std::fs::write(&conf, text).unwrap();
    };
    let short =
        |t: String| t.replace("deadline_secs = 8\n\n[[prerequisites]]", "deadline_secs = 1\n\n[[prerequisites]]");
    // Reference: where the rollback starts in the journal.
    let reference = Fixture::new(&crl_stub_ok(), short);
    unhealthy(&reference);
    let out = reference.cli().output().unwrap();
    assert!(!out.status.success());
    let logs = std::fs::read_dir(reference.state.join("logs"))
        .unwrap()
        .flatten()
        .find(|e| e.path().join("journal.jsonl").exists())
        .unwrap();
    let journal = std::fs::read_to_string(logs.path().join("journal.jsonl")).unwrap();
    let step = journal.lines().position(|l| l.contains("\"rollback-started\"")).unwrap() + 1;
    drop(reference);

    let fx = Fixture::new(&crl_stub_ok(), short);
    unhealthy(&fx);
    let before = tree(&fx.root);
    spawn_and_kill(fx.cli(), step);
    let out = fx.cli().output().unwrap();
    assert!(!out.status.success());
    let events = parse_events(&out.stdout);
    let summary = events.last().and_then(EngineEvent::summary).expect("the restart reports the outcome");
    assert_eq!(summary.outcome, InstallOutcome::RolledBack, "{summary:?}");
    assert_eq!(persisted_events(&fx.state)[0].iter().filter_map(EngineEvent::summary).count(), 1);
    assert_eq!(tree(&fx.root), before);
    fx.wait_version("1.0.0");
}

#[test]
fn sigkill_with_hosts_remediation_applied_restores_the_hosts_file_on_restart() {
    let (_silent, port) = crate::support::crl_stub_silent("127.0.0.2");
    let fx = Fixture::new(&format!("http://crl.fleetup.test:{port}"), |t| {
        t.replace("probe_deadline_secs = 3", "probe_deadline_secs = 1")
    });
    let original = b"127.0.0.2 crl.fleetup.test\n".to_vec();
    std::fs::write(&fx.hosts, &original).unwrap();
    let before = tree(&fx.root);
    let mut cmd = fx.cli();
    cmd.args(["--crl-remediation", "hosts-file"]);
    // Step 6: after the hosts file was changed (records: begin, phase, phase, hosts-file, staged, phase).
    spawn_and_kill(cmd, 6);
    assert_ne!(std::fs::read(&fx.hosts).unwrap(), original, "the hosts file was not changed before the kill");
    let out = fx.cli().output().unwrap();
    assert!(!out.status.success());
    assert_eq!(std::fs::read(&fx.hosts).unwrap(), original, "hosts file not restored by recovery");
    assert_eq!(tree(&fx.root), before);
    fx.wait_version("1.0.0");
}

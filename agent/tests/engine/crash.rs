//! SIGKILL of the real `fleetup-agent install --json` at every journal step, then a
//! restart: the root is wholly old or wholly new, the service runs, one outcome.
//!
//! Kill points are deterministic: `FLEETUP_ENGINE_PAUSE_AFTER_JOURNAL_STEP=N` makes the
//! engine stop right after journal record N is durable (before the change it announces);
//! the test waits for that line on stderr and sends SIGKILL. Inside the rename set of
//! `update-files` (one journal record for many changes), `FLEETUP_ENGINE_PAUSE_AFTER_RENAME=K`
//! stops after its K-th change, and `FLEETUP_ENGINE_PAUSE_AFTER_UNDO=J` stops a rollback
//! (here: recovery's) after its J-th file undo.

use crate::support::{Fixture, crl_stub_ok, parse_events, pause_and_kill, tree};
use fleetup_agent::engine::{PAUSE_ENV, PAUSE_RENAME_ENV, PAUSE_SPAWN_ENV, PAUSE_UNDO_ENV};
use fleetup_proto::{EngineEvent, InstallOutcome};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

type Tree = BTreeMap<String, String>;

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
fn reference() -> &'static (usize, Tree) {
    static REF: OnceLock<(usize, Tree)> = OnceLock::new();
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

/// Restarts the engine after a kill and checks what the user sees: one install with one
/// outcome and gapless events, the root wholly old (or wholly `new`, when given and the
/// install succeeded), the service running that version, no staging, the journal closed.
fn assert_converges(fx: &Fixture, label: &str, old_tree: &Tree, new_tree: Option<&Tree>) -> InstallOutcome {
    // The same command finishes the interrupted install and reports it.
    let out = fx.cli().output().unwrap();
    let stdout_events = parse_events(&out.stdout);
    let installs = persisted_events(&fx.state);
    assert_eq!(installs.len(), 1, "{label}: more than one install");
    let events = &installs[0];
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "{label}: seq gap");
    }
    let outcomes: Vec<_> = events.iter().filter_map(EngineEvent::summary).collect();
    assert_eq!(outcomes.len(), 1, "{label}: {} outcomes", outcomes.len());
    let outcome = outcomes[0].outcome;
    assert_eq!(out.status.success(), outcome == InstallOutcome::Succeeded, "{label}: exit status vs {outcome}");
    if !stdout_events.is_empty() {
        assert!(stdout_events.last().unwrap().summary().is_some(), "{label}: restart did not report the outcome");
    }
    let now = tree(&fx.root);
    match new_tree {
        Some(new_tree) if outcome == InstallOutcome::Succeeded => {
            assert_eq!(&now, new_tree, "{label}: succeeded but the tree is not the new one");
            fx.wait_version("1.1.0");
        }
        _ => {
            assert_ne!(outcome, InstallOutcome::Succeeded, "{label}: succeeded where only a rollback is right");
            let error = &outcomes[0].error;
            assert_eq!(&now, old_tree, "{label}: {outcome} ({error:?}) but the tree is not the old one");
            fx.wait_version("1.0.0");
        }
    }
    assert!(fx.service_running(), "{label}: service not running");
    assert_eq!(
        fx.service_processes(),
        fx.service_pid().into_iter().collect::<Vec<_>>(),
        "{label}: a service process runs that the pidfile does not name"
    );
    assert!(fx.leftover_staging().is_empty(), "{label}: staging left: {:?}", fx.leftover_staging());
    assert!(!fx.state.join("journal.jsonl").exists(), "{label}: journal still open");
    outcome
}

fn kill_at(step: usize) {
    let (_, new_tree) = reference();
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let old_tree = tree(&fx.root);
    pause_and_kill(fx.cli(), PAUSE_ENV, step, &format!("journal step {step} "));
    assert_converges(&fx, &format!("step {step}"), &old_tree, Some(new_tree));
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

#[test]
fn a_per_file_journal_of_an_older_engine_still_recovers() {
    // Killed after 4 changes (2 mkdirs, 2 backups) of the rename set...
    let (fx, old_tree) = kill_in_rename_set(4);
    // ...then the journal rewritten as engines before the rename set wrote it: one record
    // per change, durable before it (the 4 made and the 5th announced, not made). The
    // kinds are spelled as those engines wrote them (`MkDir` is `mk-dir` on disk).
    let path = fx.state.join("journal.jsonl");
    let mut lines = Vec::new();
    for line in std::fs::read_to_string(&path).unwrap().lines() {
        let r: serde_json::Value = serde_json::from_str(line).unwrap();
        if r["record"] != "rename-set" {
            lines.push(line.to_owned());
            continue;
        }
        let mkdirs = r["mkdirs"].as_array().unwrap().iter().map(|p| json!({ "record": "mk-dir", "path": p }));
        let backups = r["backups"].as_array().unwrap().iter().map(|p| json!({ "record": "backup", "path": p }));
        let places = r["places"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| json!({ "record": "place", "path": p["path"], "added": p["added"] }));
        lines.extend(mkdirs.chain(backups).chain(places).take(5).map(|v| v.to_string()));
    }
    assert!(lines.iter().any(|l| l.contains("\"record\":\"backup\"")), "no rename set in the journal");
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let outcome = assert_converges(&fx, "per-file journal", &old_tree, None);
    assert_eq!(outcome, InstallOutcome::RolledBack);
}

/// Spawns the CLI paused at journal `step`, waits for the pause, SIGKILLs it.
fn spawn_and_kill(cmd: Command, step: usize) {
    pause_and_kill(cmd, PAUSE_ENV, step, &format!("journal step {step} "));
}

// ------------------------------------------------------------ inside the rename set

/// An added file in two directories that do not exist yet, so the rename set has
/// `mkdir`s as well as backups and placements.
const NESTED: &str = "lib/demo/plugins/extra/x.txt";

fn nested_fixture() -> Fixture {
    Fixture::with_payload(
        &crl_stub_ok(),
        // Inside the sample's lib/demo tree: the tree adds it.
        |t| t,
        &[(NESTED, "a plugin that 1.1.0 adds\n")],
    )
}

/// Changes of the nested fixture's rename set: 2 mkdirs, 6 backups (2 replaces, 1
/// remove, 3 patched config files), 7 placements (2 replaces, 2 adds, 3 config files).
/// Undo has one step per change.
const SET: usize = 15;

/// Kills the install right after change `k` of the rename set: the root is neither old
/// nor new on disk. The restart must roll back to the whole old tree.
fn kill_in_rename_set(k: usize) -> (Fixture, Tree) {
    let fx = nested_fixture();
    let old_tree = tree(&fx.root);
    pause_and_kill(fx.cli(), PAUSE_RENAME_ENV, k, &format!("rename {k} of {SET}"));
    assert_ne!(tree(&fx.root), old_tree, "rename {k}: nothing changed on disk before the kill");
    (fx, old_tree)
}

fn kill_renames(shard: usize, shards: usize) {
    for k in (1..=SET).filter(|k| k % shards == shard) {
        let (fx, old_tree) = kill_in_rename_set(k);
        let outcome = assert_converges(&fx, &format!("rename {k} of {SET}"), &old_tree, None);
        assert_eq!(outcome, InstallOutcome::RolledBack, "rename {k}");
    }
}

#[test]
fn sigkill_after_each_change_of_the_rename_set_rolls_back_whole_shard_0() {
    kill_renames(0, 2);
}

#[test]
fn sigkill_after_each_change_of_the_rename_set_rolls_back_whole_shard_1() {
    kill_renames(1, 2);
}

/// After the kill, something starts the stopped service on the half-updated tree (on a
/// real host: the boot starting the enabled unit before the agent recovers). Recovery
/// stops it before restoring the files, and the service the rollback starts serves the
/// version on disk, not the one the intruder read from the new files.
#[test]
fn a_service_started_behind_the_interrupted_install_serves_the_restored_version() {
    let (fx, old_tree) = kill_in_rename_set(SET - 1);
    assert!(!fx.service_running(), "the install had not stopped the service before update-files");
    fx.start_service();
    fx.wait_version("1.1.0");
    let outcome = assert_converges(&fx, "service started behind the install", &old_tree, None);
    assert_eq!(outcome, InstallOutcome::RolledBack);
}

#[test]
fn sigkill_during_the_recovery_undo_then_restart_rolls_back_whole() {
    for j in [1, SET - 1] {
        // One rename short of the whole set, then a kill in the middle of recovery's undo.
        let (fx, old_tree) = kill_in_rename_set(SET - 1);
        pause_and_kill(fx.cli(), PAUSE_UNDO_ENV, j, &format!("undo {j} of {SET}"));
        assert_ne!(tree(&fx.root), old_tree, "undo {j}: the undo was already complete at the kill");
        let outcome = assert_converges(&fx, &format!("undo {j} of {SET}"), &old_tree, None);
        assert_eq!(outcome, InstallOutcome::RolledBack, "undo {j}");
    }
}

#[test]
fn sigkill_at_the_start_of_a_rollback_then_restart_finishes_it() {
    let unhealthy = |fx: &Fixture| fx.mark_unhealthy("1.1.0");
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

#[test]
fn sigkill_at_each_service_start_leaves_no_untracked_service() {
    // Start 1: the new version in start-services, running, its pid not yet in the pidfile.
    let (_, new_tree) = reference();
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let old_tree = tree(&fx.root);
    pause_and_kill(fx.cli(), PAUSE_SPAWN_ENV, 1, "service start 1");
    assert_converges(&fx, "service start 1", &old_tree, Some(new_tree));

    // Start 2 of an unhealthy install: the old version restarted by the rollback.
    let fx = Fixture::new(&crl_stub_ok(), |t| {
        t.replace("deadline_secs = 8\n\n[[prerequisites]]", "deadline_secs = 1\n\n[[prerequisites]]")
    });
    fx.mark_unhealthy("1.1.0");
    let old_tree = tree(&fx.root);
    pause_and_kill(fx.cli(), PAUSE_SPAWN_ENV, 2, "service start 2");
    let outcome = assert_converges(&fx, "service start 2 (rollback)", &old_tree, None);
    assert_eq!(outcome, InstallOutcome::RolledBack);
}

//! The coordinator crashes (issue 14, case 21): it is SIGKILLed at random moments, many
//! times, while a real agent installs and simulated agents report a stream of events, and
//! each time it is started again on the same database. What an operator must then see:
//! every report an agent saw acknowledged is stored; a report sent again because its answer
//! was lost (the kill fell between the commit and the reply) is stored once and changes
//! nothing a second time; every job ends in its true state; the SQLite file passes
//! `PRAGMA integrity_check` after every kill.
//!
//! The kill moments come from a seeded RNG: the seed is printed, `FLEETUP_TEST_SEED=N`
//! replays a run's kill schedule.

use crate::fleet::{drop_database, postgres_url};
use fleetup_e2e::fleet::{Host, Server};
use fleetup_e2e::require_all;
use fleetup_e2e::sim::{CallFailure, SimFleet, event, finished};
use fleetup_proto::agent_api::JobAssignment;
use fleetup_proto::api::{Job, JobState, RolloutSpec};
use fleetup_proto::id::{JobId, PackageId, RolloutId};
use fleetup_proto::{EngineEvent, InstallOutcome, PhaseId, PhaseStatus};
use serde_json::{Value, json};
use std::path::Path;
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_mins(2);
/// Simulated agents; each takes one job of each of `ROUNDS` rollouts in turn and reports
/// `WARNINGS` warnings on it, one report each, then its outcome: many claims, and many
/// final reports, for the kills to fall on.
const SIMS: usize = 16;
const ROUNDS: usize = 20;
const WARNINGS: u64 = 4;
/// After answering `/health`, the coordinator runs a random time up to this before the kill.
const MAX_UP: Duration = Duration::from_millis(400);
/// The coordinator is killed at least this often, and no more once `CHAOS_FOR` has passed.
const MIN_KILLS: usize = 30;
const CHAOS_FOR: Duration = Duration::from_secs(40);
/// The pause of a simulated agent before it sends again a call that got no answer.
const RESEND_AFTER: Duration = Duration::from_millis(20);

/// The seed of this run's kill schedule: `FLEETUP_TEST_SEED`, or a random one (printed).
fn seed() -> u64 {
    let seed = std::env::var("FLEETUP_TEST_SEED")
        .ok()
        .map_or_else(|| fastrand::u64(..), |s| s.trim().parse().expect("FLEETUP_TEST_SEED is a number"));
    eprintln!("coordinator crash test: seed {seed} (replay the kill schedule with FLEETUP_TEST_SEED={seed})");
    seed
}

/// The outcome simulated agent `i` reports in round `round`, and the state its job must end
/// in: one in four fails.
fn outcome_of(i: usize, round: usize) -> (InstallOutcome, JobState) {
    if (i + round) % 4 == 3 {
        (InstallOutcome::Failed, JobState::Failed)
    } else {
        (InstallOutcome::Succeeded, JobState::Succeeded)
    }
}

/// The events simulated agent `i` reports in round `round`, in order: warnings, then the
/// final event.
fn script(i: usize, round: usize) -> Vec<EngineEvent> {
    let mut events: Vec<EngineEvent> = (1..=WARNINGS)
        .map(|seq| {
            let message = format!("warning {seq} of sim {i} in round {round}");
            event(seq, PhaseId::CheckSystem, PhaseStatus::Warning, &message, Value::Null)
        })
        .collect();
    let mut last = finished(outcome_of(i, round).0).pop().expect("a final event");
    last.seq = WARNINGS + 1;
    events.push(last);
    events
}

/// What one simulated agent saw.
#[derive(Debug)]
struct Seen {
    /// Its job of each round, in order.
    jobs: Vec<JobAssignment>,
    /// Calls sent again after they got no answer.
    resends: usize,
    /// Resent reports answered "already recorded": the first send was committed, and the
    /// kill came before its answer.
    committed_unanswered: usize,
}

/// A call's failure an agent answers by sending it again: no answer, or a 5xx.
fn send_again(e: &CallFailure) -> bool {
    matches!(e, CallFailure::NoAnswer(_)) || matches!(e, CallFailure::Status(s, _) if *s >= 500)
}

/// Simulated agent `i`: each round, polls until it has its next job, then reports the
/// round's script one event at a time, each until acknowledged, as an agent's outbox does.
async fn sim_agent(fleet: SimFleet, i: usize) -> Seen {
    let deadline = Instant::now() + LONG;
    let mut seen = Seen { jobs: Vec::new(), resends: 0, committed_unanswered: 0 };
    for round in 0..ROUNDS {
        let job = loop {
            assert!(Instant::now() < deadline, "sim {i} got no job of round {round} within {LONG:?}");
            match fleet.try_poll(i, 2).await {
                Ok(Some(job)) => break job,
                Ok(None) => {}
                Err(e) if send_again(&e) => {
                    seen.resends += 1;
                    tokio::time::sleep(RESEND_AFTER).await;
                }
                Err(e) => panic!("poll of sim {i}: {e}"),
            }
        };
        assert!(seen.jobs.iter().all(|j| j.job_id != job.job_id), "sim {i} got its finished job {} again", job.job_id);
        for ev in script(i, round) {
            let mut first = true;
            loop {
                assert!(Instant::now() < deadline, "sim {i}: event {} not acknowledged within {LONG:?}", ev.seq);
                match fleet.try_report(i, &job, vec![ev.clone()]).await {
                    Ok(r) => {
                        assert_eq!(
                            (r.accepted + r.duplicates, first && r.duplicates > 0),
                            (1, false),
                            "sim {i}: {r:?}"
                        );
                        if r.duplicates == 1 {
                            seen.committed_unanswered += 1;
                        }
                        break;
                    }
                    Err(e) if send_again(&e) => {
                        seen.resends += 1;
                        first = false;
                        tokio::time::sleep(RESEND_AFTER).await;
                    }
                    Err(e) => panic!("report of event {} by sim {i} in round {round}: {e}", ev.seq),
                }
            }
        }
        seen.jobs.push(job);
    }
    seen
}

/// The sample rollup as version `2.0.N` for each round: one package per round's rollout.
fn round_packages(dir: &Path) -> Vec<std::path::PathBuf> {
    let sample = fleetup_e2e::workspace_root().join("examples/sample-rollup");
    let manifest = std::fs::read_to_string(sample.join("manifest.toml")).unwrap();
    assert!(manifest.contains("version = \"1.1.0\""), "the sample rollup's version line moved");
    (0..ROUNDS)
        .map(|round| {
            let src = dir.join(format!("round-{round}"));
            fleetup_e2e::copy_tree(&sample, &src).unwrap();
            let text = manifest.replacen("version = \"1.1.0\"", &format!("version = \"2.0.{}\"", round + 1), 1);
            std::fs::write(src.join("manifest.toml"), text).unwrap();
            src
        })
        .collect()
}

/// `PRAGMA integrity_check` on the SQLite file, as the next start would open it.
async fn integrity_check(db: &Path) -> String {
    use sqlx::Connection as _;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite:{}", db.display())).await.expect("the database");
    let rows: Vec<(String,)> = sqlx::query_as("pragma integrity_check").fetch_all(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    rows.into_iter().map(|(r,)| r).collect::<Vec<_>>().join("\n")
}

/// Every stored event of a job, following the pages.
async fn stored_events(server: &Server, job: &JobId) -> Vec<EngineEvent> {
    let mut all: Vec<EngineEvent> = Vec::new();
    loop {
        let after = all.last().map_or(0, |e| e.seq);
        let page = server.client.job_events(job, after, Some(500)).await.unwrap_or_else(|e| panic!("events: {e}"));
        if page.is_empty() {
            return all;
        }
        all.extend(page);
    }
}

/// Seq, phase, status and message: what identifies an event as the one sent.
fn keys(events: &[EngineEvent]) -> Vec<(u64, PhaseId, PhaseStatus, String)> {
    events.iter().map(|e| (e.seq, e.phase, e.status, e.message.clone())).collect()
}

/// Stages and starts a one-wave rollout of `package` to every agent labelled `env=ENV`.
async fn start_rollout(server: &Server, package: &PackageId, env: &str, n: usize) -> RolloutId {
    let spec: RolloutSpec = serde_json::from_value(json!({
        "name": format!("through crashes to {env}"),
        "package_id": package,
        "targets": { "labels": { "env": env } },
        "waves": [n],
        "concurrency": n,
    }))
    .unwrap();
    let rollout = server.client.create_rollout(&spec).await.unwrap_or_else(|e| panic!("staging: {e}"));
    server.client.start(&rollout.id).await.unwrap_or_else(|e| panic!("starting: {e}"));
    rollout.id
}

async fn killed_at_random(database_url: Option<&str>) {
    let seed = seed();
    let mut rng = fastrand::Rng::with_seed(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start(
        &dir.path().join("server"),
        database_url,
        &["--lease-secs", "30", "--scheduler-interval-ms", "200"],
    )
    .await;
    let db = server.dir.join("fleetup.db");
    let package = server.upload(None).await;
    let mut round_rollouts = Vec::new();
    let token = server.enrollment_token(1).await;
    let crl = fleetup_demo_service::crl_endpoint().unwrap();
    let mut host = Host::new(dir.path(), "web-1", &crl);
    host.start_agent(&server, &token);
    let sims = SimFleet::enroll(&server, "sim", SIMS, &[("env", "sim")]).await;
    server
        .eventually("the real agent online", LONG, async || {
            Ok(server.client.agents().await?.iter().any(|a| a.hostname == "web-1" && a.online).then_some(()))
        })
        .await;
    let real_rollout = start_rollout(&server, &package, "test", 1).await;
    let real = server.jobs::<Job>(&real_rollout).await.pop().expect("the real agent's job").id;
    for src in round_packages(dir.path()) {
        let package = server.upload(Some(&src)).await;
        round_rollouts.push(start_rollout(&server, &package, "sim", SIMS).await);
    }

    let tasks: Vec<_> = (0..SIMS).map(|i| tokio::spawn(sim_agent(sims.clone(), i))).collect();
    let started = Instant::now();
    let mut kills = 0;
    loop {
        let real_done = server.client.job(&real).await.is_ok_and(|j| j.state.is_terminal());
        let done = real_done && tasks.iter().all(tokio::task::JoinHandle::is_finished);
        if (done && kills >= MIN_KILLS) || started.elapsed() > CHAOS_FOR {
            break;
        }
        // The fault's timing, not a synchronisation: the coordinator runs a random while.
        tokio::time::sleep(MAX_UP.mul_f64(rng.f64())).await;
        server.proc.kill();
        kills += 1;
        if database_url.is_none() {
            let check = integrity_check(&db).await;
            assert_eq!(check, "ok", "integrity_check after kill {kills} (seed {seed})");
        }
        server.restart().await;
    }
    let mut seen = Vec::new();
    for t in tasks {
        seen.push(tokio::time::timeout(LONG, t).await.expect("a simulated agent ends").expect("a simulated agent"));
    }
    let real_job = server
        .eventually("the real agent's job to end", LONG, async || {
            let j = server.client.job(&real).await?;
            Ok(j.state.is_terminal().then_some(j))
        })
        .await;
    let resends: usize = seen.iter().map(|s| s.resends).sum();
    let committed_unanswered: usize = seen.iter().map(|s| s.committed_unanswered).sum();
    let agent_log = host.agent.as_ref().unwrap().output();
    let agent_retries = agent_log.lines().filter(|l| l.contains("failed:") && l.contains("retrying")).count();
    eprintln!(
        "coordinator crash test (seed {seed}): {kills} kills in {:?}; {resends} calls of the simulated agents \
         sent again, {committed_unanswered} of them reports committed before the kill but never answered; \
         the real agent retried {agent_retries} calls",
        started.elapsed()
    );
    assert!(kills >= MIN_KILLS, "only {kills} kills in {CHAOS_FOR:?} (seed {seed})");

    // Each simulated job: its dispatch is the one the agent got, every event it sent is
    // stored once, each warning counted once, the job in the state its outcome says.
    let agents = server.client.agents().await.unwrap();
    let installed_by =
        |job: &JobId| -> usize { agents.iter().flat_map(|a| &a.installed).filter(|inst| &inst.job_id == job).count() };
    for (i, s) in seen.iter().enumerate() {
        for (round, assigned) in s.jobs.iter().enumerate() {
            let id: JobId = assigned.job_id.parse().expect("a job id");
            let job = server.client.job(&id).await.unwrap();
            let at = format!("sim {i}, round {round} (seed {seed})");
            assert_eq!(job.rollout_id, round_rollouts[round], "{at}: the rounds' jobs are taken in order");
            let want = outcome_of(i, round).1;
            assert_eq!(job.state, want, "{at}: {job:?}");
            assert_eq!(job.fencing_token, assigned.fencing_token, "{at}: dispatched again");
            assert_eq!(keys(&stored_events(&server, &id).await), keys(&script(i, round)), "{at}: the events");
            assert_eq!(job.warnings.len(), WARNINGS as usize, "{at}: a warning counted twice or lost");
            let once = usize::from(want == JobState::Succeeded);
            assert_eq!(installed_by(&id), once, "{at}: the install recorded on its agent");
        }
    }
    for r in &round_rollouts {
        assert_eq!(server.jobs::<Job>(r).await.len(), SIMS, "no job was retried or lost (seed {seed})");
    }

    // The real agent: installed once, and every event it recorded is stored, once.
    assert_eq!(real_job.state, JobState::Succeeded, "{real_job:?}\n{agent_log}");
    assert_eq!(host.version().as_deref(), Some("1.1.0"));
    let local = std::fs::read_to_string(host.state.join("logs").join(real.as_str()).join("events.jsonl")).unwrap();
    let local: Vec<EngineEvent> = local.lines().map(|l| serde_json::from_str(l).expect("an engine event")).collect();
    assert_eq!(keys(&stored_events(&server, &real).await), keys(&local), "the real agent's events (seed {seed})");
    assert_eq!(installed_by(&real), 1, "the real install recorded on its agent (seed {seed})");
    assert_eq!(server.jobs::<Job>(&real_rollout).await.len(), 1, "the real job was retried (seed {seed})");

    // Last, since a store that doubles resends cannot tell them apart either.
    assert!(
        committed_unanswered > 0,
        "no kill fell between a commit and its reply in {kills} kills (seed {seed}): the test did not test that window"
    );

    // A last crash, and the file as it is left.
    server.proc.kill();
    if database_url.is_none() {
        assert_eq!(integrity_check(&db).await, "ok", "integrity_check after the last kill (seed {seed})");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_killed_at_random_on_sqlite_loses_and_doubles_nothing() {
    killed_at_random(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn coordinator_killed_at_random_on_postgres_loses_and_doubles_nothing() {
    let Some(url) = postgres_url("coordinator_killed_at_random_on_postgres_loses_and_doubles_nothing") else {
        assert!(!require_all());
        return;
    };
    killed_at_random(Some(&url)).await;
    drop_database(&url);
}

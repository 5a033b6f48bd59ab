//! Many agents at once: concurrent polls and reports (which the coordinator writes in shared
//! transactions, group commit) each get their own answer; two coordinators on one Postgres
//! dispatch every job exactly once.

use crate::helpers::{Backend, ev, final_ev, pg_database, spawn_app, spawn_on};
use fleetup_proto::{InstallOutcome, PhaseId, PhaseStatus};
use futures_util::future::join_all;
use serde_json::json;
use sqlx::Connection as _;
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

crate::both_backends!(
    concurrent_reports_get_their_own_answers,
    concurrent_polls_dispatch_a_wave_exactly_once,
    a_report_flood_is_ingested_in_batches
);

/// 30 agents report at the same time: a good report (out of order; half of them ending the
/// install), one with a stale fencing token and one on another agent's job. Each report gets
/// its own answer, and exactly the accepted events are stored.
async fn concurrent_reports_get_their_own_answers(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("busy", 30).await;
    let spec = json!({ "package_id": package, "targets": { "labels": { "group": "busy" } }, "concurrency": 30 });
    let rollout = app.rollout(spec, true).await;
    let jobs = join_all(agents.iter().map(crate::helpers::FakeAgent::next_job)).await;
    let good = |i: usize| {
        let mut events = vec![
            ev(3, PhaseId::PrePrecompile, PhaseStatus::Running),
            ev(1, PhaseId::CheckSystem, PhaseStatus::Running),
            ev(2, PhaseId::CheckSystem, PhaseStatus::Succeeded),
        ];
        if i.is_multiple_of(2) {
            events.push(final_ev(4, InstallOutcome::Succeeded));
        }
        events
    };
    let mut calls = Vec::new();
    for (i, (agent, job)) in agents.iter().zip(&jobs).enumerate() {
        let other = &jobs[(i + 1) % jobs.len()];
        calls.push(agent.report(&job.job_id, job.fencing_token, good(i)));
        calls.push(agent.report(
            &job.job_id,
            job.fencing_token + 1,
            vec![ev(50, PhaseId::Cleanup, PhaseStatus::Running)],
        ));
        calls.push(agent.report(
            &other.job_id,
            other.fencing_token,
            vec![ev(60, PhaseId::Cleanup, PhaseStatus::Running)],
        ));
    }
    let answers = join_all(calls).await;
    for (i, answer) in answers.chunks(3).enumerate() {
        let accepted = if i.is_multiple_of(2) { 4 } else { 3 };
        let (s, r) = &answer[0];
        assert_eq!((*s, r["accepted"].as_u64(), r["duplicates"].as_u64()), (200, Some(accepted), Some(0)), "{i}: {r}");
        let (s, r) = &answer[1];
        assert_eq!((*s, r["error"]["code"].as_str()), (409, Some("stale-lease")), "{i}: {r}");
        let (s, r) = &answer[2];
        assert_eq!((*s, r["error"]["code"].as_str()), (403, Some("forbidden")), "{i}: {r}");
    }
    for (i, (agent, job)) in agents.iter().zip(&jobs).enumerate() {
        // Sent again, the good report is all duplicates.
        let (s, r) = agent.report(&job.job_id, job.fencing_token, good(i)).await;
        let sent = good(i).len() as u64;
        assert_eq!((s, r["accepted"].as_u64(), r["duplicates"].as_u64()), (200, Some(0), Some(sent)), "{i}: {r}");
        let events = app.get(&format!("/api/v1/jobs/{}/events", job.job_id)).await;
        let seqs: Vec<u64> = events.as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=sent).collect::<Vec<_>>(), "job {i}");
        let j = app.get(&format!("/api/v1/jobs/{}", job.job_id)).await;
        let (state, phase) = if i.is_multiple_of(2) { ("succeeded", "cleanup") } else { ("running", "pre-precompile") };
        assert_eq!((j["state"].as_str(), j["current_phase"].as_str()), (Some(state), Some(phase)), "{j}");
    }
    let r = app.get(&format!("/api/v1/rollouts/{rollout}")).await;
    assert_eq!((r["counts"]["succeeded"].as_u64(), r["counts"]["running"].as_u64()), (Some(15), Some(15)), "{r}");
}

/// 50 agents report at once, twice (on Postgres the store writes such a flood in batched
/// multi-row statements, with the unusual reports on the per-report path in the same
/// transactions; SQLite writes every report on its own):
/// first each job's opening phases (half of them ending the install), with resends of some
/// reports and a stale token in the mix; then the rest of the installs, a quarter failing,
/// and resends of final events to ended jobs. Every job shows exactly what its agent
/// reported, each report gets its own answer, and the batched path wrote the common case.
async fn a_report_flood_is_ingested_in_batches(backend: Backend) {
    const N: usize = 50;
    const STALE: usize = 7;
    let batched = r#"fleetup_reports_written_total{path="batched"}"#;
    let per_report = r#"fleetup_reports_written_total{path="per-report"}"#;
    let Some(app) = spawn_app(backend).await else { return };
    let (rollout, agents) = app.one_wave_of("flood", N).await;
    let jobs = join_all(agents.iter().map(crate::helpers::FakeAgent::next_job)).await;
    let (batched_before, per_report_before) = (app.counter(batched).await, app.counter(per_report).await);
    let opening = |i: usize| {
        let mut events = vec![
            ev(2, PhaseId::CheckSystem, PhaseStatus::Succeeded),
            ev(1, PhaseId::CheckSystem, PhaseStatus::Running),
            ev(3, PhaseId::PrePrecompile, PhaseStatus::Running),
        ];
        if i.is_multiple_of(2) {
            events.push(final_ev(4, InstallOutcome::Succeeded));
        }
        events
    };
    let resent = |i: usize| i % 10 == 1 || i % 10 == 4;
    // (job, what, call) for every report of the first round, all in flight at once.
    let mut calls = Vec::new();
    for (i, (agent, job)) in agents.iter().zip(&jobs).enumerate() {
        calls.push((i, "opening", agent.report(&job.job_id, job.fencing_token, opening(i))));
        if resent(i) {
            calls.push((i, "resend", agent.report(&job.job_id, job.fencing_token, opening(i))));
        }
        if i == STALE {
            let late = vec![ev(9, PhaseId::Cleanup, PhaseStatus::Running)];
            calls.push((i, "stale", agent.report(&job.job_id, job.fencing_token + 1, late)));
        }
    }
    let (labels, calls): (Vec<_>, Vec<_>) = calls.into_iter().map(|(i, what, call)| ((i, what), call)).unzip();
    let answers = join_all(calls).await;
    let mut per_job: BTreeMap<usize, (u64, u64)> = BTreeMap::new();
    for ((i, what), (status, r)) in labels.iter().zip(&answers) {
        if *what == "stale" {
            assert_eq!((*status, r["error"]["code"].as_str()), (409, Some("stale-lease")), "{i}: {r}");
            assert!(r["error"]["message"].as_str().unwrap().contains("is stale"), "{i}: {r}");
            continue;
        }
        assert_eq!(*status, 200, "{i} {what}: {r}");
        let seen = per_job.entry(*i).or_default();
        seen.0 += r["accepted"].as_u64().unwrap();
        seen.1 += r["duplicates"].as_u64().unwrap();
    }
    for (i, (accepted, duplicates)) in &per_job {
        // A report and its resend: one of them recorded the events, the other found them all there.
        let sent = opening(*i).len() as u64;
        let resends = u64::from(resent(*i));
        assert_eq!((*accepted, *duplicates), (sent, sent * resends), "job {i}: (accepted, duplicates)");
    }
    for (i, job) in jobs.iter().enumerate().filter(|(i, _)| !i.is_multiple_of(2)) {
        let j = app.get(&format!("/api/v1/jobs/{}", job.job_id)).await;
        assert_eq!(
            (j["state"].as_str(), j["current_phase"].as_str()),
            (Some("running"), Some("pre-precompile")),
            "{i}: {j}"
        );
        assert!(j["lease_expires_at"].is_string(), "job {i}: a report extends the lease: {j}");
    }

    // The second round: odd jobs finish (every fourth fails: the per-report path, for its
    // webhook); even jobs, ended, get their final event again (answered as a duplicate).
    let outcome = |i: usize| if i % 4 == 3 { InstallOutcome::Failed } else { InstallOutcome::Succeeded };
    let second = agents.iter().zip(&jobs).enumerate().map(|(i, (agent, job))| {
        let events = if i.is_multiple_of(2) {
            vec![final_ev(4, InstallOutcome::Succeeded)]
        } else {
            vec![final_ev(5, outcome(i)), ev(4, PhaseId::PreHooks, PhaseStatus::Succeeded)]
        };
        agent.report(&job.job_id, job.fencing_token, events)
    });
    for (i, (status, r)) in join_all(second).await.into_iter().enumerate() {
        let expected = if i.is_multiple_of(2) { (0, 1) } else { (2, 0) };
        assert_eq!(
            (status, r["accepted"].as_u64(), r["duplicates"].as_u64()),
            (200, Some(expected.0), Some(expected.1)),
            "{i}: {r}"
        );
    }

    for (i, job) in jobs.iter().enumerate() {
        let j = app.get(&format!("/api/v1/jobs/{}", job.job_id)).await;
        let (state, phase, last) = match (i % 2, i % 4) {
            (0, _) => ("succeeded", "cleanup", 4),
            (_, 3) => ("failed", "rollback", 5),
            _ => ("succeeded", "cleanup", 5),
        };
        assert_eq!((j["state"].as_str(), j["current_phase"].as_str()), (Some(state), Some(phase)), "job {i}: {j}");
        assert_eq!(j["phases"]["check-system"]["status"], "succeeded", "job {i}: {j}");
        assert_eq!(j["phases"]["pre-precompile"]["status"], "running", "job {i}: {j}");
        let pre_hooks = if i.is_multiple_of(2) { None } else { Some("succeeded") };
        assert_eq!(j["phases"]["pre-hooks"]["status"].as_str(), pre_hooks, "job {i}: {j}");
        assert!(j["lease_expires_at"].is_null() && j["finished_at"].is_string(), "job {i}: {j}");
        if state == "failed" {
            assert_eq!(j["error"], "health check failed", "job {i}: {j}");
        }
        let events = app.get(&format!("/api/v1/jobs/{}/events", job.job_id)).await;
        let seqs: Vec<u64> = events.as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect();
        assert_eq!(seqs, (1..=last).collect::<Vec<_>>(), "job {i} (the stale report stored nothing)");
    }
    let r = app.get(&format!("/api/v1/rollouts/{rollout}")).await;
    let failed = (0..N).filter(|i| i % 4 == 3).count() as u64;
    assert_eq!(
        (r["counts"]["succeeded"].as_u64(), r["counts"]["failed"].as_u64()),
        (Some(N as u64 - failed), Some(failed)),
        "{r}"
    );
    // Each job's first report of the first round, and the successful finishes, are the
    // common case; the failures and the reports to ended jobs are not. Other tests of this
    // process may add to the counters meanwhile, so these are lower bounds.
    let finished_ok = (0..N).filter(|i| i % 4 == 1).count() as u64;
    let (batched_now, per_report_now) = (app.counter(batched).await, app.counter(per_report).await);
    if backend == Backend::Postgres {
        assert!(
            batched_now - batched_before >= N as u64 + finished_ok,
            "{} reports went batched, expected at least {}",
            batched_now - batched_before,
            N as u64 + finished_ok
        );
        assert!(per_report_now - per_report_before >= failed + N as u64 / 2, "per-report path: {per_report_now}");
    } else {
        // SQLite writes report by report (see `store::ingest`).
        let all = N as u64 + finished_ok + failed;
        assert!(per_report_now - per_report_before >= all, "per-report path: {per_report_now}, expected {all}");
    }
}

/// A wave of 40 agents, each with two polls at once (a retried poll): every agent gets its
/// own job on both polls, with the same fencing token, and each job is dispatched once.
async fn concurrent_polls_dispatch_a_wave_exactly_once(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("wave", 40).await;
    let polls: Vec<_> = agents
        .iter()
        .flat_map(|a| [a.clone(), a.clone()])
        .map(|a| tokio::spawn(async move { (a.id.clone(), a.next_job().await) }))
        .collect();
    let spec = json!({ "package_id": package, "targets": { "labels": { "group": "wave" } }, "concurrency": 40 });
    let rollout = app.rollout(spec, true).await;
    let mut got: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
    for p in polls {
        let (agent, job) = tokio::time::timeout(std::time::Duration::from_secs(30), p)
            .await
            .expect("every poll gets its agent's job")
            .unwrap();
        assert_eq!(job.rollout_id, rollout);
        got.entry(agent).or_default().push((job.job_id, job.fencing_token));
    }
    assert_eq!(got.len(), 40);
    let mut jobs = HashSet::new();
    for (agent, assignments) in &got {
        assert_eq!(assignments.len(), 2, "{agent}");
        assert_eq!(assignments[0], assignments[1], "agent {agent}: both polls get the same dispatch");
        assert_eq!(assignments[0].1, 1, "agent {agent}: job dispatched once");
        assert!(jobs.insert(assignments[0].0.clone()), "job {} went to two agents", assignments[0].0);
        let job = app.get(&format!("/api/v1/jobs/{}", assignments[0].0)).await;
        assert_eq!((job["agent_id"].as_str(), job["state"].as_str()), (Some(agent.as_str()), Some("dispatched")));
    }
    let r = app.get(&format!("/api/v1/rollouts/{rollout}")).await;
    assert_eq!(r["counts"]["dispatched"], 40, "{r}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_dispatch_every_job_exactly_once() {
    let Some(pg) = pg_database("two_servers_dispatch_every_job_exactly_once").await else { return };
    let pg = Arc::new(pg);
    let a = spawn_on(Backend::Postgres, Some(pg.clone()), None).await.unwrap();
    let b = spawn_on(Backend::Postgres, Some(pg.clone()), Some(a.tokens())).await.unwrap();
    let package = a.upload_package().await;
    let token = a.enrollment_token(json!({ "group": "many" })).await;
    let mut agents = Vec::new();
    for i in 0..50 {
        let server = if i % 2 == 0 { &a } else { &b };
        agents.push(server.enroll(&token, &format!("many-{i}")).await);
    }
    // Each agent long-polls its own server; half of them the other server than the scheduler's.
    let mut polls = Vec::new();
    for agent in agents {
        polls.push(tokio::spawn(async move { agent.next_job().await }));
    }
    let id = b
        .rollout(
            json!({ "package_id": package, "targets": { "labels": { "group": "many" } }, "concurrency": 50 }),
            true,
        )
        .await;
    let mut seen = HashSet::new();
    for p in polls {
        let job = tokio::time::timeout(std::time::Duration::from_secs(30), p)
            .await
            .expect("every agent gets its job")
            .unwrap();
        assert_eq!(job.rollout_id, id);
        assert!(seen.insert(job.job_id.clone()), "job {} dispatched twice", job.job_id);
    }
    assert_eq!(seen.len(), 50);
    let r = a.get(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(r["counts"]["dispatched"], 50, "{r}");
}

/// Postgres: a claim and a dispatch read an agent's jobs through the agent, whatever the
/// planner's statistics say. Staging a big rollout analyzes the jobs table while every job
/// is `pending`, so `queued` looks empty; a statement that let the planner choose then read
/// every queued job of the fleet through `jobs_state_lease` for each agent (a 10,000-server
/// wave's dispatch pass took 31.6 s). The plans of the very statements the store runs are
/// checked on a 5,000-server wave that is queued and not yet collected.
#[tokio::test]
async fn postgres_claims_read_only_the_agents_own_jobs() {
    let Some(app) = spawn_app(Backend::Postgres).await else { return };
    let package = app.upload_package().await;
    let claimer = app.fleet("many", 1).await.remove(0);
    let mut db = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
    // 5,000 more agents of the group, as copies of the enrolled one.
    sqlx::query(
        "insert into agents select (jsonb_populate_record(null::agents, to_jsonb(a) || jsonb_build_object(\
         'id', a.id || '-' || g, 'hostname', 'many-copy-' || g, 'secret_hash', a.secret_hash || '-' || g))).* \
         from agents a, generate_series(1, 5000) g where a.id = $1",
    )
    .bind(claimer.id.as_str())
    .execute(&mut db)
    .await
    .unwrap();
    let spec = json!({ "package_id": package, "targets": { "labels": { "group": "many" } }, "concurrency": 5001 });
    let rollout = app.rollout(spec, true).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (queued,): (i64,) = sqlx::query_as("select count(*) from jobs where rollout_id = $1 and state = 'queued'")
            .bind(&rollout)
            .fetch_one(&mut db)
            .await
            .unwrap();
        if queued == 5001 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the wave was not queued: {queued} of 5001 jobs queued");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let lines = |rows: Vec<(String,)>| rows.into_iter().map(|(l,)| l).collect::<Vec<_>>().join("\n");
    let now = fleetup_server::model::now_ms();
    let claim = sqlx::query_as(sqlx::AssertSqlSafe(format!("explain {}", fleetup_server::store::claim_statement())))
        .bind(claimer.id.as_str())
        .bind(now)
        .fetch_all(&mut db)
        .await
        .unwrap();
    let agents: Vec<(String,)> =
        sqlx::query_as("select id from agents order by id limit 500").fetch_all(&mut db).await.unwrap();
    let mut q =
        sqlx::query_as(sqlx::AssertSqlSafe(format!("explain {}", fleetup_server::store::dispatch_statement(500))))
            .bind(now);
    for (a,) in &agents {
        q = q.bind(a);
    }
    let dispatch = q.fetch_all(&mut db).await.unwrap();
    let (claim, dispatch) = (lines(claim), lines(dispatch));
    // Agents with a job in flight are found in one pass over their jobs: a `not exists`
    // over them ran as a nested loop, quadratic in the statement's agents.
    assert!(!dispatch.contains("Anti Join"), "the dispatch joins the agents' jobs with themselves:\n{dispatch}");
    for (what, plan) in [("claim", claim), ("dispatch", dispatch)] {
        assert!(!plan.contains("jobs_state_lease"), "the {what} reads every queued job of the fleet:\n{plan}");
    }
}

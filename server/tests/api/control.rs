//! Rollout control (issue 15): automatic retries of transient failures, guided failure per
//! job, a scheduled start, soak time between waves, maintenance windows in an IANA zone,
//! late joiners and the stall alarm. Every wait here is a condition with a deadline.

use crate::helpers::{Backend, FakeAgent, TestApp, ev, final_ev, spawn_app, spawn_app_with, warning_ev};
use chrono::{Duration as Span, SecondsFormat, Timelike as _, Utc};
use fleetup_proto::agent_api::JobAssignment;
use fleetup_proto::{EngineEvent, InstallOutcome, PhaseId, PhaseStatus};
use serde_json::{Value, json};
use std::time::{Duration, Instant};

crate::both_backends!(
    a_transient_failure_is_retried_after_its_backoff,
    a_lasting_failure_is_not_retried,
    guided_failure_retries_skips_and_excludes_one_server,
    a_scheduled_start_waits_and_says_so,
    the_next_wave_opens_after_the_soak_time,
    a_window_in_an_iana_zone_holds_jobs_and_says_when_it_opens,
    late_joiners_join_the_last_wave,
    a_phase_running_far_past_its_learned_p95_is_flagged_stalled,
    a_remembered_answer_stands_for_the_rest_of_the_rollout,
    staging_refuses_a_downgrade_unless_allowed_and_a_package_for_other_servers,
);

/// The final event of an install that failed and asks to be tried again later (a hook's
/// exit code 75).
fn retry_later_ev(seq: u64) -> EngineEvent {
    let mut e = final_ev(seq, InstallOutcome::Failed);
    e.data["retry_later"] = json!(true);
    e
}

async fn jobs_of(app: &TestApp, rollout: &str, query: &str) -> Vec<Value> {
    app.get(&format!("/api/v1/rollouts/{rollout}/jobs{query}")).await["jobs"].as_array().unwrap().clone()
}

/// Polls until a job comes, asserting it does not come before `not_before`.
async fn job_not_before(agent: &FakeAgent, not_before: Instant) -> JobAssignment {
    let job = agent.next_job().await;
    assert!(Instant::now() >= not_before, "the job came before its wait was over");
    job
}

/// A lost lease or a "retry later" exit is transient: with `retries`, the failed attempt is
/// kept as `retried` (out of the gate and the threshold), a new attempt waits out its
/// backoff, and the rollout finishes without a failure.
async fn a_transient_failure_is_retried_after_its_backoff(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agent = app.fleet("flaky", 1).await.remove(0);
    let spec = json!({
        "package_id": package, "targets": { "agents": [agent.id] }, "error_threshold": 1,
        "retries": { "times": 1, "backoff_secs": 1 },
    });
    let id = app.rollout(spec, true).await;
    let first = agent.next_job().await;
    let (s, v) = agent.report(&first.job_id, first.fencing_token, vec![retry_later_ev(1)]).await;
    assert_eq!(s, 200, "{v}");
    let failed_at = Instant::now();
    let old = app.wait_job(&first.job_id, "retried", |j| j["state"] == "retried").await;
    assert_eq!(old["attempt"], 1, "{old}");
    // The retry is the server's job now: the listing shows it, not the superseded attempt.
    let listed = jobs_of(&app, &id, "").await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!((listed[0]["attempt"].as_u64(), listed[0]["state"].as_str()), (Some(2), Some("pending")), "{listed:?}");
    let retry = app.get(&format!("/api/v1/jobs/{}", listed[0]["id"].as_str().unwrap())).await;
    assert_eq!(retry["retry_of"], first.job_id.as_str(), "{retry}");
    assert!(retry["not_before"].is_string(), "{retry}");
    assert_eq!(jobs_of(&app, &id, "?state=retried").await.len(), 1, "the old attempt stays listed by state");
    let second = job_not_before(&agent, failed_at + Duration::from_millis(900)).await;
    assert_eq!(second.job_id, retry["id"].as_str().unwrap());
    agent.finish(&second, InstallOutcome::Succeeded).await;
    let r = app.wait_rollout(&id, "finished", |r| r["state"] == "finished").await;
    assert_eq!((r["counts"]["succeeded"].as_u64(), r["counts"]["retried"].as_u64()), (Some(1), Some(1)), "{r}");
    let audit = app.get(&format!("/api/v1/audit?object_id={}", first.job_id)).await["items"].clone();
    assert!(audit.to_string().contains("job.retry"), "{audit}");
}

/// A failure the engine does not call transient is not retried; and once the retries are
/// used up, a transient one stays a failure too.
async fn a_lasting_failure_is_not_retried(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("broken", 2).await;
    let spec = json!({
        "package_id": package, "targets": { "labels": { "group": "broken" } }, "concurrency": 2,
        "success_threshold": "0%", "retries": { "times": 1, "backoff_secs": 1 },
    });
    let id = app.rollout(spec, true).await;
    let (a, b) = (agents[0].next_job().await, agents[1].next_job().await);
    agents[0].finish(&a, InstallOutcome::RolledBack).await;
    // b fails transiently twice: the second failure is past the one retry.
    agents[1].report(&b.job_id, b.fencing_token, vec![retry_later_ev(1)]).await;
    let b2 = agents[1].next_job().await;
    agents[1].report(&b2.job_id, b2.fencing_token, vec![retry_later_ev(1)]).await;
    let r = app.wait_rollout(&id, "finished", |r| r["state"] == "finished").await;
    assert_eq!(r["counts"]["rolled-back"], 1, "a rollback is not transient: {r}");
    assert_eq!((r["counts"]["failed"].as_u64(), r["counts"]["retried"].as_u64()), (Some(1), Some(1)), "{r}");
    let last = app.get(&format!("/api/v1/jobs/{}", b2.job_id)).await;
    assert_eq!((last["state"].as_str(), last["attempt"].as_u64()), (Some("failed"), Some(2)), "{last}");
}

/// Octopus's guided failure, per job: retry this server now, skip its failure (it no longer
/// counts: `skipped`), exclude a server from the rest of the rollout. The rollout goes on;
/// each answer is audited; a viewer, a job that succeeded and an unknown action are refused.
async fn guided_failure_retries_skips_and_excludes_one_server(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("guided", 4).await;
    let spec = json!({ "package_id": package, "targets": { "labels": { "group": "guided" } }, "concurrency": 1 });
    let id = app.rollout(spec, true).await;
    let job_of = |i: usize| agents[i].clone();
    // Server 0 fails: skip it.
    let j0 = job_of(0).next_job().await;
    job_of(0).finish(&j0, InstallOutcome::RolledBack).await;
    let (s, v) = app.call("POST", &format!("/api/v1/jobs/{}/skip", j0.job_id), &app.viewer, None).await;
    assert_eq!(s, 403, "a viewer may not answer: {v}");
    let skipped = app.post(&format!("/api/v1/jobs/{}/skip", j0.job_id), json!({})).await;
    assert_eq!(skipped["state"], "skipped", "{skipped}");
    assert!(skipped["note"].as_str().unwrap().contains("skipped by token:operator (it was rolled-back)"), "{skipped}");
    assert!(skipped["error"].as_str().is_some(), "the failure's evidence stays: {skipped}");
    // Server 1 fails: retry it now.
    let j1 = job_of(1).next_job().await;
    job_of(1).finish(&j1, InstallOutcome::Failed).await;
    let retried = app.post(&format!("/api/v1/jobs/{}/retry", j1.job_id), json!({})).await;
    assert_eq!((retried["attempt"].as_u64(), retried["state"].as_str()), (Some(2), Some("pending")), "{retried}");
    let (s, v) = app.call("POST", &format!("/api/v1/jobs/{}/retry", j1.job_id), &app.operator, None).await;
    assert_eq!(s, 409, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("already retried"), "{v}");
    // Server 3 has not started: exclude it.
    let j3 = jobs_of(&app, &id, "").await.into_iter().find(|j| j["agent_id"] == agents[3].id.as_str()).unwrap();
    let excluded = app.post(&format!("/api/v1/jobs/{}/exclude", j3["id"].as_str().unwrap()), json!({})).await;
    assert_eq!(excluded["state"], "excluded", "{excluded}");
    // The rest runs: server 2, then server 1's new attempt (listed after the others).
    let j2 = job_of(2).next_job().await;
    job_of(2).finish(&j2, InstallOutcome::Succeeded).await;
    let j1b = job_of(1).next_job().await;
    assert_eq!(j1b.job_id, retried["id"].as_str().unwrap());
    job_of(1).finish(&j1b, InstallOutcome::Succeeded).await;
    let r = app.wait_rollout(&id, "finished", |r| r["state"] == "finished").await;
    let counts = &r["counts"];
    assert_eq!(
        [&counts["succeeded"], &counts["skipped"], &counts["excluded"], &counts["retried"]],
        [&json!(2), &json!(1), &json!(1), &json!(1)],
        "{r}"
    );
    assert!(agents[3].poll(0).await.is_none(), "an excluded server gets nothing");
    let (s, v) = app.call("POST", &format!("/api/v1/jobs/{}/skip", j2.job_id), &app.operator, None).await;
    assert_eq!(s, 409, "{v}");
    let (s, v) = app.call("POST", &format!("/api/v1/jobs/{}/frobnicate", j2.job_id), &app.operator, None).await;
    assert_eq!(s, 404, "{v}");
    let audit = app.get("/api/v1/audit?limit=200").await["items"].to_string();
    for action in ["job.skip", "job.retry", "job.exclude"] {
        assert!(audit.contains(action), "{action} audited");
    }
}

/// `start_at`: a rollout started early runs no job before then, and its state_reason and
/// `wait_until` say what it waits for; at the time it goes, and the reason goes.
async fn a_scheduled_start_waits_and_says_so(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agent = app.fleet("later", 1).await.remove(0);
    let start_at = Utc::now() + Span::seconds(2);
    let at = Instant::now() + Duration::from_millis(1900);
    let spec = json!({ "package_id": package, "targets": { "agents": [agent.id] }, "start_at": start_at });
    let id = app.rollout(spec, true).await;
    let r = app.wait_rollout(&id, "a wait reason", |r| !r["state_reason"].is_null()).await;
    assert_eq!(r["state"], "running", "{r}");
    let stamp = start_at.to_rfc3339_opts(SecondsFormat::Secs, true);
    assert_eq!(r["state_reason"], format!("scheduled to start at {stamp}"), "{r}");
    assert_eq!(r["wait_until"].as_str().map(|t| t.starts_with(&stamp[..19])), Some(true), "{r}");
    let job = job_not_before(&agent, at).await;
    let r = app.get(&format!("/api/v1/rollouts/{id}")).await;
    assert!(r["state_reason"].is_null() && r["wait_until"].is_null(), "{r}");
    agent.finish(&job, InstallOutcome::Succeeded).await;
    app.wait_rollout(&id, "finished", |r| r["state"] == "finished").await;
}

/// `soak_secs`: the next wave opens only that long after the previous one passed its gate,
/// and meanwhile the rollout shows the countdown's end.
async fn the_next_wave_opens_after_the_soak_time(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("soak", 2).await;
    let spec = json!({
        "package_id": package, "targets": { "agents": [agents[0].id, agents[1].id] }, "waves": [1, 1], "soak_secs": 2,
    });
    let id = app.rollout(spec, true).await;
    let first = agents[0].next_job().await;
    agents[0].finish(&first, InstallOutcome::Succeeded).await;
    let passed = Instant::now();
    let r =
        app.wait_rollout(&id, "soaking", |r| r["state_reason"].as_str().is_some_and(|s| s.contains("soaking"))).await;
    let reason = r["state_reason"].as_str().unwrap();
    assert!(
        reason.starts_with("wave 1 passed its gate; soaking until ") && reason.ends_with("before wave 2 opens"),
        "{r}"
    );
    assert!(r["wait_until"].is_string(), "{r}");
    assert_eq!(r["waves"][0]["state"], "done", "{r}");
    assert_eq!(r["current_wave"], 1, "{r}");
    let second = job_not_before(&agents[1], passed + Duration::from_millis(1900)).await;
    agents[1].finish(&second, InstallOutcome::Succeeded).await;
    let r = app.wait_rollout(&id, "finished", |r| r["state"] == "finished").await;
    assert!(r["state_reason"].is_null(), "{r}");
}

/// A window in an IANA zone that is closed now: no job starts, and the rollout says so with
/// the instant the window next opens. A zone that does not exist is refused at staging.
async fn a_window_in_an_iana_zone_holds_jobs_and_says_when_it_opens(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agent = app.fleet("night", 1).await.remove(0);
    // Asia/Kolkata is UTC+05:30 all year: a range starting two hours from now, local.
    let local = Utc::now() + Span::minutes(330);
    let (start, end) = ((local.hour() + 2) % 24, (local.hour() + 3) % 24);
    let window = |zone: &str| json!({ "time_zone": zone, "ranges": [{ "start": format!("{start:02}:00"), "end": format!("{end:02}:00") }] });
    let spec = json!({
        "name": "night", "package_id": package, "targets": { "agents": [agent.id] },
        "maintenance_window": window("Asia/Kolkata"),
    });
    let id = app.rollout(spec.clone(), true).await;
    let r = app.wait_rollout(&id, "a wait reason", |r| !r["state_reason"].is_null()).await;
    let reason = r["state_reason"].as_str().unwrap();
    assert!(reason.starts_with("outside its maintenance window: 1 servers wait; it next opens at "), "{r}");
    let opens = chrono::DateTime::parse_from_rfc3339(r["wait_until"].as_str().unwrap()).unwrap().to_utc();
    // Two local hours on, on the hour, back in UTC.
    let local_hour = local.with_minute(0).unwrap().with_second(0).unwrap().with_nanosecond(0).unwrap();
    let want = local_hour + Span::hours(2) - Span::minutes(330);
    assert_eq!(opens, want, "opens at {start:02}:00 Asia/Kolkata");
    assert_eq!(opens.minute(), 30, "Kolkata's half-hour offset: {opens}");
    assert!(agent.poll(0).await.is_none(), "outside the window, no job");
    let mut bad = spec;
    bad["maintenance_window"] = window("Asia/Atlantis");
    let (s, v) = app.call("POST", "/api/v1/rollouts", &app.operator, Some(bad)).await;
    assert_eq!(s, 422, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("'Asia/Atlantis' is not an IANA time zone"), "{v}");
}

/// `late_joiners`: an agent that enrolls with the selector's labels while a label-targeted
/// rollout runs joins its last wave, and installs; asked of a rollout by agent ids, it is
/// refused.
async fn late_joiners_join_the_last_wave(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("grow", 2).await;
    let spec = json!({
        "package_id": package, "targets": { "labels": { "group": "grow" } }, "waves": [1, "100%"], "late_joiners": true,
    });
    let id = app.rollout(spec.clone(), true).await;
    let first = agents[0].next_job().await;
    let token = app.enrollment_token(json!({ "group": "grow" })).await;
    let late = app.enroll(&token, "grow-late").await;
    let r = app.wait_rollout(&id, "the late joiner", |r| r["waves"][1]["size"] == 2).await;
    assert_eq!(r["counts"]["pending"], 2, "{r}");
    let joined = jobs_of(&app, &id, "?wave=2").await;
    assert!(joined.iter().any(|j| j["hostname"] == "grow-late"), "{joined:?}");
    agents[0].finish(&first, InstallOutcome::Succeeded).await;
    for a in [&agents[1], &late] {
        let j = a.next_job().await;
        a.finish(&j, InstallOutcome::Succeeded).await;
    }
    let r = app.wait_rollout(&id, "finished", |r| r["state"] == "finished").await;
    assert_eq!(r["counts"]["succeeded"], 3, "{r}");
    let audit = app.get(&format!("/api/v1/audit?object_id={id}")).await["items"].clone();
    assert!(audit.to_string().contains("rollout.join"), "{audit}");
    let mut by_id = spec;
    by_id["name"] = json!("by id");
    by_id["targets"] = json!({ "agents": [agents[0].id] });
    let (s, v) = app.call("POST", "/api/v1/rollouts", &app.operator, Some(by_id)).await;
    assert_eq!(s, 422, "{v}");
}

/// One install whose pre-hooks phase took `hooks_ms`, as the engine reports it (its final
/// summary measures every phase).
fn install_events(hooks_ms: u64) -> Vec<EngineEvent> {
    let mut done = final_ev(3, InstallOutcome::Succeeded);
    done.data["summary"]["phase_ms"] = json!({ "check-system": 20, "pre-hooks": hooks_ms });
    vec![ev(1, PhaseId::CheckSystem, PhaseStatus::Succeeded), ev(2, PhaseId::PreHooks, PhaseStatus::Succeeded), done]
}

/// The stall alarm: five finished installs teach that pre-hooks takes 100 ms; a server whose
/// pre-hooks runs past 3 × p95 and the 1 s floor is flagged `stalled` (API, compact view,
/// audit, /metrics) while it runs, and the flag goes when the phase ends.
async fn a_phase_running_far_past_its_learned_p95_is_flagged_stalled(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.stall_floor_secs = 1).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("slow", 5).await;
    let spec = json!({ "package_id": package, "targets": { "labels": { "group": "slow" } }, "concurrency": 5 });
    let history = app.rollout(spec, true).await;
    for a in &agents {
        let j = a.next_job().await;
        let (s, v) = a.report(&j.job_id, j.fencing_token, install_events(100)).await;
        assert_eq!(s, 200, "{v}");
    }
    app.wait_rollout(&history, "finished", |r| r["state"] == "finished").await;

    let fresh = app.fleet("fresh", 1).await.remove(0);
    let id = app.rollout(json!({ "package_id": package, "targets": { "agents": [fresh.id] } }), true).await;
    let job = fresh.next_job().await;
    let running =
        vec![ev(1, PhaseId::CheckSystem, PhaseStatus::Succeeded), ev(2, PhaseId::PreHooks, PhaseStatus::Running)];
    let started = Instant::now();
    fresh.report(&job.job_id, job.fencing_token, running).await;
    let j = app.wait_job(&job.job_id, "stalled", |j| !j["stalled"].is_null()).await;
    assert!(started.elapsed() >= Duration::from_secs(1), "not before the floor");
    let stall = &j["stalled"];
    assert_eq!((stall["phase"].as_str(), stall["basis"].as_str()), (Some("pre-hooks"), Some("fleet")), "{j}");
    assert_eq!((stall["samples"].as_u64(), stall["p95_secs"].as_f64()), (Some(5), Some(0.1)), "{j}");
    assert_eq!(stall["limit_secs"].as_f64(), Some(1.0), "{j}");
    let listed = jobs_of(&app, &id, "?view=summary").await;
    assert_eq!(listed[0]["stalled"], true, "{listed:?}");
    let audit = app.get(&format!("/api/v1/audit?object_id={}", job.job_id)).await["items"].clone();
    assert!(audit.to_string().contains("job.stalled"), "{audit}");
    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.lines().any(|l| l == "fleetup_jobs_stalled 1"), "{metrics}");
    let done = vec![ev(3, PhaseId::PreHooks, PhaseStatus::Succeeded), final_ev(4, InstallOutcome::Succeeded)];
    fresh.report(&job.job_id, job.fencing_token, done).await;
    let j = app.wait_job(&job.job_id, "succeeded", |j| j["state"] == "succeeded").await;
    assert!(j["stalled"].is_null(), "an ended job is not stalled: {j}");
}

/// A CRL warning naming `endpoint`, asked by a job.
fn crl_warning(seq: u64, endpoint: &str) -> EngineEvent {
    warning_ev(seq, "crl-unreachable", &format!("CRL endpoint {endpoint} is unreachable: refused"))
}

/// "The same answer for this warning from now on": a bulk answer given with `remember`
/// answers the open decisions it covers, then every such decision asked later in the
/// rollout, by itself (audited, naming whose answer it is); one it does not cover waits.
async fn a_remembered_answer_stands_for_the_rest_of_the_rollout(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("standing", 3).await;
    let spec = json!({ "package_id": package, "targets": { "labels": { "group": "standing" } }, "concurrency": 3 });
    let id = app.rollout(spec, true).await;
    let jobs: Vec<JobAssignment> = futures_util::future::join_all(agents.iter().map(FakeAgent::next_job)).await;
    agents[0].report(&jobs[0].job_id, jobs[0].fencing_token, vec![crl_warning(1, "http://crl.a.test/x.crl")]).await;
    app.wait_job(&jobs[0].job_id, "waiting", |j| j["state"] == "waiting").await;
    let body = json!({ "kind": "warning", "matching": "crl.a.test", "answer": "continue", "remember": true });
    let v = app.post(&format!("/api/v1/rollouts/{id}/decisions"), body).await;
    assert_eq!(v["answered"], 1, "{v}");
    // Asked after the answer: the same endpoint is answered by itself, another one waits.
    agents[1].report(&jobs[1].job_id, jobs[1].fencing_token, vec![crl_warning(1, "http://crl.a.test/x.crl")]).await;
    agents[2].report(&jobs[2].job_id, jobs[2].fencing_token, vec![crl_warning(1, "http://crl.b.test/y.crl")]).await;
    app.wait_job(&jobs[1].job_id, "answered by the standing answer", |j| j["state"] == "running").await;
    let (_, r) = agents[1].report(&jobs[1].job_id, jobs[1].fencing_token, vec![]).await;
    assert_eq!(r["decisions"][0]["answer"], "continue", "{r}");
    let other = app.get(&format!("/api/v1/jobs/{}", jobs[2].job_id)).await;
    assert_eq!(other["state"], "waiting", "another endpoint is not covered: {other}");
    let decisions = app.get(&format!("/api/v1/jobs/{}/decisions", jobs[1].job_id)).await;
    assert!(decisions[0]["answered_by"].as_str().unwrap().ends_with("(standing answer)"), "{decisions}");
    let audit = app.get(&format!("/api/v1/audit?object_id={id}")).await["items"].to_string();
    assert!(audit.contains("standing_answer_of") && audit.contains("\"remember\":true"), "{audit}");
}

/// Issue 14, defects 6 and 7, at staging: a rollout that would take a server back to an
/// older version is refused, naming it, unless `allow_downgrade` (and then the agent is
/// told it may); a package whose `[target]` names a device class the servers are not gets
/// no job on them.
async fn staging_refuses_a_downgrade_unless_allowed_and_a_package_for_other_servers(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let current = app.upload_package().await;
    let agent = app.fleet("down", 1).await.remove(0);
    let first = app.rollout(json!({ "package_id": current, "targets": { "agents": [agent.id] } }), true).await;
    let job = agent.next_job().await;
    assert!(!job.allow_downgrade);
    agent.finish(&job, InstallOutcome::Succeeded).await;
    app.wait_rollout(&first, "finished", |r| r["state"] == "finished").await;
    let older = app.upload_variant(|m| m.replacen("version = \"1.1.0\"", "version = \"1.0.5\"", 1)).await;
    let spec = json!({ "name": "back", "package_id": older, "targets": { "labels": { "group": "down" } } });
    let (s, v) = app.call("POST", "/api/v1/rollouts", &app.operator, Some(spec.clone())).await;
    assert_eq!(s, 422, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("installing demo-service 1.0.5 would downgrade 1 servers: down-0 (runs 1.1.0)"), "{msg}");
    let mut allowed = spec;
    allowed["allow_downgrade"] = json!(true);
    let id = app.rollout(allowed, true).await;
    let job = agent.next_job().await;
    assert!(job.allow_downgrade, "the agent is told the downgrade is allowed");
    app.post(&format!("/api/v1/rollouts/{id}/cancel"), json!({})).await;

    let router =
        app.upload_variant(|m| m.replacen("os = \"linux\"", "os = \"linux\"\ndevice_class = \"router\"", 1)).await;
    let spec = json!({ "name": "routers", "package_id": router, "targets": { "labels": { "group": "down" } } });
    let (s, v) = app.call("POST", "/api/v1/rollouts", &app.operator, Some(spec)).await;
    assert_eq!(s, 422, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("is for none of the servers") && msg.contains("device class 'router'"), "{msg}");
}

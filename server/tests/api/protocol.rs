//! The agent protocol as a fake agent drives it.

use crate::helpers::{Backend, ev, final_ev, spawn_app};
use fleetup_proto::{InstallOutcome, PhaseId, PhaseStatus};
use serde_json::json;

crate::both_backends!(
    enroll_poll_report_decide_cancel,
    silent_agent_job_becomes_lost,
    a_lost_poll_answer_is_delivered_again,
    a_status_flood_is_capped_with_retry_after,
    nothing_is_accepted_after_the_final_event,
    an_outcome_after_the_lease_was_lost_is_recorded_as_late
);

async fn enroll_poll_report_decide_cancel(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("web", 1).await;
    let agent = &agents[0];
    // Nothing to do yet: 204.
    assert!(agent.poll(0).await.is_none());
    let rollout =
        app.rollout(json!({ "package_id": package, "targets": { "labels": { "group": "web" } } }), true).await;
    let job = agent.next_job().await;
    assert_eq!(job.rollout_id, rollout);
    assert_eq!(job.package.id, package);
    assert!(job.fencing_token >= 1);

    // Events out of order, with duplicates.
    let (s, r) = agent
        .report(
            &job.job_id,
            job.fencing_token,
            vec![
                ev(2, PhaseId::CheckSystem, PhaseStatus::Succeeded),
                ev(1, PhaseId::CheckSystem, PhaseStatus::Running),
            ],
        )
        .await;
    assert_eq!((s, r["accepted"].as_u64(), r["duplicates"].as_u64()), (200, Some(2), Some(0)), "{r}");
    let (_, r) = agent
        .report(
            &job.job_id,
            job.fencing_token,
            vec![ev(4, PhaseId::PreHooks, PhaseStatus::Running), ev(2, PhaseId::CheckSystem, PhaseStatus::Succeeded)],
        )
        .await;
    assert_eq!((r["accepted"].as_u64(), r["duplicates"].as_u64()), (Some(1), Some(1)), "{r}");
    let (_, r) =
        agent.report(&job.job_id, job.fencing_token, vec![ev(3, PhaseId::PrePrecompile, PhaseStatus::Succeeded)]).await;
    assert_eq!(r["accepted"].as_u64(), Some(1));
    let j = app.get(&format!("/api/v1/jobs/{}", job.job_id)).await;
    assert_eq!(j["state"], "running");
    assert_eq!(j["current_phase"], "pre-hooks");
    assert_eq!(j["phases"]["check-system"]["status"], "succeeded");
    let events = app.get(&format!("/api/v1/jobs/{}/events", job.job_id)).await;
    assert_eq!(
        events.as_array().unwrap().iter().map(|e| e["seq"].as_u64().unwrap()).collect::<Vec<_>>(),
        vec![1, 2, 3, 4]
    );

    // A warning decision with policy `ask` leaves the job waiting.
    let mut warn = ev(5, PhaseId::CheckSystem, PhaseStatus::Warning);
    warn.data = json!({ "decision": { "id": 1, "phase": "check-system", "message": "CRL unreachable", "kind": "warning", "code": "crl-unreachable", "remediation": "echo 127.0.0.1 crl.example >> /etc/hosts", "options": ["continue", "cancel"] } });
    let (_, r) = agent.report(&job.job_id, job.fencing_token, vec![warn]).await;
    assert_eq!(r["decisions"], json!([]));
    app.wait_job(&job.job_id, "waiting", |j| j["state"] == "waiting").await;
    // A wrong answer is refused and changes nothing.
    let (s, v) = app
        .call(
            "POST",
            &format!("/api/v1/jobs/{}/decision", job.job_id),
            &app.operator,
            Some(json!({ "answer": "retry" })),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    // The agent holds its report while waiting; the operator's answer releases it.
    let waiter = {
        let agent = agent.clone();
        let (id, token) = (job.job_id.clone(), job.fencing_token);
        tokio::spawn(async move { agent.report_wait(&id, token, vec![], 20).await })
    };
    app.post(&format!("/api/v1/jobs/{}/decision", job.job_id), json!({ "answer": "continue" })).await;
    let (s, r) = tokio::time::timeout(std::time::Duration::from_secs(10), waiter).await.unwrap().unwrap();
    assert_eq!(s, 200);
    assert_eq!(r["decisions"], json!([{ "id": 1, "answer": "continue" }]));
    assert_eq!(app.get(&format!("/api/v1/jobs/{}", job.job_id)).await["state"], "running");

    // Logs, idempotent.
    let lines = json!({ "fencing_token": job.fencing_token, "lines": [{ "seq": 1, "phase": "pre-hooks", "line": "hello", "at": "2026-11-21T10:00:00Z" }] });
    for expected in [1, 0] {
        let res = app
            .client
            .post(format!("{}/api/v1/agent/jobs/{}/logs", app.base, job.job_id))
            .bearer_auth(&agent.token)
            .json(&lines)
            .send()
            .await
            .unwrap();
        let v: serde_json::Value = res.json().await.unwrap();
        assert_eq!(v["accepted"], expected);
    }
    assert_eq!(app.get(&format!("/api/v1/jobs/{}/logs", job.job_id)).await[0]["line"], "hello");

    // Package download with a Range.
    let res = app
        .client
        .get(format!("{}{}", app.base, job.package.download_path))
        .bearer_auth(&agent.token)
        .header("Range", "bytes=0-9")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status().as_u16(), 206);
    assert_eq!(res.bytes().await.unwrap().len(), 10);

    // Cancel reaches the agent; its final report ends the job.
    app.post(&format!("/api/v1/jobs/{}/cancel", job.job_id), json!({})).await;
    let (_, r) = agent.report(&job.job_id, job.fencing_token, vec![]).await;
    assert_eq!(r["cancel"], true);
    let (s, _) = agent.report(&job.job_id, job.fencing_token, vec![final_ev(6, InstallOutcome::Cancelled)]).await;
    assert_eq!(s, 200);
    let j = app.get(&format!("/api/v1/jobs/{}", job.job_id)).await;
    assert_eq!(j["state"], "cancelled");
    // A retried final report is recorded once and still accepted.
    let (s, r) = agent.report(&job.job_id, job.fencing_token, vec![final_ev(6, InstallOutcome::Cancelled)]).await;
    assert_eq!((s, r["duplicates"].as_u64()), (200, Some(1)));
    // A stale fencing token is refused.
    let (s, r) = agent.report(&job.job_id, job.fencing_token + 7, vec![]).await;
    assert_eq!(s, 409);
    assert_eq!(r["error"]["code"], "stale-lease");
}

async fn silent_agent_job_becomes_lost(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("db", 1).await;
    let rollout = app
        .rollout(json!({ "package_id": package, "targets": { "labels": { "group": "db" } }, "lease_secs": 1 }), true)
        .await;
    let job = agents[0].next_job().await;
    assert_eq!(job.lease_secs, 1);
    let j = app.wait_job(&job.job_id, "lost", |j| j["state"] == "lost").await;
    assert!(j["error"].as_str().unwrap().contains("lease"), "{j}");
    let (s, r) =
        agents[0].report(&job.job_id, job.fencing_token, vec![ev(1, PhaseId::CheckSystem, PhaseStatus::Running)]).await;
    assert_eq!((s, r["error"]["code"].as_str()), (409, Some("stale-lease")));
    // Lost counts as a failure: the only wave fails its gate and the rollout pauses.
    app.wait_rollout(&rollout, "paused", |r| r["state"] == "paused").await;
}

/// The answer to the poll that dispatched a job can be lost (a timeout, a dropped
/// connection): the agent's next poll gets the same dispatch again, and the job is not
/// stranded until its lease runs out.
async fn a_lost_poll_answer_is_delivered_again(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("lost", 1).await;
    let agent = &agents[0];
    app.rollout(json!({ "package_id": package, "targets": { "labels": { "group": "lost" } } }), true).await;
    let first = agent.next_job().await;
    // The agent never saw `first` and polls again.
    let again = agent.poll(0).await.expect("the undelivered job is handed over again");
    assert_eq!((again.job_id.as_str(), again.fencing_token), (first.job_id.as_str(), first.fencing_token));
    let job = app.get(&format!("/api/v1/jobs/{}", first.job_id)).await;
    assert_eq!(job["state"], "dispatched");
    // Once the agent reports, the job is running and a poll has nothing for it.
    let (status, _) =
        agent.report(&first.job_id, first.fencing_token, vec![ev(1, PhaseId::CheckSystem, PhaseStatus::Running)]).await;
    assert_eq!(status, 200);
    assert!(agent.poll(0).await.is_none());
}

/// Issue 14, defect 9: one agent long-polls two coordinators on one Postgres database at the
/// same instant while it has two ready jobs (two rollouts). The store holds at most one
/// active job per agent, whichever coordinator claims.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_agent_polling_two_coordinators_gets_one_job() {
    let Some(pg) = crate::helpers::pg_database("one_agent_polling_two_coordinators_gets_one_job").await else {
        return;
    };
    let pg = std::sync::Arc::new(pg);
    let a = crate::helpers::spawn_on(Backend::Postgres, Some(pg.clone()), None).await.unwrap();
    let b = crate::helpers::spawn_on(Backend::Postgres, Some(pg.clone()), Some(a.tokens())).await.unwrap();
    let package = a.upload_package().await;
    let mut doubled = Vec::new();
    for trial in 0..12 {
        // A fresh agent per trial, with two ready jobs of two rollouts.
        let group = format!("pair{trial}");
        let agent_a = a.fleet(&group, 1).await.remove(0);
        let agent_b = agent_a.via(&b);
        let mut rollouts = Vec::new();
        for _ in 0..2 {
            let spec = json!({ "package_id": package, "targets": { "labels": { "group": group } } });
            rollouts.push(a.rollout(spec, true).await);
        }
        for r in &rollouts {
            a.wait_rollout(r, "its job queued", |r| r["counts"]["queued"] == 1).await;
        }
        let (via_a, via_b) = tokio::join!(agent_a.poll(0), agent_b.poll(0));
        let ids: std::collections::BTreeSet<String> = [via_a, via_b].into_iter().flatten().map(|j| j.job_id).collect();
        let mut active = 0;
        for r in &rollouts {
            let r = a.get(&format!("/api/v1/rollouts/{r}")).await;
            for state in ["dispatched", "running", "waiting"] {
                active += r["counts"][state].as_u64().unwrap_or(0);
            }
        }
        if ids.len() > 1 || active > 1 {
            doubled.push((trial, ids.len(), active));
        }
    }
    assert!(doubled.is_empty(), "(trial, jobs handed out, active jobs) with more than one: {doubled:?}");
}

/// Issue 14, defect 8: 40,000 events as fast as the agent can send them get a `429` with
/// `Retry-After` long before the end; nothing of a refused batch is stored, and after the
/// wait the final event is accepted.
async fn a_status_flood_is_capped_with_retry_after(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("flood", 1).await;
    app.rollout(json!({ "package_id": package, "targets": { "labels": { "group": "flood" } } }), true).await;
    let job = agents[0].next_job().await;
    let url = format!("{}/api/v1/agent/jobs/{}/events", app.base, job.job_id);
    let mut seq = 0;
    let mut capped = None;
    while seq < 40_000 {
        let events: Vec<_> = (seq + 1..=seq + 500).map(|s| ev(s, PhaseId::PreHooks, PhaseStatus::Running)).collect();
        let batch = fleetup_proto::agent_api::EventBatch { fencing_token: job.fencing_token, events };
        let res = app.client.post(&url).bearer_auth(&agents[0].token).json(&batch).send().await.unwrap();
        if res.status().as_u16() == 429 {
            let after: u64 = res.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(body["error"]["code"], "too-many-requests", "{body}");
            capped = Some((seq, after));
            break;
        }
        assert_eq!(res.status().as_u16(), 200);
        seq += 500;
    }
    let (stored, after) = capped.expect("40,000 events in a burst got no 429");
    assert!(stored < 40_000 && after >= 1, "{stored} {after}");
    let events = app.get(&format!("/api/v1/jobs/{}/events?limit=5000", job.job_id)).await;
    let n = events.as_array().map_or(0, Vec::len);
    assert!(n <= stored as usize, "{n} events stored, {stored} accepted: a refused batch wrote nothing");
    // The agent honours Retry-After (a wait the protocol asks for, not a synchronisation).
    tokio::time::sleep(std::time::Duration::from_secs(after)).await;
    let (s, r) =
        agents[0].report(&job.job_id, job.fencing_token, vec![final_ev(stored + 1, InstallOutcome::Succeeded)]).await;
    assert_eq!(s, 200, "{r}");
    assert_eq!(app.get(&format!("/api/v1/jobs/{}", job.job_id)).await["state"], "succeeded");
}

/// Issue 14, defect 8: after the final event a new event, or a lease renewal, is refused
/// with `409` and changes nothing; an exact resend of what was recorded is still answered.
async fn nothing_is_accepted_after_the_final_event(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("ended", 1).await;
    app.rollout(json!({ "package_id": package, "targets": { "labels": { "group": "ended" } } }), true).await;
    let job = agents[0].next_job().await;
    agents[0].finish(&job, InstallOutcome::Succeeded).await;
    let before = app.get(&format!("/api/v1/jobs/{}", job.job_id)).await;
    assert_eq!(before["state"], "succeeded");
    let late = vec![ev(4, PhaseId::Rollback, PhaseStatus::Failed)];
    for events in [
        late,
        vec![],
        vec![ev(3, PhaseId::Cleanup, PhaseStatus::Succeeded), ev(9, PhaseId::Cleanup, PhaseStatus::Failed)],
    ] {
        let (s, r) = agents[0].report(&job.job_id, job.fencing_token, events).await;
        assert_eq!((s, r["error"]["code"].as_str()), (409, Some("conflict")), "{r}");
        assert!(r["error"]["message"].as_str().unwrap().contains("after its final event"), "{r}");
    }
    let (s, r) = agents[0].report(&job.job_id, job.fencing_token, vec![final_ev(3, InstallOutcome::Succeeded)]).await;
    assert_eq!((s, r["duplicates"].as_u64()), (200, Some(1)), "{r}");
    let events = app.get(&format!("/api/v1/jobs/{}/events", job.job_id)).await;
    assert_eq!(events.as_array().unwrap().len(), 3, "{events}");
    let after = app.get(&format!("/api/v1/jobs/{}", job.job_id)).await;
    assert_eq!((after["state"].clone(), after["phases"].clone()), (before["state"].clone(), before["phases"].clone()));
}

/// Issue 14, defect 1: an agent whose lease ran out while its install was changing the
/// server finishes by the engine's cancel rules and sends the outcome once. The coordinator
/// refuses it (`409 stale-lease`), keeps the job `lost`, and records the late outcome on the
/// job and in the audit log, since it is true of the server.
async fn an_outcome_after_the_lease_was_lost_is_recorded_as_late(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("late", 1).await;
    let spec = json!({ "package_id": package, "targets": { "labels": { "group": "late" } }, "lease_secs": 1 });
    app.rollout(spec, true).await;
    let job = agents[0].next_job().await;
    let (s, _) =
        agents[0].report(&job.job_id, job.fencing_token, vec![ev(1, PhaseId::UpdateFiles, PhaseStatus::Running)]).await;
    assert_eq!(s, 200);
    app.wait_job(&job.job_id, "lost", |j| j["state"] == "lost").await;
    let (s, r) = agents[0].report(&job.job_id, job.fencing_token, vec![final_ev(2, InstallOutcome::Succeeded)]).await;
    assert_eq!((s, r["error"]["code"].as_str()), (409, Some("stale-lease")), "{r}");
    assert!(r["error"]["message"].as_str().unwrap().contains("recorded as late"), "{r}");
    // Sent twice (a retry): recorded once.
    let _ = agents[0].report(&job.job_id, job.fencing_token, vec![final_ev(2, InstallOutcome::Succeeded)]).await;
    let j = app.get(&format!("/api/v1/jobs/{}", job.job_id)).await;
    assert_eq!(j["state"], "lost", "{j}");
    let error = j["error"].as_str().unwrap();
    assert!(
        error.contains("lease") && error.contains("reported after the job was lost: demo-service 1.1.0 succeeded"),
        "{error}"
    );
    assert_eq!(error.matches("reported after").count(), 1, "{error}");
    let audit = app.get("/api/v1/audit?limit=5000").await["items"].clone();
    let late: Vec<_> = audit.as_array().unwrap().iter().filter(|a| a["action"] == "job.late-report").collect();
    assert_eq!(late.len(), 1, "{audit}");
    // Any other agent's, or an older dispatch's, report is refused as before.
    let (s, r) =
        agents[0].report(&job.job_id, job.fencing_token + 5, vec![final_ev(2, InstallOutcome::Succeeded)]).await;
    assert_eq!((s, r["error"]["code"].as_str()), (409, Some("stale-lease")), "{r}");
}

/// Every connection the coordinator accepts sends at once (`TCP_NODELAY`): with Nagle's
/// algorithm a streamed package download held its last segment until the agent's delayed
/// acknowledgement, 40 ms per download. The server runs in this process, so its accepted
/// sockets are among this test's descriptors (copied here by `pidfd_getfd`): those whose
/// local port is the server's and that have a peer.
#[tokio::test]
async fn accepted_connections_send_without_delay() {
    use rustix::process::{PidfdFlags, PidfdGetfdFlags, getpid, pidfd_getfd, pidfd_open};
    let Some(app) = spawn_app(Backend::Sqlite).await else { return };
    let port: u16 = app.base.rsplit(':').next().unwrap().trim_end_matches('/').parse().unwrap();
    // A request on a kept-alive connection: its server side stays open.
    app.get("/api/v1/rollouts").await;
    let me = pidfd_open(getpid(), PidfdFlags::empty()).unwrap();
    let mut accepted = 0;
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let Ok(raw) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(fd) = pidfd_getfd(&me, raw, PidfdGetfdFlags::empty()) else { continue };
        let Ok(local) = rustix::net::getsockname(&fd).map(std::net::SocketAddr::try_from) else { continue };
        if local.ok().map(|a| a.port()) != Some(port) || !matches!(rustix::net::getpeername(&fd), Ok(Some(_))) {
            continue;
        }
        accepted += 1;
        assert!(rustix::net::sockopt::tcp_nodelay(&fd).unwrap(), "an accepted connection has Nagle's algorithm on");
    }
    assert!(accepted > 0, "no accepted connection of the server on port {port} found among this process's descriptors");
}

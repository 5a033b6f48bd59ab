//! The agent protocol as a fake agent drives it.

use crate::helpers::{Backend, ev, final_ev, spawn_app};
use fleetup_proto::{InstallOutcome, PhaseId, PhaseStatus};
use serde_json::json;

crate::both_backends!(
    enroll_poll_report_decide_cancel,
    silent_agent_job_becomes_lost,
    a_lost_poll_answer_is_delivered_again
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

//! Waves, concurrency, thresholds, approval, retry.

use crate::helpers::{Backend, spawn_app};
use fleetup_proto::InstallOutcome;
use serde_json::json;

crate::both_backends!(waves_open_in_order_with_concurrency_and_approval, error_threshold_pauses_and_retry_failed);

async fn waves_open_in_order_with_concurrency_and_approval(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("app", 5).await;
    let id = app
        .rollout(json!({ "package_id": package, "targets": { "labels": { "group": "app" } }, "waves": [1, "100%"], "concurrency": 2, "approval_required": true }), true)
        .await;
    let r = app.get(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(
        r["waves"].as_array().unwrap().iter().map(|w| w["size"].as_u64().unwrap()).collect::<Vec<_>>(),
        vec![1, 4]
    );
    // Wave 1: exactly one agent gets a job.
    let first = agents[0].next_job().await;
    for a in &agents[1..] {
        assert!(a.poll(0).await.is_none(), "wave 2 must not open before wave 1 is done");
    }
    agents[0].finish(&first, InstallOutcome::Succeeded).await;
    app.wait_rollout(&id, "awaiting approval", |r| r["state"] == "awaiting-approval").await;
    for a in &agents[1..] {
        assert!(a.poll(0).await.is_none(), "approval gate must hold wave 2");
    }
    app.post(&format!("/api/v1/rollouts/{id}/approve"), json!({})).await;
    // Wave 2 with concurrency 2: never more than two jobs in flight.
    let mut done = 0;
    let mut rest: Vec<_> = agents[1..].to_vec();
    while !rest.is_empty() {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut got = Vec::new();
        loop {
            for (i, a) in rest.iter().enumerate() {
                if got.iter().any(|(j, _)| *j == i) {
                    continue;
                }
                if let Some(job) = a.poll(0).await {
                    got.push((i, job));
                }
            }
            let active = app.get(&format!("/api/v1/rollouts/{id}")).await;
            let in_flight: u64 = ["queued", "dispatched", "running", "waiting"]
                .iter()
                .map(|s| active["counts"][s].as_u64().unwrap_or(0))
                .sum();
            assert!(in_flight <= 2, "concurrency exceeded: {active}");
            if got.len() >= 2.min(rest.len()) {
                break;
            }
            assert!(std::time::Instant::now() < deadline, "jobs did not arrive");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(got.len() <= 2);
        for (i, job) in &got {
            rest[*i].finish(job, InstallOutcome::Succeeded).await;
            done += 1;
        }
        let mut idx: Vec<usize> = got.iter().map(|(i, _)| *i).collect();
        idx.sort_unstable();
        for i in idx.into_iter().rev() {
            rest.remove(i);
        }
    }
    assert_eq!(done, 4);
    let r = app.wait_rollout(&id, "finished", |r| r["state"] == "finished").await;
    assert_eq!(r["counts"]["succeeded"], 5);
    let installed = app.get(&format!("/api/v1/agents/{}", agents[0].id)).await;
    assert_eq!(installed["installed"][0]["version"], "1.1.0");
    assert_eq!(installed["online"], true);
}

async fn error_threshold_pauses_and_retry_failed(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("edge", 3).await;
    let id = app
        .rollout(json!({ "package_id": package, "targets": { "labels": { "group": "edge" } }, "waves": [1, 2], "error_threshold": 1, "success_threshold": "0%" }), true)
        .await;
    let mut first = None;
    for a in &agents {
        if let Some(j) = a.poll(1).await {
            first = Some((a.clone(), j));
        }
    }
    let (agent, job) = first.expect("one job in wave 1");
    agent.finish(&job, InstallOutcome::RolledBack).await;
    let r = app.wait_rollout(&id, "paused", |r| r["state"] == "paused").await;
    assert!(r["state_reason"].as_str().unwrap().contains("error threshold"), "{r}");
    for a in &agents {
        assert!(a.poll(0).await.is_none(), "a paused rollout dispatches nothing");
    }
    assert_eq!(r["counts"]["pending"], 2);
    let retry = app.post(&format!("/api/v1/rollouts/{id}/retry-failed"), json!({})).await;
    assert_eq!(retry["retry_of"], id.as_str());
    assert_eq!(retry["counts"]["pending"], 1);
    assert_eq!(retry["spec"]["targets"]["agents"][0], agent.id.as_str());
    // Resuming accepts the failure and opens wave 2.
    app.post(&format!("/api/v1/rollouts/{id}/resume"), json!({})).await;
    app.wait_rollout(&id, "wave 2", |r| r["current_wave"] == 2).await;
}

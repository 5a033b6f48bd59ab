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

crate::both_backends!(
    a_cancelled_rollout_is_cancelling_until_its_last_job_ends,
    a_cancel_the_engine_would_refuse_is_a_conflict_naming_the_phase,
    an_empty_wave_is_refused
);

/// A rollout says `cancelled` (with `finished_at`) only once none of its jobs is in flight;
/// until then it is `cancelling`. It settles in the transaction of the report that ends its
/// last job: the answer to that report already sees `cancelled`.
async fn a_cancelled_rollout_is_cancelling_until_its_last_job_ends(backend: Backend) {
    use crate::helpers::{ev, final_ev};
    use fleetup_proto::{PhaseId, PhaseStatus};
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("cxl", 2).await;
    let id = app
        .rollout(json!({ "package_id": package, "targets": { "labels": { "group": "cxl" } }, "waves": [2], "concurrency": 2 }), true)
        .await;
    let jobs = [agents[0].next_job().await, agents[1].next_job().await];
    for (a, j) in agents.iter().zip(&jobs) {
        let (s, _) =
            a.report(&j.job_id, j.fencing_token, vec![ev(1, PhaseId::CheckSystem, PhaseStatus::Running)]).await;
        assert_eq!(s, 200);
    }
    let r = app.post(&format!("/api/v1/rollouts/{id}/cancel"), json!({})).await;
    assert_eq!(r["state"], "cancelling", "{r}");
    assert!(r["finished_at"].is_null(), "{r}");
    let (s, again) = app.call("POST", &format!("/api/v1/rollouts/{id}/cancel"), &app.operator, Some(json!({}))).await;
    assert_eq!(s, 409, "{again}");
    assert!(again["error"]["message"].as_str().unwrap().contains("already ending"), "{again}");

    agents[0].report(&jobs[0].job_id, jobs[0].fencing_token, vec![final_ev(2, InstallOutcome::Cancelled)]).await;
    let r = app.get(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!((r["state"].as_str(), r["finished_at"].is_null()), (Some("cancelling"), true), "{r}");
    agents[1].report(&jobs[1].job_id, jobs[1].fencing_token, vec![final_ev(2, InstallOutcome::Cancelled)]).await;
    let r = app.get(&format!("/api/v1/rollouts/{id}")).await;
    assert_eq!(r["state"], "cancelled", "{r}");
    assert!(r["finished_at"].is_string(), "{r}");
    assert_eq!(r["counts"]["cancelled"], 2, "{r}");
}

/// From post-precompile on the engine refuses a cancel: the API says so (409, naming the
/// phase) instead of answering 200 and having the request silently dropped.
async fn a_cancel_the_engine_would_refuse_is_a_conflict_naming_the_phase(backend: Backend) {
    use crate::helpers::ev;
    use fleetup_proto::{PhaseId, PhaseStatus};
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("late", 1).await;
    app.rollout(json!({ "package_id": package, "targets": { "agents": [agents[0].id] } }), true).await;
    let job = agents[0].next_job().await;
    let (s, _) =
        agents[0].report(&job.job_id, job.fencing_token, vec![ev(1, PhaseId::UpdateFiles, PhaseStatus::Running)]).await;
    assert_eq!(s, 200);
    // In update-files a cancel is a full rollback: accepted.
    let (s, v) = app.call("POST", &format!("/api/v1/jobs/{}/cancel", job.job_id), &app.operator, Some(json!({}))).await;
    assert_eq!((s, v["cancel_requested"].as_bool()), (200, Some(true)), "{v}");

    let agents = app.fleet("later", 1).await;
    app.rollout(json!({ "package_id": package, "targets": { "agents": [agents[0].id] } }), true).await;
    let job = agents[0].next_job().await;
    agents[0].report(&job.job_id, job.fencing_token, vec![ev(1, PhaseId::PostPrecompile, PhaseStatus::Running)]).await;
    let audit_before = app.audit_len().await;
    let (s, v) = app.call("POST", &format!("/api/v1/jobs/{}/cancel", job.job_id), &app.operator, Some(json!({}))).await;
    assert_eq!(s, 409, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("post-precompile") && msg.contains("finishes forward"), "{msg}");
    let j = app.get(&format!("/api/v1/jobs/{}", job.job_id)).await;
    assert_eq!((j["state"].as_str(), j["cancel_requested"].as_bool()), (Some("running"), Some(false)), "{j}");
    assert_eq!(app.audit_len().await, audit_before, "a refused cancel is not audited as done");
}

/// `waves: [0]` used to become one wave of the whole fleet; a wave that adds no server is
/// refused, and nothing is staged.
async fn an_empty_wave_is_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    app.fleet("zero", 2).await;
    for waves in [json!([0]), json!([1, "0%"])] {
        let body =
            json!({ "name": "z", "package_id": package, "targets": { "labels": { "group": "zero" } }, "waves": waves });
        let (s, v) = app.call("POST", "/api/v1/rollouts", &app.operator, Some(body)).await;
        assert_eq!(s, 422, "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("adds no server"), "{v}");
    }
    assert_eq!(app.get("/api/v1/rollouts").await["items"].as_array().unwrap().len(), 0);
}

crate::both_backends!(
    an_offline_server_becomes_undeliverable_and_frees_its_slot,
    servers_already_on_the_version_are_skipped
);

/// A job queued for an agent that never polls holds its wave's only slot until its delivery
/// timeout; then it is `undeliverable` (not a failure: the wave's gate is taken over the
/// servers that could be reached), the next server gets its job, and retry-failed takes the
/// offline one.
async fn an_offline_server_becomes_undeliverable_and_frees_its_slot(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("away", 2).await;
    let (offline, online) = (&agents[0], &agents[1]);
    let spec = json!({
        "package_id": package,
        "targets": { "agents": [offline.id, online.id] },
        "waves": [2],
        "concurrency": 1,
        "delivery_timeout_secs": 1,
        "error_threshold": 1,
    });
    let id = app.rollout(spec, true).await;
    // The offline server's job is first and takes the only slot: the online one waits.
    assert!(online.poll(0).await.is_none(), "one slot, held by the offline server's job");
    let job = online.next_job().await;
    let jobs = app.get(&format!("/api/v1/rollouts/{id}/jobs")).await;
    let away = jobs["jobs"].as_array().unwrap().iter().find(|j| j["agent_id"] == offline.id.as_str()).unwrap().clone();
    assert_eq!(away["state"], "undeliverable", "{away}");
    let error = away["error"].as_str().unwrap();
    assert!(error.contains("within 1 s") && error.contains("last seen at"), "{error}");
    assert!(away["dispatched_at"].is_null(), "{away}");
    online.finish(&job, InstallOutcome::Succeeded).await;
    let r = app.wait_rollout(&id, "finished", |r| r["state"] == "finished").await;
    assert_eq!((r["counts"]["undeliverable"].as_u64(), r["counts"]["succeeded"].as_u64()), (Some(1), Some(1)), "{r}");
    let audit = app.get(&format!("/api/v1/audit?object_id={}", away["id"].as_str().unwrap())).await["items"].clone();
    assert!(audit.to_string().contains("job.undeliverable"), "{audit}");
    // The offline server never got the job, even when it comes back.
    assert!(offline.poll(0).await.is_none());
    let retry = app.post(&format!("/api/v1/rollouts/{id}/retry-failed"), json!({})).await;
    assert_eq!(retry["spec"]["targets"]["agents"], json!([offline.id]), "{retry}");
}

/// A server that already runs the package's version is `skipped` at staging (counted as a
/// success, planned last so wave 1 is a real canary) and is never handed the job.
async fn servers_already_on_the_version_are_skipped(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("again", 2).await;
    let first = app.rollout(json!({ "package_id": package, "targets": { "agents": [agents[0].id] } }), true).await;
    let job = agents[0].next_job().await;
    agents[0].finish(&job, InstallOutcome::Succeeded).await;
    app.wait_rollout(&first, "finished", |r| r["state"] == "finished").await;

    let id = app
        .rollout(
            json!({ "package_id": package, "targets": { "labels": { "group": "again" } }, "waves": [1, "100%"] }),
            false,
        )
        .await;
    let jobs = app.get(&format!("/api/v1/rollouts/{id}/jobs")).await;
    let states: Vec<(&str, u64, &str)> = jobs["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|j| (j["agent_id"].as_str().unwrap(), j["wave"].as_u64().unwrap(), j["state"].as_str().unwrap()))
        .collect();
    assert_eq!(states, vec![(agents[1].id.as_str(), 1, "pending"), (agents[0].id.as_str(), 2, "skipped")]);
    app.post(&format!("/api/v1/rollouts/{id}/start"), json!({})).await;
    assert!(agents[0].poll(0).await.is_none(), "a skipped server gets no job");
    let job = agents[1].next_job().await;
    agents[1].finish(&job, InstallOutcome::Succeeded).await;
    let r = app.wait_rollout(&id, "finished", |r| r["state"] == "finished").await;
    assert_eq!((r["counts"]["skipped"].as_u64(), r["counts"]["succeeded"].as_u64()), (Some(1), Some(1)), "{r}");
}

crate::both_backends!(one_call_answers_every_open_decision_of_a_kind);
crate::both_backends!(a_files_in_use_answer_narrowed_to_its_holders_leaves_the_others_open);

/// Three servers ask about files in use: two held by `tail` (other pids), one by `java`.
/// One call with the holders `tail: etc/demo.conf` answers the two; the third stays open.
async fn a_files_in_use_answer_narrowed_to_its_holders_leaves_the_others_open(backend: Backend) {
    use crate::helpers::files_in_use_ev;
    let Some(app) = spawn_app(backend).await else { return };
    let (id, agents) = app.one_wave_of("fiu", 3).await;
    let mut jobs = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let job = a.next_job().await;
        let holder = if i < 2 { (100 + i as u32, "tail", "etc/demo.conf") } else { (300, "java", "etc/demo.conf") };
        let (s, _) = a.report(&job.job_id, job.fencing_token, vec![files_in_use_ev(1, &[holder])]).await;
        assert_eq!(s, 200);
        jobs.push(job);
    }
    app.wait_rollout(&id, "three waiting", |r| r["counts"]["waiting"] == 3).await;
    let (s, v) = app
        .call(
            "POST",
            &format!("/api/v1/rollouts/{id}/decisions"),
            &app.operator,
            Some(json!({ "kind": "warning", "holders": "tail: etc/demo.conf", "answer": "continue" })),
        )
        .await;
    assert_eq!(s, 422, "holders narrows files-in-use only: {v}");
    let body = json!({ "kind": "files-in-use", "holders": "tail: etc/demo.conf", "answer": "retry" });
    let v = app.post(&format!("/api/v1/rollouts/{id}/decisions"), body).await;
    assert_eq!(v["answered"], 2, "{v}");
    let states: Vec<String> = {
        let mut out = Vec::new();
        for job in &jobs {
            out.push(app.get(&format!("/api/v1/jobs/{}", job.job_id)).await["state"].as_str().unwrap().to_owned());
        }
        out
    };
    assert_eq!(states, ["running", "running", "waiting"], "the java holder's server still waits");
}

/// Four servers ask about two unreachable CRL endpoints and one prerequisite. One call
/// answers the warnings naming one endpoint; the others stay open; the audit has one record
/// with the count.
async fn one_call_answers_every_open_decision_of_a_kind(backend: Backend) {
    use crate::helpers::warning_ev;
    let Some(app) = spawn_app(backend).await else { return };
    let (id, agents) = app.one_wave_of("crl", 4).await;
    let mut jobs = Vec::new();
    for (i, a) in agents.iter().enumerate() {
        let job = a.next_job().await;
        let (code, message) = match i {
            0 | 1 => ("crl-unreachable", "CRL endpoint http://crl.a.test/x.crl is unreachable: refused"),
            2 => ("crl-unreachable", "CRL endpoint http://crl.b.test/y.crl is unreachable: refused"),
            _ => ("prerequisite", "libfoo 2 is missing"),
        };
        let e = warning_ev(1, code, message);
        let (s, _) = a.report(&job.job_id, job.fencing_token, vec![e]).await;
        assert_eq!(s, 200);
        jobs.push(job);
    }
    let r = app.wait_rollout(&id, "four waiting", |r| r["counts"]["waiting"] == 4).await;
    assert_eq!(r["counts"]["waiting"], 4);
    let audit_before = app.audit_len().await;
    // A wrong answer for the kind is refused, nothing answered.
    let (s, v) = app
        .call(
            "POST",
            &format!("/api/v1/rollouts/{id}/decisions"),
            &app.operator,
            Some(json!({ "kind": "warning", "answer": "retry" })),
        )
        .await;
    assert_eq!(s, 422, "{v}");
    let body = json!({ "kind": "warning", "code": "crl-unreachable", "matching": "crl.a.test", "answer": "continue" });
    let v = app.post(&format!("/api/v1/rollouts/{id}/decisions"), body).await;
    assert_eq!(v["answered"], 2, "{v}");
    for (i, job) in jobs.iter().enumerate() {
        let j = app.get(&format!("/api/v1/jobs/{}", job.job_id)).await;
        let want = if i < 2 { "running" } else { "waiting" };
        assert_eq!(j["state"], want, "server {i}: {j}");
    }
    let (_, r) = agents[0].report(&jobs[0].job_id, jobs[0].fencing_token, vec![]).await;
    assert_eq!(r["decisions"][0]["answer"], "continue", "the agent hears the answer: {r}");
    let audit = app.get("/api/v1/audit?limit=5000").await["items"].clone();
    assert_eq!(audit.as_array().unwrap().len(), audit_before + 1, "one audit record for the bulk answer");
    let entry = &audit[0];
    assert_eq!(
        (entry["action"].as_str(), entry["detail"]["count"].as_u64()),
        (Some("rollout.decisions"), Some(2)),
        "{entry}"
    );
    // Every remaining warning, whatever its code.
    let v =
        app.post(&format!("/api/v1/rollouts/{id}/decisions"), json!({ "kind": "warning", "answer": "cancel" })).await;
    assert_eq!(v["answered"], 2, "{v}");
    let v =
        app.post(&format!("/api/v1/rollouts/{id}/decisions"), json!({ "kind": "warning", "answer": "cancel" })).await;
    assert_eq!(v["answered"], 0, "nothing left open: {v}");
}

crate::both_backends!(an_idempotency_key_stages_a_rollout_once);

/// `Idempotency-Key` on `POST /rollouts`: a repeat gets the first answer (marked replayed),
/// eight racing repeats make one rollout, the key with another body is refused, and a
/// request that failed forgets its key.
async fn an_idempotency_key_stages_a_rollout_once(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    app.fleet("idem", 2).await;
    let spec = json!({ "name": "once", "package_id": package, "targets": { "labels": { "group": "idem" } } });
    let post = |key: &str, body: &serde_json::Value| {
        app.client
            .post(format!("{}/api/v1/rollouts", app.base))
            .bearer_auth(&app.operator)
            .header("idempotency-key", key)
            .json(body)
            .send()
    };
    let count = || async { app.get("/api/v1/rollouts").await["items"].as_array().unwrap().len() };
    let first = post("k-1", &spec).await.unwrap();
    assert_eq!(first.status().as_u16(), 201);
    assert!(first.headers().get("idempotent-replayed").is_none());
    let first: serde_json::Value = first.json().await.unwrap();
    let again = post("k-1", &spec).await.unwrap();
    assert_eq!(again.status().as_u16(), 201);
    assert_eq!(again.headers().get("idempotent-replayed").map(|v| v.to_str().unwrap()), Some("true"));
    let again: serde_json::Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"], "{again}");
    assert_eq!(count().await, 1);

    // Racing repeats of a new key: one rollout, every answer names it or says it is running.
    let racing = json!({ "name": "race", "package_id": package, "targets": { "labels": { "group": "idem" } } });
    let answers = futures_util::future::join_all((0..8).map(|_| post("k-race", &racing))).await;
    let mut ids = std::collections::BTreeSet::new();
    for a in answers {
        let a = a.unwrap();
        let s = a.status().as_u16();
        let v: serde_json::Value = a.json().await.unwrap();
        match s {
            201 => {
                ids.insert(v["id"].as_str().unwrap().to_owned());
            }
            409 => assert!(v["detail"].as_str().unwrap().contains("has not answered yet"), "{v}"),
            other => panic!("{other}: {v}"),
        }
    }
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(count().await, 2);

    // The key with another body; a failed request forgets its key.
    let other = json!({ "name": "not once", "package_id": package, "targets": { "labels": { "group": "idem" } } });
    let r = post("k-1", &other).await.unwrap();
    let s = r.status().as_u16();
    let v: serde_json::Value = r.json().await.unwrap();
    assert_eq!(s, 422, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("another request"), "{v}");
    let bad = json!({ "name": "bad", "package_id": "nope", "targets": { "labels": {} } });
    for _ in 0..2 {
        let r = post("k-bad", &bad).await.unwrap();
        assert_eq!(r.status().as_u16(), 422, "run again each time, not replayed");
        assert!(r.headers().get("idempotent-replayed").is_none());
    }
    assert_eq!(count().await, 2);
}

crate::both_backends!(if_match_refuses_an_action_on_a_rollout_that_changed);

/// `ETag` on a rollout and `If-Match` on its actions: the current tag lets the action
/// through and the answer carries the new tag; a tag from before a change (or a weak one)
/// is refused with 412 and changes nothing.
async fn if_match_refuses_an_action_on_a_rollout_that_changed(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    app.fleet("tag", 1).await;
    let id = app.rollout(json!({ "package_id": package, "targets": { "labels": { "group": "tag" } } }), false).await;
    let url = format!("{}/api/v1/rollouts/{id}", app.base);
    let res = app.client.get(&url).bearer_auth(&app.viewer).send().await.unwrap();
    let etag = res.headers()["etag"].to_str().unwrap().to_owned();
    let body: serde_json::Value = res.json().await.unwrap();
    assert_eq!(body["etag"], etag.as_str(), "{body}");
    let act = |action: &str, tag: &str| {
        app.client
            .post(format!("{url}/{action}"))
            .bearer_auth(&app.operator)
            .header("if-match", tag)
            .json(&json!({}))
            .send()
    };
    let started = act("start", &etag).await.unwrap();
    assert_eq!(started.status().as_u16(), 200);
    let new_etag = started.headers()["etag"].to_str().unwrap().to_owned();
    assert_ne!(new_etag, etag, "starting changed the control state");
    for stale in [etag.clone(), format!("W/{new_etag}")] {
        let r = act("pause", &stale).await.unwrap();
        assert_eq!(r.status().as_u16(), 412, "If-Match: {stale}");
        let v: serde_json::Value = r.json().await.unwrap();
        assert_eq!(v["code"], "precondition-failed", "{v}");
        assert!(v["detail"].as_str().unwrap().contains("read it again"), "{v}");
    }
    let now = app.get(&format!("/api/v1/rollouts/{id}")).await;
    assert_ne!(now["state"], "paused", "a refused action changed nothing: {now}");
    let audit = app.get(&format!("/api/v1/audit?object={id}&action=rollout.pause")).await;
    assert_eq!(audit["items"], json!([]), "{audit}");
    // The current tag passes; should the scheduler move the rollout on between the read and
    // the action (a wave opening), the 412 says so and a fresh read gives the tag to use.
    let mut answers = Vec::new();
    for _ in 0..10 {
        let current = app.get(&format!("/api/v1/rollouts/{id}")).await["etag"].as_str().unwrap().to_owned();
        let status = act("pause", &current).await.unwrap().status().as_u16();
        answers.push(status);
        if status != 412 {
            break;
        }
    }
    assert_eq!(answers.last(), Some(&200), "{answers:?}");
    assert_eq!(app.get(&format!("/api/v1/rollouts/{id}")).await["state"], "paused");
}

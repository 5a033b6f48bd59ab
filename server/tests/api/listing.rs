//! A rollout's jobs: keyset (cursor) pages, filters with cursors, refused cursors and
//! offsets, the compact view.

use crate::helpers::{Backend, TestApp, ev, final_ev, spawn_app};
use fleetup_proto::{InstallOutcome, PhaseId, PhaseStatus};
use serde_json::{Value, json};
use std::collections::HashSet;

crate::both_backends!(
    cursor_pages_cover_every_job_once_in_order,
    bad_cursors_and_offsets_are_refused,
    summary_view,
    rollouts_agents_packages_and_audit_page_by_cursor_and_filter
);

/// Walks every page of `/rollouts/{id}/jobs?{query}&limit={limit}`; returns the jobs and the
/// number of pages.
async fn walk(app: &TestApp, id: &str, query: &str, limit: u64) -> (Vec<Value>, usize) {
    walk_pages(app, &format!("/api/v1/rollouts/{id}/jobs?{query}"), "jobs", limit).await
}

/// Walks every page of the listing at `path` (with its query), whose items are `field`.
async fn walk_pages(app: &TestApp, path: &str, field: &str, limit: u64) -> (Vec<Value>, usize) {
    let mut jobs = Vec::new();
    let mut cursor: Option<String> = None;
    for pages in 1..=100 {
        let c = cursor.as_deref().map(|c| format!("&cursor={c}")).unwrap_or_default();
        let page = app.get(&format!("{path}&limit={limit}{c}")).await;
        let got = page[field].as_array().unwrap();
        assert!(got.len() as u64 <= limit, "a page holds at most limit jobs: {page}");
        jobs.extend(got.iter().cloned());
        match page["next"].as_str() {
            Some(next) => {
                assert_eq!(got.len() as u64, limit, "only the last page is short: {page}");
                cursor = Some(next.to_owned());
            }
            None => return (jobs, pages),
        }
    }
    panic!("more than 100 pages");
}

fn ids(jobs: &[Value]) -> Vec<String> {
    jobs.iter().map(|j| j["id"].as_str().unwrap().to_owned()).collect()
}

/// A draft rollout of 23 agents in waves of 5, 10 and 8, with every third job cancelled.
async fn staged(app: &TestApp) -> (String, Vec<String>) {
    let package = app.upload_package().await;
    app.fleet("big", 23).await;
    let id = app
        .rollout(
            json!({ "package_id": package, "targets": { "labels": { "group": "big" } }, "waves": [5, 10, "100%"] }),
            false,
        )
        .await;
    let all = app.get(&format!("/api/v1/rollouts/{id}/jobs?limit=5000")).await;
    assert!(all["next"].is_null(), "one page of 5000 holds them all: {all}");
    let mut cancelled = Vec::new();
    for j in all["jobs"].as_array().unwrap().iter().step_by(3) {
        let job = app.post(&format!("/api/v1/jobs/{}/cancel", j["id"].as_str().unwrap()), json!({})).await;
        assert_eq!(job["state"], "cancelled");
        cancelled.push(job["id"].as_str().unwrap().to_owned());
    }
    (id, cancelled)
}

async fn cursor_pages_cover_every_job_once_in_order(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let (id, cancelled) = staged(&app).await;
    let all = app.get(&format!("/api/v1/rollouts/{id}/jobs?limit=5000")).await["jobs"].as_array().unwrap().clone();
    assert_eq!(all.len(), 23);
    let waves: Vec<u64> = all.iter().map(|j| j["wave"].as_u64().unwrap()).collect();
    assert!(waves.is_sorted(), "jobs come in wave order: {waves:?}");
    assert_eq!(waves.iter().filter(|w| **w == 2).count(), 10);

    // Pages of 7: 7 + 7 + 7 + 2, every job once, in the same order as the one big page.
    for view in ["full", "summary"] {
        let (walked, pages) = walk(&app, &id, &format!("view={view}"), 7).await;
        assert_eq!(pages, 4, "{view}");
        assert_eq!(ids(&walked), ids(&all), "{view}: every job exactly once, in order");
        assert_eq!(ids(&walked).into_iter().collect::<HashSet<_>>().len(), 23);
    }
    // A page size that divides the total: the last full page says there is no next.
    let (walked, pages) = walk(&app, &id, "", 23).await;
    assert_eq!((walked.len(), pages), (23, 1));

    // Filters with cursors: the state filter, the wave filter, both.
    let (walked, pages) = walk(&app, &id, "state=cancelled", 3).await;
    assert_eq!(ids(&walked), cancelled, "the cancelled jobs, in order");
    assert_eq!(pages, 3);
    let want: Vec<String> = ids(&all.iter().filter(|j| j["wave"] == 2).cloned().collect::<Vec<_>>());
    let (walked, _) = walk(&app, &id, "wave=2", 4).await;
    assert_eq!(ids(&walked), want);
    let want: Vec<String> =
        ids(&all.iter().filter(|j| j["wave"] == 2 && j["state"] == "pending").cloned().collect::<Vec<_>>());
    assert!(want.len() >= 5, "enough pending jobs in wave 2 to page: {want:?}");
    let (walked, pages) = walk(&app, &id, "wave=2&state=pending&view=summary", 2).await;
    assert_eq!(ids(&walked), want);
    assert!(walked.iter().all(|j| j["state"] == "pending" && j["wave"] == 2));
    assert_eq!(pages, want.len().div_ceil(2));

    // A cursor from an unfiltered listing continues a filtered one after the same job.
    let first = app.get(&format!("/api/v1/rollouts/{id}/jobs?limit=10")).await;
    let next = first["next"].as_str().unwrap();
    let rest = app.get(&format!("/api/v1/rollouts/{id}/jobs?state=cancelled&cursor={next}")).await;
    let want: Vec<String> = ids(&all[10..].iter().filter(|j| j["state"] == "cancelled").cloned().collect::<Vec<_>>());
    assert_eq!(ids(rest["jobs"].as_array().unwrap()), want);
    assert!(rest["next"].is_null());
}

async fn bad_cursors_and_offsets_are_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let (id, _) = staged(&app).await;
    let first = app.get(&format!("/api/v1/rollouts/{id}/jobs?limit=5")).await;
    let next = first["next"].as_str().unwrap().to_owned();
    let refused = |path: String, says: &'static str| {
        let app = &app;
        async move {
            let (s, v) = app.call("GET", &path, &app.viewer, None).await;
            assert_eq!(s, 400, "{path}: {v}");
            assert_eq!(v["error"]["code"], "bad-request", "{v}");
            let m = v["error"]["message"].as_str().unwrap();
            assert!(m.contains(says), "{path}: the message says '{says}': {m}");
        }
    };
    // One character changed (still hex), cut short, not hex at all.
    let mut tampered = next.clone().into_bytes();
    let last = tampered.len() - 1;
    tampered[last] = if tampered[last] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).unwrap();
    refused(format!("/api/v1/rollouts/{id}/jobs?cursor={tampered}"), "invalid cursor").await;
    refused(format!("/api/v1/rollouts/{id}/jobs?cursor={}", &next[..next.len() - 2]), "invalid cursor").await;
    refused(format!("/api/v1/rollouts/{id}/jobs?cursor=not-a-cursor"), "invalid cursor").await;
    // A hand-made cursor (a real key, a made-up checksum) does not pass either.
    let forged = hex::encode(format!("1.4.{}", "0".repeat(16)));
    refused(format!("/api/v1/rollouts/{id}/jobs?cursor={forged}"), "invalid cursor").await;
    // A good cursor on another rollout.
    let package = app.get(&format!("/api/v1/rollouts/{id}")).await["package_id"].clone();
    let other = app.rollout(json!({ "package_id": package, "targets": { "labels": { "group": "big" } } }), false).await;
    refused(format!("/api/v1/rollouts/{other}/jobs?cursor={next}"), "previous page of this rollout").await;
    // Offsets are refused with a pointer to the cursor; unknown views too.
    refused(format!("/api/v1/rollouts/{id}/jobs?offset=5"), "?cursor=").await;
    refused(format!("/api/v1/rollouts/{id}/jobs?view=tiny"), "summary").await;
    // The untouched cursor still works.
    let second = app.get(&format!("/api/v1/rollouts/{id}/jobs?limit=5&cursor={next}")).await;
    assert_eq!(second["jobs"].as_array().unwrap().len(), 5);
    assert_ne!(second["jobs"][0]["id"], first["jobs"][0]["id"]);
}

async fn summary_view(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("one", 1).await;
    let id = app.rollout(json!({ "package_id": package, "targets": { "labels": { "group": "one" } } }), true).await;
    let job = agents[0].next_job().await;
    let mut warning = ev(2, PhaseId::CheckSystem, PhaseStatus::Warning);
    warning.message = "CRL endpoint http://127.0.0.1:9/crl is unreachable: refused".into();
    let events = vec![
        ev(1, PhaseId::CheckSystem, PhaseStatus::Running),
        warning,
        ev(3, PhaseId::CheckSystem, PhaseStatus::Succeeded),
        ev(4, PhaseId::UpdateFiles, PhaseStatus::Running),
    ];
    let (s, v) = agents[0].report(&job.job_id, job.fencing_token, events).await;
    assert_eq!(s, 200, "{v}");
    let summary = || {
        let (app, path) = (&app, format!("/api/v1/rollouts/{id}/jobs?view=summary"));
        async move { app.get(&path).await["jobs"][0].clone() }
    };
    let s = summary().await;
    let keys: Vec<&str> = s.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(
        keys.into_iter().collect::<HashSet<_>>(),
        HashSet::from([
            "id",
            "agent_id",
            "hostname",
            "wave",
            "state",
            "current_phase",
            "phase_status",
            "outage_secs",
            "warning_count",
            "attempt",
            "stalled"
        ]),
        "{s}"
    );
    assert_eq!(s["id"], job.job_id.as_str());
    assert_eq!(s["agent_id"], agents[0].id.as_str());
    assert_eq!(s["hostname"], "one-0");
    assert_eq!(s["wave"], 1);
    assert_eq!(s["state"], "running");
    assert_eq!(s["current_phase"], "update-files");
    assert_eq!(s["phase_status"], "running");
    assert_eq!(s["outage_secs"], Value::Null);
    assert_eq!(s["warning_count"], 1);
    // The same job in the full view: the summary agrees with its phase map and warnings.
    let full = app.get(&format!("/api/v1/rollouts/{id}/jobs")).await["jobs"][0].clone();
    assert_eq!(full["phases"]["update-files"]["status"], s["phase_status"]);
    assert_eq!(full["warnings"].as_array().unwrap().len(), 1);

    let (st, v) = agents[0].report(&job.job_id, job.fencing_token, vec![final_ev(5, InstallOutcome::Succeeded)]).await;
    assert_eq!(st, 200, "{v}");
    let s = summary().await;
    assert_eq!(s["state"], "succeeded");
    assert_eq!(s["current_phase"], "cleanup");
    assert_eq!(s["phase_status"], "succeeded");
    assert_eq!(s["outage_secs"], 1.5);
    assert_eq!(s["warning_count"], 1);

    // A job that never started: no phase, no status, no warnings.
    let idle = app.fleet("idle", 1).await;
    let draft = app.rollout(json!({ "package_id": package, "targets": { "agents": [idle[0].id] } }), false).await;
    let s = app.get(&format!("/api/v1/rollouts/{draft}/jobs?view=summary")).await["jobs"][0].clone();
    assert_eq!(
        (s["state"].as_str(), s["current_phase"].is_null(), s["phase_status"].is_null()),
        (Some("pending"), true, true)
    );
    assert_eq!(s["warning_count"], 0);
}

/// The other listings: every item once, in the stable order, across cursor pages; each
/// filter applied; a cursor reused with other filters, an out-of-range limit, an offset and
/// an unknown filter refused with a sentence.
async fn rollouts_agents_packages_and_audit_page_by_cursor_and_filter(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let web = app.fleet("web", 7).await;
    app.fleet("db", 4).await;
    let mut made = Vec::new();
    for i in 0..5 {
        let group = if i % 2 == 0 { "web" } else { "db" };
        made.push(
            app.rollout(json!({ "package_id": package, "targets": { "labels": { "group": group } } }), false).await,
        );
    }
    app.post(&format!("/api/v1/rollouts/{}/start", made[4]), json!({})).await;

    // Rollouts: newest first, 2 a page.
    let (all, pages) = walk_pages(&app, "/api/v1/rollouts?", "items", 2).await;
    assert_eq!((ids(&all), pages), (made.iter().rev().cloned().collect::<Vec<_>>(), 3));
    let (web_only, _) = walk_pages(&app, "/api/v1/rollouts?label=group=web", "items", 1).await;
    assert_eq!(ids(&web_only), vec![made[4].clone(), made[2].clone(), made[0].clone()]);
    let running = app.get("/api/v1/rollouts?state=running").await;
    assert_eq!(ids(running["items"].as_array().unwrap()), vec![made[4].clone()], "{running}");
    let future = app.get("/api/v1/rollouts?created_after=2999-01-01T00:00:00Z").await;
    assert_eq!(future["items"], json!([]), "{future}");

    // Agents: by hostname, filtered by label and online.
    let (agents, pages) = walk_pages(&app, "/api/v1/agents?", "items", 4).await;
    let names: Vec<&str> = agents.iter().map(|a| a["hostname"].as_str().unwrap()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!((names.len(), pages, &names), (11, 3, &sorted));
    let (webs, _) = walk_pages(&app, "/api/v1/agents?label=group=web&online=true", "items", 3).await;
    assert_eq!(webs.len(), web.len());
    let none = app.get("/api/v1/agents?installed=9.9.9").await;
    assert_eq!(none["items"], json!([]), "{none}");

    // Packages and audit.
    let packages = app.get("/api/v1/packages?name=demo-service").await;
    assert_eq!(packages["items"].as_array().unwrap().len(), 1, "{packages}");
    assert_eq!(app.get("/api/v1/packages?name=other").await["items"], json!([]));
    let (creates, _) = walk_pages(&app, "/api/v1/audit?action=rollout.create", "items", 2).await;
    assert_eq!(creates.len(), 5, "{creates:?}");
    let (about, _) = walk_pages(&app, &format!("/api/v1/audit?object={}", made[4]), "items", 1).await;
    let actions: Vec<&str> = about.iter().map(|a| a["action"].as_str().unwrap()).collect();
    assert_eq!(actions, vec!["rollout.start", "rollout.create"]);

    // Refusals.
    let first = app.get("/api/v1/rollouts?limit=1").await;
    let cursor = first["next"].as_str().unwrap();
    for (path, says) in [
        (format!("/api/v1/rollouts?state=paused&cursor={cursor}"), "same filters"),
        ("/api/v1/agents?limit=0".to_owned(), "1 to 5000"),
        ("/api/v1/packages?offset=10".to_owned(), "cursor"),
        ("/api/v1/rollouts?state=sleeping".to_owned(), "unknown rollout state"),
        ("/api/v1/agents?colour=blue".to_owned(), "colour"),
        ("/api/v1/audit?since=yesterday".to_owned(), "since"),
    ] {
        let (s, v) = app.call("GET", &path, &app.viewer, None).await;
        assert_eq!(s, 400, "{path}: {v}");
        assert!(v["detail"].as_str().unwrap().contains(says), "{path}: {v}");
    }
}

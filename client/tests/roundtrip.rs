//! The client against the real coordinator: a `fleetup-server serve` process started by the
//! e2e harness on a free loopback port with a fresh SQLite database. Every call of the
//! rollout life cycle is made and its answer parsed into the proto types, so a drift between
//! the server's JSON and `fleetup_proto::api` fails here.

use fleetup_client::{AuditQuery, Client, Error, JobFilter, Method, NewEnrollmentToken, StatusCode};
use fleetup_e2e::fleet::Server;
use fleetup_e2e::workspace_root;
use fleetup_proto::api::{Job, JobState, JobSummary, RolloutSpec, RolloutState};
use fleetup_proto::id::{AgentId, RolloutId};
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(30);

/// Enrolls a pretend agent through the agent protocol (not part of this client) and polls
/// once, as an agent does (a poll is what `/metrics` counts).
async fn enroll(server: &Server, secret: &str, hostname: &str) -> AgentId {
    let body = server.enroll_pretend(secret, hostname).await;
    let http = reqwest::Client::new();
    let poll = http.get(format!("{}/api/v1/agent/poll?wait=0", server.url)).bearer_auth(&body.agent_token).send().await;
    assert_eq!(poll.expect("poll request").status(), StatusCode::NO_CONTENT, "no job yet");
    body.agent_id.parse().expect("an agent id")
}

#[tokio::test(flavor = "multi_thread")]
async fn package_token_rollout_and_jobs_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), None, &["--scheduler-interval-ms", "200"]).await;
    let client = Client::new(&server.url, &server.token).unwrap();
    assert!(!format!("{client:?}").contains(&server.token), "the token stays out of Debug");

    let health = client.health().await.unwrap();
    assert_eq!((health.status.as_str(), health.backend.as_str()), ("ok", "sqlite"));
    client.wait_healthy(WAIT).await.unwrap();

    // Upload: a signed package is stored; bytes that are not a package get the API's 422.
    let pkg = dir.path().join("sample.fup");
    let key = fleetup_proto::keys::SecretKey::read(&server.key).unwrap();
    fleetup_proto::package::pack_dir(&workspace_root().join("examples/sample-rollup"), &key, &pkg).unwrap();
    let package = client.upload_package(&pkg).await.unwrap();
    assert_eq!((package.name.as_str(), package.version.as_str()), ("demo-service", "1.1.0"));
    assert_eq!(package.size, std::fs::metadata(&pkg).unwrap().len());
    assert_eq!(client.package(&package.id).await.unwrap().sha256, package.sha256);
    assert!(client.packages().await.unwrap().iter().any(|p| p.id == package.id));
    // Creation answers 201 (the typed call accepts any 2xx, so check the raw status once, on
    // a second package: the same bytes again would be a duplicate).
    let other = dir.path().join("rollup-1.1.1");
    fleetup_e2e::copy_tree(&workspace_root().join("examples/sample-rollup"), &other).unwrap();
    let manifest = std::fs::read_to_string(other.join("manifest.toml")).unwrap();
    std::fs::write(other.join("manifest.toml"), manifest.replacen("version = \"1.1.0\"", "version = \"1.1.1\"", 1))
        .unwrap();
    fleetup_proto::package::pack_dir(&other, &key, &dir.path().join("other.fup")).unwrap();
    let raw = client.request(Method::POST, "/packages").body(std::fs::read(dir.path().join("other.fup")).unwrap());
    assert_eq!(raw.send().await.unwrap().status(), StatusCode::CREATED);
    let refused = client.upload_package_bytes(b"not a package".to_vec()).await.unwrap_err();
    assert_eq!(refused.status(), Some(StatusCode::UNPROCESSABLE_ENTITY), "{refused}");
    assert_eq!(refused.code(), Some("unprocessable"), "{refused}");
    let missing = client.upload_package(&dir.path().join("nope.fup")).await.unwrap_err();
    assert!(matches!(missing, Error::File { .. }), "{missing}");

    // An enrollment token: its secret once, its labels and limits in the listing.
    let labels = BTreeMap::from([("env".to_owned(), "test".to_owned())]);
    let new =
        NewEnrollmentToken { name: Some("ci".into()), labels: labels.clone(), max_uses: Some(3), ..Default::default() };
    let created = client.create_enrollment_token(&new).await.unwrap();
    assert!(created.secret.starts_with("fle_"), "{}", created.secret);
    assert_eq!((created.token.name.as_str(), created.token.max_uses, created.token.uses), ("ci", Some(3), 0));
    assert_eq!(created.token.labels, labels);
    let listed = client.enrollment_tokens().await.unwrap();
    assert!(listed.iter().any(|t| t.id == created.token.id && t.uses == 0));

    let mut ids = Vec::new();
    for host in ["web-1", "web-2", "web-3"] {
        ids.push(enroll(&server, &created.secret, host).await);
    }
    let agents = client.wait_agents_online(3, WAIT).await.unwrap();
    assert_eq!(agents.len(), 3);
    assert!(agents.iter().all(|a| a.labels == labels), "{agents:?}");
    let relabelled = BTreeMap::from([("env".to_owned(), "test".to_owned()), ("ring".to_owned(), "canary".to_owned())]);
    assert_eq!(client.set_labels(&ids[0], &relabelled).await.unwrap().labels, relabelled);
    assert_eq!(client.agent(&ids[0]).await.unwrap().labels, relabelled);

    // A rollout of the three in two waves, then its jobs in both views, page by page.
    let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
        "name": "sample 1.1", "package_id": package.id, "targets": { "labels": { "env": "test" } },
        "waves": [1, "100%"], "concurrency": 1,
    }))
    .unwrap();
    let rollout = client.create_rollout(&spec).await.unwrap();
    assert_eq!(rollout.state, RolloutState::Draft);
    assert_eq!(rollout.waves.iter().map(|w| w.size).collect::<Vec<_>>(), [1, 2]);
    assert_eq!(rollout.spec, spec, "the spec is stored as given");
    assert_eq!(client.rollout(&rollout.id).await.unwrap().counts.get(&JobState::Pending), Some(&3));
    assert!(client.rollouts().await.unwrap().iter().any(|r| r.id == rollout.id));

    let one_a_page = JobFilter { limit: Some(1), ..JobFilter::default() };
    let mut pages = client.job_pages::<Job>(&rollout.id, one_a_page.clone());
    let mut walked = Vec::new();
    while let Some(page) = pages.next_page().await.unwrap() {
        assert!(page.len() <= 1, "a page of at most `limit`");
        walked.extend(page);
    }
    assert_eq!(walked.len(), 3, "three pages of one, nothing twice");
    assert_eq!(walked.iter().map(|j| j.wave).collect::<Vec<_>>(), [1, 2, 2], "dispatch order");
    let mut hosts: Vec<_> = walked.iter().map(|j| j.hostname.as_str()).collect();
    hosts.sort_unstable();
    assert_eq!(hosts, ["web-1", "web-2", "web-3"]);
    let wave2 = JobFilter { wave: Some(2), ..JobFilter::default() };
    let summaries = client.all_jobs::<JobSummary>(&rollout.id, &wave2).await.unwrap();
    assert_eq!(
        summaries.iter().map(|j| &j.id).collect::<Vec<_>>(),
        walked[1..].iter().map(|j| &j.id).collect::<Vec<_>>()
    );
    let pending = JobFilter { state: Some(JobState::Pending), ..one_a_page };
    assert_eq!(client.all_jobs::<JobSummary>(&rollout.id, &pending).await.unwrap().len(), 3);
    let first = &walked[0];
    let job = client.job(&first.id).await.unwrap();
    assert_eq!(
        (job.id.clone(), job.rollout_id.clone(), job.state),
        (first.id.clone(), rollout.id.clone(), JobState::Pending)
    );
    assert!(client.job_events(&job.id, 0, None).await.unwrap().is_empty());
    assert!(client.job_logs(&job.id, 0, Some(10)).await.unwrap().is_empty());
    assert!(client.job_decisions(&job.id).await.unwrap().is_empty());

    // Errors carry the status and the API's code.
    let unknown: RolloutId = "no-such-rollout".parse().unwrap();
    let e = client.rollout(&unknown).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(StatusCode::NOT_FOUND), Some("not-found")), "{e}");
    let e = client.retry_failed(&rollout.id).await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(StatusCode::CONFLICT), Some("conflict")), "{e}");
    assert!(e.message().is_some_and(|m| m.contains("no failed")), "{e}");

    // Drive it: start, cancel, and wait for the cancelled state.
    assert_eq!(client.start(&rollout.id).await.unwrap().state, RolloutState::Running);
    client.cancel(&rollout.id).await.unwrap();
    let cancelled = client.wait_rollout(&rollout.id, WAIT, |r| r.state == RolloutState::Cancelled).await.unwrap();
    assert!(cancelled.finished_at.is_some(), "{cancelled:?}");
    let e = client.wait_rollout(&rollout.id, Duration::from_millis(300), |r| r.state == RolloutState::Running).await;
    match e.unwrap_err() {
        Error::Deadline { last: Some(last), .. } => assert!(last.contains("cancelled"), "{last}"),
        other => panic!("expected a deadline with the last state, got {other}"),
    }

    let audit = client.audit(&AuditQuery { object_id: Some(rollout.id.to_string()), limit: Some(50) }).await.unwrap();
    let actions: Vec<_> = audit.iter().map(|a| a.action.as_str()).collect();
    for want in ["rollout.create", "rollout.start", "rollout.cancel"] {
        assert!(actions.contains(&want), "{actions:?}");
    }
    client.revoke_agent(&ids[2]).await.unwrap();
    assert!(client.agent(&ids[2]).await.unwrap().revoked);
    assert!(client.metrics().await.unwrap().contains("fleetup_polls_total"), "Prometheus text");

    // A wrong token is the API's 401, not a transport error.
    let stranger = Client::new(&server.url, "flt_wrong").unwrap();
    let e = stranger.agents().await.unwrap_err();
    assert_eq!((e.status(), e.code()), (Some(StatusCode::UNAUTHORIZED), Some("unauthorized")), "{e}");
}

#[tokio::test]
async fn nothing_listening_is_a_transport_error_and_a_bounded_wait() {
    let port = fleetup_e2e::fleet::free_port();
    let client = Client::new(&format!("http://127.0.0.1:{port}"), "flt_x").unwrap();
    assert!(matches!(client.agents().await.unwrap_err(), Error::Transport { .. }));
    match client.wait_healthy(Duration::from_millis(300)).await.unwrap_err() {
        Error::Deadline { last: Some(last), .. } => assert!(last.contains("/healthz"), "{last}"),
        other => panic!("expected a deadline, got {other}"),
    }
}

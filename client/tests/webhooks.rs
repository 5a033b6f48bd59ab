//! The client's webhook calls against the real coordinator: an endpoint on a closed loopback
//! port (allowed with `--webhook-allow-private`) gets a rollout's first events, fails, and
//! its delivery log parses into the proto types with the failed attempt in it.

use fleetup_client::{Client, Error, NewEnrollmentToken, NewWebhook, StatusCode};
use fleetup_e2e::fleet::Server;
use fleetup_e2e::workspace_root;
use fleetup_proto::api::RolloutSpec;
use fleetup_proto::webhooks::DeliveryState;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[tokio::test(flavor = "multi_thread")]
async fn webhooks_and_their_delivery_logs_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let extra = ["--scheduler-interval-ms", "200", "--webhook-allow-private", "--webhook-retry-base-ms", "60000"];
    let server = Server::start(&dir.path().join("server"), None, &extra).await;
    let client = Client::new(&server.url, &server.token).unwrap();
    client.wait_healthy(Duration::from_secs(30)).await.unwrap();

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/hook", closed.local_addr().unwrap());
    drop(closed);
    let new = NewWebhook { url: url.clone(), events: vec!["wave.opened".into()], ..NewWebhook::default() };
    let created = client.create_webhook(&new).await.unwrap();
    assert!(created.secret.starts_with("whsec_"));
    assert_eq!((created.webhook.url.as_str(), created.webhook.enabled), (url.as_str(), true));
    assert_eq!(client.webhook(&created.webhook.id).await.unwrap(), created.webhook);
    assert_eq!(client.webhooks().await.unwrap(), vec![created.webhook.clone()]);

    let pkg = dir.path().join("sample.fup");
    let key = fleetup_proto::keys::SecretKey::read(&server.key).unwrap();
    fleetup_proto::package::pack_dir(&workspace_root().join("examples/sample-rollup"), &key, &pkg).unwrap();
    let package = client.upload_package(&pkg).await.unwrap();
    let labels = BTreeMap::from([("env".to_owned(), "hooks".to_owned())]);
    let token = client.create_enrollment_token(&NewEnrollmentToken { labels, ..Default::default() }).await.unwrap();
    server.enroll_pretend(&token.secret, "web-1").await;
    let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
        "name": "hooked", "package_id": package.id, "targets": { "labels": { "env": "hooks" } },
    }))
    .unwrap();
    let rollout = client.create_rollout(&spec).await.unwrap();
    client.start(&rollout.id).await.unwrap();

    let deadline = Instant::now() + Duration::from_secs(30);
    let delivery = loop {
        let log = client.webhook_deliveries(&created.webhook.id).await.unwrap();
        if let Some(d) = log.into_iter().find(|d| d.attempt_count == 1 && !d.attempts.is_empty()) {
            break d;
        }
        assert!(Instant::now() < deadline, "no attempt recorded in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!((delivery.event_type.as_str(), delivery.state), ("wave.opened", DeliveryState::Pending));
    assert!(delivery.next_attempt_at.is_some() && delivery.attempts[0].status.is_none(), "{delivery:?}");
    assert!(delivery.last_error.is_some(), "{delivery:?}");

    client.delete_webhook(&created.webhook.id).await.unwrap();
    match client.webhook(&created.webhook.id).await {
        Err(Error::Status { status, .. }) => assert_eq!(status, StatusCode::NOT_FOUND),
        other => panic!("a deleted webhook: {other:?}"),
    }
}

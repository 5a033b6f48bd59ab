//! The calls the operator CLI adds (`rollouts_ext.rs`) against the real coordinator: the
//! listings' server-side filters, the create that says it was replayed by its
//! `Idempotency-Key`, and the bulk decision answer.

use fleetup_client::{AgentQuery, BulkAnswer, Client, NewEnrollmentToken, RolloutQuery};
use fleetup_e2e::fleet::Server;
use fleetup_e2e::workspace_root;
use fleetup_proto::DecisionAnswer;
use fleetup_proto::api::RolloutSpec;
use std::collections::BTreeMap;

#[tokio::test(flavor = "multi_thread")]
async fn filtered_listings_an_idempotent_create_and_the_bulk_answer() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), None, &[]).await;
    let client = Client::new(&server.url, &server.token).unwrap();
    for (role, hosts) in [("web", ["web-1", "web-2"].as_slice()), ("db", ["db-1"].as_slice())] {
        let new = NewEnrollmentToken {
            labels: BTreeMap::from([("role".to_owned(), role.to_owned())]),
            ..NewEnrollmentToken::default()
        };
        let secret = client.create_enrollment_token(&new).await.unwrap().secret;
        for h in hosts {
            server.enroll_pretend(&secret, h).await;
        }
    }
    let web =
        client.agents_where(&AgentQuery { label: Some("role=web".into()), ..AgentQuery::default() }).await.unwrap();
    assert_eq!(web.iter().map(|a| a.hostname.as_str()).collect::<Vec<_>>(), ["web-1", "web-2"]);
    let none = client.agents_where(&AgentQuery { installed: Some("9.9.9".into()), ..AgentQuery::default() }).await;
    assert!(none.unwrap().is_empty());

    let pkg = dir.path().join("sample.fup");
    let key = fleetup_proto::keys::SecretKey::read(&server.key).unwrap();
    fleetup_proto::package::pack_dir(&workspace_root().join("examples/sample-rollup"), &key, &pkg).unwrap();
    let package = client.upload_package(&pkg).await.unwrap();
    assert_eq!(client.packages_named("demo-service").await.unwrap().len(), 1);
    assert!(client.packages_named("no-such-rollup").await.unwrap().is_empty());

    let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
        "name": "web first", "package_id": package.id, "targets": { "labels": { "role": "web" } },
    }))
    .unwrap();
    let first = client.create_rollout_once(&spec, "ctl-test-key-1").await.unwrap();
    assert!(!first.replayed);
    let again = client.create_rollout_once(&spec, "ctl-test-key-1").await.unwrap();
    assert!(again.replayed, "the same key and spec: the first answer again");
    assert_eq!(again.rollout.id, first.rollout.id);
    assert_eq!(client.rollouts().await.unwrap().len(), 1, "staged once");

    let drafts = client.rollouts_where(&RolloutQuery { state: Some("draft".into()), ..RolloutQuery::default() }).await;
    assert_eq!(drafts.unwrap().len(), 1);
    let db = client.rollouts_where(&RolloutQuery { label: Some("role=db".into()), ..RolloutQuery::default() }).await;
    assert!(db.unwrap().is_empty());

    let body = BulkAnswer {
        kind: "warning".into(),
        code: Some("crl-unreachable".into()),
        matching: None,
        answer: DecisionAnswer::Continue,
        remember: false,
    };
    assert_eq!(client.answer_all(&first.rollout.id, &body).await.unwrap(), 0, "nothing was asked");
}

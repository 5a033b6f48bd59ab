//! Two coordinators on one Postgres, 50 fake agents: every job dispatched exactly once.

use crate::helpers::{Backend, pg_database, spawn_on};
use serde_json::json;
use std::collections::HashSet;
use std::sync::Arc;

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

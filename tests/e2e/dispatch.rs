//! Dispatch by push, seen from outside the coordinator process: a wave whose agents hold
//! their long-polls is assigned by the scheduler's pass and handed to the held polls
//! (`fleetup_jobs_pushed_total`), each job once with its first fencing token; an agent that
//! was not polling when the wave opened claims its job on its next poll.

use crate::fleet::{drop_database, postgres_url};
use fleetup_e2e::fleet::Server;
use fleetup_e2e::require_all;
use fleetup_proto::agent_api::{EnrollResponse, JobAssignment};
use fleetup_proto::api::{JobState, JobSummary, RolloutSpec};
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;

/// Agents holding a poll when the wave opens.
const HELD: usize = 20;

/// One poll of a pretend agent, held up to `wait` seconds: its assignment, if any.
async fn poll(server: &Server, agent: &EnrollResponse, wait: u64) -> Option<JobAssignment> {
    let resp = reqwest::Client::new()
        .get(format!("{}/api/v1/agent/poll?wait={wait}", server.url))
        .bearer_auth(&agent.agent_token)
        .timeout(Duration::from_secs(wait + 30))
        .send()
        .await
        .expect("poll request");
    match resp.status().as_u16() {
        204 => None,
        200 => Some(resp.json().await.expect("assignment")),
        s => panic!("poll of {}: {s} {}", agent.agent_id, resp.text().await.unwrap_or_default()),
    }
}

/// The value of an unlabelled counter or gauge on `/metrics` (0 when it was never recorded);
/// the series read here count things, so a fraction is a defect.
async fn metric(server: &Server, name: &str) -> usize {
    let text = server.client.metrics().await.expect("metrics");
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .map_or(0, |v| v.trim().parse().unwrap_or_else(|e| panic!("{name} = {v}: {e}")))
}

async fn a_held_wave_is_handed_its_jobs_by_push(database_url: Option<&str>) {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), database_url, &[]).await;
    let package = server.upload(None).await;
    let secret = server.enrollment_token(HELD as u32 + 1).await;
    let mut agents = Vec::new();
    for i in 0..=HELD {
        agents.push(server.enroll_pretend(&secret, &format!("push-{i}")).await);
    }
    let late = agents.pop().unwrap();
    let server = std::sync::Arc::new(server);
    let polls: Vec<_> = agents
        .iter()
        .cloned()
        .map(|a| {
            let server = server.clone();
            tokio::spawn(async move { poll(&server, &a, 60).await.map(|j| (a.agent_id, j)) })
        })
        .collect();
    server
        .eventually("every poll held", Duration::from_secs(20), async || {
            Ok((metric(&server, "fleetup_long_polls_held").await == HELD).then_some(()))
        })
        .await;
    let spec: RolloutSpec = serde_json::from_value(json!({ "name": "pushed", "package_id": package,
        "targets": { "labels": { "env": "test" } }, "waves": ["100%"], "concurrency": HELD + 1 }))
    .unwrap();
    let rollout = server.client.create_rollout(&spec).await.unwrap().id;
    server.client.start(&rollout).await.unwrap();
    let mut jobs = HashSet::new();
    for p in polls {
        let (agent, job) = tokio::time::timeout(Duration::from_secs(30), p)
            .await
            .expect("every held poll is answered")
            .unwrap()
            .expect("every held poll gets a job, not a 204");
        assert_eq!(job.rollout_id, rollout.to_string());
        assert_eq!(job.fencing_token, 1, "agent {agent}: dispatched once");
        assert!(jobs.insert(job.job_id.clone()), "job {} handed out twice", job.job_id);
    }
    assert_eq!(metric(&server, "fleetup_jobs_pushed_total").await, HELD, "the held polls ran no claim");
    // The agent that was not polling: its job waits queued, and its next poll claims it.
    let summaries: Vec<JobSummary> = server.jobs(&rollout).await;
    let queued: Vec<_> = summaries.iter().filter(|j| j.state == JobState::Queued).collect();
    assert_eq!(queued.len(), 1, "{summaries:?}");
    let job = poll(&server, &late, 5).await.expect("the late agent claims its queued job");
    assert_eq!((job.job_id.as_str(), job.fencing_token), (queued[0].id.as_str(), 1));
    assert_eq!(metric(&server, "fleetup_jobs_pushed_total").await, HELD);
    assert_eq!(metric(&server, "fleetup_jobs_dispatched_total").await, HELD + 1);
    let summaries: Vec<JobSummary> = server.jobs(&rollout).await;
    assert!(summaries.iter().all(|j| j.state == JobState::Dispatched), "{summaries:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_wave_is_handed_its_jobs_by_push_on_sqlite() {
    a_held_wave_is_handed_its_jobs_by_push(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_held_wave_is_handed_its_jobs_by_push_on_postgres() {
    if let Some(url) = postgres_url("a_held_wave_is_handed_its_jobs_by_push_on_postgres") {
        a_held_wave_is_handed_its_jobs_by_push(Some(&url)).await;
        drop_database(&url);
    } else {
        assert!(!require_all());
    }
}

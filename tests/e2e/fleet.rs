//! The whole fleet end to end: a real coordinator process, real agents, each host with its
//! own install root and the demo service really running, all driven through the REST API.

use fleetup_client::JobFilter;
use fleetup_e2e::fleet::{Host, Server, free_port};
use fleetup_e2e::{require_all, skip_or_fail};
use fleetup_proto::api::{Job, JobState, Rollout, RolloutSpec, RolloutState};
use fleetup_proto::id::{AgentId, PackageId, RolloutId};
use fleetup_proto::{DecisionAnswer, PhaseId, PhaseStatus};
use serde_json::{Value, json};
use std::time::Duration;

const LONG: Duration = Duration::from_mins(2);

/// The states a started rollout stops in by itself.
const ENDED: [RolloutState; 3] = [RolloutState::Finished, RolloutState::Paused, RolloutState::Aborted];

/// Fields drop in order: agents and services stop before the server, and the directory
/// (with the services' pid files) goes last.
struct Fleet {
    hosts: Vec<Host>,
    server: Server,
    package: PackageId,
    _dir: tempfile::TempDir,
}

/// `n` hosts, enrolled and online, the sample package uploaded. `tweak` adjusts a host
/// before its agent starts.
async fn fleet(n: usize, database_url: Option<&str>, tweak: impl Fn(usize, &mut Host)) -> Fleet {
    fleet_with(n, database_url, &[], tweak).await
}

/// [`fleet`], with more options for the coordinator.
async fn fleet_with(n: usize, database_url: Option<&str>, extra: &[&str], tweak: impl Fn(usize, &mut Host)) -> Fleet {
    let dir = tempfile::tempdir().unwrap();
    let mut args = vec!["--lease-secs", "6", "--scheduler-interval-ms", "200"];
    args.extend_from_slice(extra);
    let server = Server::start(&dir.path().join("server"), database_url, &args).await;
    let package = server.upload(None).await;
    let token = server.enrollment_token(u32::try_from(n).unwrap()).await;
    let crl = fleetup_demo_service::crl_endpoint().unwrap();
    let mut hosts = Vec::new();
    for i in 0..n {
        let mut host = Host::new(dir.path(), &format!("web-{}", i + 1), &crl);
        tweak(i, &mut host);
        host.labels.push(format!("slot={}", i + 1));
        host.start_agent(&server, &token);
        hosts.push(host);
    }
    server.every_agent_online(n, LONG).await;
    Fleet { hosts, server, package, _dir: dir }
}

impl Fleet {
    /// Stages and starts a rollout of the package: the defaults below, overridden by the
    /// fields of `extra` (JSON, as an operator writes a spec).
    async fn rollout(&self, extra: Value) -> RolloutId {
        let mut spec = json!({
            "name": "demo 1.1",
            "package_id": self.package,
            "targets": { "labels": { "env": "test" } },
            "waves": [1, 2],
            "concurrency": 1,
        });
        spec.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        let spec: RolloutSpec = serde_json::from_value(spec).expect("a valid rollout spec");
        let client = &self.server.client;
        let r = client.create_rollout(&spec).await.unwrap_or_else(|e| panic!("staging: {e}"));
        client.start(&r.id).await.unwrap_or_else(|e| panic!("starting: {e}"));
        r.id
    }

    async fn wait_rollout_state(&self, id: &RolloutId, states: &[RolloutState]) -> Rollout {
        let r = self.server.client.wait_rollout(id, LONG, |r| states.contains(&r.state)).await;
        r.unwrap_or_else(|e| panic!("rollout {id} in {states:?}: {e}"))
    }

    async fn jobs(&self, rollout: &RolloutId) -> Vec<Job> {
        self.server.jobs(rollout).await
    }

    /// Waits until the first page of the rollout's jobs (the full view) satisfies `check`.
    async fn eventually_jobs<T>(&self, what: &str, rollout: &RolloutId, check: impl Fn(&[Job]) -> Option<T>) -> T {
        let client = &self.server.client;
        self.server
            .eventually(what, LONG, async || {
                let page = client.jobs_page::<Job>(rollout, &JobFilter::default(), None).await?;
                Ok(check(&page.jobs))
            })
            .await
    }

    fn host(&self, name: &str) -> &Host {
        self.hosts.iter().find(|h| h.name == name).unwrap()
    }
}

/// A fresh database on the test Postgres (`FLEETUP_TEST_DATABASE_URL`, default
/// `postgres://postgres@127.0.0.1:5432/test`) for `test`; `None` (a loud skip, or a failure
/// under `FLEETUP_TEST_REQUIRE_ALL=1`) when Postgres is not reachable. Drop it with
/// [`drop_database`].
pub(crate) fn postgres_url(test: &str) -> Option<String> {
    let base =
        std::env::var("FLEETUP_TEST_DATABASE_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into());
    let name = format!("fleetup_e2e_{}", free_port());
    let ok = std::process::Command::new("psql")
        .arg(&base)
        .args(["-q", "-c", &format!("create database {name}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        skip_or_fail(test, "PostgreSQL is not reachable (psql could not create a database)");
        return None;
    }
    let (prefix, _) = base.rsplit_once('/').unwrap();
    Some(format!("{prefix}/{name}"))
}

/// Drops a database made by [`postgres_url`] (its coordinators gone).
pub(crate) fn drop_database(url: &str) {
    let (base, name) = url.rsplit_once('/').unwrap();
    let _ = std::process::Command::new("psql")
        .arg(format!("{base}/postgres"))
        .args(["-q", "-c", &format!("drop database if exists {name} with (force)")])
        .output();
}

async fn three_server_rollout_upgrades_everyone(database_url: Option<&str>) {
    let f = fleet(3, database_url, |_, _| {}).await;
    let rollout = f.rollout(json!({})).await;
    // While it runs, per-phase status of a server is visible over the API.
    let seen_phases = f
        .eventually_jobs("a job reporting phases", &rollout, |jobs| {
            jobs.iter().find(|j| !j.phases.is_empty()).map(|j| j.phases.keys().copied().collect::<Vec<_>>())
        })
        .await;
    assert!(seen_phases.contains(&PhaseId::CheckSystem), "{seen_phases:?}");
    let done = f.wait_rollout_state(&rollout, &ENDED).await;
    assert_eq!(done.state, RolloutState::Finished, "{done:?}");
    let jobs = f.jobs(&rollout).await;
    assert_eq!(jobs.len(), 3);
    for j in &jobs {
        assert_eq!(j.state, JobState::Succeeded, "{j:?}");
        for phase in PhaseId::INSTALL {
            assert_eq!(
                j.phases.get(&phase).map(|p| p.status),
                Some(PhaseStatus::Succeeded),
                "{phase} of {}",
                j.hostname
            );
        }
        assert!(j.outage_secs.is_some(), "{j:?}");
    }
    for h in &f.hosts {
        assert_eq!(h.version().as_deref(), Some("1.1.0"), "{} answers the new version", h.name);
        assert!(h.root.join("lib/demo/feature-x.txt").exists());
    }
    // Wave 1 held one server, and it finished before wave 2 started.
    let first: Vec<_> = jobs.iter().filter(|j| j.wave == 1).collect();
    assert_eq!(first.len(), 1);
    let first_done = first[0].finished_at.unwrap();
    for j in jobs.iter().filter(|j| j.wave == 2) {
        assert!(j.dispatched_at.unwrap() >= first_done, "wave 2 started before wave 1 ended: {j:?}");
    }
    // What Prometheus scrapes from this coordinator process: described series (the group
    // commit's histogram too, which a recorder installed after the store started lost),
    // and the database gauges of what just happened.
    let metrics = reqwest::get(format!("{}/metrics", f.server.url)).await.unwrap().text().await.unwrap();
    for line in [
        "# HELP fleetup_group_commit_batch_size",
        "# HELP fleetup_jobs_dispatched_total",
        "# HELP fleetup_jobs_ended_total",
        "fleetup_jobs_ended_total{outcome=\"succeeded\"} 3",
        "fleetup_jobs{state=\"succeeded\"} 3",
        "fleetup_jobs{state=\"failed\"} 0",
        "fleetup_rollouts{state=\"finished\"} 1",
        "fleetup_agents_enrolled 3",
        "fleetup_agents_online 3",
    ] {
        assert!(metrics.lines().any(|l| l.starts_with(line)), "no '{line}' in /metrics:\n{metrics}");
    }
    assert!(metrics.contains("fleetup_group_commit_batch_size_count{kind="), "{metrics}");
}

#[tokio::test(flavor = "multi_thread")]
async fn three_server_rollout_on_sqlite() {
    three_server_rollout_upgrades_everyone(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn three_server_rollout_on_postgres() {
    if let Some(url) = postgres_url("three_server_rollout_on_postgres") {
        three_server_rollout_upgrades_everyone(Some(&url)).await;
        // The fleet (and its server) is gone: drop the test database.
        drop_database(&url);
    } else {
        assert!(!require_all());
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_crl_asks_then_continue_finishes() {
    let dead = free_port();
    let f = fleet(1, None, |_, h| {
        h.vars.insert("crl_base".into(), format!("http://crl.fleetup.test:{dead}"));
        std::fs::write(h.dir.join("hosts"), "127.0.0.1 localhost\n127.0.0.1 crl.fleetup.test\n").unwrap();
    })
    .await;
    let rollout = f.rollout(json!({ "waves": [1], "policies": { "warning": "ask" } })).await;
    let job = f
        .eventually_jobs("the job waiting on the CRL warning", &rollout, |jobs| {
            jobs.first().filter(|j| j.state == JobState::Waiting).cloned()
        })
        .await;
    let warnings = serde_json::to_string(&job.warnings).unwrap();
    assert!(warnings.contains("crl.fleetup.test"), "{warnings}");
    f.server.client.answer_decision(&job.id, DecisionAnswer::Continue, None).await.unwrap();
    let done = f.wait_rollout_state(&rollout, &ENDED).await;
    assert_eq!(done.state, RolloutState::Finished, "{done:?}");
    assert_eq!(f.host("web-1").version().as_deref(), Some("1.1.0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_file_remediation_finishes_without_asking() {
    let dead = free_port();
    let hosts_text = "127.0.0.1 localhost\n127.0.0.2 crl.fleetup.test # nothing listens there\n";
    let f = fleet(1, None, |_, h| {
        h.vars.insert("crl_base".into(), format!("http://crl.fleetup.test:{dead}"));
        std::fs::write(h.dir.join("hosts"), hosts_text).unwrap();
    })
    .await;
    let rollout =
        f.rollout(json!({ "waves": [1], "policies": { "warning": "ask", "crl_remediation": "hosts-file" } })).await;
    let done = f.wait_rollout_state(&rollout, &ENDED).await;
    assert_eq!(done.state, RolloutState::Finished, "{done:?}");
    let job = &f.jobs(&rollout).await[0];
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    let decisions = f.server.client.job_decisions(&job.id).await.unwrap();
    assert!(decisions.is_empty(), "no question was asked: {decisions:?}");
    let host = f.host("web-1");
    assert_eq!(
        std::fs::read_to_string(host.dir.join("hosts")).unwrap(),
        hosts_text,
        "hosts file restored byte for byte"
    );
    assert_eq!(host.version().as_deref(), Some("1.1.0"));
}

#[tokio::test(flavor = "multi_thread")]
async fn failed_health_check_rolls_back_pauses_and_retry_targets_it() {
    let f = fleet(3, None, |i, h| {
        if i == 0 {
            let conf = h.root.join("etc/demo.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str("unhealthy_versions = 1.1.0\n");
            std::fs::write(conf, text).unwrap();
        }
    })
    .await;
    // Target the agents by id, the unhealthy web-1 first, so it is wave 1.
    let ids = agent_ids(&f).await;
    let rollout =
        f.rollout(json!({ "targets": { "agents": ids }, "error_threshold": 1, "error_action": "pause" })).await;
    let paused = f.wait_rollout_state(&rollout, &ENDED).await;
    assert_eq!(paused.state, RolloutState::Paused, "{paused:?}");
    let jobs = f.jobs(&rollout).await;
    let failed: Vec<_> = jobs.iter().filter(|j| j.state == JobState::RolledBack).collect();
    assert_eq!(failed.len(), 1, "{jobs:?}");
    assert!(
        jobs.iter().filter(|j| j.wave == 2).all(|j| j.state == JobState::Pending),
        "next wave not opened: {jobs:?}"
    );
    let bad = f.host(&failed[0].hostname);
    assert_eq!(bad.version().as_deref(), Some("1.0.0"), "rolled back to 1.0 and serving");
    let retry = f.server.client.retry_failed(&rollout).await.unwrap();
    let retry_jobs = f.jobs(&retry.id).await;
    assert_eq!(retry_jobs.len(), 1);
    assert_eq!(retry_jobs[0].hostname, failed[0].hostname);
}

/// Agent ids sorted by host name, so tests decide which host goes first.
async fn agent_ids(f: &Fleet) -> Vec<AgentId> {
    let agents = f.server.client.agents().await.unwrap();
    let mut ids: Vec<(String, AgentId)> = agents.into_iter().map(|a| (a.hostname, a.id)).collect();
    ids.sort();
    ids.into_iter().map(|(_, id)| id).collect()
}

/// Waits until the agent's log says the engine paused after journal step `n`.
/// Waits until the host's engine says `paused after <at>` (a pause env var was set).
fn wait_paused(host: &Host, at: &str) {
    let agent = host.agent.as_ref().unwrap();
    fleetup_e2e::wait_for(&format!("{} paused after {at}", host.name), LONG, || {
        agent.output().contains(&format!("paused after {at}")).then_some(())
    });
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_during_update_files_converges_with_one_outcome() {
    let mut f = fleet(2, None, |_, _| {}).await;
    let ids = agent_ids(&f).await;
    let rollout = f.rollout(json!({ "targets": { "agents": ids }, "waves": [1, 1], "approval_required": true })).await;
    f.wait_rollout_state(&rollout, &[RolloutState::AwaitingApproval]).await;
    // web-2's engine pauses after change 7 of the 12 of update-files' rename set (the 6
    // backups, 3 payload files and the 3 patched config files that swap in with them, and
    // the first placement made): neither the old nor the new tree is on disk.
    let server_token = f.server.enrollment_token(1).await;
    let web2 = f.hosts.iter_mut().find(|h| h.name == "web-2").unwrap();
    web2.agent.as_mut().unwrap().kill();
    web2.start_agent_with_env(
        &f.server,
        &server_token,
        &[("FLEETUP_ENGINE_PAUSE_AFTER_RENAME".to_owned(), "7".to_owned())],
    );
    f.server.client.approve(&rollout).await.unwrap();
    let web2 = f.host("web-2");
    wait_paused(web2, "rename 7 of 12");
    assert!(web2.state.join("journal.jsonl").exists(), "an install is under way");
    assert!(!web2.root.join("lib/demo/legacy.txt").exists(), "the kill comes after the backups");
    // SIGKILL mid update-files, then start again without the pause.
    let web2 = f.hosts.iter_mut().find(|h| h.name == "web-2").unwrap();
    web2.agent.as_mut().unwrap().kill();
    web2.start_agent(&f.server, &server_token);
    let done = f.wait_rollout_state(&rollout, &ENDED).await;
    let job = f.jobs(&rollout).await.into_iter().find(|j| j.wave == 2).unwrap();
    let web2 = f.host("web-2");
    let version = web2.version();
    match job.state {
        JobState::Succeeded => {
            assert_eq!(done.state, RolloutState::Finished);
            assert_eq!(version.as_deref(), Some("1.1.0"));
            assert!(
                web2.root.join("lib/demo/feature-x.txt").exists() && !web2.root.join("lib/demo/legacy.txt").exists()
            );
        }
        JobState::RolledBack | JobState::Failed => {
            assert_eq!(version.as_deref(), Some("1.0.0"));
            assert!(
                !web2.root.join("lib/demo/feature-x.txt").exists() && web2.root.join("lib/demo/legacy.txt").exists()
            );
        }
        other => panic!("unexpected job state {}: {job:?}", other.as_str()),
    }
    // Exactly one outcome was recorded for the job.
    let events = f.server.client.job_events(&job.id, 0, None).await.unwrap();
    let finals = events.iter().filter(|e| e.data.get("summary").is_some()).count();
    assert_eq!(finals, 1, "{events:?}");
    let seqs: Vec<u64> = events.iter().map(|e| e.seq).collect();
    assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1) && seqs[0] == 1, "events 1..n without gaps: {seqs:?}");
}

fn fleetup_agent_pause_env() -> String {
    "FLEETUP_ENGINE_PAUSE_AFTER_JOURNAL_STEP".to_owned()
}

#[tokio::test(flavor = "multi_thread")]
async fn agent_killed_for_good_makes_the_job_lost() {
    let mut f = fleet(1, None, |_, _| {}).await;
    let token = f.server.enrollment_token(1).await;
    let web1 = f.hosts.iter_mut().find(|h| h.name == "web-1").unwrap();
    web1.agent.as_mut().unwrap().kill();
    web1.start_agent_with_env(&f.server, &token, &[(fleetup_agent_pause_env(), "3".to_owned())]);
    let rollout = f.rollout(json!({ "waves": [1] })).await;
    wait_paused(f.host("web-1"), "journal step 3 ");
    f.hosts[0].agent.as_mut().unwrap().kill();
    let job = f
        .eventually_jobs("the job lost after its lease", &rollout, |jobs| {
            jobs.first().filter(|j| j.state == JobState::Lost).cloned()
        })
        .await;
    assert_eq!(job.state, JobState::Lost);
    let r = f.server.client.rollout(&rollout).await.unwrap();
    assert_eq!(r.counts.get(&JobState::Lost), Some(&1), "{r:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn cancelling_a_rollout_mid_wave_stops_dispatch_and_ends_the_job_in_flight() {
    let f = fleet(2, None, |i, h| {
        if i == 0 {
            // A host pre-install hook that takes long enough to cancel during pre-hooks.
            let hooks = h.state.join("hooks/pre-install.d");
            std::fs::create_dir_all(&hooks).unwrap();
            std::fs::write(hooks.join("10-slow.sh"), "#!/bin/sh\nsleep 20\n").unwrap();
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(hooks.join("10-slow.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    })
    .await;
    let ids = agent_ids(&f).await;
    let rollout = f.rollout(json!({ "targets": { "agents": ids }, "waves": [2], "concurrency": 1 })).await;
    f.eventually_jobs("web-1 in pre-hooks", &rollout, |jobs| {
        jobs.iter().find(|j| j.hostname == "web-1" && j.current_phase == Some(PhaseId::PreHooks)).map(|_| ())
    })
    .await;
    let started = std::time::Instant::now();
    f.server.client.cancel(&rollout).await.unwrap();
    let jobs = f
        .eventually_jobs("every job ended", &rollout, |jobs| {
            jobs.iter().all(|j| j.state.is_terminal()).then(|| jobs.to_vec())
        })
        .await;
    assert!(started.elapsed() < Duration::from_secs(15), "the slow hook was interrupted, not waited out");
    for j in &jobs {
        assert_eq!(j.state, JobState::Cancelled, "{j:?}");
    }
    let web2 = jobs.iter().find(|j| j.hostname == "web-2").unwrap();
    assert!(web2.dispatched_at.is_none(), "web-2 was never dispatched: {web2:?}");
    for h in &f.hosts {
        assert_eq!(h.version().as_deref(), Some("1.0.0"), "{} untouched", h.name);
        assert!(!h.root.join("lib/demo/feature-x.txt").exists());
    }
    assert_eq!(f.server.client.rollout(&rollout).await.unwrap().state, RolloutState::Cancelled);
}

/// A server whose agent is offline when its job becomes ready holds the wave's only slot
/// for the delivery timeout, then its job is undeliverable and the next server installs: the
/// rollout finishes, the offline server untouched.
#[tokio::test(flavor = "multi_thread")]
async fn an_offline_server_is_undeliverable_and_the_wave_goes_on() {
    let mut f = fleet(2, None, |_, _| {}).await;
    let ids = agent_ids(&f).await;
    f.hosts.iter_mut().find(|h| h.name == "web-1").unwrap().agent.as_mut().unwrap().kill();
    let rollout = f
        .rollout(json!({ "targets": { "agents": ids }, "waves": [2], "concurrency": 1, "delivery_timeout_secs": 2 }))
        .await;
    let r = f.wait_rollout_state(&rollout, &ENDED).await;
    assert_eq!(r.state, RolloutState::Finished, "{r:?}");
    let jobs = f.jobs(&rollout).await;
    let state = |host: &str| jobs.iter().find(|j| j.hostname == host).map(|j| j.state);
    assert_eq!((state("web-1"), state("web-2")), (Some(JobState::Undeliverable), Some(JobState::Succeeded)));
    let away = jobs.iter().find(|j| j.hostname == "web-1").unwrap();
    assert!(away.error.as_deref().unwrap_or_default().contains("last seen at"), "{away:?}");
    assert_eq!(f.host("web-1").version().as_deref(), Some("1.0.0"));
    assert_eq!(f.host("web-2").version().as_deref(), Some("1.1.0"));
}

/// A transient failure retried (issue 15): the agent is killed mid-install, its job is lost
/// after the lease, and with `retries` the rollout tries the server again by itself; the
/// restarted agent takes the new attempt and the server ends on 1.1.0, the lost attempt
/// kept as `retried`.
#[tokio::test(flavor = "multi_thread")]
async fn a_lost_job_is_retried_by_itself_and_the_server_converges() {
    let mut f = fleet(1, None, |_, _| {}).await;
    let token = f.server.enrollment_token(1).await;
    let web1 = f.hosts.iter_mut().find(|h| h.name == "web-1").unwrap();
    web1.agent.as_mut().unwrap().kill();
    web1.start_agent_with_env(&f.server, &token, &[(fleetup_agent_pause_env(), "3".to_owned())]);
    let rollout = f.rollout(json!({ "waves": [1], "retries": { "times": 2, "backoff_secs": 1 } })).await;
    wait_paused(f.host("web-1"), "journal step 3 ");
    f.hosts[0].agent.as_mut().unwrap().kill();
    let client = &f.server.client;
    let retried = f
        .server
        .eventually("the lost attempt retried", LONG, async || {
            let filter = JobFilter { state: Some(JobState::Retried), ..JobFilter::default() };
            Ok(client.jobs_page::<Job>(&rollout, &filter, None).await?.jobs.into_iter().next())
        })
        .await;
    assert_eq!(retried.attempt, 1);
    f.hosts[0].start_agent(&f.server, &token);
    let r = f.wait_rollout_state(&rollout, &ENDED).await;
    assert_eq!(r.state, RolloutState::Finished, "{r:?}");
    let jobs = f.jobs(&rollout).await;
    assert_eq!(jobs.len(), 1, "the listing shows the server's current attempt: {jobs:?}");
    assert_eq!((jobs[0].state, jobs[0].attempt), (JobState::Succeeded, 2), "{jobs:?}");
    assert_eq!(jobs[0].retry_of.as_ref(), Some(&retried.id));
    assert_eq!(f.host("web-1").version().as_deref(), Some("1.1.0"));
}

/// The stall alarm with learned history (issue 15): five real installs teach each phase's
/// durations; on a sixth server the engine stops in the middle of a phase, and while it
/// hangs the job is flagged `stalled` (past 3 × p95 and the 2 s floor), naming the phase.
#[tokio::test(flavor = "multi_thread")]
async fn a_hung_phase_is_flagged_stalled_from_learned_history() {
    let mut f = fleet_with(6, None, &["--stall-floor-secs", "2"], |_, _| {}).await;
    let ids = agent_ids(&f).await;
    let token = f.server.enrollment_token(1).await;
    let web6 = f.hosts.iter_mut().find(|h| h.name == "web-6").unwrap();
    web6.agent.as_mut().unwrap().kill();
    web6.start_agent_with_env(&f.server, &token, &[(fleetup_agent_pause_env(), "3".to_owned())]);
    let history = f.rollout(json!({ "targets": { "agents": ids[..5] }, "waves": [5], "concurrency": 5 })).await;
    let r = f.wait_rollout_state(&history, &ENDED).await;
    assert_eq!(r.state, RolloutState::Finished, "{r:?}");
    let hung = f.rollout(json!({ "targets": { "agents": [ids[5]] }, "waves": [1] })).await;
    wait_paused(f.host("web-6"), "journal step 3 ");
    let job = f
        .eventually_jobs("the hung phase flagged", &hung, |jobs| jobs.first().filter(|j| j.stalled.is_some()).cloned())
        .await;
    let stall = job.stalled.clone().unwrap();
    assert_eq!(Some(stall.phase), job.current_phase, "{job:?}");
    assert_eq!((stall.basis.as_str(), stall.samples), ("fleet", 5), "{stall:?}");
    assert!(stall.elapsed_secs > stall.limit_secs && stall.limit_secs >= 2.0, "{stall:?}");
    f.hosts[5].agent.as_mut().unwrap().kill();
}

/// Adds an executable host hook (`<state>/hooks/<dir>/<name>`) before the agent starts.
fn host_hook(h: &Host, dir: &str, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    let hooks = h.state.join("hooks").join(dir);
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::write(hooks.join(name), format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(hooks.join(name), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Sends `sig` to the host's agent process.
fn signal_agent(h: &mut Host, sig: nix::sys::signal::Signal) {
    let pid = h.agent.as_ref().unwrap().child.id();
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(i32::try_from(pid).unwrap()), sig).unwrap();
}

/// Waits (with a deadline) for the host's agent to exit; its exit code.
fn agent_exit(h: &mut Host) -> Option<i32> {
    let agent = h.agent.as_mut().unwrap();
    let status = fleetup_e2e::wait_for("the agent to exit", LONG, || agent.child.try_wait().unwrap());
    status.code()
}

/// Waits until the agent's log contains `want`.
fn wait_logged(h: &Host, want: &str) -> String {
    let agent = h.agent.as_ref().unwrap();
    fleetup_e2e::wait_for(&format!("{} logging '{want}'", h.name), LONG, || {
        agent.output().lines().find(|l| l.contains(want)).map(str::to_owned)
    })
}

/// `systemctl stop` of the agent in the middle of an install: SIGTERM is a cancel,
/// honoured as the phase allows (here pre-hooks: ends now, nothing changed), said in the
/// journal; the outcome `cancelled` reaches the coordinator before the agent exits 143.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_to_the_agent_mid_install_cancels_reports_cancelled_and_exits_143() {
    let mut f = fleet(1, None, |_, h| {
        let running = h.dir.join("hook-running");
        host_hook(h, "pre-install.d", "10-wait", &format!("touch '{}'; sleep 30", running.display()));
    })
    .await;
    let rollout = f.rollout(json!({ "waves": [1] })).await;
    let running = f.host("web-1").dir.join("hook-running");
    fleetup_e2e::wait_for("the pre-install hook to run", LONG, || running.exists().then_some(()));
    let started = std::time::Instant::now();
    let web1 = &mut f.hosts[0];
    signal_agent(web1, nix::sys::signal::Signal::SIGTERM);
    let line = wait_logged(web1, "stop requested during job");
    assert!(line.contains("cancel during 'pre-hooks': the install ends now; nothing has been changed"), "{line}");
    assert_eq!(agent_exit(web1), Some(143), "{}", web1.agent.as_ref().unwrap().output());
    assert!(started.elapsed() < Duration::from_secs(25), "the hook was interrupted, not waited out");
    let out = web1.agent.as_ref().unwrap().output();
    assert!(out.contains("ended cancelled and was reported; stopping"), "{out}");
    // Reported before the exit: the coordinator already has the outcome.
    let job = f.jobs(&rollout).await.into_iter().next().unwrap();
    assert_eq!(job.state, JobState::Cancelled, "{job:?}");
    let web1 = f.host("web-1");
    assert_eq!(web1.version().as_deref(), Some("1.0.0"));
    assert!(web1.root.join("lib/demo/legacy.txt").exists() && !web1.root.join("lib/demo/feature-x.txt").exists());
    assert!(!web1.state.join("journal.jsonl").exists(), "the journal was left open");
    assert!(!web1.state.join("job.json").exists(), "the job was left for the next start");
}

/// From post-precompile on a cancel is refused: a SIGTERM then lets the install finish
/// forward, a second one says what is still being done, and the agent exits 0 once the
/// success is reported.
#[tokio::test(flavor = "multi_thread")]
async fn sigterm_after_the_files_are_in_place_finishes_forward_and_a_second_says_what_is_being_done() {
    let mut f = fleet(1, None, |_, h| {
        let (running, go) = (h.dir.join("hook-running"), h.dir.join("go"));
        host_hook(
            h,
            "post-install.d",
            "10-wait",
            &format!(
                "touch '{}'; n=0; while [ ! -e '{}' ] && [ $n -lt 600 ]; do sleep 0.1; n=$((n+1)); done",
                running.display(),
                go.display()
            ),
        );
    })
    .await;
    let rollout = f.rollout(json!({ "waves": [1] })).await;
    let (running, go) = (f.host("web-1").dir.join("hook-running"), f.host("web-1").dir.join("go"));
    fleetup_e2e::wait_for("the post-install hook to run", LONG, || running.exists().then_some(()));
    let web1 = &mut f.hosts[0];
    signal_agent(web1, nix::sys::signal::Signal::SIGTERM);
    let first = wait_logged(web1, "stop requested during job");
    assert!(first.contains("cancel refused during 'post-hooks'"), "{first}");
    signal_agent(web1, nix::sys::signal::Signal::SIGTERM);
    let second = wait_logged(web1, "SIGTERM received again");
    assert!(
        second.contains("is still in 'post-hooks'") && second.contains("the stop asked earlier stands"),
        "{second}"
    );
    std::fs::write(&go, "").unwrap();
    assert_eq!(agent_exit(web1), Some(0), "{}", web1.agent.as_ref().unwrap().output());
    let job = f.jobs(&rollout).await.into_iter().next().unwrap();
    assert_eq!(job.state, JobState::Succeeded, "{job:?}");
    assert_eq!(f.host("web-1").version().as_deref(), Some("1.1.0"));
}

/// A server that already runs the version although the coordinator does not know it
/// (installed from the command line): the job is dispatched, the engine confirms the
/// version is there and changes nothing, and the coordinator counts the job `skipped`.
#[tokio::test(flavor = "multi_thread")]
async fn a_server_already_on_the_version_is_confirmed_by_the_engine_and_skipped() {
    let mut f = fleet(1, None, |_, _| {}).await;
    let token = f.server.enrollment_token(1).await;
    let (key, key_pub) = (f.server.key.clone(), f.server.key_pub.clone());
    let web1 = &mut f.hosts[0];
    web1.agent.as_mut().unwrap().kill();
    // The operator installs 1.1.0 by hand, with the agent's own state dir.
    let agent = fleetup_e2e::binary("fleetup-agent");
    let pkg = web1.dir.join("by-hand.fup");
    let sample = fleetup_e2e::workspace_root().join("examples/sample-rollup");
    let packed = std::process::Command::new(&agent)
        .arg("pack")
        .arg(&sample)
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(&pkg)
        .output()
        .unwrap();
    assert!(packed.status.success(), "{}", String::from_utf8_lossy(&packed.stderr));
    let mut cli = std::process::Command::new(&agent);
    cli.arg("install").arg(&pkg).arg("--root").arg(&web1.root).arg("--trust").arg(&key_pub);
    cli.arg("--state-dir").arg(&web1.state).arg("--hosts-file").arg(web1.dir.join("hosts"));
    cli.args(["--services-backend", "exec", "--yes", "--json"]);
    for (k, v) in &web1.vars {
        cli.args(["--var", &format!("{k}={v}")]);
    }
    let out = cli.output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(web1.version().as_deref(), Some("1.1.0"));
    let pid = std::fs::read_to_string(web1.root.join("run/demo.pid")).unwrap();
    web1.start_agent(&f.server, &token);
    let rollout = f.rollout(json!({ "waves": [1] })).await;
    let done = f.wait_rollout_state(&rollout, &ENDED).await;
    assert_eq!(done.state, RolloutState::Finished, "{done:?}");
    let job = f.jobs(&rollout).await.into_iter().next().unwrap();
    assert_eq!(job.state, JobState::Skipped, "{job:?}");
    assert!(job.dispatched_at.is_some(), "decided by the engine, not at staging: {job:?}");
    let events = f.server.client.job_events(&job.id, 0, None).await.unwrap();
    let last = events.last().unwrap();
    assert!(last.message.contains("demo-service 1.1.0 is already installed: nothing changed"), "{}", last.message);
    let web1 = f.host("web-1");
    assert_eq!(std::fs::read_to_string(web1.root.join("run/demo.pid")).unwrap(), pid, "the service was restarted");
    assert_eq!(web1.version().as_deref(), Some("1.1.0"));
}

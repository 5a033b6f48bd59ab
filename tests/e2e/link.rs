//! A slow or hostile link between a real agent and a real coordinator (issue 14): a
//! fault-injecting proxy on loopback trickles downloads, cuts reports, rewrites and replays
//! poll answers. Each test checks what an operator would see: the job's state and error
//! over the API, the version the demo service answers, files on disk.

use fleetup_e2e::fleet::{Host, Server};
use fleetup_e2e::proxy::{Action, Proxy, Request};
use fleetup_e2e::wait_for;
use fleetup_proto::api::{Job, JobState, RolloutSpec};
use fleetup_proto::id::{JobId, PackageId, RolloutId};
use serde_json::{Value, json};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const LONG: Duration = Duration::from_mins(2);
/// The coordinator's lease in these tests.
const LEASE_SECS: u64 = 6;

/// One host whose agent talks to the coordinator through a proxy.
struct Link {
    host: Host,
    proxy: Proxy,
    server: Server,
    package: PackageId,
    token: String,
    dir: tempfile::TempDir,
}

fn is_download(r: &Request) -> bool {
    r.method == "GET" && r.path.starts_with("/api/v1/agent/packages/")
}

fn is_report(r: &Request) -> bool {
    r.method == "POST" && r.path.contains("/events")
}

fn is_poll(r: &Request) -> bool {
    r.path.starts_with("/api/v1/agent/poll")
}

/// A coordinator, a proxy in front of it, and one host whose agent gets `env`; `tweak`
/// prepares the host (hooks) before its agent starts.
async fn link(env: &[(&str, String)], tweak: impl FnOnce(&mut Host)) -> Link {
    let dir = tempfile::tempdir().unwrap();
    let lease = LEASE_SECS.to_string();
    let server =
        Server::start(&dir.path().join("server"), None, &["--lease-secs", &lease, "--scheduler-interval-ms", "200"])
            .await;
    let package = server.upload(None).await;
    let token = server.enrollment_token(1).await;
    let proxy = Proxy::start(&server.url).await;
    let crl = fleetup_demo_service::crl_endpoint().unwrap();
    let mut host = Host::new(dir.path(), "web-1", &crl);
    tweak(&mut host);
    let env: Vec<(String, String)> = env.iter().map(|(k, v)| ((*k).to_owned(), v.clone())).collect();
    host.start_agent_via(&server, &proxy.url, &token, &env);
    server.every_agent_online(1, LONG).await;
    Link { host, proxy, server, package, token, dir }
}

impl Link {
    async fn package_size(&self) -> u64 {
        self.server.client.package(&self.package).await.unwrap().size
    }

    /// Starts a one-server rollout and returns its job once it exists.
    async fn rollout(&self) -> (RolloutId, JobId) {
        let spec: RolloutSpec = serde_json::from_value(json!({
            "name": "link test",
            "package_id": self.package,
            "targets": { "labels": { "env": "test" } },
            "waves": [1],
        }))
        .unwrap();
        let r = self.server.client.create_rollout(&spec).await.unwrap_or_else(|e| panic!("staging: {e}"));
        self.server.client.start(&r.id).await.unwrap_or_else(|e| panic!("starting: {e}"));
        let job = self
            .server
            .eventually("the rollout's job", LONG, async || {
                Ok(self.server.jobs::<Job>(&r.id).await.into_iter().next().map(|j| j.id))
            })
            .await;
        (r.id, job)
    }

    async fn wait_job(&self, id: &JobId, what: &str, check: impl Fn(&Job) -> bool) -> Job {
        let found = self
            .server
            .client
            .poll_until(what, LONG, async || {
                let j = self.server.client.job(id).await?;
                Ok(check(&j).then_some(j))
            })
            .await;
        found.unwrap_or_else(|e| panic!("{e}\nthe agent's log:\n{}", self.agent_log()))
    }

    fn agent_log(&self) -> String {
        self.host.agent.as_ref().map(fleetup_e2e::fleet::Proc::output).unwrap_or_default()
    }

    fn wait_agent_log(&self, what: &str) {
        wait_for(&format!("'{what}' in the agent's log"), LONG, || self.agent_log().contains(what).then_some(()));
    }
}

/// Rewrites one member of the job assignment in every poll answer with a job.
fn rewrite_assignment(edit: impl Fn(&mut Value) + Send + Sync + 'static) -> Action {
    Action::Rewrite(Arc::new(move |status, body| {
        if status != 200 {
            return body;
        }
        let mut v: Value = serde_json::from_slice(&body).unwrap();
        edit(&mut v);
        serde_json::to_vec(&v).unwrap()
    }))
}

/// Issue 14, defects 1 and 2: the first download attempt trickles (far under the floor),
/// so it is abandoned after one window and resumed with HTTP Range; the resumed attempt
/// runs above the floor but takes longer than the lease. The agent's own heartbeat keeps
/// the job: it ends `succeeded`, never `lost`.
#[tokio::test(flavor = "multi_thread")]
async fn a_trickle_is_resumed_and_a_download_longer_than_the_lease_keeps_its_job() {
    // The package is known before the agent starts: size the floor and the rates from it.
    let probe = tempfile::tempdir().unwrap();
    let size = {
        let s = Server::start(&probe.path().join("s"), None, &[]).await;
        let id = s.upload(None).await;
        s.client.package(&id).await.unwrap().size
    };
    let floor = (size / 16).max(64);
    let l =
        link(&[("FLEETUP_DOWNLOAD_MIN_RATE", floor.to_string()), ("FLEETUP_DOWNLOAD_RATE_WINDOW", "2".into())], |_| {})
            .await;
    assert_eq!(l.package_size().await, size);
    let downloads = Arc::new(AtomicUsize::new(0));
    {
        let downloads = downloads.clone();
        // Second attempt: size/8 bytes a second, twice the floor: about 8 s in all.
        let piece = usize::try_from((size / 80).max(1)).unwrap();
        l.proxy.set_rule(move |r| {
            if !is_download(r) {
                return Action::Pass;
            }
            if downloads.fetch_add(1, Ordering::SeqCst) == 0 {
                Action::Trickle { bytes: 1, every: Duration::from_millis(200) }
            } else {
                Action::Trickle { bytes: piece, every: Duration::from_millis(100) }
            }
        });
    }
    let started = Instant::now();
    let (_, job) = l.rollout().await;
    let done = l.wait_job(&job, "the job to end", |j| j.state.is_terminal()).await;
    assert_eq!(done.state, JobState::Succeeded, "{done:?}\n{}", l.agent_log());
    assert!(started.elapsed() > Duration::from_secs(LEASE_SECS), "the download took less than the lease");
    assert_eq!(l.host.version().as_deref(), Some("1.1.0"));
    let seen: Vec<Request> = l.proxy.seen().into_iter().filter(is_download).collect();
    assert!(seen.len() >= 2, "{seen:?}");
    let range = seen[1].header("range").unwrap_or_default().to_owned();
    let from: u64 = range.trim_start_matches("bytes=").trim_end_matches('-').parse().unwrap_or(0);
    assert!(from > 0, "the second attempt resumes with Range: {range:?}");
    assert!(l.agent_log().contains("too slow"), "{}", l.agent_log());
}

/// Issue 14, defect 1: reports are cut while the package downloads, until the coordinator
/// declares the job lost. When the link is back, the agent hears `409`, abandons the
/// download and never starts the install.
#[tokio::test(flavor = "multi_thread")]
async fn a_job_taken_back_during_its_download_is_never_started() {
    let l = link(&[("FLEETUP_DOWNLOAD_MIN_RATE", "1".into())], |_| {}).await;
    let cut = Arc::new(AtomicBool::new(true));
    {
        let cut = cut.clone();
        l.proxy.set_rule(move |r| {
            if is_download(r) {
                Action::Trickle { bytes: 8, every: Duration::from_millis(200) }
            } else if is_report(r) && cut.load(Ordering::SeqCst) {
                Action::Fail(503)
            } else {
                Action::Pass
            }
        });
    }
    let (_, job) = l.rollout().await;
    l.wait_job(&job, "the job lost", |j| j.state == JobState::Lost).await;
    cut.store(false, Ordering::SeqCst);
    l.wait_agent_log("it is not started");
    assert_eq!(l.host.version().as_deref(), Some("1.0.0"));
    assert!(!l.host.state.join("logs").join(job.as_str()).exists(), "the engine ran for a job taken back");
    assert!(!l.host.root.join("lib/demo/feature-x.txt").exists());
}

/// Issue 14, defect 1: the lease is lost while a post-install hook runs (the new files are
/// in place: a cancel is refused there). The install finishes forward, the agent sends its
/// outcome once, and the coordinator records it on the lost job as late.
#[tokio::test(flavor = "multi_thread")]
async fn a_lease_lost_after_changes_began_finishes_forward_and_is_recorded_late() {
    let flag = Arc::new(std::sync::Mutex::new(std::path::PathBuf::new()));
    let l = link(&[], |h| {
        let hooks = h.state.join("hooks/post-install.d");
        std::fs::create_dir_all(&hooks).unwrap();
        let go = h.dir.join("go");
        // Waits (at most 60 s) for the test to say go.
        std::fs::write(
            hooks.join("10-wait.sh"),
            format!("i=0; while [ ! -e '{}' ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n", go.display()),
        )
        .unwrap();
        *flag.lock().unwrap() = go;
    })
    .await;
    let cut = Arc::new(AtomicBool::new(false));
    {
        let cut = cut.clone();
        l.proxy.set_rule(
            move |r| if is_report(r) && cut.load(Ordering::SeqCst) { Action::Fail(503) } else { Action::Pass },
        );
    }
    let (_, job) = l.rollout().await;
    l.wait_job(&job, "post-hooks running", |j| j.current_phase == Some(fleetup_proto::PhaseId::PostHooks)).await;
    cut.store(true, Ordering::SeqCst);
    l.wait_job(&job, "the job lost", |j| j.state == JobState::Lost).await;
    cut.store(false, Ordering::SeqCst);
    // The agent hears the 409 while the hook still runs; only then does the install end.
    l.wait_agent_log("no longer holds this job's lease");
    std::fs::write(&*flag.lock().unwrap(), "go").unwrap();
    let late = l
        .wait_job(&job, "the late outcome recorded", |j| {
            j.error.as_deref().is_some_and(|e| e.contains("reported after the job was lost"))
        })
        .await;
    assert_eq!(late.state, JobState::Lost);
    assert!(late.error.as_deref().unwrap().contains("demo-service 1.1.0 succeeded"), "{late:?}");
    assert_eq!(l.host.version().as_deref(), Some("1.1.0"));
}

/// Issue 14, defect 4: a poll answer whose `download_path` names another host, or whose
/// `sha256` or job id is a path, is refused before anything: nothing connects to the other
/// host, no file is written outside the state dir, the job fails with the field named.
#[tokio::test(flavor = "multi_thread")]
async fn hostile_assignment_fields_are_refused() {
    let l = link(&[], |_| {}).await;
    // Another host on loopback: the agent must never connect to it.
    let other = tokio::net::TcpListener::bind("127.0.0.2:0").await.unwrap();
    let other_addr = other.local_addr().unwrap();
    let connected = Arc::new(AtomicUsize::new(0));
    {
        let connected = connected.clone();
        tokio::spawn(async move {
            while other.accept().await.is_ok() {
                connected.fetch_add(1, Ordering::SeqCst);
            }
        });
    }
    let package = l.package.to_string();
    type Edit = Box<dyn Fn(&mut Value) + Send + Sync>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "download_path",
            Box::new(move |v| {
                v["package"]["download_path"] = json!(format!("@{other_addr}/api/v1/agent/packages/{package}"));
            }),
        ),
        ("sha256", Box::new(|v| v["package"]["sha256"] = json!("../../../x"))),
    ];
    for (field, edit) in cases {
        let edit = Arc::new(edit);
        l.proxy.set_rule(move |r| {
            let edit = edit.clone();
            if is_poll(r) { rewrite_assignment(move |v| edit(v)) } else { Action::Pass }
        });
        let (_, job) = l.rollout().await;
        let j = l.wait_job(&job, "the job to end", |j| j.state.is_terminal()).await;
        assert_eq!(j.state, JobState::Failed, "{field}: {j:?}");
        assert!(j.error.as_deref().unwrap_or_default().contains(field), "{field}: {j:?}");
    }
    assert_eq!(connected.load(Ordering::SeqCst), 0, "the agent connected to another host");
    // A job id that is a path: refused, nothing created outside the state dir; the same
    // dispatch, handed over again unchanged, then installs.
    l.proxy.set_rule(
        |r| if is_poll(r) { rewrite_assignment(|v| v["job_id"] = json!("../../../x")) } else { Action::Pass },
    );
    let (_, job) = l.rollout().await;
    l.wait_agent_log("is not a valid job id");
    l.proxy.set_rule(|_| Action::Pass);
    let j = l.wait_job(&job, "the job to end", |j| j.state.is_terminal()).await;
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    for outside in ["x", "x.part", "state/x", "web-1/x"] {
        assert!(!l.dir.path().join(outside).exists(), "{outside} written outside the state dir");
    }
    assert!(!l.host.dir.join("x").exists() && !l.host.state.join("x").exists());
}

/// Issue 14, defect 5: a job whose bytes are another version than it names, or whose
/// expiry has passed, is refused before installing; a finished job handed out again (also
/// after the agent restarts) gets its earlier outcome, not a second install.
#[tokio::test(flavor = "multi_thread")]
async fn mixed_expired_and_replayed_jobs_are_not_installed() {
    let mut l = link(&[], |_| {}).await;
    l.proxy.set_rule(|r| {
        if is_poll(r) { rewrite_assignment(|v| v["package"]["version"] = json!("9.9.9")) } else { Action::Pass }
    });
    let (_, job) = l.rollout().await;
    let j = l.wait_job(&job, "the mixed job to end", |j| j.state.is_terminal()).await;
    assert_eq!(j.state, JobState::Failed, "{j:?}");
    assert!(
        j.error
            .as_deref()
            .unwrap_or_default()
            .contains("the package is demo-service 1.1.0 but the job is for demo-service 9.9.9"),
        "{j:?}"
    );
    assert_eq!(l.host.version().as_deref(), Some("1.0.0"));

    l.proxy.set_rule(|r| {
        if is_poll(r) { rewrite_assignment(|v| v["expires_at"] = json!("2001-01-01T00:00:00Z")) } else { Action::Pass }
    });
    let (_, job) = l.rollout().await;
    let j = l.wait_job(&job, "the expired job to end", |j| j.state.is_terminal()).await;
    assert_eq!(j.state, JobState::Failed, "{j:?}");
    assert!(j.error.as_deref().unwrap_or_default().contains("expired"), "{j:?}");
    assert_eq!(l.host.version().as_deref(), Some("1.0.0"));

    // A normal job, its assignment kept as a replay would keep it.
    let kept = Arc::new(std::sync::Mutex::new(None::<Vec<u8>>));
    {
        let kept = kept.clone();
        l.proxy.set_rule(move |r| {
            if !is_poll(r) {
                return Action::Pass;
            }
            let kept = kept.clone();
            Action::Rewrite(Arc::new(move |status, body| {
                if status == 200 {
                    *kept.lock().unwrap() = Some(body.clone());
                }
                body
            }))
        });
    }
    let (_, job) = l.rollout().await;
    let j = l.wait_job(&job, "the job to succeed", |j| j.state.is_terminal()).await;
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    let events = l.host.state.join("logs").join(job.as_str()).join("events.jsonl");
    let recorded = std::fs::read_to_string(&events).unwrap().lines().count();
    let replay = kept.lock().unwrap().clone().expect("the assignment");
    for restart in [false, true] {
        if restart {
            l.host.agent.as_mut().unwrap().kill();
            let token = l.token.clone();
            l.host.start_agent_via(&l.server, &l.proxy.url, &token, &[]);
        }
        let once = Arc::new(AtomicBool::new(false));
        {
            let (replay, once) = (replay.clone(), once.clone());
            l.proxy.set_rule(move |r| {
                if is_poll(r) && !r.at_answer && !once.swap(true, Ordering::SeqCst) {
                    Action::Answer(200, replay.clone())
                } else {
                    Action::Pass
                }
            });
        }
        l.wait_agent_log("already finished here");
        assert_eq!(std::fs::read_to_string(&events).unwrap().lines().count(), recorded, "installed again");
    }
    assert_eq!(l.server.client.job(&job).await.unwrap().state, JobState::Succeeded);
    assert_eq!(l.host.version().as_deref(), Some("1.1.0"));
}

/// Issue 14, defect 3: a pre-install hook prints 4 MB in lines of 8,000 characters (a
/// 500-line batch of them is twice the coordinator's body limit) and one line of 100 kB.
/// The logs of every later phase still arrive; the hook's log is cut at its cap with a
/// marker, the long line with another.
#[tokio::test(flavor = "multi_thread")]
async fn a_hook_printing_megabytes_does_not_stall_later_logs() {
    let l = link(&[], |h| {
        let hooks = h.state.join("hooks/pre-install.d");
        std::fs::create_dir_all(&hooks).unwrap();
        std::fs::write(
            hooks.join("10-flood.sh"),
            "head -c 100000 /dev/zero | tr '\\0' 'y'; echo\n\
             i=0; line=$(head -c 8000 /dev/zero | tr '\\0' 'x'); while [ $i -lt 500 ]; do echo \"$line\"; i=$((i+1)); done\n",
        )
        .unwrap();
    })
    .await;
    let (_, job) = l.rollout().await;
    let j = l.wait_job(&job, "the job to end", |j| j.state.is_terminal()).await;
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    let logs = l
        .server
        .eventually("the post-hooks log shipped", LONG, async || {
            let mut all = Vec::new();
            loop {
                let page = l.server.client.job_logs(&job, all.len() as u64, Some(5000)).await?;
                if page.is_empty() {
                    break;
                }
                all.extend(page);
            }
            use fleetup_proto::PhaseId as P;
            let later = all.iter().any(|l| {
                matches!(l.phase, P::StopServices | P::UpdateFiles | P::StartServices | P::PostHooks | P::Cleanup)
            });
            Ok(later.then_some(all))
        })
        .await;
    let hooks: Vec<_> = logs.iter().filter(|l| l.phase == fleetup_proto::PhaseId::PreHooks).collect();
    assert!(hooks.iter().any(|l| l.line.contains("[line cut: ")), "no cut marker");
    assert!(hooks.iter().any(|l| l.line.contains("not shipped: over its cap")), "no cap marker");
    let bytes: usize = hooks.iter().map(|l| l.line.len()).sum();
    assert!(bytes < 2 * 1024 * 1024, "{bytes} bytes of one phase shipped");
}

/// Whether a phase of the job ran (began, whatever its end).
fn ran(j: &Job, phase: fleetup_proto::PhaseId) -> bool {
    use fleetup_proto::PhaseStatus as S;
    j.phases.get(&phase).is_some_and(|p| !matches!(p.status, S::Pending | S::Skipped))
}

/// The byte range of the signed content archive inside a package file.
fn content_member(package: &[u8]) -> std::ops::Range<usize> {
    let mut archive = tar::Archive::new(package);
    for entry in archive.entries().unwrap() {
        let entry = entry.unwrap();
        if entry.path().unwrap().to_str() == Some(fleetup_proto::package::CONTENT_MEMBER) {
            let at = usize::try_from(entry.raw_file_position()).unwrap();
            return at..at + usize::try_from(entry.size()).unwrap();
        }
    }
    panic!("no {} in the package", fleetup_proto::package::CONTENT_MEMBER);
}

/// Issue 14, case 8, over a plain-HTTP loopback link: a proxy rewrites the package bytes,
/// alone, with the assignment's sha256 (and size) rewritten to match, or swapped for the
/// same rollup and version signed by the attacker's own key. Each time the install is
/// refused before extraction: the job fails and says why, no phase after check-system
/// began, the install root is unchanged. The link passing everything then installs.
#[tokio::test(flavor = "multi_thread")]
async fn a_proxy_rewriting_the_package_gets_the_install_refused_before_extraction() {
    use fleetup_e2e::fleet::{keygen, pack};
    let l = link(&[], |_| {}).await;
    let stored = l.server.client.package(&l.package).await.unwrap();
    let original =
        std::fs::read(l.server.dir.join("data/packages").join(format!("{}.fleetup", stored.sha256))).unwrap();
    let mut flipped = original.clone();
    let content = content_member(&flipped);
    flipped[content.start + content.len() / 2] ^= 0x01;
    let attacker = l.dir.path().join("attacker.key");
    keygen(&attacker);
    let foreign = l.dir.path().join("foreign.fup");
    pack(&fleetup_e2e::workspace_root().join("examples/sample-rollup"), &attacker, &foreign);
    let cases = [
        ("a flipped byte", flipped.clone(), false, "downloaded package is not the one announced: sha256"),
        ("a flipped byte, the sha256 rewritten to match", flipped, true, "integrity check failed"),
        (
            "another key's package, sha256 and size rewritten",
            std::fs::read(&foreign).unwrap(),
            true,
            "not trusted here",
        ),
    ];
    let tree = l.host.tree();
    for (what, bytes, announce, why) in cases {
        let file = l.dir.path().join("rewritten.fup");
        std::fs::write(&file, &bytes).unwrap();
        let (sha256, size) = fleetup_proto::package::file_sha256(&file).unwrap();
        let bytes = Arc::new(bytes);
        l.proxy.set_rule(move |r| {
            if is_download(r) {
                let bytes = bytes.clone();
                Action::Rewrite(Arc::new(move |_, _| (*bytes).clone()))
            } else if announce && is_poll(r) {
                let sha256 = sha256.clone();
                rewrite_assignment(move |v| {
                    v["package"]["sha256"] = json!(sha256);
                    v["package"]["size"] = json!(size);
                })
            } else {
                Action::Pass
            }
        });
        let (_, job) = l.rollout().await;
        let j = l.wait_job(&job, "the job to end", |j| j.state.is_terminal()).await;
        assert_eq!(j.state, JobState::Failed, "{what}: {j:?}");
        assert!(j.error.as_deref().unwrap_or_default().contains(why), "{what}: {j:?}");
        let later: Vec<_> = fleetup_proto::PhaseId::INSTALL[1..].iter().filter(|p| ran(&j, **p)).collect();
        assert!(later.is_empty(), "{what}: {later:?} began: {j:?}");
        assert!(l.host.tree() == tree, "{what}: the install root changed");
        assert_eq!(l.host.version().as_deref(), Some("1.0.0"), "{what}");
    }
    l.proxy.set_rule(|_| Action::Pass);
    let (_, job) = l.rollout().await;
    let j = l.wait_job(&job, "the job to end", |j| j.state.is_terminal()).await;
    assert_eq!(j.state, JobState::Succeeded, "{j:?}");
    assert_eq!(l.host.version().as_deref(), Some("1.1.0"));
}

//! A fleet of real systemd hosts (Debian bookworm in systemd-nspawn): the agent installed
//! from its .deb, enrolled with `fleetup-agent enroll`, started by its shipped unit, and a
//! rollout over TLS from a coordinator on 127.0.0.1 through the `systemd` services backend.

use fleetup_e2e::fleet::{Server, free_port};
use fleetup_e2e::nspawn::{NspawnHost, own_copy, rootfs};
use fleetup_e2e::{binary, build_debs, copy_tree, wait_for, workspace_root};
use fleetup_proto::api::{Job, JobState, RolloutSpec, RolloutState};
use fleetup_proto::id::PackageId;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

const LONG: Duration = Duration::from_mins(3);
/// The host whose new version fails its health check.
const UNHEALTHY: usize = 3;
/// The host whose service an operator stopped before the install.
const STOPPED: usize = 2;

/// The demo app as a real systemd unit on `port`.
fn demo_unit(port: u16) -> String {
    format!(
        "[Unit]\nDescription=fleetup demo app\n[Service]\n\
         ExecStart=/usr/local/bin/fleetup-demo-service --listen 127.0.0.1:{port} --root /opt/demo\n\
         [Install]\nWantedBy=multi-user.target\n"
    )
}

/// What the hosts get, in a directory bound at /mnt/fleetup: the agent's .deb, the demo
/// app at 1.0, the coordinator's CA and the signing key. Returns the coordinator, the
/// uploaded package and an enrollment token for `n` hosts.
async fn coordinator_and_share(dir: &Path, share: &Path, n: u32) -> (Server, PackageId, String) {
    std::fs::create_dir_all(share).unwrap();
    build_debs(share);
    std::fs::copy(binary("fleetup-demo-service"), share.join("fleetup-demo-service")).unwrap();
    copy_tree(&workspace_root().join("examples/base-1.0"), &share.join("base-1.0")).unwrap();
    let server = Server::start_tls(&dir.join("server"), &["--scheduler-interval-ms", "200"]).await;
    std::fs::copy(server.ca_cert.as_ref().unwrap(), share.join("ca.pem")).unwrap();
    std::fs::copy(&server.key_pub, share.join("release.key.pub")).unwrap();
    let package = server.upload(None).await;
    let token = server.enrollment_token(n).await;
    (server, package, token)
}

/// Installs the agent from its .deb and the demo app as a systemd unit on `port`
/// (`before_demo` runs first, e.g. to make 1.1.0 unhealthy), enrolls with
/// `fleetup-agent enroll`, writes `agent_env` to /etc/fleetup/agent.env, starts the unit.
fn provision(host: &NspawnHost, server: &Server, token: &str, port: u16, before_demo: &str, agent_env: &str) {
    let crl = fleetup_demo_service::crl_endpoint().unwrap();
    let name = &host.name;
    host.run("dpkg -i /mnt/fleetup/fleetup-agent_*.deb");
    host.run("mkdir -p /opt/demo && cp -a /mnt/fleetup/base-1.0/. /opt/demo/ && cp /mnt/fleetup/ca.pem /mnt/fleetup/release.key.pub /etc/fleetup/");
    host.run("install -m 0755 /mnt/fleetup/fleetup-demo-service /usr/local/bin/");
    host.run(before_demo);
    host.run(&format!(
        "cat > /etc/systemd/system/demo.service <<'EOF'\n{}EOF\nsystemctl daemon-reload && systemctl enable --now demo",
        demo_unit(port)
    ));
    // Not enrolled yet: the shipped unit is skipped, not crash-looping.
    host.run(
        "systemctl start fleetup-agent; systemctl show -p ConditionResult fleetup-agent | grep -qx ConditionResult=no",
    );
    host.run(&format!(
        "fleetup-agent enroll --server {url} --token {token} --ca-cert /etc/fleetup/ca.pem \
         --trust /etc/fleetup/release.key.pub --root /opt/demo --hostname {name} \
         --var port={port} --var demo_service_bin=/usr/local/bin/fleetup-demo-service --var crl_base={crl} \
         --poll-wait 5",
        url = server.url
    ));
    host.run(&format!("printf '%s' '{agent_env}' > /etc/fleetup/agent.env"));
    // Type=notify: `enable --now` returns once the agent said READY.
    host.run("systemctl enable --now fleetup-agent && systemctl is-active fleetup-agent");
}

/// One test's hosts at a time: the containers of two tests at once were seen to disturb each
/// other's services (systemd in each could not kill its `demo.service` control group:
/// "Input/output error"), failing a health check that passes alone.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test(flavor = "multi_thread")]
async fn rollout_over_tls_to_three_systemd_hosts() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(rootfs) = rootfs("rollout_over_tls_to_three_systemd_hosts") else { return };
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    let (server, package, token) = coordinator_and_share(dir.path(), &share, 3).await;
    let mut hosts = Vec::new();
    for i in 1..=3 {
        let host = NspawnHost::boot(&rootfs, &format!("fleet{i}"), &share, dir.path());
        let port = free_port();
        let unhealthy =
            if i == UNHEALTHY { "echo 'unhealthy_versions = 1.1.0' >> /opt/demo/etc/demo.conf" } else { "true" };
        provision(&host, &server, &token, port, unhealthy, "");
        hosts.push((host, port));
    }
    server.every_agent_online(3, LONG).await;
    hosts[STOPPED - 1].0.run("systemctl stop demo");
    for (host, _) in &hosts {
        let journal = host.run("journalctl -u fleetup-agent --no-pager -o cat");
        assert!(journal.contains("agent ready"), "{}: {journal}", host.name);
        assert!(!journal.contains('\x1b'), "{}: colour codes in journald:\n{journal}", host.name);
    }

    let done = server
        .rollout_to_end(&package, json!({ "name": "demo 1.1 on systemd", "waves": [3], "concurrency": 3 }), LONG)
        .await;
    let r = &done;
    let jobs = server.jobs::<Job>(&r.id).await;
    let journals: Vec<String> =
        hosts.iter().map(|(h, _)| h.sh("journalctl -u fleetup-agent -u demo --no-pager -o cat | tail -40")).collect();
    let context = format!("{done:?}\n{jobs:?}\n{}", journals.join("\n----\n"));
    assert!(matches!(done.state, RolloutState::Finished | RolloutState::Paused), "{context}");
    for (i, (host, port)) in hosts.iter().enumerate() {
        let slot = i + 1;
        let job = jobs.iter().find(|j| j.hostname == host.name).expect("a job per host");
        let demo = host.run("journalctl -u demo --no-pager -o cat");
        let version = host.run("cat /opt/demo/lib/demo/VERSION");
        if slot == UNHEALTHY {
            // Rolled back: the old files, the unit running again and answering 1.0.0.
            assert_eq!(job.state, JobState::RolledBack, "{context}");
            assert!(version.contains("1.0.0"), "{}: {version}", host.name);
            host.run("systemctl is-active demo");
            let health = host.run(&format!("curl -sS http://127.0.0.1:{port}/health"));
            assert!(health.contains("1.0.0"), "{}: {health}", host.name);
            continue;
        }
        assert_eq!(job.state, JobState::Succeeded, "{}: {context}", host.name);
        assert!(version.contains("1.1.0"), "{}: {version}", host.name);
        if slot == STOPPED {
            // Stopped before the install: still stopped after it, never started by the agent.
            let state = host.sh("systemctl is-active demo");
            assert_eq!(state.trim(), "inactive", "{}: {demo}", host.name);
            continue;
        }
        // Inside the host: the unit was stopped and started by systemctl, and answers 1.1.0.
        host.run("systemctl is-active demo");
        let health = host.run(&format!("curl -fsS http://127.0.0.1:{port}/health"));
        assert!(health.contains("1.1.0"), "{}: {health}", host.name);
        assert!(demo.matches("Started demo.service").count() >= 2, "{}: {demo}", host.name);
        assert!(demo.contains("Stopped demo.service"), "{}: {demo}", host.name);
    }
}

/// A host stopped abruptly in the middle of update-files (after change 7 of 12 of the
/// rename set: neither tree whole on disk) and booted again converges to the whole old or
/// the whole new tree, with exactly one outcome reported, and the service answers the
/// version on disk. The demo unit is enabled, so the boot starts it on the half-updated
/// tree (VERSION already 1.1.0) before the agent recovers: recovery has to stop it before
/// restoring the old files, or it goes on answering 1.1.0 over 1.0.0 files.
#[tokio::test(flavor = "multi_thread")]
async fn a_host_restarted_during_update_files_converges_and_serves_the_version_on_disk() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let test = "a_host_restarted_during_update_files_converges_and_serves_the_version_on_disk";
    let Some(rootfs) = rootfs(test) else { return };
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    let (server, package, token) = coordinator_and_share(dir.path(), &share, 1).await;
    let root = dir.path().join("rootfs-reboot1");
    own_copy(&rootfs, &root);
    let host = NspawnHost::boot_persistent(&root, "reboot1", &share, dir.path());
    let port = free_port();
    provision(&host, &server, &token, port, "true", "FLEETUP_ENGINE_PAUSE_AFTER_RENAME=7");
    server.every_agent_online(1, LONG).await;
    let spec: RolloutSpec = serde_json::from_value(json!({
        "name": "restart mid update-files", "package_id": package, "targets": { "labels": { "env": "test" } },
        "waves": [1],
    }))
    .unwrap();
    let r = server.client.create_rollout(&spec).await.unwrap();
    server.client.start(&r.id).await.unwrap();
    wait_for("the engine paused in update-files", LONG, || {
        host.sh("journalctl -u fleetup-agent --no-pager -o cat").contains("paused after rename 7 of 12").then_some(())
    });
    assert!(host.sh("test -e /opt/demo/lib/demo/legacy.txt && echo present").trim().is_empty(), "after the backups");
    // The next boot runs without the pause.
    host.run("rm /etc/fleetup/agent.env && sync");
    host.kill_abruptly();
    let host = NspawnHost::boot_persistent(&root, "reboot1", &share, dir.path());
    let done = server
        .client
        .wait_rollout(&r.id, LONG, |r| {
            matches!(r.state, RolloutState::Finished | RolloutState::Paused | RolloutState::Aborted)
        })
        .await
        .unwrap();
    let job = server.jobs::<Job>(&r.id).await.remove(0);
    let version = host.run("cat /opt/demo/lib/demo/VERSION");
    let files = host.sh("ls /opt/demo/lib/demo");
    let health = host.sh(&format!("curl -sS http://127.0.0.1:{port}/health"));
    let journal = host.sh("journalctl -u fleetup-agent --no-pager -o cat | tail -30");
    let context = format!("{done:?}\n{job:?}\nVERSION: {version}\nhealth: {health}\n{files}\n{journal}");
    match job.state {
        JobState::Succeeded => {
            assert!(version.contains("1.1.0"), "{context}");
            assert!(health.contains("1.1.0"), "{context}");
            assert!(files.contains("feature-x.txt") && !files.contains("legacy.txt"), "{context}");
        }
        JobState::RolledBack | JobState::Failed => {
            assert!(version.contains("1.0.0"), "{context}");
            assert!(health.contains("1.0.0"), "{context}");
            assert!(!files.contains("feature-x.txt") && files.contains("legacy.txt"), "{context}");
        }
        other => panic!("unexpected job state {}: {context}", other.as_str()),
    }
    host.run("systemctl is-active demo");
    let events = server.client.job_events(&job.id, 0, None).await.unwrap();
    let finals = events.iter().filter(|e| e.data.get("summary").is_some()).count();
    assert_eq!(finals, 1, "exactly one outcome: {events:?}");
}

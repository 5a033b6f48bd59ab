//! A fleet of real systemd hosts (Debian bookworm in systemd-nspawn): the agent installed
//! from its .deb, enrolled with `fleetup-agent enroll`, started by its shipped unit, and a
//! rollout over TLS from a coordinator on 127.0.0.1 through the `systemd` services backend.

use fleetup_e2e::fleet::{Server, free_port};
use fleetup_e2e::nspawn::{NspawnHost, rootfs};
use fleetup_e2e::{binary, copy_tree, workspace_root};
use fleetup_proto::api::{Job, JobState, RolloutSpec, RolloutState};
use serde_json::json;
use std::process::Command;
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

#[tokio::test(flavor = "multi_thread")]
async fn rollout_over_tls_to_three_systemd_hosts() {
    let Some(rootfs) = rootfs("rollout_over_tls_to_three_systemd_hosts") else { return };
    let dir = tempfile::tempdir().unwrap();
    let share = dir.path().join("share");
    std::fs::create_dir_all(&share).unwrap();
    // What the hosts get: the agent's .deb, the demo app at 1.0, the CA and signing key.
    let bin_dir = binary("fleetup-agent").parent().unwrap().to_path_buf();
    binary("fleetup-server");
    let built = Command::new(workspace_root().join("packaging/build-debs.sh"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(&share)
        .env("DEB_COMPRESS", "none")
        .output()
        .unwrap();
    assert!(built.status.success(), "build-debs.sh: {}", String::from_utf8_lossy(&built.stderr));
    std::fs::copy(binary("fleetup-demo-service"), share.join("fleetup-demo-service")).unwrap();
    copy_tree(&workspace_root().join("examples/base-1.0"), &share.join("base-1.0")).unwrap();

    let server = Server::start_tls(&dir.path().join("server"), &["--scheduler-interval-ms", "200"]).await;
    std::fs::copy(server.ca_cert.as_ref().unwrap(), share.join("ca.pem")).unwrap();
    std::fs::copy(&server.key_pub, share.join("release.key.pub")).unwrap();
    let package = server.upload(None).await;
    let token = server.enrollment_token(3).await;
    let crl = fleetup_demo_service::crl_endpoint().unwrap();

    let mut hosts = Vec::new();
    for i in 1..=3 {
        let name = format!("fleet{i}");
        let host = NspawnHost::boot(&rootfs, &name, &share, dir.path());
        let port = free_port();
        host.run("dpkg -i /mnt/fleetup/fleetup-agent_*.deb");
        host.run("mkdir -p /opt/demo && cp -a /mnt/fleetup/base-1.0/. /opt/demo/ && cp /mnt/fleetup/ca.pem /mnt/fleetup/release.key.pub /etc/fleetup/");
        host.run("install -m 0755 /mnt/fleetup/fleetup-demo-service /usr/local/bin/");
        if i == UNHEALTHY {
            host.run("echo 'unhealthy_versions = 1.1.0' >> /opt/demo/etc/demo.conf");
        }
        host.run(&format!("cat > /etc/systemd/system/demo.service <<'EOF'\n{}EOF\nsystemctl daemon-reload && systemctl enable --now demo", demo_unit(port)));
        // Not enrolled yet: the shipped unit is skipped, not crash-looping.
        host.run("systemctl start fleetup-agent; systemctl show -p ConditionResult fleetup-agent | grep -qx ConditionResult=no");
        host.run(&format!(
            "fleetup-agent enroll --server {url} --token {token} --ca-cert /etc/fleetup/ca.pem \
             --trust /etc/fleetup/release.key.pub --root /opt/demo --hostname {name} --label slot={i} \
             --var port={port} --var demo_service_bin=/usr/local/bin/fleetup-demo-service --var crl_base={crl} \
             --poll-wait 5",
            url = server.url
        ));
        // Type=notify: `enable --now` returns once the agent said READY.
        host.run("systemctl enable --now fleetup-agent && systemctl is-active fleetup-agent");
        hosts.push((host, port));
    }
    server.every_agent_online(3, LONG).await;
    hosts[STOPPED - 1].0.run("systemctl stop demo");
    for (host, _) in &hosts {
        let journal = host.run("journalctl -u fleetup-agent --no-pager -o cat");
        assert!(journal.contains("agent ready"), "{}: {journal}", host.name);
        assert!(!journal.contains('\x1b'), "{}: colour codes in journald:\n{journal}", host.name);
    }

    let spec: RolloutSpec = serde_json::from_value(json!({
        "name": "demo 1.1 on systemd", "package_id": package, "targets": { "labels": { "env": "test" } },
        "waves": [3], "concurrency": 3,
    }))
    .unwrap();
    let r = server.client.create_rollout(&spec).await.unwrap();
    server.client.start(&r.id).await.unwrap();
    let done = server
        .client
        .wait_rollout(&r.id, LONG, |r| {
            matches!(r.state, RolloutState::Finished | RolloutState::Paused | RolloutState::Aborted)
        })
        .await
        .unwrap();
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

//! The agent as the packaged unit runs it: options from a configuration file written by
//! `fleetup-agent enroll`, no options on the command line, logs without colour codes.

use fleetup_e2e::fleet::{Host, Proc, Server};
use fleetup_e2e::{binary, wait_for};
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_mins(2);

/// `enroll` with options and a token writes agent.toml; `run` with nothing but the file's
/// path in the environment (as `FLEETUP_AGENT_CONFIG`) comes online with those options.
#[tokio::test(flavor = "multi_thread")]
async fn enroll_writes_the_config_that_run_needs_and_logs_are_plain() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_tls(&dir.path().join("server"), &["--log-format", "json"]).await;
    let token = server.enrollment_token(1).await;
    let crl = fleetup_demo_service::crl_endpoint().unwrap();
    let host = Host::new(dir.path(), "from-file", &crl);
    let config = host.dir.join("etc/agent.toml");
    let out = Command::new(binary("fleetup-agent"))
        .args(["enroll", "--server", &server.url, "--token", &token, "--hostname", "from-file"])
        .arg("--config")
        .arg(&config)
        .arg("--ca-cert")
        .arg(server.ca_cert.as_ref().unwrap())
        .arg("--root")
        .arg(&host.root)
        .arg("--state-dir")
        .arg(&host.state)
        .arg("--trust")
        .arg(&server.key_pub)
        .args(["--services-backend", "exec", "--label", "role=web", "--poll-wait", "5"])
        .output()
        .unwrap();
    assert!(out.status.success(), "enroll: {}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("systemctl enable --now fleetup-agent"));
    let written = std::fs::read_to_string(&config).unwrap();
    assert!(!written.contains(&token), "the one-time token is not kept:\n{written}");
    assert!(written.contains("role = \"web\""), "{written}");
    let agents = server.client.agents().await.unwrap();
    assert_eq!(agents.len(), 1);
    assert_eq!(agents[0].labels.get("role").map(String::as_str), Some("web"));
    assert_eq!(agents[0].hostname, "from-file");

    let mut cmd = Command::new(binary("fleetup-agent"));
    cmd.arg("run").env("FLEETUP_AGENT_CONFIG", &config).env("RUST_LOG", "info");
    let agent = Proc::spawn(cmd, host.dir.join("agent-run.log"));
    server.every_agent_online(1, LONG).await;
    wait_for("the agent's ready line", LONG, || agent.output().contains("agent ready").then_some(()));
    assert!(!agent.output().contains('\x1b'), "ANSI codes in a log file:\n{}", agent.output());
    let log = server.proc.output();
    assert!(!log.is_empty());
    for line in log.lines() {
        let v: serde_json::Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string(), "{line}");
    }
    host.stop_service();
}

/// A configuration file with a mistake is refused with the file's name and the key.
#[test]
fn a_bad_config_file_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("agent.toml");
    std::fs::write(&config, "server = \"https://127.0.0.1:1\"\nroot = \"/tmp/x\"\ntrust = [\"k.pub\"]\nlabelz = {}\n")
        .unwrap();
    let out = Command::new(binary("fleetup-agent")).args(["run", "--config"]).arg(&config).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("agent.toml") && err.contains("labelz"), "{err}");
    let out = Command::new(binary("fleetup-agent"))
        .args(["run", "--config"])
        .arg(dir.path().join("none.toml"))
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot read the configuration file"));
}

//! TLS on every link: a coordinator serving HTTPS with a certificate from `tls init`,
//! agents pinning its CA, and the refusals an operator relies on.

use fleetup_e2e::fleet::{Host, Proc, Server, free_port, tls_init};
use fleetup_e2e::tls::handshake;
use fleetup_e2e::{binary, skip_or_fail, wait_for};
use fleetup_proto::api::{JobState, RolloutState};
use serde_json::json;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_mins(2);

fn addr_of(server: &Server) -> SocketAddr {
    server.url.trim_start_matches("https://").parse().expect("host:port")
}

/// Over TLS pinned to the coordinator's CA: the agent enrolls, downloads, installs and
/// reports; the dashboard's cookies are `Secure`.
#[tokio::test(flavor = "multi_thread")]
async fn rollout_over_tls_to_an_agent_pinning_the_ca() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_tls(&dir.path().join("server"), &["--scheduler-interval-ms", "200"]).await;
    let package = server.upload(None).await;
    let token = server.enrollment_token(1).await;
    let crl = fleetup_demo_service::crl_endpoint().unwrap();
    let mut host = Host::new(dir.path(), "tls-1", &crl);
    host.start_agent(&server, &token);
    server.every_agent_online(1, LONG).await;
    let done =
        server.rollout_to_end(&package, json!({ "name": "over tls", "waves": [1], "concurrency": 1 }), LONG).await;
    let r = &done;
    assert_eq!(done.state, RolloutState::Finished, "{done:?}\n{}", host.agent.as_ref().unwrap().output());
    let jobs = server.jobs::<fleetup_proto::api::Job>(&r.id).await;
    assert_eq!(jobs[0].state, JobState::Succeeded);
    assert_eq!(host.version().as_deref(), Some("1.1.0"));
    host.stop_service();

    // The dashboard over TLS: its cookies get `Secure` without any proxy header.
    let ca = reqwest::Certificate::from_pem(&std::fs::read(server.ca_cert.as_ref().unwrap()).unwrap()).unwrap();
    let web = reqwest::Client::builder().tls_certs_only([ca]).build().unwrap();
    let login = web.get(format!("{}/login", server.url)).send().await.unwrap();
    assert_eq!(login.status().as_u16(), 200);
    let cookie = login.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.starts_with("fleetup_login=") && cookie.contains("; Secure"), "{cookie}");
}

/// HTTP/1.1 and h2 by ALPN, a foreign CA refused, and a new pair served after SIGHUP.
#[tokio::test(flavor = "multi_thread")]
async fn handshakes_alpn_and_a_certificate_reloaded_on_sighup() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_tls(&dir.path().join("server"), &[]).await;
    let addr = addr_of(&server);
    let ca = server.ca_cert.clone().unwrap();
    assert_eq!(handshake(addr, "localhost", &ca, &["h2", "http/1.1"]).unwrap().as_deref(), Some("h2"));
    assert_eq!(handshake(addr, "127.0.0.1", &ca, &["http/1.1"]).unwrap().as_deref(), Some("http/1.1"));
    let other = dir.path().join("other");
    tls_init(&other, &["localhost", "127.0.0.1"]);
    let refused = handshake(addr, "localhost", &other.join("ca.pem"), &[]).unwrap_err();
    assert!(refused.contains("UnknownIssuer"), "{refused}");

    // Replace the pair in place and send SIGHUP: new handshakes get the new certificate.
    let tls = server.dir.join("tls");
    for f in ["server.pem", "server-key.pem"] {
        std::fs::copy(other.join(f), tls.join(f)).unwrap();
    }
    let pid = nix::unistd::Pid::from_raw(i32::try_from(server.proc.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_for("the new certificate after SIGHUP", Duration::from_secs(20), || {
        handshake(addr, "localhost", &other.join("ca.pem"), &[]).ok()
    });
    assert!(handshake(addr, "localhost", &ca, &[]).unwrap_err().contains("UnknownIssuer"));
    assert!(server.proc.output().contains("SIGHUP: reloaded the TLS certificate"), "{}", server.proc.output());

    // A bad pair on SIGHUP is logged and the running one kept.
    std::fs::write(tls.join("server.pem"), "garbage").unwrap();
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGHUP).unwrap();
    wait_for("the refusal of a bad pair in the log", Duration::from_secs(20), || {
        server.proc.output().contains("kept the previous TLS certificate").then_some(())
    });
    handshake(addr, "localhost", &other.join("ca.pem"), &[]).unwrap();
}

/// An agent pinning another CA never enrolls, and says why.
#[tokio::test(flavor = "multi_thread")]
async fn an_agent_pinning_another_ca_refuses_the_coordinator() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = Server::start_tls(&dir.path().join("server"), &[]).await;
    let token = server.enrollment_token(1).await;
    let other = dir.path().join("other");
    tls_init(&other, &["localhost", "127.0.0.1"]);
    server.ca_cert = Some(other.join("ca.pem"));
    let crl = fleetup_demo_service::crl_endpoint().unwrap();
    let mut host = Host::new(dir.path(), "foreign", &crl);
    host.start_agent(&server, &token);
    let agent = host.agent.as_ref().unwrap();
    let line = wait_for("the agent's certificate error", LONG, || {
        agent.output().lines().find(|l| l.contains("invalid peer certificate")).map(str::to_owned)
    });
    assert!(line.contains("UnknownIssuer") && line.contains("--ca-cert"), "{line}");
    assert!(server.client.agents().await.unwrap().is_empty(), "nothing enrolled");
    host.stop_service();
}

/// Issue 14, case 8: a man in the middle takes over the path of an enrolled agent that pins
/// the coordinator's CA. It presents its own certificate, for the right name (127.0.0.1)
/// but from another CA, and would rewrite every assignment and flip a byte of every package
/// it could read. The agent refuses each handshake and says why; the man in the middle
/// decrypts nothing (no request, no bearer token), no job is dispatched, nothing on the host
/// changes. A client that does trust the attacker's CA gets the rewritten bytes: the
/// man in the middle works, it is the pinned CA that stops it.
#[tokio::test(flavor = "multi_thread")]
async fn a_man_in_the_middle_with_its_own_certificate_is_refused() {
    use fleetup_e2e::mitm::Mitm;
    use fleetup_e2e::proxy::Action;
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start_tls(&dir.path().join("server"), &["--scheduler-interval-ms", "200"]).await;
    let package = server.upload(None).await;
    let token = server.enrollment_token(1).await;
    let other = dir.path().join("attacker");
    tls_init(&other, &["localhost", "127.0.0.1"]);
    let ca = server.ca_cert.clone().unwrap();
    let mitm = Mitm::start(addr_of(&server), &ca, &other.join("server.pem"), &other.join("server-key.pem")).await;
    mitm.proxy.set_rule(|r| {
        if r.path.starts_with("/api/v1/agent/poll") {
            Action::Rewrite(std::sync::Arc::new(|status, body| {
                let Ok(mut v) = serde_json::from_slice::<serde_json::Value>(&body) else { return body };
                if status == 200 {
                    v["package"]["version"] = json!("0.0.1");
                }
                serde_json::to_vec(&v).unwrap()
            }))
        } else if r.path.starts_with("/api/v1/agent/packages/") {
            Action::Rewrite(std::sync::Arc::new(|_, mut body| {
                let middle = body.len() / 2;
                if let Some(b) = body.get_mut(middle) {
                    *b ^= 0xff;
                }
                body
            }))
        } else {
            Action::Pass
        }
    });
    let crl = fleetup_demo_service::crl_endpoint().unwrap();
    let mut host = Host::new(dir.path(), "mitm-1", &crl);
    // Enrolled through the path while it only relays.
    host.start_agent_via(&server, &mitm.url, &token, &[]);
    server.every_agent_online(1, LONG).await;
    let tree = host.tree();

    mitm.intercept();
    let spec: fleetup_proto::api::RolloutSpec = serde_json::from_value(
        json!({ "name": "through a mitm", "package_id": package, "targets": { "labels": { "env": "test" } } }),
    )
    .unwrap();
    let rollout = server.client.create_rollout(&spec).await.unwrap();
    server.client.start(&rollout.id).await.unwrap();
    let agent = host.agent.as_ref().unwrap();
    let refusals = wait_for("the agent refusing the certificate twice", LONG, || {
        let read = mitm.proxy.seen();
        assert!(read.is_empty(), "the man in the middle read the agent's requests: {read:?}");
        let lines: Vec<String> =
            agent.output().lines().filter(|l| l.contains("invalid peer certificate")).map(str::to_owned).collect();
        (lines.len() >= 2).then_some(lines)
    });
    assert!(refusals.iter().all(|l| l.contains("UnknownIssuer") && l.contains("--ca-cert")), "{refusals:?}");
    let refused = mitm.refused_handshakes();
    assert!(refused.len() >= 2, "the man in the middle saw no refused handshake: {refused:?}");
    assert!(mitm.proxy.seen().is_empty(), "the man in the middle read requests: {:?}", mitm.proxy.seen());
    let jobs = server.jobs::<fleetup_proto::api::Job>(&rollout.id).await;
    assert_eq!(jobs.len(), 1);
    assert_eq!((jobs[0].state, jobs[0].dispatched_at), (JobState::Queued, None), "{:?}", jobs[0]);
    assert_eq!(host.version().as_deref(), Some("1.0.0"));
    assert!(host.tree() == tree, "the install root changed");
    assert!(!host.state.join("packages").exists(), "a package was downloaded");
    assert!(!host.state.join("job.json").exists() && !host.state.join("logs").join(jobs[0].id.as_str()).exists());

    // Whoever trusts the attacker's CA gets its rewritten bytes.
    let identity: serde_json::Value =
        serde_json::from_slice(&std::fs::read(host.state.join("identity.json")).unwrap()).unwrap();
    let attacker_ca = reqwest::Certificate::from_pem(&std::fs::read(other.join("ca.pem")).unwrap()).unwrap();
    let fooled = reqwest::Client::builder().tls_certs_only([attacker_ca]).build().unwrap();
    let got = fooled
        .get(format!("{}/api/v1/agent/packages/{package}", mitm.url))
        .bearer_auth(identity["agent_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(got.status().as_u16(), 200);
    let got = got.bytes().await.unwrap();
    let stored = server.client.package(&package).await.unwrap();
    let original = std::fs::read(server.dir.join("data/packages").join(format!("{}.fleetup", stored.sha256))).unwrap();
    assert_eq!(got.len(), original.len());
    assert_ne!(&got[..], &original[..], "the man in the middle did not rewrite the package");
    host.stop_service();
}

/// Runs `fleetup-agent run` in a network namespace of its own (only a loopback that is
/// down): even if it tried to connect, nothing could leave the machine.
fn agent_in_empty_netns(dir: &std::path::Path, server: &str, extra: &[&str]) -> Option<Proc> {
    let unshare = Command::new("unshare").args(["-n", "true"]).status();
    if !unshare.is_ok_and(|s| s.success()) {
        skip_or_fail("plain HTTP refusal", "`unshare -n` is unavailable (needs root and util-linux)");
        return None;
    }
    std::fs::create_dir_all(dir).unwrap();
    let key = dir.join("k");
    assert!(Command::new(binary("fleetup-agent")).args(["keygen", "--out"]).arg(&key).status().unwrap().success());
    let mut cmd = Command::new("unshare");
    cmd.args(["-n", "--"]).arg(binary("fleetup-agent"));
    cmd.args(["run", "--server", server, "--enroll-token", "t", "--root"]).arg(dir.join("root"));
    cmd.arg("--state-dir").arg(dir.join("state")).arg("--trust").arg(key.with_extension("pub"));
    cmd.args(extra).env("NO_COLOR", "1");
    Some(Proc::spawn(cmd, dir.join("agent.log")))
}

/// Plain http:// to an address that is not loopback is refused before any socket opens;
/// with --insecure-http it is allowed, with a warning.
#[test]
fn plain_http_beyond_loopback_is_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mut agent) = agent_in_empty_netns(&dir.path().join("a"), "http://192.0.2.1:8080", &[]) else { return };
    let status = wait_for("the agent to exit", Duration::from_secs(10), || agent.child.try_wait().unwrap());
    assert!(!status.success());
    let out = agent.output();
    assert!(out.contains("refusing plain http:// to 192.0.2.1"), "{out}");
    assert!(!out.contains("enrollment failed"), "it tried to connect: {out}");
    assert!(!dir.path().join("a/state").exists(), "refused before touching the state dir");

    let Some(agent) = agent_in_empty_netns(&dir.path().join("b"), "http://192.0.2.1:8080", &["--insecure-http"]) else {
        return;
    };
    wait_for("the --insecure-http warning", Duration::from_secs(10), || {
        agent.output().contains("--insecure-http: talking plain HTTP to 192.0.2.1").then_some(())
    });
}

/// A host without a CA store: plain HTTP to loopback works; https without --ca-cert stops
/// with what to install.
#[tokio::test(flavor = "multi_thread")]
async fn a_missing_ca_store_matters_only_for_https() {
    let dir = tempfile::tempdir().unwrap();
    let empty = dir.path().join("no-certs");
    std::fs::create_dir_all(&empty).unwrap();
    let no_store = [
        ("SSL_CERT_FILE".to_owned(), empty.join("none.pem").display().to_string()),
        ("SSL_CERT_DIR".to_owned(), empty.display().to_string()),
    ];
    let server = Server::start(&dir.path().join("server"), None, &[]).await;
    let token = server.enrollment_token(1).await;
    let crl = fleetup_demo_service::crl_endpoint().unwrap();
    let mut host = Host::new(dir.path(), "plain", &crl);
    host.start_agent_with_env(&server, &token, &no_store);
    server.every_agent_online(1, LONG).await;
    host.stop_service();

    let https = format!("https://127.0.0.1:{}", free_port());
    let out = Command::new(binary("fleetup-agent"))
        .args(["run", "--server", &https, "--enroll-token", "t", "--root"])
        .arg(dir.path().join("root"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--trust")
        .arg(&server.key_pub)
        .envs(no_store)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no CA certificates were found") && err.contains("apt-get install ca-certificates"), "{err}");
}

//! The README's run command: `fleetup demo` serves a fleet, and Ctrl-C leaves nothing
//! running, whether it comes once the demo is ready or while it is still starting.

use fleetup_e2e::fleet::{Proc, free_port};
use fleetup_e2e::{binary, wait_for};
use fleetup_proto::api::RolloutState;
use serde_json::Value;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Every process whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if cmdline.contains(needle) && entry.file_name().to_string_lossy().parse::<u32>().is_ok() {
                out.push(format!("{}: {cmdline}", entry.file_name().to_string_lossy()));
            }
        }
    }
    out
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn demo_serves_a_fleet_and_ctrl_c_leaves_nothing_running() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let port = free_port();
    let mut demo = spawn_demo(dir.path(), &demo_dir, port, 4);
    let ready: Value = wait_for("demo.json", Duration::from_mins(2), || {
        assert!(demo.is_running(), "the demo exited:\n{}", demo.output());
        std::fs::read(demo_dir.join("demo.json")).ok().and_then(|b| serde_json::from_slice(&b).ok())
    });
    assert!(demo.output().contains("Log in as: admin / "), "{}", demo.output());
    let url = ready["url"].as_str().unwrap();
    let api = fleetup_client::Client::new(url, ready["api_token"].as_str().unwrap()).unwrap();
    let agents = api.agents().await.unwrap();
    assert_eq!(agents.len(), 4);
    assert!(agents.iter().all(|a| a.online), "{agents:?}");
    let rollout = api.rollout(&ready["rollout_id"].as_str().unwrap().parse().unwrap()).await.unwrap();
    assert_eq!(rollout.state, RolloutState::Draft, "staged, waiting for the user to start it: {rollout:?}");
    // The dashboard answers, and the printed credentials log in.
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build().unwrap();
    let login = http.get(format!("{url}/login")).send().await.unwrap();
    assert_eq!(login.status(), 200);
    let (username, password) = (ready["username"].as_str().unwrap(), ready["password"].as_str().unwrap());
    assert!(demo.output().contains(&format!("Log in as: {username} / {password}")));
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let cookies = |resp: &reqwest::Response| -> String {
        resp.headers()
            .get_all(reqwest::header::SET_COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok()?.split(';').next().map(str::to_owned))
            .collect::<Vec<_>>()
            .join("; ")
    };
    let resp = browser.get(format!("{url}/login")).send().await.unwrap();
    let login_cookie = cookies(&resp);
    let page = resp.text().await.unwrap();
    let csrf = page.split("name=\"csrf\" value=\"").nth(1).and_then(|r| r.split('"').next()).expect("a CSRF field");
    let resp = browser
        .post(format!("{url}/login"))
        .header(reqwest::header::COOKIE, &login_cookie)
        .header(reqwest::header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body(format!("username={}&password={}&csrf={}", encode(username), encode(password), encode(csrf)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 303, "login redirects");
    let session = cookies(&resp);
    let rollouts = browser
        .get(format!("{url}/rollouts"))
        .header(reqwest::header::COOKIE, &session)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(rollouts.contains("demo-service 1.1.0 to the demo fleet"), "{rollouts}");
    let needle = demo_dir.display().to_string();
    assert!(processes_mentioning(&needle).len() > 4, "agents and services run");

    ctrl_c_stops_everything(&mut demo, &needle);
}

/// `fleetup demo` with its files in `demo_dir`, output in `dir/demo.log`.
fn spawn_demo(dir: &Path, demo_dir: &Path, port: u16, hosts: u16) -> Proc {
    let mut cmd = Command::new(binary("fleetup"));
    cmd.arg("demo").arg("--dir").arg(demo_dir).args(["--listen", &format!("127.0.0.1:{port}")]);
    cmd.args(["--hosts", &hosts.to_string()]);
    Proc::spawn(cmd, dir.join("demo.log"))
}

/// Sends SIGINT and checks the demo stops cleanly (it exits by itself, with success, not
/// killed by the signal) and leaves no process whose command line names its directory.
fn ctrl_c_stops_everything(demo: &mut Proc, needle: &str) {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(demo.child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let status = wait_for("the demo to exit", Duration::from_secs(30), || demo.child.try_wait().ok().flatten());
    assert!(status.success(), "a clean stop, not death by signal: {status:?}\n{}", demo.output());
    wait_for("no process left behind", Duration::from_secs(10), || {
        processes_mentioning(needle).is_empty().then_some(())
    });
    assert!(demo.output().contains("stopping the demo fleet"), "{}", demo.output());
}

/// A Ctrl-C that comes while the demo is still starting (it answers `/healthz` before its
/// agents are up) stops it there: nothing it started so far is left running, and it does
/// not go on to start the rest.
#[tokio::test(flavor = "multi_thread")]
async fn ctrl_c_while_starting_stops_what_was_started() {
    let dir = tempfile::tempdir().unwrap();
    let demo_dir = dir.path().join("demo");
    let port = free_port();
    let mut demo = spawn_demo(dir.path(), &demo_dir, port, 6);
    // /healthz needs no token. Poll often: the point is to signal the moment it answers.
    let probe = fleetup_client::Client::new(&format!("http://127.0.0.1:{port}"), "none")
        .unwrap()
        .with_poll_interval(Duration::from_millis(2));
    if let Err(e) = probe.wait_healthy(Duration::from_mins(2)).await {
        panic!("{e}\n{}", demo.output());
    }
    assert!(!demo_dir.join("demo.json").exists(), "the signal comes before the demo is ready");
    ctrl_c_stops_everything(&mut demo, &demo_dir.display().to_string());
    assert!(!demo.output().contains("Press Ctrl-C"), "it did not go on starting: {}", demo.output());
    assert!(!demo_dir.join("demo.json").exists(), "it did not go on starting");
}

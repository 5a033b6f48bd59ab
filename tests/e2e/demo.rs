//! The README's run command: `fleetup demo` serves a fleet, and Ctrl-C leaves nothing
//! running.

use fleetup_e2e::fleet::{Proc, free_port};
use fleetup_e2e::{binary, wait_for};
use fleetup_proto::api::RolloutState;
use serde_json::Value;
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
    let mut cmd = Command::new(binary("fleetup"));
    cmd.arg("demo").arg("--dir").arg(&demo_dir).args(["--listen", &format!("127.0.0.1:{port}"), "--hosts", "4"]);
    let mut demo = Proc::spawn(cmd, dir.path().join("demo.log"));
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

    // Ctrl-C.
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(demo.child.id() as i32), nix::sys::signal::Signal::SIGINT)
        .unwrap();
    wait_for("the demo to exit", Duration::from_secs(30), || (!demo.is_running()).then_some(()));
    wait_for("no process left behind", Duration::from_secs(10), || {
        processes_mentioning(&needle).is_empty().then_some(())
    });
    assert!(demo.output().contains("stopping the demo fleet"), "{}", demo.output());
}

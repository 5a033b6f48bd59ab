//! The dashboard in a real headless Chromium, against a real coordinator and real agents:
//! log in, stage a rollout, start it, watch the grid change without a reload, answer a CRL
//! warning with Continue, read a failure's log lines, cancel a rollout; after logout, Back
//! shows the login form, not the cached page. Each test saves screenshots under
//! `target/screenshots/`.

use fantoccini::Locator;
use fleetup_client::AuditQuery;
use fleetup_e2e::browser::Browser;
use fleetup_e2e::fleet::{Host, Server, free_port};
use fleetup_proto::api::{JobState, JobSummary, RolloutSpec};
use fleetup_proto::id::PackageId;
use serde_json::json;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_mins(2);
const PASSWORD: &str = "correct horse battery";

/// A coordinator with a dashboard admin `ada`.
async fn server_with_admin(dir: &std::path::Path) -> Server {
    let server =
        Server::start(&dir.join("server"), None, &["--lease-secs", "20", "--scheduler-interval-ms", "200"]).await;
    let db = format!("sqlite:{}", server.dir.join("fleetup.db").display());
    let mut child = Command::new(fleetup_e2e::binary("fleetup-server"))
        .args(["user", "create", "--username", "ada", "--role", "admin", "--password-stdin", "--database-url", &db])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "user create: {}", String::from_utf8_lossy(&out.stderr));
    server
}

/// A coordinator with a dashboard admin `ada`, the sample package, and `n` hosts online.
async fn fleet(dir: &std::path::Path, n: usize, tweak: impl Fn(usize, &mut Host)) -> (Server, Vec<Host>, PackageId) {
    let server = server_with_admin(dir).await;
    let package = server.upload(None).await;
    let token = server.enrollment_token(u32::try_from(n).unwrap()).await;
    let crl = fleetup_demo_service::crl_endpoint().unwrap();
    let mut hosts = Vec::new();
    for i in 0..n {
        let mut host = Host::new(dir, &format!("web-{}", i + 1), &crl);
        tweak(i, &mut host);
        host.start_agent(&server, &token);
        hosts.push(host);
    }
    server.every_agent_online(n, LONG).await;
    (server, hosts, package)
}

/// A host pre-install hook that holds the install in `pre-hooks` for a while.
fn slow_hook(h: &Host) {
    use std::os::unix::fs::PermissionsExt as _;
    let hooks = h.state.join("hooks/pre-install.d");
    std::fs::create_dir_all(&hooks).unwrap();
    std::fs::write(hooks.join("10-slow.sh"), "#!/bin/sh\nsleep 30\n").unwrap();
    std::fs::set_permissions(hooks.join("10-slow.sh"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The text of the grid cell of `host` in phase column `phase` (1-based).
async fn cell(b: &Browser, host: &str, phase: usize) -> Option<String> {
    let xpath = format!("//table[@class='grid']//tr[td/a[text()='{host}']]/td[{}]", phase + 3);
    b.client.find(Locator::XPath(&xpath)).await.ok()?.text().await.ok()
}

#[tokio::test(flavor = "multi_thread")]
async fn stage_start_watch_live_and_cancel() {
    let Some(b) = Browser::start("stage_start_watch_live_and_cancel").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (server, _hosts, _package) = fleet(dir.path(), 2, |_, h| slow_hook(h)).await;
    b.login(&server.url, "ada", PASSWORD).await;
    b.screenshot("01-rollouts-empty").await;

    // Stage: name, targets by label, one wave of both servers; the preview shows the plan.
    b.client.goto(&format!("{}/rollouts/new", server.url)).await.unwrap();
    b.client.find(Locator::Id("name")).await.unwrap().send_keys("demo 1.1 to web").await.unwrap();
    b.client.find(Locator::Id("labels")).await.unwrap().send_keys("env=test").await.unwrap();
    let waves = b.client.find(Locator::Id("waves")).await.unwrap();
    waves.clear().await.unwrap();
    waves.send_keys("1, 100%").await.unwrap();
    b.wait_text("the wave preview", "#preview", "2 server(s) in 2 wave(s)", LONG).await;
    b.screenshot("02-stage-preview").await;
    b.client.find(Locator::Id("stage-submit")).await.unwrap().click().await.unwrap();
    b.wait_text("the draft rollout", "#rollout-state", "draft", LONG).await;

    // Start, then watch a cell change without reloading the page.
    b.client.find(Locator::Id("action-start")).await.unwrap().click().await.unwrap();
    b.wait_text("the running rollout", "#rollout-state", "running", LONG).await;
    b.client.execute("window.__notReloaded = 'yes'; return null;", vec![]).await.unwrap();
    let host = b
        .wait_for("check-system to finish on a server, shown live", LONG, async || {
            for h in ["web-1", "web-2"] {
                if cell(&b, h, 1).await.as_deref() == Some("ok") {
                    return Some(h);
                }
            }
            None
        })
        .await;
    let marker = b.client.execute("return window.__notReloaded || null;", vec![]).await.unwrap();
    assert_eq!(marker, json!("yes"), "the cell changed through htmx + SSE, not a reload");
    b.wait_for("pre-hooks running on the first server", LONG, async || {
        (cell(&b, host, 3).await.as_deref() == Some("run")).then_some(())
    })
    .await;
    b.screenshot("03-rollout-live-grid").await;

    // Cancel the rollout: the server in pre-hooks is interrupted, the other never starts.
    b.client.find(Locator::Id("action-cancel")).await.unwrap().click().await.unwrap();
    b.wait_text("the cancelled rollout", "#rollout-state", "cancelled", LONG).await;
    let rollouts = server.client.rollouts().await.unwrap();
    let id = &rollouts[0].id;
    server.client.wait_rollout(id, LONG, |r| r.counts.get(&JobState::Cancelled) == Some(&2)).await.unwrap();
    b.client.refresh().await.unwrap();
    b.wait_text("cancelled jobs in the grid", "table.grid", "cancelled", LONG).await;
    b.screenshot("04-rollout-cancelled").await;
    let audit = server.client.audit(&AuditQuery { object_id: Some(id.to_string()), limit: None }).await.unwrap();
    let audit = serde_json::to_string(&audit).unwrap();
    assert!(audit.contains("user:ada") && audit.contains("rollout.cancel"), "{audit}");
    b.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn crl_warning_continue_and_failure_with_logs() {
    let Some(b) = Browser::start("crl_warning_continue_and_failure_with_logs").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let dead = free_port();
    let (server, hosts, package) = fleet(dir.path(), 2, |i, h| {
        if i == 0 {
            // web-1: its CRL endpoint's host resolves to a loopback port nobody listens on.
            h.vars.insert("crl_base".into(), format!("http://crl.fleetup.test:{dead}"));
            std::fs::write(h.dir.join("hosts"), "127.0.0.1 localhost\n127.0.0.1 crl.fleetup.test\n").unwrap();
        } else {
            // web-2: the new version fails its health check, so the install rolls back.
            let conf = h.root.join("etc/demo.conf");
            let mut text = std::fs::read_to_string(&conf).unwrap();
            text.push_str("unhealthy_versions = 1.1.0\n");
            std::fs::write(conf, text).unwrap();
        }
    })
    .await;
    let spec: RolloutSpec = serde_json::from_value(
        json!({ "name": "demo 1.1, CRL and health", "package_id": package, "targets": { "labels": { "env": "test" } },
                "waves": ["100%"], "concurrency": 2, "policies": { "warning": "ask" } }),
    )
    .unwrap();
    let id = server.client.create_rollout(&spec).await.unwrap().id;
    b.login(&server.url, "ada", PASSWORD).await;
    b.client.goto(&format!("{}/rollouts/{id}", server.url)).await.unwrap();
    b.client.find(Locator::Id("action-start")).await.unwrap().click().await.unwrap();

    // The CRL warning waits for a decision: endpoint, probe result, copyable remediation.
    let panel = b.wait_text("the CRL decision", "#decisions", "crl.fleetup.test", LONG).await;
    assert!(panel.contains("unreachable"), "{panel}");
    let textarea = b.client.find(Locator::Css("#decisions textarea.copy")).await.unwrap();
    assert!(textarea.attr("readonly").await.unwrap().is_some(), "the remediation box is read-only");
    let remediation = textarea.prop("value").await.unwrap().unwrap_or_default();
    assert!(remediation.contains("crl.fleetup.test"), "{remediation}");
    assert!(!remediation.contains("<a "), "text, not a link");
    b.screenshot("05-crl-warning-decision").await;
    b.client.find(Locator::Css("#decisions button[data-answer='continue']")).await.unwrap().click().await.unwrap();

    // web-1 goes on and succeeds; web-2's failure shows with its failing phase and log lines.
    b.wait_for("web-1 installed, shown live", LONG, async || {
        (cell(&b, "web-1", 12).await.as_deref() == Some("ok")).then_some(())
    })
    .await;
    let failures = b.wait_text("the failure panel", "#failures", "web-2", LONG).await;
    assert!(failures.contains("rolled-back"), "{failures}");
    assert!(failures.contains("start-services"), "the failing phase is named: {failures}");
    let log = b.client.find(Locator::Css("#failures pre.log")).await.unwrap().text().await.unwrap();
    assert!(!log.trim().is_empty(), "the last log lines are shown");
    b.screenshot("06-failure-with-logs").await;
    assert_eq!(hosts[0].version().as_deref(), Some("1.1.0"));
    assert_eq!(hosts[1].version().as_deref(), Some("1.0.0"));

    // The server page: timeline with the outage highlighted, the phase logs.
    let jobs = server.jobs::<JobSummary>(&id).await;
    let web1 = &jobs.iter().find(|j| j.hostname == "web-1").unwrap().id;
    b.client.goto(&format!("{}/jobs/{web1}", server.url)).await.unwrap();
    b.wait_text("the timeline", "table.timeline", "Stopping services", LONG).await;
    let outage = b.client.find_all(Locator::Css("table.timeline tr.outage")).await.unwrap();
    assert_eq!(outage.len(), 5, "stop-services … start-services are highlighted");
    b.wait_text("the phase logs", "#logs", "check-system", LONG).await;
    b.screenshot("07-server-page").await;
    b.close().await;
}

/// After logout, the browser's Back button must not show the page of the ended session
/// from its cache (`Cache-Control: no-store` on HTML): it asks the server, which sends the
/// login form.
#[tokio::test(flavor = "multi_thread")]
async fn back_after_logout_shows_the_login_form() {
    let Some(b) = Browser::start("back_after_logout_shows_the_login_form").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let server = server_with_admin(dir.path()).await;
    b.login(&server.url, "ada", PASSWORD).await;
    b.client.goto(&format!("{}/audit", server.url)).await.unwrap();
    let audit = b.wait_text("the audit log", "table.audit", "session.login", LONG).await;
    assert!(audit.contains("user:ada"), "{audit}");
    b.client.find(Locator::Css("form[action='/logout'] button")).await.unwrap().click().await.unwrap();
    b.wait_for("the login form after logout", LONG, async || b.client.find(Locator::Id("login")).await.ok()).await;
    b.client.back().await.unwrap();
    b.wait_for("the login form again after Back, not the cached audit log", LONG, async || {
        let url = b.client.current_url().await.ok()?;
        let form = b.client.find(Locator::Id("login")).await.ok();
        (url.path() == "/login" && form.is_some()).then_some(())
    })
    .await;
    let source = b.client.source().await.unwrap();
    assert!(!source.contains("session.login"), "no page of the ended session is shown");
    b.screenshot("08-back-after-logout").await;
    b.close().await;
}

//! The dashboard in a real headless Chromium, against a real coordinator and real agents:
//! log in, stage a rollout, start it, watch the grid change without a reload, answer a CRL
//! warning with Continue, read a failure's log lines, cancel a rollout; after logout, Back
//! shows the login form, not the cached page. Each test saves screenshots under
//! `target/screenshots/`.

use fantoccini::Locator;
use fleetup_client::AuditQuery;
use fleetup_e2e::browser::Browser;
use fleetup_e2e::fleet::{Host, Server, free_port};
use fleetup_e2e::sim::{self, SimFleet};
use fleetup_proto::api::{JobState, JobSummary, RolloutSpec};
use fleetup_proto::id::PackageId;
use serde_json::json;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::Duration;

const LONG: Duration = Duration::from_mins(2);
const PASSWORD: &str = "correct horse battery";

/// A dashboard login `name` with `role`, made with the CLI as an administrator would.
fn add_user(server: &Server, name: &str, role: &str) {
    let db = format!("sqlite:{}", server.dir.join("fleetup.db").display());
    let mut child = Command::new(fleetup_e2e::binary("fleetup-server"))
        .args(["user", "create", "--username", name, "--role", role, "--password-stdin", "--database-url", &db])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{PASSWORD}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "user create: {}", String::from_utf8_lossy(&out.stderr));
}

/// A coordinator with a dashboard admin `ada`.
async fn server_with_admin(dir: &std::path::Path) -> Server {
    let server =
        Server::start(&dir.join("server"), None, &["--lease-secs", "20", "--scheduler-interval-ms", "200"]).await;
    add_user(&server, "ada", "admin");
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
    let question = b.wait_for("the cancel confirmation", LONG, async || b.client.get_alert_text().await.ok()).await;
    assert!(question.contains("installing now are asked to stop"), "{question}");
    b.client.accept_alert().await.unwrap();
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
    let (readonly, remediation) = b
        .with_element("the remediation box", "#decisions textarea.copy", async |t| {
            Ok((t.attr("readonly").await?, t.prop("value").await?.unwrap_or_default()))
        })
        .await;
    assert!(readonly.is_some(), "the remediation box is read-only");
    assert!(remediation.contains("crl.fleetup.test"), "{remediation}");
    assert!(!remediation.contains("<a "), "text, not a link");
    b.screenshot("05-crl-warning-decision").await;
    b.with_element("the continue button", "#decisions button[data-answer='continue']", async |e| e.click().await).await;

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

/// The page's HTML as the browser holds it now, to bound its size.
async fn page_bytes(b: &Browser) -> usize {
    b.client.source().await.unwrap().len()
}

/// A coordinator with `ada` (admin) and `vic` (viewer), the sample package, and `n`
/// simulated agents labelled `fleet=sim` (no engine behind them: the test reports for them).
async fn sim_fleet(dir: &std::path::Path, n: usize) -> (Server, SimFleet, PackageId) {
    let server = server_with_admin(dir).await;
    add_user(&server, "vic", "viewer");
    let package = server.upload(None).await;
    let fleet = SimFleet::enroll(&server, "srv", n, &[("fleet", "sim")]).await;
    (server, fleet, package)
}

async fn logout(b: &Browser) {
    b.client.find(Locator::Css("form[action='/logout'] button")).await.unwrap().click().await.unwrap();
    b.wait_for("the login form after logout", LONG, async || b.client.find(Locator::Id("login")).await.ok()).await;
}

/// 1,000 servers ask the same CRL question: the panel shows one group with its count, one
/// remediation (the hosts line visible, in its own box), a paged list of the servers; a
/// viewer is told an operator must answer; one click of an operator answers all of them.
/// Then the agents page of the 1,000: paged on the server, searchable, bounded; and the
/// stage form: no checkbox per server (targets by labels or host names), bounded.
#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_crl_decisions_are_one_group_answered_in_one_click() {
    let Some(b) = Browser::start("a_thousand_crl_decisions_are_one_group_answered_in_one_click").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let n = 1000;
    let (server, fleet, package) = sim_fleet(dir.path(), n).await;
    let spec: RolloutSpec = serde_json::from_value(json!({ "name": "1.1 to a thousand", "package_id": package,
        "targets": { "labels": { "fleet": "sim" } }, "waves": ["100%"], "concurrency": n, "policies": { "warning": "ask" } }))
    .unwrap();
    let id = server.client.create_rollout(&spec).await.unwrap().id;
    server.client.start(&id).await.unwrap();
    let jobs = fleet.take_jobs(LONG).await;
    fleet.report_all(&jobs, |_| sim::crl_question("http://crl.big.test/root.crl", "crl.big.test")).await;
    server.client.wait_rollout(&id, LONG, |r| r.counts.get(&JobState::Waiting) == Some(&(n as u64))).await.unwrap();
    let url = format!("{}/rollouts/{id}", server.url);

    // A viewer sees the group and is told who can answer it.
    b.login(&server.url, "vic", PASSWORD).await;
    b.client.goto(&url).await.unwrap();
    let panel = b.wait_text("the grouped decision", "#decisions", "1000 server(s)", LONG).await;
    assert!(panel.contains("An operator must answer this decision"), "{panel}");
    assert!(
        b.client.find(Locator::Css("#decisions button[data-answer]")).await.is_err(),
        "no answer button for a viewer"
    );
    logout(&b).await;

    b.login(&server.url, "ada", PASSWORD).await;
    b.client.goto(&url).await.unwrap();
    b.wait_text("the grouped decision", "#decisions", "1000 server(s)", LONG).await;
    let groups = b.client.find_all(Locator::Css("#decisions article.group")).await.unwrap();
    assert_eq!(groups.len(), 1, "one cause, one group");
    let count = b.client.find(Locator::Css("#decisions .group-count")).await.unwrap().text().await.unwrap();
    assert_eq!(count, "1000");
    let title = b.client.find(Locator::Css("#decisions .group-title")).await.unwrap().text().await.unwrap();
    assert!(title.contains("http://crl.big.test/root.crl"), "{title}");
    // One remediation: prose to read, the hosts line in its own box, all of it visible.
    let boxes = b.client.find_all(Locator::Css("textarea.hosts-lines")).await.unwrap();
    assert_eq!(boxes.len(), 1, "the remediation appears once");
    let lines = boxes[0].prop("value").await.unwrap().unwrap_or_default();
    assert_eq!(lines.trim(), "127.0.0.1 crl.big.test");
    let fits: serde_json::Value = b
        .client
        .execute(
            "const t = document.querySelector('textarea.hosts-lines'); return t.scrollHeight <= t.clientHeight + 1;",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(fits, json!(true), "the box shows every line it holds");
    let prose = b.client.find(Locator::Css("#decisions .remediation .prose")).await.unwrap().text().await.unwrap();
    assert!(prose.contains("through the firewall") && !prose.contains("127.0.0.1"), "{prose}");
    assert!(!b.client.source().await.unwrap().contains("copy and run"));
    let bytes = page_bytes(&b).await;
    assert!(bytes < 150_000, "the rollout page of 1,000 waiting servers is bounded: {bytes} bytes");
    // The servers of the group, 20 a page.
    b.client.find(Locator::Css("#decisions details summary")).await.unwrap().click().await.unwrap();
    b.wait_text("the first page of servers", "#decisions .members", "servers 1–20 of 1000", LONG).await;
    b.client.find(Locator::Css("#decisions .members a.next")).await.unwrap().click().await.unwrap();
    let second = b.wait_text("the second page of servers", "#decisions .members", "servers 21–40 of 1000", LONG).await;
    assert!(second.contains("srv-00021") && !second.contains("srv-00001"), "{second}");
    b.screenshot("09-grouped-crl-decision").await;

    // One click answers the group.
    b.with_element("the continue button", "#decisions button[data-answer='continue']", async |e| e.click().await).await;
    b.wait_for("no server waiting any more", LONG, async || {
        let t = b.client.find(Locator::Id("count-waiting")).await.ok()?.text().await.ok()?;
        (t == "0").then_some(())
    })
    .await;
    assert!(b.client.find(Locator::Id("decisions")).await.is_err(), "the decision panel is gone");
    let r = server.client.rollout(&id).await.unwrap();
    assert_eq!(r.counts.get(&JobState::Waiting).copied().unwrap_or(0), 0, "{:?}", r.counts);
    // (The answered jobs run on; the simulated agents do not, so their leases may lapse.)
    let audit = server.client.audit(&AuditQuery { object_id: Some(id.to_string()), limit: None }).await.unwrap();
    let audit = serde_json::to_string(&audit).unwrap();
    assert!(audit.contains("rollout.decisions") && audit.contains("user:ada"), "{audit}");
    assert!(audit.contains("\"count\":1000"), "one answer for all 1000 decisions: {audit}");
    b.screenshot("10-group-answered").await;

    // The agents page of the same 1,000 servers: one page of 100 rows, a pager, a search.
    b.client.goto(&format!("{}/agents", server.url)).await.unwrap();
    b.wait_text("the agents pager", ".pager", "page 1 of 10 · 1000 agent(s)", LONG).await;
    assert_eq!(b.client.find_all(Locator::Css("table.list tbody tr")).await.unwrap().len(), 100);
    let bytes = page_bytes(&b).await;
    assert!(bytes < 150_000, "the agents page is bounded: {bytes} bytes");
    b.client.find(Locator::Id("agents-next")).await.unwrap().click().await.unwrap();
    b.wait_text("the second page of agents", ".pager", "page 2 of 10", LONG).await;
    let first = b.client.find(Locator::Css("table.list tbody tr td")).await.unwrap().text().await.unwrap();
    assert_eq!(first, "srv-00101", "page 2 starts after the first 100 host names");
    b.client.find(Locator::Id("agent-q")).await.unwrap().send_keys("srv-00777").await.unwrap();
    b.client.find(Locator::Id("agent-search")).await.unwrap().click().await.unwrap();
    let summary = b.wait_text("the search result", "#agents-summary", "1 of 1000 match", LONG).await;
    assert!(summary.contains("1 of 1000 match"), "{summary}");
    let rows = b.client.find_all(Locator::Css("table.list tbody tr")).await.unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].text().await.unwrap().contains("srv-00777"));
    b.client.goto(&format!("{}/agents?label=fleet%3Dother", server.url)).await.unwrap();
    b.wait_text("no match for another label", "table.list", "No agent matches.", LONG).await;

    // Staging for the 1,000: no checkbox per server; labels or host names, with a preview.
    b.client.goto(&format!("{}/rollouts/new", server.url)).await.unwrap();
    b.wait_text("the stage form", "#stage", "1000 server(s) enrolled", LONG).await;
    let bytes = page_bytes(&b).await;
    assert!(bytes < 150_000, "the stage page is bounded: {bytes} bytes");
    assert!(b.client.find_all(Locator::Css("input[type=checkbox][name=agent]")).await.unwrap().is_empty());
    b.close().await;
}

/// `fleetup-server serve` again on `port`, on the test server's database and key.
fn serve_again(server: &Server, port: u16, log: &str) -> fleetup_e2e::fleet::Proc {
    let db = format!("sqlite:{}", server.dir.join("fleetup.db").display());
    let mut cmd = Command::new(fleetup_e2e::binary("fleetup-server"));
    cmd.current_dir(&server.dir)
        .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--database-url", &db, "--trust"])
        .arg(&server.key_pub)
        .arg("--data-dir")
        .arg(server.dir.join("data"))
        .args(["--lease-secs", "20", "--scheduler-interval-ms", "200"]);
    fleetup_e2e::fleet::Proc::spawn(cmd, server.dir.join(log))
}

/// The live page is honest: when the coordinator goes away, a banner says so; a change
/// made after the page was rendered and before its stream (re)opens still shows (the
/// stream starts from the page's stamp, not from the moment it opens); the page says how
/// fresh it is.
#[tokio::test(flavor = "multi_thread")]
async fn live_page_shows_a_lost_connection_and_a_change_made_before_the_stream_opened() {
    let Some(b) = Browser::start("live_page_shows_a_lost_connection_and_a_change_made_before_the_stream_opened").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (mut server, _fleet, package) = sim_fleet(dir.path(), 1).await;
    let spec: RolloutSpec = serde_json::from_value(
        json!({ "name": "live", "package_id": package, "targets": { "labels": { "fleet": "sim" } } }),
    )
    .unwrap();
    let id = server.client.create_rollout(&spec).await.unwrap().id;
    b.login(&server.url, "ada", PASSWORD).await;
    b.client.goto(&format!("{}/rollouts/{id}", server.url)).await.unwrap();
    b.wait_text("the draft", "#rollout-state", "draft", LONG).await;
    let banner_shown = async || b.client.find(Locator::Id("conn-lost")).await.ok()?.is_displayed().await.ok();
    assert_eq!(banner_shown().await, Some(false), "no banner while connected");
    b.wait_text("the page's freshness", "#updated", "updated", LONG).await;

    // The coordinator goes away: the page says so.
    server.proc.kill();
    b.wait_for("the connection-lost banner", LONG, async || (banner_shown().await == Some(true)).then_some(())).await;
    let banner = b.client.find(Locator::Id("conn-lost")).await.unwrap().text().await.unwrap();
    assert!(banner.contains("Connection to the coordinator lost"), "{banner}");
    b.screenshot("11-connection-lost").await;

    // While the page has no stream, another coordinator on the same database cancels the
    // rollout; then the page's coordinator comes back. The page was rendered before the
    // change and its stream opens after it: the change must still show.
    let port = free_port();
    let mut other = serve_again(&server, port, "server-other.log");
    let other_client = fleetup_client::Client::new(&format!("http://127.0.0.1:{port}"), &server.token).unwrap();
    other_client.wait_healthy(LONG).await.unwrap();
    // Cancelling a draft is a last change: nothing moves after it (a started rollout's
    // scheduler would move the stamp again and hide a missed change).
    other_client.cancel(&id).await.unwrap();
    other_client.wait_rollout(&id, LONG, |r| r.state.as_str() == "cancelled").await.unwrap();
    other.kill();
    let own_port = server.url.rsplit(':').next().unwrap().parse().unwrap();
    server.proc = serve_again(&server, own_port, "server-again.log");
    server.client.wait_healthy(LONG).await.unwrap();
    b.wait_text("the change made while the stream was closed", "#rollout-state", "cancelled", LONG).await;
    b.wait_for("the banner gone after reconnecting", LONG, async || {
        (banner_shown().await == Some(false)).then_some(())
    })
    .await;
    b.close().await;
}

/// `document.documentElement.scrollWidth <= innerWidth` and the same for the header: nothing
/// sticks out sideways. Returns (page width, viewport width).
async fn overflow(b: &Browser) -> (i64, i64, i64, i64) {
    let v = b
        .client
        .execute(
            "const h = document.querySelector('header.top'); return [document.documentElement.scrollWidth, window.innerWidth, h.scrollWidth, h.clientWidth];",
            vec![],
        )
        .await
        .unwrap();
    let n = |i: usize| v[i].as_i64().unwrap();
    (n(0), n(1), n(2), n(3))
}

/// Badges say what happened: a rollout that finished with a rolled-back server is not
/// green, a server already on the version is `skipped` in grey, not a red failure.
/// Cancelling a rollout asks first and says what it will do. At phone width (390 px) the
/// header fits and the grid scrolls inside its box, not the page.
#[tokio::test(flavor = "multi_thread")]
async fn honest_badges_a_confirmed_cancel_and_a_phone_width_page() {
    let Some(b) = Browser::start("honest_badges_a_confirmed_cancel_and_a_phone_width_page").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (server, fleet, package) = sim_fleet(dir.path(), 3).await;
    let spec = |name: &str, targets: serde_json::Value| -> RolloutSpec {
        serde_json::from_value(
            json!({ "name": name, "package_id": package, "targets": targets, "waves": ["100%"], "concurrency": 3,
                "success_threshold": "0%" }),
        )
        .unwrap()
    };
    // srv-00001 gets the version first.
    let first = server
        .client
        .create_rollout(&spec("first server", json!({ "agents": [fleet.agents[0].id] })))
        .await
        .unwrap()
        .id;
    server.client.start(&first).await.unwrap();
    let job = fleet.take_jobs_of(&[0], LONG).await.remove(0);
    fleet.report(0, &job, sim::finished(fleetup_proto::InstallOutcome::Succeeded)).await;
    server.client.wait_rollout(&first, LONG, |r| r.state.as_str() == "finished").await.unwrap();
    // Then the rest: srv-00001 is skipped, srv-00002 installs, srv-00003 rolls back.
    let all =
        server.client.create_rollout(&spec("all servers", json!({ "labels": { "fleet": "sim" } }))).await.unwrap().id;
    server.client.start(&all).await.unwrap();
    let jobs = fleet.take_jobs_of(&[1, 2], LONG).await;
    fleet.report(1, &jobs[0], sim::finished(fleetup_proto::InstallOutcome::Succeeded)).await;
    fleet.report(2, &jobs[1], sim::finished(fleetup_proto::InstallOutcome::RolledBack)).await;
    server.client.wait_rollout(&all, LONG, |r| r.state.as_str() == "finished").await.unwrap();

    b.login(&server.url, "ada", PASSWORD).await;
    let badge = |name: &str| format!("//table//tr[td/a[text()='{name}']]//span[contains(@class,'badge')]");
    let clean = b.client.find(Locator::XPath(&badge("first server"))).await.unwrap();
    assert_eq!(clean.text().await.unwrap(), "finished");
    assert!(clean.attr("class").await.unwrap().unwrap().contains("st-ok"));
    let partial = b.client.find(Locator::XPath(&badge("all servers"))).await.unwrap();
    assert_eq!(partial.text().await.unwrap(), "finished · 1 failed");
    let class = partial.attr("class").await.unwrap().unwrap();
    assert!(class.contains("st-fail") && !class.contains("st-ok"), "{class}");
    b.client.goto(&format!("{}/rollouts/{all}", server.url)).await.unwrap();
    b.wait_text("the finished rollout", "#rollout-state", "1 failed", LONG).await;
    let skipped =
        b.client.find(Locator::XPath("//table[@class='grid']//tr[td/a[text()='srv-00001']]/td[3]")).await.unwrap();
    assert_eq!(skipped.text().await.unwrap(), "skipped");
    assert!(skipped.attr("class").await.unwrap().unwrap().contains("st-skip"), "skipped is grey, not red");
    b.screenshot("12-finished-with-a-failure").await;

    // At phone width.
    b.client.set_window_size(390, 844).await.unwrap();
    for path in [format!("/rollouts/{all}"), "/rollouts".to_owned(), "/agents".to_owned(), "/audit".to_owned()] {
        b.client.goto(&format!("{}{path}", server.url)).await.unwrap();
        b.wait_for("the page", LONG, async || b.client.find(Locator::Css("header.top")).await.ok()).await;
        let (page, viewport, header, header_box) = overflow(&b).await;
        assert!(viewport <= 400, "the window is phone-wide: {viewport}");
        assert!(page <= viewport, "{path}: the page is {page} px wide in a {viewport} px window");
        assert!(header <= header_box, "{path}: the header's content ({header} px) fits its box ({header_box} px)");
    }
    b.client.goto(&format!("{}/rollouts/{all}", server.url)).await.unwrap();
    let scrolls = b.client.execute("const g = document.querySelector('.grid-scroll'); return g.scrollWidth > g.clientWidth && getComputedStyle(g).overflowX === 'auto';", vec![]).await.unwrap();
    assert_eq!(scrolls, json!(true), "the grid scrolls sideways inside its box");
    let phases = b.client.find_all(Locator::Css("table.grid th.ph")).await.unwrap();
    assert_eq!(phases.len(), 12, "every phase column is there");
    b.screenshot("13-phone-width").await;
    b.client.set_window_size(1400, 1000).await.unwrap();

    // Cancel asks first, says what it does, and does nothing when dismissed.
    let draft =
        server.client.create_rollout(&spec("to cancel", json!({ "labels": { "fleet": "sim" } }))).await.unwrap().id;
    b.client.goto(&format!("{}/rollouts/{draft}", server.url)).await.unwrap();
    b.client.find(Locator::Id("action-cancel")).await.unwrap().click().await.unwrap();
    let question = b.wait_for("the confirmation", LONG, async || b.client.get_alert_text().await.ok()).await;
    assert!(
        question.contains("Cancel the rollout \u{201c}to cancel\u{201d}")
            && question.contains("1 server(s) not started"),
        "{question}"
    );
    b.client.dismiss_alert().await.unwrap();
    assert_eq!(server.client.rollout(&draft).await.unwrap().state.as_str(), "draft", "dismissed: nothing happens");
    b.client.find(Locator::Id("action-cancel")).await.unwrap().click().await.unwrap();
    b.wait_for("the confirmation again", LONG, async || b.client.get_alert_text().await.ok()).await;
    b.client.accept_alert().await.unwrap();
    b.wait_text("the cancelled rollout", "#rollout-state", "cancelled", LONG).await;
    b.close().await;
}

/// A process (not one of the package's services) holding a file of the install open, as an
/// operator's `tail -f` or a backup job would; killed on drop.
struct Holder(std::process::Child);

impl Holder {
    /// `tail -f FILE`, returned once its descriptor on `file` is open (a deadline, not a sleep).
    fn tail(file: &std::path::Path) -> Self {
        let child =
            Command::new("tail").arg("-f").arg(file).stdout(Stdio::null()).stderr(Stdio::null()).spawn().expect("tail");
        let fds = format!("/proc/{}/fd", child.id());
        fleetup_e2e::wait_for("tail to open the file", Duration::from_secs(10), || {
            std::fs::read_dir(&fds)
                .ok()?
                .flatten()
                .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == file))
                .then_some(())
        });
        Self(child)
    }

    fn pid(&self) -> u32 {
        self.0.id()
    }

    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Files in use, decided from the page: on two real servers a `tail -f` holds the config
/// file the install patches. The rollout page shows one group ("tail holds etc/demo.conf")
/// listing each server with its holder's pid and name; the server page shows its own. The
/// operator stops web-1's holder and answers "check again" there: web-1 installs. For web-2
/// the group's "replace anyway" answer: web-2 installs too, flagged restart-required.
#[tokio::test(flavor = "multi_thread")]
async fn files_in_use_show_their_holders_and_are_decided_from_the_page() {
    let Some(b) = Browser::start("files_in_use_show_their_holders_and_are_decided_from_the_page").await else { return };
    let dir = tempfile::tempdir().unwrap();
    let (server, hosts, package) = fleet(dir.path(), 2, |_, _| {}).await;
    let conf = |h: &Host| h.root.join("etc/demo.conf");
    let mut holders: Vec<Holder> = hosts.iter().map(|h| Holder::tail(&conf(h))).collect();
    let spec: RolloutSpec = serde_json::from_value(json!({ "name": "demo 1.1, files in use", "package_id": package,
        "targets": { "labels": { "env": "test" } }, "waves": ["100%"], "concurrency": 2,
        "policies": { "files_in_use": { "mode": "ask" } } }))
    .unwrap();
    let id = server.client.create_rollout(&spec).await.unwrap().id;
    server.client.start(&id).await.unwrap();
    server.client.wait_rollout(&id, LONG, |r| r.counts.get(&JobState::Waiting) == Some(&2)).await.unwrap();

    // The rollout page: one group, each server with its holder's pid and process name.
    b.login(&server.url, "ada", PASSWORD).await;
    b.client.goto(&format!("{}/rollouts/{id}", server.url)).await.unwrap();
    let panel = b.wait_text("the files-in-use group", "#decisions", "tail holds etc/demo.conf", LONG).await;
    assert_eq!(b.client.find_all(Locator::Css("#decisions article.group")).await.unwrap().len(), 1, "{panel}");
    assert_eq!(b.client.find(Locator::Css("#decisions .group-count")).await.unwrap().text().await.unwrap(), "2");
    let table = b.client.find(Locator::Css("#decisions table.holders")).await.unwrap().text().await.unwrap();
    for (h, holder) in hosts.iter().zip(&holders) {
        let row = table.lines().find(|l| l.contains(&h.name)).unwrap_or_else(|| panic!("{} listed: {table}", h.name));
        assert!(row.contains(&holder.pid().to_string()) && row.contains("tail"), "{row}");
        assert!(row.contains("etc/demo.conf"), "{row}");
    }
    for answer in ["retry", "ignore", "exit"] {
        assert!(b.client.find(Locator::Css(&format!("#decisions button[data-answer='{answer}']"))).await.is_ok());
    }
    b.screenshot("14-files-in-use-group").await;

    // web-1's page: its holder, its buttons. The operator stops the holder, then checks again.
    let jobs = server.jobs::<JobSummary>(&id).await;
    let job_of = |name: &str| jobs.iter().find(|j| j.hostname == name).unwrap().id.clone();
    b.client.goto(&format!("{}/jobs/{}", server.url, job_of("web-1"))).await.unwrap();
    let mine = b.wait_text("web-1's holder", "#decisions table.holders", "tail", LONG).await;
    assert!(mine.contains(&holders[0].pid().to_string()) && !mine.contains(&holders[1].pid().to_string()), "{mine}");
    holders[0].kill();
    b.with_element("web-1's check-again button", "#decisions button[data-answer='retry']", async |e| e.click().await)
        .await;
    let web1 = job_of("web-1");
    server
        .eventually("web-1 to install once its holder is gone", LONG, async || {
            Ok(Some(server.client.job(&web1).await?).filter(|j| j.state == JobState::Succeeded))
        })
        .await;
    assert_eq!(hosts[0].version().as_deref(), Some("1.1.0"));

    // web-2 from the rollout page: the group is web-2 alone now; replace anyway.
    b.client.goto(&format!("{}/rollouts/{id}", server.url)).await.unwrap();
    b.wait_text("the group of one", "#decisions .group-count", "1", LONG).await;
    let button = b.client.find(Locator::Css("#decisions button[data-answer='ignore']")).await.unwrap();
    assert!(button.text().await.unwrap().contains("web-2"), "a group of one names its server");
    button.click().await.unwrap();
    b.wait_text("the finished rollout", "#rollout-state", "finished", LONG).await;
    let web2 = server.client.job(&job_of("web-2")).await.unwrap();
    assert_eq!(web2.state, JobState::Succeeded);
    assert!(web2.restart_required, "replaced under a running process: restart required");
    assert_eq!(hosts[1].version().as_deref(), Some("1.1.0"));
    let warnings = b.wait_text("the ignored holder as a warning", "#warnings", "restart required", LONG).await;
    assert!(!warnings.contains("(pid "), "the warning's group leaves the per-server pid out: {warnings}");
    b.screenshot("15-files-in-use-decided").await;
    b.close().await;
}

/// The text of the element matching `css`, which must be there.
async fn element_text(b: &Browser, css: &str) -> String {
    b.client.find(Locator::Css(css)).await.unwrap_or_else(|_| panic!("{css} on the page")).text().await.unwrap()
}

/// Staging at scale: 1,015 servers match the label selector. The preview appears, counts
/// them live as the waves change, shows a sample of host names per wave (not a checkbox
/// per server) and warns about the servers already on the version (skipped), those the
/// package's `[target]` is not for (another os) and those offline now; it stays bounded.
#[tokio::test(flavor = "multi_thread")]
async fn staging_a_thousand_servers_by_label_previews_counts_and_warnings() {
    let Some(b) = Browser::start("staging_a_thousand_servers_by_label_previews_counts_and_warnings").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let offline_after = 20;
    let server = Server::start(
        &dir.path().join("server"),
        None,
        &["--scheduler-interval-ms", "200", "--offline-after-secs", &offline_after.to_string()],
    )
    .await;
    add_user(&server, "ada", "admin");
    let package = server.upload(None).await;
    let labels = [("fleet", "sim")];
    let old = SimFleet::enroll(&server, "old", 10, &labels).await;
    let windows = SimFleet::enroll_with_facts(&server, "win", 5, &labels, &[("os", "windows")]).await;
    let fleet = SimFleet::enroll(&server, "srv", 1000, &labels).await;
    // Three servers already run the version.
    let spec: RolloutSpec = serde_json::from_value(json!({ "name": "first three", "package_id": package,
        "targets": { "agents": [fleet.agents[0].id, fleet.agents[1].id, fleet.agents[2].id] },
        "waves": ["100%"], "concurrency": 3 }))
    .unwrap();
    let first = server.client.create_rollout(&spec).await.unwrap().id;
    server.client.start(&first).await.unwrap();
    let jobs = fleet.take_jobs_of(&[0, 1, 2], LONG).await;
    for (i, job) in jobs.iter().enumerate() {
        fleet.report(i, job, sim::finished(fleetup_proto::InstallOutcome::Succeeded)).await;
    }
    server.client.wait_rollout(&first, LONG, |r| r.state.as_str() == "finished").await.unwrap();
    // The `old` ones go quiet until they count as offline; the rest poll.
    let old_ids: Vec<String> = old.agents.iter().map(|a| a.id.clone()).collect();
    server
        .eventually("the quiet servers to count as offline", LONG, async || {
            let agents = server.client.agents().await?;
            let quiet = agents.iter().filter(|a| old_ids.contains(&a.id.to_string()) && !a.online).count();
            Ok((quiet == old_ids.len()).then_some(()))
        })
        .await;
    fleet.poll_once().await;
    windows.poll_once().await;

    b.login(&server.url, "ada", PASSWORD).await;
    b.client.goto(&format!("{}/rollouts/new", server.url)).await.unwrap();
    b.wait_text("the stage form", "#stage", "1015 server(s) enrolled", LONG).await;
    b.client.find(Locator::Id("labels")).await.unwrap().send_keys("fleet=sim").await.unwrap();
    let waves = b.client.find(Locator::Id("waves")).await.unwrap();
    waves.clear().await.unwrap();
    waves.send_keys("10, 100%").await.unwrap();
    // (The name is still empty: required to stage, not to preview.)
    // Each key typed asks for a preview ("1", "10", "10, 1", …): wait for the one of the
    // whole input, whose second wave is the other 1,000.
    let preview = b.wait_text("the preview of waves 10, 100%", "#preview", "Wave 2 · 1000 server(s)", LONG).await;
    assert!(preview.contains("1010 server(s) in 2 wave(s)"), "{preview}");
    let skipped = element_text(&b, "#preview-skipped").await;
    assert!(skipped.contains("3 already run this version and will be skipped"), "{skipped}");
    let left_out = element_text(&b, "#preview-left-out").await;
    assert!(left_out.contains("5 server(s) the selector matches get no job"), "{left_out}");
    assert!(left_out.contains("win-00001") && left_out.contains("os 'linux'"), "{left_out}");
    let offline = element_text(&b, "#preview-offline").await;
    assert!(offline.contains("10 of them are offline now") && offline.contains("old-00001"), "{offline}");
    assert!(preview.contains("Wave 1 · 10 server(s)") && preview.contains("Wave 2 · 1000 server(s)"), "{preview}");
    assert!(preview.contains("and 950 more"), "a sample of each wave, not every server: {preview}");
    let html: serde_json::Value =
        b.client.execute("return document.getElementById('preview').innerHTML.length;", vec![]).await.unwrap();
    assert!(html.as_u64().unwrap() < 150_000, "the preview is bounded: {html}");
    b.screenshot("16-stage-preview-at-scale").await;

    // The counts follow the form.
    let waves = b.client.find(Locator::Id("waves")).await.unwrap();
    waves.clear().await.unwrap();
    waves.send_keys("1, 50%, 100%").await.unwrap();
    b.wait_text("the preview of three waves", "#preview", "1010 server(s) in 3 wave(s)", LONG).await;
    let page = page_bytes(&b).await;
    assert!(page < 150_000, "the stage page with its preview is bounded: {page} bytes");
    b.close().await;
}

/// The fleet overview of 1,000 servers: one image of every server by state, a legend with
/// the counts, filters by wave; a click on a cell opens that server; a search by host name
/// jumps to its row in the paged grid; a search by label lists the matches. Bounded.
#[tokio::test(flavor = "multi_thread")]
async fn fleet_overview_of_a_thousand_servers_search_jumps_and_a_cell_opens_its_server() {
    let Some(b) = Browser::start("fleet_overview_of_a_thousand_servers_search_jumps_and_a_cell_opens_its_server").await
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let n = 1000;
    let (server, fleet, package) = sim_fleet(dir.path(), n).await;
    let spec: RolloutSpec = serde_json::from_value(json!({ "name": "overview", "package_id": package,
        "targets": { "labels": { "fleet": "sim" } }, "waves": [9, "100%"], "concurrency": 9 }))
    .unwrap();
    let id = server.client.create_rollout(&spec).await.unwrap().id;
    server.client.start(&id).await.unwrap();
    let jobs = server.jobs::<JobSummary>(&id).await;
    let first_wave: Vec<&JobSummary> = jobs.iter().filter(|j| j.wave == 1).collect();
    assert_eq!(first_wave.len(), 9);
    let which: Vec<usize> =
        first_wave.iter().map(|j| fleet.agents.iter().position(|a| a.hostname == j.hostname).unwrap()).collect();
    let assigned = fleet.take_jobs_of(&which, LONG).await;
    for (i, job) in which.iter().zip(&assigned) {
        fleet.report(*i, job, sim::finished(fleetup_proto::InstallOutcome::Succeeded)).await;
    }
    server.client.wait_rollout(&id, LONG, |r| r.counts.get(&JobState::Succeeded) == Some(&9)).await.unwrap();

    b.login(&server.url, "ada", PASSWORD).await;
    b.client.goto(&format!("{}/rollouts/{id}", server.url)).await.unwrap();
    let summary = b.wait_text("the overview", "#mosaic-summary", "All 1000 servers", LONG).await;
    assert!(summary.contains("click a cell"), "{summary}");
    let img = b.client.find(Locator::Id("mosaic-img")).await.unwrap();
    let alt = img.attr("alt").await.unwrap().unwrap_or_default();
    assert!(alt.starts_with("1000 server(s): 9 succeeded"), "{alt}");
    let size: serde_json::Value = b
        .client
        .execute(
            "const i = document.getElementById('mosaic-img'); return [i.complete, i.naturalWidth, i.naturalHeight];",
            vec![],
        )
        .await
        .unwrap();
    assert_eq!(size, json!([true, 799, 79]), "100 cells a row, 10 rows, the image loaded");
    let legend = element_text(&b, "#mosaic .legend").await;
    assert!(legend.contains("succeeded 9") && legend.contains("not started 991"), "{legend}");
    let bytes = page_bytes(&b).await;
    assert!(bytes < 150_000, "the rollout page with its overview is bounded: {bytes} bytes");
    b.screenshot("17-fleet-overview").await;

    // Search by host name: the jump lands on the grid page holding it, its row marked.
    let target = &jobs[776];
    b.client.find(Locator::Id("find")).await.unwrap().send_keys(&target.hostname).await.unwrap();
    b.client.find(Locator::Id("find-go")).await.unwrap().click().await.unwrap();
    let row = b.wait_text("the row found", "table.grid tr.found", &target.hostname, LONG).await;
    assert!(row.contains(&target.hostname), "{row}");
    let pager = element_text(&b, "#grid .pager").await;
    assert!(pager.contains("page 8 of 10"), "the 777th server is on page 8: {pager}");
    let url = b.client.current_url().await.unwrap();
    assert_eq!(url.fragment(), Some(format!("job-{}", target.id).as_str()), "scrolled to the row");
    b.screenshot("18-search-jumped").await;

    // Search by label: every server matches; they are counted and the first listed.
    let find = b.client.find(Locator::Id("find")).await.unwrap();
    find.clear().await.unwrap();
    find.send_keys("fleet=sim").await.unwrap();
    b.client.find(Locator::Id("find-go")).await.unwrap().click().await.unwrap();
    b.wait_text("the label matches", "#found", "1000 servers match “fleet=sim”", LONG).await;

    // Filter by wave, then click a cell: the nine of wave 1; the fifth is under the centre.
    b.client.goto(&format!("{}/rollouts/{id}", server.url)).await.unwrap();
    b.client.find(Locator::Css("#mosaic nav.filters a[href$='wave=1']")).await.unwrap().click().await.unwrap();
    b.wait_text("the first wave only", "#mosaic-summary", "9 of 1000 servers (filtered)", LONG).await;
    let pager = element_text(&b, "#grid .pager").await;
    assert!(pager.contains("9 server(s) of wave 1"), "the grid follows the filter: {pager}");
    b.with_element("a cell of the overview", "#mosaic-img", async |e| e.click().await).await;
    let host = b
        .wait_for("the server page of the cell", LONG, async || {
            let url = b.client.current_url().await.ok()?;
            url.path().starts_with("/jobs/").then_some(())?;
            b.client.find(Locator::Css("h1")).await.ok()?.text().await.ok()
        })
        .await;
    assert_eq!(host, first_wave[4].hostname, "the cell under the click is the fifth server of wave 1");
    b.close().await;
}

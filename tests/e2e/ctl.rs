//! The operator CLI end to end: `fleetupctl` drives a whole rollout on a real coordinator
//! with real agents — login, package upload, an enrollment token, a spec file applied
//! (dry run, staged, applied again unchanged, a changed spec under the same name refused),
//! start, and `watch` until it exits 0 — and the result is checked over the API and on the
//! servers' install roots.

use fleetup_e2e::fleet::{Host, Proc, Server, pack};
use fleetup_e2e::{binary, wait_for, workspace_root};
use fleetup_proto::api::{JobState, Package, RolloutState};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const LONG: Duration = Duration::from_mins(2);

/// Runs fleetupctl with its context in `dir`, waiting at most `deadline`; returns the exit
/// code, stdout and stderr.
fn ctl_within(dir: &Path, deadline: Duration, args: &[&str]) -> (i32, String, String) {
    let n = std::fs::read_dir(dir).map_or(0, Iterator::count);
    let (out, err) = (dir.join(format!("ctl-{n}.out")), dir.join(format!("ctl-{n}.err")));
    let mut cmd = Command::new(binary("fleetupctl"));
    cmd.args(args)
        .env("FLEETUP_CONTEXT", dir.join("config/context.toml"))
        .env_remove("FLEETUP_SERVER")
        .env_remove("FLEETUP_TOKEN")
        .env_remove("FLEETUP_OUTPUT")
        .stdout(std::fs::File::create(&out).unwrap())
        .stderr(std::fs::File::create(&err).unwrap());
    let mut child = Proc { child: cmd.spawn().expect("spawning fleetupctl"), log: err.clone() };
    let status =
        wait_for(&format!("fleetupctl {}", args.join(" ")), deadline, || child.child.try_wait().ok().flatten());
    let read = |p: &PathBuf| std::fs::read_to_string(p).unwrap_or_default();
    (status.code().unwrap_or(-1), read(&out), read(&err))
}

fn ctl(dir: &Path, args: &[&str]) -> (i32, String, String) {
    ctl_within(dir, Duration::from_mins(1), args)
}

/// Runs a command that must succeed; returns its stdout.
fn ok(dir: &Path, args: &[&str]) -> String {
    let (code, out, err) = ctl(dir, args);
    assert_eq!(code, 0, "fleetupctl {}:\n{out}\n{err}", args.join(" "));
    out
}

fn json(text: &str) -> Value {
    serde_json::from_str(text.trim()).unwrap_or_else(|e| panic!("not one JSON document ({e}): {text}"))
}

/// `fleetupctl login` with the server's admin token, from a file.
fn login(cli: &Path, server: &Server) {
    let token_file = cli.join("token");
    std::fs::write(&token_file, format!("{}\n", server.token)).unwrap();
    ok(cli, &["--server", &server.url, "login", "--token-file", token_file.to_str().unwrap()]);
}

/// A coordinator with short leases and a fast scheduler, and an operator's context folder
/// (not yet logged in), both in a fresh temporary folder.
async fn operator_and_server() -> (tempfile::TempDir, PathBuf, Server) {
    let dir = tempfile::tempdir().unwrap();
    let cli = dir.path().join("operator");
    std::fs::create_dir_all(&cli).unwrap();
    let server =
        Server::start(&dir.path().join("server"), None, &["--lease-secs", "6", "--scheduler-interval-ms", "200"]).await;
    (dir, cli, server)
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_drives_a_rollout_from_a_spec_file_to_watch() {
    let (dir, cli, server) = operator_and_server().await;

    // login: the token from a file, checked, saved 0600.
    login(&cli, &server);
    let mode = std::os::unix::fs::PermissionsExt::mode(
        &std::fs::metadata(cli.join("config/context.toml")).unwrap().permissions(),
    );
    assert_eq!(mode & 0o777, 0o600);

    // The package, uploaded with the CLI.
    let pkg = cli.join("demo-1.1.0.fup");
    pack(&workspace_root().join("examples/sample-rollup"), &server.key, &pkg);
    let package: Package =
        serde_json::from_value(json(&ok(&cli, &["-o", "json", "packages", "upload", pkg.to_str().unwrap()]))).unwrap();
    assert_eq!(package.version, "1.1.0");

    // An enrollment token from the CLI, three real agents enrolled with it.
    let created =
        json(&ok(&cli, &["-o", "json", "tokens", "enrollment", "create", "--label", "env=test", "--max-uses", "3"]));
    let secret = created["secret"].as_str().expect("the secret").to_owned();
    let crl = fleetup_demo_service::crl_endpoint().unwrap();
    let mut hosts = Vec::new();
    for i in 1..=3 {
        let mut host = Host::new(dir.path(), &format!("web-{i}"), &crl);
        host.start_agent(&server, &secret);
        hosts.push(host);
    }
    server.every_agent_online(3, LONG).await;
    let agents = json(&ok(&cli, &["-o", "json", "agents", "list", "--label", "env=test"]));
    assert_eq!(agents.as_array().map(Vec::len), Some(3), "{agents}");

    // The spec file, as kept in git.
    let spec = cli.join("rollout.toml");
    let text = format!(
        "name = \"demo 1.1 via fleetupctl\"\npackage = \"{}@{}\"\ntargets = {{ hosts = [\"web-1\", \"web-2\", \"web-3\"] }}\n\
         waves = [1, \"100%\"]\n\n[policies]\nwarning = \"continue\"\nfiles_in_use = \"ignore\"\n",
        package.name, package.version
    );
    std::fs::write(&spec, &text).unwrap();
    let spec_arg = spec.to_str().unwrap();

    let dry = ok(&cli, &["rollout", "apply", spec_arg, "--dry-run"]);
    assert!(dry.contains("wave 1: 1 server") && dry.contains("wave 2: 2 servers") && dry.contains("dry run"), "{dry}");
    assert!(server.client.rollouts().await.unwrap().is_empty(), "a dry run stages nothing");

    let applied = json(&ok(&cli, &["-o", "json", "rollout", "apply", spec_arg]));
    assert_eq!(applied["action"], "created", "{applied}");
    let id = applied["rollout"]["id"].as_str().unwrap().to_owned();
    assert_eq!(applied["plan"]["waves"].as_array().map(Vec::len), Some(2), "{applied}");

    let again = json(&ok(&cli, &["-o", "json", "rollout", "apply", spec_arg]));
    assert_eq!(again["action"], "unchanged", "{again}");
    assert_eq!(again["rollout"]["id"], id.as_str());
    let human = ok(&cli, &["rollout", "apply", spec_arg]);
    assert!(human.contains("is unchanged"), "{human}");

    let changed = cli.join("changed.yaml");
    std::fs::write(
        &changed,
        format!(
            "name: demo 1.1 via fleetupctl\npackage: {}@{}\ntargets: {{hosts: [web-1, web-2, web-3]}}\nwaves: [1, 2]\n",
            package.name, package.version
        ),
    )
    .unwrap();
    let (code, _, err) = ctl(&cli, &["rollout", "apply", changed.to_str().unwrap()]);
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("already exists") && err.contains("waves"), "{err}");
    assert_eq!(server.client.rollouts().await.unwrap().len(), 1, "still one rollout");

    // Start it by name, and watch it to the end: on a terminal (bars; util-linux `script`
    // gives it a pty) and as JSON lines.
    let has_script = Command::new("script").arg("--version").output().is_ok_and(|o| o.status.success());
    if !has_script {
        fleetup_e2e::skip_or_fail("the terminal part of ctl_drives_a_rollout", "util-linux `script` is not installed");
    }
    let mut tty = has_script.then(|| {
        let mut cmd = Command::new("script");
        cmd.args(["-qec", &format!("{} watch {id} --timeout 110", binary("fleetupctl").display()), "/dev/null"])
            .env("FLEETUP_CONTEXT", cli.join("config/context.toml"))
            .env_remove("FLEETUP_SERVER")
            .env_remove("FLEETUP_TOKEN");
        Proc::spawn(cmd, cli.join("watch-tty.log"))
    });
    ok(&cli, &["rollout", "start", "demo 1.1 via fleetupctl"]);
    let (code, out, err) =
        ctl_within(&cli, LONG, &["-o", "json", "watch", &id, "--timeout", "110", "--interval-ms", "200"]);
    assert_eq!(code, 0, "watch:\n{out}\n{err}\n{}", server.proc.output());
    let lines: Vec<Value> = out.lines().map(json).collect();
    let last = lines.last().expect("watch printed the rollout's state");
    assert_eq!(last["state"], "finished", "{last}");
    assert_eq!(last["counts"]["succeeded"], 3, "{last}");
    assert!(lines.iter().any(|l| l["current_wave"] == 2), "the second wave was seen: {out}");
    if let Some(tty) = &mut tty {
        let status = wait_for("the watch on a terminal to exit", LONG, || tty.child.try_wait().ok().flatten());
        let screen = tty.output();
        assert_eq!(status.code(), Some(0), "{screen}");
        assert!(screen.contains("wave 2") && screen.contains("finished: succeeded 3"), "{screen}");
    }
    // A watch of a finished rollout, for people, ends at once with the outcome.
    let human = ok(&cli, &["watch", "demo 1.1 via fleetupctl"]);
    assert!(human.contains("finished: succeeded 3"), "{human}");

    // What the API and the servers say.
    let rollout = server.client.rollout(&id.parse().unwrap()).await.unwrap();
    assert_eq!(rollout.state, RolloutState::Finished, "{rollout:?}");
    let jobs = server.jobs::<fleetup_proto::api::Job>(&rollout.id).await;
    assert_eq!(jobs.len(), 3);
    assert!(jobs.iter().all(|j| j.state == JobState::Succeeded), "{jobs:?}");
    for h in &hosts {
        assert_eq!(h.version().as_deref(), Some("1.1.0"), "{} answers the new version", h.name);
        assert!(h.root.join("lib/demo/feature-x.txt").exists(), "{}", h.name);
    }

    // The rest of what an operator reads afterwards.
    let shown = json(&ok(&cli, &["-o", "json", "rollout", "show", &id]));
    assert_eq!(shown["state"], "finished");
    let logs = ok(&cli, &["logs", jobs[0].id.as_str()]);
    assert!(logs.contains("[check-system]"), "{logs}");
    let web1 = json(&ok(&cli, &["-o", "json", "agents", "show", "web-1"]));
    assert_eq!(web1["installed"][0]["version"], "1.1.0", "{web1}");
    let open = ok(&cli, &["decide", "--rollout", &id]);
    assert!(open.contains("no open decision"), "{open}");
    let (code, _, err) = ctl(&cli, &["rollout", "start", &id]);
    assert_eq!(code, 3, "starting a finished rollout is refused: {err}");
    let followed = ok(&cli, &["logs", jobs[1].id.as_str(), "--follow"]);
    assert!(followed.contains("[cleanup]"), "--follow of an ended job prints it all and returns: {followed}");
    let count = |args: &[&str]| json(&ok(&cli, args)).as_array().map_or(0, Vec::len);
    assert_eq!(count(&["-o", "json", "rollout", "list", "--state", "finished"]), 1);
    assert_eq!(count(&["-o", "json", "rollout", "list", "--state", "draft"]), 0);
    assert_eq!(count(&["-o", "json", "rollout", "jobs", "demo 1.1 via fleetupctl", "--state", "succeeded"]), 3);
    assert_eq!(count(&["-o", "json", "rollout", "jobs", &id, "--wave", "1"]), 1);
    assert_eq!(count(&["-o", "json", "packages", "list", "--name", &package.name]), 1);
    assert_eq!(count(&["-o", "json", "tokens", "enrollment", "list"]), 1);
    let labelled = json(&ok(&cli, &["-o", "json", "agents", "label", "web-3", "rack=b"]));
    assert_eq!(labelled["labels"]["rack"], "b", "{labelled}");
    assert_eq!(count(&["-o", "json", "agents", "list", "--label", "rack=b"]), 1);
    let unlabelled = json(&ok(&cli, &["-o", "json", "agents", "label", "web-3", "rack-"]));
    assert!(unlabelled["labels"].get("rack").is_none(), "{unlabelled}");
    let (code, _, err) = ctl(&cli, &["rollout", "retry-failed", &id]);
    assert_eq!(code, 3, "nothing failed, nothing to retry: {err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_watch_shows_waiting_decisions_and_decide_all_answers_them() {
    let (dir, cli, server) = operator_and_server().await;
    login(&cli, &server);
    let package = server.client.package(&server.upload(None).await).await.unwrap();
    let token = server.enrollment_token(2).await;
    // Both servers' CRL endpoint is a loopback port nothing listens on: each install asks.
    let dead = fleetup_e2e::fleet::free_port();
    let mut hosts = Vec::new();
    for i in 1..=2 {
        let mut host = Host::new(dir.path(), &format!("db-{i}"), &format!("http://crl.fleetup.test:{dead}"));
        std::fs::write(host.dir.join("hosts"), "127.0.0.1 localhost\n127.0.0.1 crl.fleetup.test\n").unwrap();
        host.start_agent(&server, &token);
        hosts.push(host);
    }
    server.every_agent_online(2, LONG).await;
    let spec = cli.join("db.yaml");
    std::fs::write(
        &spec,
        format!(
            "name: demo to db\npackage: {}@{}\ntargets:\n  labels: {{env: test}}\nwaves: [100%]\nconcurrency: 2\n\
             policies:\n  warning: ask\n",
            package.name, package.version
        ),
    )
    .unwrap();
    ok(&cli, &["rollout", "apply", spec.to_str().unwrap()]);
    ok(&cli, &["rollout", "start", "demo to db"]);

    // watch for people, not on a terminal: one line per change, each question once.
    let mut cmd = Command::new(binary("fleetupctl"));
    cmd.args(["watch", "demo to db", "--timeout", "110", "--interval-ms", "200"])
        .env("FLEETUP_CONTEXT", cli.join("config/context.toml"))
        .env_remove("FLEETUP_SERVER")
        .env_remove("FLEETUP_TOKEN");
    let mut watch = Proc::spawn(cmd, cli.join("watch.log"));
    wait_for("watch to show both questions", LONG, || {
        let o = watch.output();
        (o.contains("? db-1 waits [crl-unreachable]") && o.contains("? db-2 waits [crl-unreachable]")).then_some(())
    });
    let open = ok(&cli, &["decide", "--rollout", "demo to db"]);
    assert_eq!(open.matches("[warning crl-unreachable]").count(), 2, "{open}");
    assert!(open.contains("--answer continue|cancel"), "{open}");
    let answered = json(&ok(
        &cli,
        &[
            "-o",
            "json",
            "decide",
            "--rollout",
            "demo to db",
            "--all",
            "--code",
            "crl-unreachable",
            "--answer",
            "continue",
        ],
    ));
    assert_eq!(answered["answered"], 2, "{answered}");
    let status = wait_for("watch to exit", LONG, || watch.child.try_wait().ok().flatten());
    let output = watch.output();
    assert_eq!(status.code(), Some(0), "{output}");
    assert!(output.contains("answer: fleetupctl decide"), "{output}");
    assert!(output.trim_end().ends_with("finished: succeeded 2"), "{output}");
    for h in &hosts {
        assert_eq!(h.version().as_deref(), Some("1.1.0"), "{}", h.name);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_pins_the_coordinators_ca_and_takes_the_token_from_the_environment() {
    let dir = tempfile::tempdir().unwrap();
    let cli = dir.path().join("operator");
    std::fs::create_dir_all(&cli).unwrap();
    let server = Server::start_tls(&dir.path().join("server"), &[]).await;
    let ca = server.ca_cert.clone().expect("a private CA");
    let token_file = cli.join("token");
    std::fs::write(&token_file, &server.token).unwrap();
    let token = token_file.to_str().unwrap();

    // Without the CA the coordinator's certificate is not trusted: nothing is saved.
    let (code, _, err) = ctl(&cli, &["--server", &server.url, "login", "--token-file", token]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("certificate"), "the cause is named: {err}");
    assert!(!cli.join("config/context.toml").exists());
    // With it, the context remembers the CA for every later command.
    ok(&cli, &["--server", &server.url, "--ca-cert", ca.to_str().unwrap(), "login", "--token-file", token]);
    let context = std::fs::read_to_string(cli.join("config/context.toml")).unwrap();
    assert!(context.contains("ca_cert"), "{context}");
    assert_eq!(json(&ok(&cli, &["-o", "json", "rollout", "list"])), serde_json::json!([]));
    // A wrong token is refused at login (exit 4; the saved CA is used again), and the
    // saved context stays as it was.
    std::fs::write(&token_file, "flt_not-a-token").unwrap();
    let (code, _, err) = ctl(&cli, &["--server", &server.url, "login", "--token-file", token]);
    assert_eq!(code, 4, "{err}");
    assert_eq!(std::fs::read_to_string(cli.join("config/context.toml")).unwrap(), context);

    // CI: no context file at all, everything from the environment.
    let out = Command::new(binary("fleetupctl"))
        .args(["-o", "json", "agents", "list"])
        .env("FLEETUP_CONTEXT", cli.join("none/context.toml"))
        .env("FLEETUP_SERVER", &server.url)
        .env("FLEETUP_TOKEN", &server.token)
        .env("FLEETUP_CA_CERT", &ca)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(json(&String::from_utf8_lossy(&out.stdout)), serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread")]
async fn ctl_watch_reports_a_rollback_and_exits_by_how_the_rollout_stopped() {
    let (dir, cli, server) = operator_and_server().await;
    login(&cli, &server);
    let package = server.client.package(&server.upload(None).await).await.unwrap();
    let token = server.enrollment_token(2).await;
    let crl = fleetup_demo_service::crl_endpoint().unwrap();
    let mut hosts = Vec::new();
    for i in 1..=2 {
        let mut host = Host::new(dir.path(), &format!("app-{i}"), &crl);
        if i == 1 {
            // app-1 fails its health check on 1.1.0: rolled back.
            let conf = host.root.join("etc/demo.conf");
            let text = std::fs::read_to_string(&conf).unwrap() + "unhealthy_versions = 1.1.0\n";
            std::fs::write(conf, text).unwrap();
        }
        host.start_agent(&server, &token);
        hosts.push(host);
    }
    server.every_agent_online(2, LONG).await;
    let spec = cli.join("app.toml");
    std::fs::write(
        &spec,
        format!(
            "name = \"demo to app\"\npackage = \"{}@{}\"\ntargets.hosts = [\"app-1\", \"app-2\"]\nwaves = [1, 1]\n\
             error_threshold = 1\nerror_action = \"pause\"\n",
            package.name, package.version
        ),
    )
    .unwrap();
    ok(&cli, &["rollout", "apply", spec.to_str().unwrap()]);
    ok(&cli, &["rollout", "start", "demo to app"]);

    // Paused by the error threshold: exit 6, the failure shown once with its logs command.
    let (code, out, err) = ctl_within(&cli, LONG, &["watch", "demo to app", "--timeout", "110"]);
    assert_eq!(code, 6, "{out}\n{err}");
    assert_eq!(out.matches("✗ app-1 (wave 1) rolled-back:").count(), 1, "{out}");
    assert!(out.contains("[logs: fleetupctl logs "), "{out}");
    assert!(err.contains("is paused") && err.contains("fleetupctl rollout resume"), "{err}");
    assert_eq!(hosts[0].version().as_deref(), Some("1.0.0"), "rolled back and serving");

    // The failed server's retry is a new draft; the paused rollout, cancelled, watches as 5.
    let retry = json(&ok(&cli, &["-o", "json", "rollout", "retry-failed", "demo to app"]));
    assert_eq!(retry["state"], "draft", "{retry}");
    assert_eq!(retry["waves"][0]["size"], 1, "{retry}");
    ok(&cli, &["rollout", "cancel", "demo to app"]);
    let (code, out, err) = ctl_within(&cli, LONG, &["-o", "json", "watch", "demo to app", "--timeout", "110"]);
    assert_eq!(code, 5, "{out}\n{err}");
    let last = json(out.lines().last().unwrap_or_default());
    assert_eq!(last["state"], "cancelled", "{last}");
    assert_eq!(last["failures"][0]["hostname"], "app-1", "{last}");
    let error = json(&err);
    assert_eq!(error["error"]["exit"], 5, "{error}");
}

/// API tokens from the CLI: one made for a CI job logs in and reads, is listed with its role,
/// expiry and last use, and once revoked is refused as revoked (exit 4); an enrollment token
/// revoked from the CLI enrolls nobody.
#[tokio::test(flavor = "multi_thread")]
async fn ctl_makes_lists_and_revokes_api_and_enrollment_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(&dir.path().join("server"), None, &[]).await;
    let (admin, ci) = (dir.path().join("admin"), dir.path().join("ci"));
    for d in [&admin, &ci] {
        std::fs::create_dir_all(d).unwrap();
    }
    login(&admin, &server);

    let args =
        ["-o", "json", "tokens", "api", "create", "--name", "ci", "--role", "viewer", "--expires-in-secs", "3600"];
    let made = json(&ok(&admin, &args));
    let (id, secret) = (made["id"].as_str().unwrap().to_owned(), made["secret"].as_str().unwrap());
    let token_file = ci.join("token");
    std::fs::write(&token_file, format!("{secret}\n")).unwrap();
    ok(&ci, &["--server", &server.url, "login", "--token-file", token_file.to_str().unwrap()]);
    ok(&ci, &["rollout", "list"]);

    let listed = json(&ok(&admin, &["-o", "json", "tokens", "api", "list"]));
    let row = listed.as_array().unwrap().iter().find(|t| t["id"] == id.as_str()).expect("the new token is listed");
    assert_eq!(row["role"], "viewer", "{row}");
    assert!(row["expires_at"].is_string(), "its expiry is listed: {row}");
    assert!(row["last_used_at"].is_string(), "its use by the CI context is listed: {row}");
    assert!(row.get("secret").is_none(), "the listing never shows a secret: {row}");
    let table = ok(&admin, &["tokens", "api", "list"]);
    assert!(table.lines().any(|l| l.starts_with("ci ") && l.contains("live")), "{table}");

    ok(&admin, &["tokens", "api", "revoke", &id]);
    let (code, out, err) = ctl(&ci, &["rollout", "list"]);
    assert_eq!(code, 4, "a revoked token is an authentication failure:\n{out}\n{err}");
    assert!(err.contains("revoked"), "the message says the token was revoked: {err}");
    let table = ok(&admin, &["tokens", "api", "list"]);
    assert!(table.lines().any(|l| l.starts_with("ci ") && l.contains("revoked")), "{table}");
    let (code, _, err) = ctl(&admin, &["tokens", "api", "revoke", "no-such-token"]);
    assert_eq!(code, 3, "an unknown id is refused: {err}");
    assert!(err.contains("no API token no-such-token"), "{err}");

    let enrollment = json(&ok(&admin, &["-o", "json", "tokens", "enrollment", "create", "--name", "rack-b"]));
    let enrollment_id = enrollment["token"]["id"].as_str().unwrap();
    ok(&admin, &["tokens", "enrollment", "revoke", enrollment_id]);
    let req = fleetup_proto::agent_api::EnrollRequest {
        token: enrollment["secret"].as_str().unwrap().to_owned(),
        hostname: "late".into(),
        labels: std::collections::BTreeMap::new(),
        facts: std::collections::BTreeMap::new(),
        version: "test".into(),
    };
    let url = format!("{}/api/v1/agent/enroll", server.url);
    let resp = reqwest::Client::new().post(url).json(&req).timeout(Duration::from_secs(30)).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 401, "a revoked enrollment token enrolls nobody");
}

//! `fleetup demo`: a whole fleet on this machine, ready to watch in a browser.
//!
//! One command, nothing to install: the coordinator runs in this process on SQLite in a
//! temporary (or given) directory; a handful of agents run as child processes of this
//! same binary (`fleetup agent …`, the agent library), each with its own install root at
//! 1.0 and the demo service (`fleetup demo-service …`) running on its own loopback port. The sample rollup 1.0 → 1.1 is packed with a fresh key, uploaded
//! through the REST API and staged as a rollout the user starts. One host has an
//! unreachable CRL endpoint (the seeds' stall) and one fails its health check on 1.1, so
//! the warning and the rollback are there to see. Ctrl-C stops everything it started.

use anyhow::Context as _;
use fleetup_client::{Client, NewEnrollmentToken};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

mod assets;

use assets::{BASE_1_0, SAMPLE_ROLLUP, write_tree};
use fleetup_proto::api::Role;

/// Options of `fleetup demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Directory for the database, the hosts and the logs (default: a temporary directory,
    /// removed on exit).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Address of the dashboard and the API.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// How many simulated servers.
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u16).range(3..=50))]
    pub hosts: u16,
}

/// What a running demo offers; also written to `<dir>/demo.json` for scripts and tests.
#[derive(Debug, serde::Serialize)]
struct Ready<'a> {
    url: &'a str,
    username: &'a str,
    password: &'a str,
    api_token: &'a str,
    rollout_id: &'a str,
    dir: String,
}

/// A simulated server.
struct DemoHost {
    name: String,
    dir: PathBuf,
    agent: Option<Child>,
}

impl DemoHost {
    fn pidfile(&self) -> PathBuf {
        self.dir.join("root/run/demo.pid")
    }
}

/// Everything started, stopped in reverse order on drop (also on errors and panics).
struct Fleet {
    hosts: Vec<DemoHost>,
    _temp: Option<tempfile::TempDir>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        for h in &mut self.hosts {
            if let Some(mut agent) = h.agent.take() {
                stop_child(&mut agent);
            }
        }
        // The services were started detached (as the exec backend does): stop them by pid file.
        for h in &self.hosts {
            if let Some(pid) = std::fs::read_to_string(h.pidfile()).ok().and_then(|p| p.trim().parse::<i32>().ok()) {
                let _ = Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
                let _ = Command::new("kill").arg("-KILL").arg(pid.to_string()).stderr(Stdio::null()).status();
            }
        }
    }
}

fn stop_child(child: &mut Child) {
    let _ = Command::new("kill").arg("-TERM").arg(child.id().to_string()).status();
    for _ in 0..50 {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = child.kill();
    let _ = child.wait();
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// The coordinator's role type for `role`. The coordinator is switching to
/// [`fleetup_proto::api::Role`] (issue 12); until then its own enum has the same wire
/// form, which this converts through (an identity once the switch is merged).
fn server_role<R: serde::de::DeserializeOwned>(role: Role) -> anyhow::Result<R> {
    Ok(serde_json::from_value(serde_json::to_value(role)?)?)
}

/// Runs the demo until `shutdown` resolves.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let (dir, temp) = if let Some(d) = &args.dir {
        std::fs::create_dir_all(d)?;
        (d.canonicalize()?, None)
    } else {
        let t = tempfile::Builder::new().prefix("fleetup-demo-").tempdir()?;
        (t.path().to_path_buf(), Some(t))
    };
    let exe = std::env::current_exe().context("locating this binary")?;
    let listener = tokio::net::TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (use --listen 127.0.0.1:PORT)", args.listen))?;
    let url = format!("http://{}", listener.local_addr()?);

    // Signing key, trusted by the coordinator and every agent.
    let key = dir.join("release.key");
    if !key.exists() {
        fleetup_proto::keys::write_keypair(&key)?;
    }
    let key_pub = dir.join("release.key.pub");

    let mut config =
        fleetup_server::config::Config::new(&format!("sqlite:{}", dir.join("fleetup.db").display()), dir.join("data"));
    config.trust = vec![key_pub.clone()];
    config.scheduler_interval_ms = 300;
    config.lease_secs = 30;
    let database_url = config.database_url.clone();

    let api_token = fleetup_server::cli::create_token(&database_url, server_role(Role::Admin)?, "demo").await?;
    // A fresh password each run (the demo listens on loopback only by default, but a
    // well-known password would be a bad habit to teach).
    let (username, password) = ("admin".to_owned(), fleetup_server::auth::new_secret("demo")[..21].to_owned());
    if let Err(e) =
        fleetup_server::cli::create_user(&database_url, &username, &password, server_role(Role::Admin)?).await
    {
        // A kept --dir already has the user: give it the new password by recreating it is
        // not possible, so say how to log in instead.
        anyhow::bail!("cannot create the demo's admin user ({e}); remove {} or pick another --dir", dir.display());
    }
    // Only now start serving: the token and user creation above opened the database
    // (and ran its migrations) first, so two migrators never race on a fresh file.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let mut server = tokio::spawn(fleetup_server::run(config, listener, async move {
        let _ = stop_rx.await;
    }));
    let api = Client::new(&url, &api_token)?;
    tokio::select! {
        r = api.wait_healthy(Duration::from_secs(10)) => r?,
        r = &mut server => anyhow::bail!("the coordinator stopped: {:?}", r?),
    }

    // The sample rollup, packed and uploaded like a packager would.
    let src = dir.join("sample-rollup");
    if !src.exists() {
        write_tree(SAMPLE_ROLLUP, &src)?;
    }
    let pkg = dir.join("demo-service-1.1.0.fup");
    fleetup_proto::package::pack_dir(&src, &fleetup_proto::keys::SecretKey::read(&key)?, &pkg)?;
    let package = api.upload_package(&pkg).await.context("uploading the sample package")?;
    let enroll = NewEnrollmentToken {
        name: Some("demo".into()),
        labels: BTreeMap::from([("env".to_owned(), "demo".to_owned())]),
        ..NewEnrollmentToken::default()
    };
    let enroll = api.create_enrollment_token(&enroll).await?.secret;

    // The hosts.
    let crl_ok = fleetup_demo_service::crl_endpoint()?;
    let wrapper = dir.join("bin/fleetup-demo-service");
    std::fs::create_dir_all(dir.join("bin"))?;
    std::fs::write(&wrapper, format!("#!/bin/sh\nexec '{}' demo-service \"$@\"\n", exe.display()))?;
    {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    }
    let mut fleet = Fleet { hosts: Vec::new(), _temp: temp };
    let n = usize::from(args.hosts);
    for i in 1..=n {
        let name = format!("web-{i:02}");
        let hdir = dir.join("hosts").join(&name);
        let root = hdir.join("root");
        if !root.exists() {
            write_tree(BASE_1_0, &root)?;
        }
        let port = free_port()?;
        let mut hosts_file = "127.0.0.1 localhost\n".to_owned();
        // web-03 sits behind a firewall that drops the CRL host (the seeds' stall): its
        // CRL name resolves to a loopback port where nothing listens.
        let crl_base = if i == 3 {
            hosts_file.push_str("127.0.0.3 crl.fleetup.test\n");
            format!("http://crl.fleetup.test:{}", free_port()?)
        } else {
            crl_ok.clone()
        };
        std::fs::write(hdir.join("hosts"), hosts_file)?;
        // The last host has a bug in 1.1: its health check fails, so it is rolled back.
        if i == n {
            let conf = root.join("etc/demo.conf");
            let mut text = std::fs::read_to_string(&conf)?;
            if !text.contains("unhealthy_versions") {
                text.push_str("# demo: this host fails its health check on 1.1.0\nunhealthy_versions = 1.1.0\n");
                std::fs::write(&conf, text)?;
            }
        }
        start_service(&wrapper, &root, port, &hdir)?;
        let log = std::fs::File::create(hdir.join("agent.log"))?;
        let agent = Command::new(&exe)
            .arg("agent")
            .arg("run")
            .args(["--server", &url, "--enroll-token", &enroll, "--hostname", &name])
            .arg("--state-dir")
            .arg(hdir.join("state"))
            .arg("--root")
            .arg(&root)
            .arg("--trust")
            .arg(&key_pub)
            .arg("--hosts-file")
            .arg(hdir.join("hosts"))
            .args(["--services-backend", "exec", "--poll-wait", "20"])
            .args(["--label", if i <= 2 { "ring=canary" } else { "ring=main" }])
            .args(["--var", &format!("port={port}")])
            .args(["--var", &format!("demo_service_bin={}", wrapper.display())])
            .args(["--var", &format!("crl_base={crl_base}")])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        fleet.hosts.push(DemoHost { name, dir: hdir, agent: Some(agent) });
    }
    api.wait_agents_online(n, Duration::from_mins(1))
        .await
        .context("the demo agents did not come online; see the agent.log files under hosts/")?;

    let spec = serde_json::from_value(serde_json::json!({
        "name": "demo-service 1.1.0 to the demo fleet",
        "package_id": package.id,
        "targets": { "labels": { "env": "demo" } },
        "waves": [1, 2, "100%"],
        "concurrency": 1,
        "error_threshold": 2,
        "error_action": "pause",
        "policies": { "warning": "ask", "files_in_use": { "mode": "retry", "times": 3 }, "crl_remediation": "none" },
    }))?;
    let rollout_id = api.create_rollout(&spec).await?.id.to_string();

    let ready = Ready {
        url: &url,
        username: &username,
        password: &password,
        api_token: &api_token,
        rollout_id: &rollout_id,
        dir: dir.display().to_string(),
    };
    std::fs::write(dir.join("demo.json"), serde_json::to_vec_pretty(&ready)?)?;
    println!(
        "\nfleetup demo is running with {n} servers.\n\n  Dashboard: {url}/\n  Log in as: {username} / {password}\n  API:       {url}/api/v1 (token {api_token})\n\n\
         A rollout of demo-service 1.1.0 is staged: open it and press Start.\n\
         web-03 cannot reach its CRL endpoint (a warning asks you to continue or cancel);\n\
         {} fails its health check on 1.1.0 and is rolled back.\n\
         Files are in {}. Press Ctrl-C to stop everything.\n",
        fleet.hosts.last().map_or("", |h| h.name.as_str()),
        dir.display()
    );
    shutdown.await;
    println!("stopping the demo fleet…");
    drop(fleet);
    let _ = stop_tx.send(());
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    Ok(())
}

/// Starts the demo service at 1.0 the way the exec backend does: detached in its own
/// process group, pid in `run/demo.pid`, output to the host's `service.log`.
fn start_service(wrapper: &Path, root: &Path, port: u16, hdir: &Path) -> anyhow::Result<()> {
    fleetup_demo_service::launch(wrapper, root, port, &hdir.join("service.log"))?;
    Ok(())
}

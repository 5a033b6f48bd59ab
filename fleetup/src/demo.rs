//! `fleetup demo`: a whole fleet on this machine, ready to watch in a browser.
//!
//! One command, nothing to install: the coordinator runs in this process on SQLite in a
//! temporary (or given) directory; a handful of agents run as child processes of this
//! same binary (`fleetup agent …`, the agent library), each with its own install root at
//! 1.0 and the demo service (`fleetup demo-service …`) running on its own loopback port.
//! The sample rollup 1.0 → 1.1 is packed with a fresh key, uploaded through the REST API
//! (with `fleetup-client`, as any automation would) and staged as a rollout the user
//! starts. One host has an unreachable CRL endpoint (the seeds' stall) and one fails its
//! health check on 1.1, so the warning and the rollback are there to see.
//!
//! Ctrl-C stops everything it started, at any instant: the whole startup races the stop
//! signal, and every process is recorded in a [`Fleet`] the moment it starts, so a stop
//! during startup kills exactly what exists so far instead of being noticed only once the
//! demo is ready.

mod assets;
mod fleet;

use anyhow::Context as _;
use assets::{BASE_1_0, SAMPLE_ROLLUP, write_tree};
use fleet::Fleet;
use fleetup_client::{Client, NewEnrollmentToken};
use fleetup_proto::api::{Role, RolloutSpec};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

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
struct Ready {
    url: String,
    username: String,
    password: String,
    api_token: String,
    rollout_id: String,
    dir: String,
    /// The host that fails its health check on 1.1.
    #[serde(skip)]
    unhealthy: String,
}

/// Runs the demo until `shutdown` resolves, which may happen at any point of the startup.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let mut shutdown = std::pin::pin!(shutdown);
    let (dir, _temp) = if let Some(d) = &args.dir {
        std::fs::create_dir_all(d)?;
        (d.canonicalize()?, None)
    } else {
        let t = tempfile::Builder::new().prefix("fleetup-demo-").tempdir()?;
        (t.path().to_path_buf(), Some(t))
    };
    // Declared after the temporary directory, so dropped (processes stopped) before it goes.
    let mut fleet = Fleet::default();
    let started = tokio::select! {
        r = start(&args, &dir, &mut fleet) => Some(r),
        () = &mut shutdown => None,
    };
    let outcome = match started {
        Some(Ok(ready)) => {
            println!(
                "\nfleetup demo is running with {n} servers.\n\n  Dashboard: {url}/\n  Log in as: {user} / {password}\n  \
                 API:       {url}/api/v1 (token {token})\n\n\
                 A rollout of demo-service 1.1.0 is staged: open it and press Start.\n\
                 web-03 cannot reach its CRL endpoint (a warning asks you to continue or cancel);\n\
                 {unhealthy} fails its health check on 1.1.0 and is rolled back.\n\
                 Files are in {dir}. Press Ctrl-C to stop everything.\n",
                n = fleet.agent_count(),
                url = ready.url,
                user = ready.username,
                password = ready.password,
                token = ready.api_token,
                unhealthy = ready.unhealthy,
                dir = ready.dir,
            );
            shutdown.await;
            Ok(())
        }
        Some(Err(e)) => Err(e),
        None => {
            println!("stopped while starting");
            Ok(())
        }
    };
    println!("stopping the demo fleet…");
    fleet.stop().await;
    outcome
}

/// Starts the coordinator, the hosts and the staged rollout, recording every process in
/// `fleet` as it starts. Cancelled (dropped) at any await point when the user stops.
async fn start(args: &DemoArgs, dir: &Path, fleet: &mut Fleet) -> anyhow::Result<Ready> {
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

    let api_token = fleetup_server::cli::create_token(&database_url, Role::Admin, "demo").await?;
    // A fresh password each run (the demo listens on loopback only by default, but a
    // well-known password would be a bad habit to teach).
    let (username, password) = ("admin".to_owned(), fleetup_server::auth::new_secret("demo")[..21].to_owned());
    if let Err(e) = fleetup_server::cli::create_user(&database_url, &username, &password, Role::Admin).await {
        // A kept --dir already has the user, and its password cannot be read back.
        anyhow::bail!("cannot create the demo's admin user ({e}); remove {} or pick another --dir", dir.display());
    }
    // Only now start serving: the token and user creation above opened the database
    // (and ran its migrations) first, so two migrators never race on a fresh file.
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(async move {
        let stopped = async move {
            let _ = stop_rx.await;
        };
        fleetup_server::run(config, listener, stopped).await.map_err(|e| anyhow::anyhow!("{e:#}"))
    });
    fleet.set_server(stop_tx, server);
    let api = Client::new(&url, &api_token)?;
    let server = fleet.server_task().context("the coordinator task")?;
    let ended = tokio::select! {
        r = api.wait_healthy(Duration::from_secs(10)) => { r?; None }
        r = server => Some(r),
    };
    if let Some(r) = ended {
        fleet.forget_server();
        anyhow::bail!("the coordinator stopped: {:?}", r?);
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
    let n = usize::from(args.hosts);
    let mut unhealthy = String::new();
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
            unhealthy.clone_from(&name);
        }
        // The service at 1.0, started the way the exec backend does: detached in its own
        // process group, pid in `run/demo.pid`, output to the host's `service.log`.
        let service = fleetup_demo_service::launch(&wrapper, &root, port, &hdir.join("service.log"))?;
        fleet.add_service(service, root.join("run/demo.pid"));
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
        fleet.add_agent(agent);
    }
    api.wait_agents_online(n, Duration::from_mins(1))
        .await
        .context("the demo agents did not come online; see the agent.log files under hosts/")?;

    let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
        "name": "demo-service 1.1.0 to the demo fleet",
        "package_id": package.id,
        "targets": { "labels": { "env": "demo" } },
        "waves": [1, 2, "100%"],
        "concurrency": 1,
        "error_threshold": 2,
        "error_action": "pause",
        "policies": { "warning": "ask", "files_in_use": { "mode": "retry", "times": 3 }, "crl_remediation": "none" },
    }))?;
    let rollout = api.create_rollout(&spec).await?;

    let ready = Ready {
        url,
        username,
        password,
        api_token,
        rollout_id: rollout.id.to_string(),
        dir: dir.display().to_string(),
        unhealthy,
    };
    std::fs::write(dir.join("demo.json"), serde_json::to_vec_pretty(&ready)?)?;
    Ok(ready)
}

fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

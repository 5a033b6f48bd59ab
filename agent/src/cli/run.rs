//! `fleetup-agent run`: the agent daemon's command line.

use crate::daemon::DaemonConfig;
use crate::engine::BackendKind;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options of `fleetup-agent run`.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The coordinator's URL.
    #[arg(long, env = "FLEETUP_SERVER")]
    server: String,
    /// Identity, journal, logs and downloaded packages.
    #[arg(long, env = "FLEETUP_STATE_DIR", default_value = "/var/lib/fleetup-agent")]
    state_dir: PathBuf,
    /// One-time enrollment token; needed only until the agent has enrolled.
    #[arg(long, env = "FLEETUP_ENROLL_TOKEN", hide_env_values = true)]
    enroll_token: Option<String>,
    /// A label to propose at enrollment (repeatable): --label role=web.
    #[arg(long = "label", value_name = "KEY=VALUE")]
    labels: Vec<String>,
    /// The name operators see (default: the kernel's host name).
    #[arg(long)]
    hostname: Option<String>,
    /// The install root packages are installed into.
    #[arg(long, env = "FLEETUP_ROOT")]
    root: PathBuf,
    /// A trusted package-signing public key (repeatable). Packages are verified against
    /// these, never only against what the coordinator says.
    #[arg(long, required = true)]
    trust: Vec<PathBuf>,
    /// A host variable for ${name} in manifests (repeatable): --var port=8080.
    #[arg(long = "var", value_name = "NAME=VALUE")]
    vars: Vec<String>,
    /// How services are stopped and started: exec (commands + pidfile) or systemd.
    #[arg(long, default_value = "systemd", value_parser = super::parse_backend)]
    services_backend: BackendKind,
    /// Hosts file for CRL name resolution and the hosts-file remediation.
    #[arg(long, default_value = "/etc/hosts")]
    hosts_file: PathBuf,
    /// Seconds the coordinator may hold each long-poll.
    #[arg(long, default_value_t = 30)]
    poll_wait: u64,
    /// The CA (PEM) the coordinator's https certificate must chain to, e.g. the ca.pem of
    /// `fleetup-server tls init`. Default: the system's CA store.
    #[arg(long, value_name = "FILE", env = "FLEETUP_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Allow plain http:// to a coordinator that is not on loopback (warned about on every
    /// start). Without it such a URL is refused before anything connects.
    #[arg(long, env = "FLEETUP_INSECURE_HTTP")]
    insecure_http: bool,
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    let tls = crate::daemon::tls::TlsLink { ca_cert: args.ca_cert, insecure_http: args.insecure_http };
    if let Some(warning) = tls.check(&args.server)? {
        tracing::warn!("{warning}");
    }
    let labels = args
        .labels
        .iter()
        .map(|l| {
            l.split_once('=')
                .map(|(k, v)| (k.to_owned(), v.to_owned()))
                .ok_or_else(|| anyhow::anyhow!("--label '{l}' is not KEY=VALUE"))
        })
        .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
    let config = DaemonConfig {
        server: args.server,
        state_dir: args.state_dir,
        enroll_token: args.enroll_token,
        hostname: args.hostname,
        labels,
        root: args.root,
        trusted: crate::packaging::read_trusted(&args.trust)?,
        vars: super::install::parse_vars(&args.vars)?,
        backend: args.services_backend,
        hosts_file: args.hosts_file,
        poll_wait: Duration::from_secs(args.poll_wait),
        tls,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("stopping: the agent exits between jobs");
        };
        crate::daemon::run(config, shutdown).await
    })?;
    Ok(ExitCode::SUCCESS)
}

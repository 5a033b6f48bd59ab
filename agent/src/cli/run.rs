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
    /// Slowest package download in bytes per second, averaged over --download-rate-window:
    /// a slower attempt is abandoned and resumed (HTTP Range) after a pause.
    #[arg(long, env = "FLEETUP_DOWNLOAD_MIN_RATE", default_value_t = 1024)]
    download_min_rate: u64,
    /// Seconds over which --download-min-rate is measured.
    #[arg(long, env = "FLEETUP_DOWNLOAD_RATE_WINDOW", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..))]
    download_rate_window: u64,
}

/// The exit status of `fleetup-agent run` when a stop (SIGTERM from `systemctl stop`, or
/// SIGINT) interrupted a job that then did not succeed: 128 + the signal (143, 130), as
/// `fleetup-agent install` does. A stop between jobs, or during a job that finished
/// successfully anyway (a cancel is refused from `post-precompile` on), exits 0.
fn stopped_exit(stopped: crate::daemon::Stopped, signal: i32) -> ExitCode {
    match stopped {
        crate::daemon::Stopped::DuringJob(outcome)
            if !outcome.is_some_and(fleetup_proto::InstallOutcome::is_success) =>
        {
            ExitCode::from(128 + u8::try_from(signal).unwrap_or(15))
        }
        _ => ExitCode::SUCCESS,
    }
}

/// Runs the daemon until SIGINT or SIGTERM.
pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
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
        download_floor: crate::daemon::DownloadFloor {
            min_bytes_per_sec: args.download_min_rate,
            window: Duration::from_secs(args.download_rate_window),
        },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let signal = std::sync::atomic::AtomicI32::new(0);
    let stopped = runtime.block_on(async {
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("a SIGTERM handler");
            let (sig, name) = tokio::select! {
                _ = tokio::signal::ctrl_c() => (nix::sys::signal::Signal::SIGINT, "SIGINT"),
                _ = term.recv() => (nix::sys::signal::Signal::SIGTERM, "SIGTERM"),
            };
            signal.store(sig as i32, std::sync::atomic::Ordering::SeqCst);
            tracing::info!("{name} received: stopping (a job in progress is cancelled as its phase allows)");
        };
        crate::daemon::run(config, shutdown).await
    })?;
    Ok(stopped_exit(stopped, signal.load(std::sync::atomic::Ordering::SeqCst)))
}

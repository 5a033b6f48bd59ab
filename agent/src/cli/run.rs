//! `fleetup-agent run` and `fleetup-agent enroll`: the agent daemon's options, from the
//! command line, `FLEETUP_*` environment variables and `/etc/fleetup/agent.toml`, in that
//! order of precedence (so the shipped systemd unit works unchanged).

use crate::daemon::DaemonConfig;
use crate::daemon::tls::TlsLink;
use crate::engine::BackendKind;
use fleetup_proto::logging::LogFormat;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Where the packaged agent reads its configuration.
pub const DEFAULT_CONFIG: &str = "/etc/fleetup/agent.toml";

/// Options of `fleetup-agent run` (and `enroll`). Every option may also be set in the
/// configuration file, under its long name with `_` for `-` (see docs/operations.md).
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The configuration file (TOML). Options given here or in the environment override
    /// it; a missing file at the default path is no error.
    #[arg(long, env = "FLEETUP_AGENT_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// The coordinator's URL, e.g. https://fleetup.example:8443.
    #[arg(long, env = "FLEETUP_SERVER")]
    server: Option<String>,
    /// Identity, journal, logs and downloaded packages [default: /var/lib/fleetup-agent].
    #[arg(long, env = "FLEETUP_STATE_DIR")]
    state_dir: Option<PathBuf>,
    /// One-time enrollment token; needed only until the agent has enrolled.
    #[arg(long, alias = "token", env = "FLEETUP_ENROLL_TOKEN", hide_env_values = true)]
    enroll_token: Option<String>,
    /// A label to propose at enrollment (repeatable): --label role=web.
    #[arg(long = "label", value_name = "KEY=VALUE", env = "FLEETUP_LABELS")]
    labels: Vec<String>,
    /// The name operators see (default: the kernel's host name).
    #[arg(long, env = "FLEETUP_HOSTNAME")]
    hostname: Option<String>,
    /// The install root packages are installed into.
    #[arg(long, env = "FLEETUP_ROOT")]
    root: Option<PathBuf>,
    /// A trusted package-signing public key (repeatable). Packages are verified against
    /// these, never only against what the coordinator says.
    #[arg(long, env = "FLEETUP_TRUST", value_delimiter = ',')]
    trust: Vec<PathBuf>,
    /// A host variable for ${name} in manifests (repeatable): --var port=8080.
    #[arg(long = "var", value_name = "NAME=VALUE", env = "FLEETUP_VARS")]
    vars: Vec<String>,
    /// How services are stopped and started: exec (commands + pidfile) or systemd
    /// [default: systemd].
    #[arg(long, env = "FLEETUP_SERVICES_BACKEND", value_parser = super::parse_backend)]
    services_backend: Option<BackendKind>,
    /// Hosts file for CRL name resolution and the hosts-file remediation [default: /etc/hosts].
    #[arg(long, env = "FLEETUP_HOSTS_FILE")]
    hosts_file: Option<PathBuf>,
    /// Seconds the coordinator may hold each long-poll [default: 30].
    #[arg(long, env = "FLEETUP_POLL_WAIT")]
    poll_wait: Option<u64>,
    /// The CA (PEM) the coordinator's https certificate must chain to, e.g. the ca.pem of
    /// `fleetup-server tls init`. Default: the system's CA store.
    #[arg(long, value_name = "FILE", env = "FLEETUP_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Allow plain http:// to a coordinator that is not on loopback (warned about on every
    /// start). Without it such a URL is refused before anything connects.
    #[arg(long, env = "FLEETUP_INSECURE_HTTP")]
    insecure_http: bool,
    /// Log lines as text or json (one object per line) [default: text]. Levels: RUST_LOG.
    #[arg(long, env = "FLEETUP_LOG_FORMAT")]
    log_format: Option<LogFormat>,
    /// Slowest package download in bytes per second, averaged over --download-rate-window:
    /// a slower attempt is abandoned and resumed (HTTP Range) after a pause [default: 1024].
    #[arg(long, env = "FLEETUP_DOWNLOAD_MIN_RATE")]
    download_min_rate: Option<u64>,
    /// Seconds over which --download-min-rate is measured [default: 30].
    #[arg(long, env = "FLEETUP_DOWNLOAD_RATE_WINDOW", value_parser = clap::value_parser!(u64).range(1..))]
    download_rate_window: Option<u64>,
}

/// The configuration file: the same options as the command line.
#[derive(Debug, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    server: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ca_cert: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    insecure_http: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state_dir: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    enroll_token: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hostname: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    root: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    trust: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    services_backend: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    hosts_file: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    poll_wait: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    log_format: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    vars: BTreeMap<String, String>,
}

impl FileConfig {
    /// Reads `path`; empty when it does not exist and `missing_ok` (`enroll` creates it)
    /// or it is the default path.
    fn read(path: &Path, missing_ok: bool) -> anyhow::Result<Self> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text).map_err(|e| anyhow::anyhow!("{}: {e}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && (missing_ok || path == Path::new(DEFAULT_CONFIG)) => {
                Ok(Self::default())
            }
            Err(e) => Err(anyhow::anyhow!("cannot read the configuration file {}: {e}", path.display())),
        }
    }
}

/// `KEY=VALUE` pairs of the command line over the file's table.
fn merge_pairs(
    flag: &str,
    from_file: &BTreeMap<String, String>,
    given: &[String],
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out = from_file.clone();
    for pair in given {
        let (k, v) = pair.split_once('=').ok_or_else(|| anyhow::anyhow!("{flag} '{pair}' is not KEY=VALUE"))?;
        out.insert(k.to_owned(), v.to_owned());
    }
    Ok(out)
}

/// The options after the command line, the environment and the file are combined.
struct Resolved {
    config: DaemonConfig,
    log_format: LogFormat,
    /// What `enroll` writes back to the file (never the token).
    file: FileConfig,
}

fn resolve(args: RunArgs, missing_ok: bool) -> anyhow::Result<Resolved> {
    let file = FileConfig::read(&args.config, missing_ok)?;
    let from = |what: &str| format!("--{what} (or `{}` in {})", what.replace('-', "_"), args.config.display());
    let server = args
        .server
        .or(file.server)
        .ok_or_else(|| anyhow::anyhow!("the coordinator is not set: give {}", from("server")))?;
    let root =
        args.root.or(file.root).ok_or_else(|| anyhow::anyhow!("the install root is not set: give {}", from("root")))?;
    let trust = if args.trust.is_empty() { file.trust } else { args.trust };
    anyhow::ensure!(!trust.is_empty(), "no package-signing key is trusted: give {}", from("trust"));
    let backend = match (args.services_backend, &file.services_backend) {
        (Some(b), _) => b,
        (None, Some(s)) => {
            super::parse_backend(s).map_err(|e| anyhow::anyhow!("{}: services_backend: {e}", args.config.display()))?
        }
        (None, None) => BackendKind::Systemd,
    };
    let log_format = match (args.log_format, &file.log_format) {
        (Some(f), _) => f,
        (None, Some(s)) => s.parse().map_err(|e| anyhow::anyhow!("{}: log_format: {e}", args.config.display()))?,
        (None, None) => LogFormat::Text,
    };
    let labels = merge_pairs("--label", &file.labels, &args.labels)?;
    let vars = merge_pairs("--var", &file.vars, &args.vars)?;
    let var_list: Vec<String> = vars.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let tls = TlsLink {
        ca_cert: args.ca_cert.or(file.ca_cert),
        insecure_http: args.insecure_http || file.insecure_http == Some(true),
    };
    let config = DaemonConfig {
        server,
        state_dir: args.state_dir.or(file.state_dir).unwrap_or_else(|| "/var/lib/fleetup-agent".into()),
        enroll_token: args.enroll_token.or(file.enroll_token),
        hostname: args.hostname.or(file.hostname),
        labels,
        root,
        trusted: crate::packaging::read_trusted(&trust)?,
        vars: super::install::parse_vars(&var_list)?,
        backend,
        hosts_file: args.hosts_file.or(file.hosts_file).unwrap_or_else(|| "/etc/hosts".into()),
        poll_wait: Duration::from_secs(args.poll_wait.or(file.poll_wait).unwrap_or(30)),
        download_floor: crate::daemon::DownloadFloor {
            min_bytes_per_sec: args.download_min_rate.unwrap_or(1024),
            window: Duration::from_secs(args.download_rate_window.unwrap_or(30)),
        },
        tls,
    };
    let file = FileConfig {
        server: Some(config.server.clone()),
        ca_cert: config.tls.ca_cert.clone(),
        insecure_http: config.tls.insecure_http.then_some(true),
        state_dir: Some(config.state_dir.clone()),
        enroll_token: None,
        hostname: config.hostname.clone(),
        root: Some(config.root.clone()),
        trust,
        services_backend: Some(backend.as_str().to_owned()),
        hosts_file: Some(config.hosts_file.clone()),
        poll_wait: Some(config.poll_wait.as_secs()),
        log_format: Some(if log_format == LogFormat::Json { "json" } else { "text" }.to_owned()),
        labels: config.labels.clone(),
        vars,
    };
    Ok(Resolved { config, log_format, file })
}

/// Checks the coordinator's URL before anything connects, warning when it is plain HTTP
/// beyond loopback under `--insecure-http`.
fn check_link(config: &DaemonConfig) -> anyhow::Result<()> {
    if let Some(warning) = config.tls.check(&config.server)? {
        tracing::warn!("{warning}");
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?)
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
    let Resolved { config, log_format, .. } = resolve(args, false)?;
    fleetup_proto::logging::init(log_format, "RUST_LOG");
    check_link(&config)?;
    let signal = std::sync::atomic::AtomicI32::new(0);
    let stopped = runtime()?.block_on(async {
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

/// How long `enroll` tries to reach the coordinator.
const ENROLL_DEADLINE: Duration = Duration::from_mins(1);

/// Enrolls now (unless already enrolled) and writes the resolved options, without the
/// token, to the configuration file, so that `systemctl enable --now fleetup-agent` starts
/// an agent that needs nothing more.
pub fn enroll(args: RunArgs) -> anyhow::Result<ExitCode> {
    let path = args.config.clone();
    let Resolved { config, log_format, file } = resolve(args, true)?;
    fleetup_proto::logging::init(log_format, "RUST_LOG");
    check_link(&config)?;
    let agent_id = runtime()?.block_on(async {
        tokio::time::timeout(ENROLL_DEADLINE, crate::daemon::enroll_once(&config)).await.map_err(|_| {
            anyhow::anyhow!(
                "could not enroll with {} within {}s (see the warnings above); nothing was written",
                config.server,
                ENROLL_DEADLINE.as_secs()
            )
        })?
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let text = format!(
        "# Written by `fleetup-agent enroll`; command-line options and FLEETUP_* variables override it.\n{}",
        toml::to_string(&file)?
    );
    let tmp = path.with_extension("toml.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, &path)?;
    println!("enrolled as agent {agent_id}; wrote {}", path.display());
    println!("start it: systemctl enable --now fleetup-agent");
    Ok(ExitCode::SUCCESS)
}

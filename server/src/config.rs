//! Server configuration: the `serve` command line, also built directly by tests.

use std::path::PathBuf;
use std::time::Duration;

/// Options of `fleetup-server serve` (and the database option of every command).
#[derive(Clone, clap::Args)]
pub struct Config {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080", env = "FLEETUP_LISTEN")]
    pub listen: String,
    /// Database URL: `sqlite:PATH` (created if missing) or `postgres://USER@HOST/DB`.
    #[arg(long, default_value = "sqlite:fleetup.db", env = "FLEETUP_DATABASE_URL")]
    pub database_url: String,
    /// A trusted package-signing public key (`.pub` file); repeat for several. Uploads
    /// signed by any other key are refused.
    #[arg(long = "trust", value_name = "KEY.pub", env = "FLEETUP_TRUST", value_delimiter = ',')]
    pub trust: Vec<PathBuf>,
    /// Directory where uploaded packages are kept.
    #[arg(long, default_value = "fleetup-data", env = "FLEETUP_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Default job lease in seconds: an agent silent for longer loses its job.
    #[arg(long, default_value_t = 60)]
    pub lease_secs: u64,
    /// Default delivery timeout in seconds: a ready job its agent does not collect within it
    /// becomes `undeliverable` and frees its slot (a rollout may set its own).
    #[arg(long, default_value_t = 900, env = "FLEETUP_DELIVERY_TIMEOUT_SECS")]
    pub delivery_timeout_secs: u64,
    /// Milliseconds between scheduler passes (a pass also runs when a job ends).
    #[arg(long, default_value_t = 1000)]
    pub scheduler_interval_ms: u64,
    /// Milliseconds between flushes of agents' last-seen times to the database.
    #[arg(long, default_value_t = 10_000)]
    pub heartbeat_flush_ms: u64,
    /// An agent not seen for this many seconds is shown offline.
    #[arg(long, default_value_t = 90)]
    pub offline_after_secs: u64,
    /// Longest long-poll hold in seconds (an agent's `wait` is capped to this).
    #[arg(long, default_value_t = 60)]
    pub max_poll_wait_secs: u64,
    /// Largest package upload in bytes.
    #[arg(long, default_value_t = 2 << 30)]
    pub max_package_bytes: u64,
    /// Minutes a dashboard session may go unused before it ends, besides its absolute
    /// 12-hour lifetime. Fractions are allowed (`0.5` is 30 seconds).
    #[arg(long = "session-idle-mins", env = "FLEETUP_SESSION_IDLE_MINS", default_value = "30", value_parser = parse_minutes)]
    pub session_idle: Duration,
    /// Stall alarm: a running phase is flagged `stalled` past this multiple of the p95 its
    /// package's finished jobs took in that phase (the host's own history first)…
    #[arg(long, default_value_t = 3.0, env = "FLEETUP_STALL_FACTOR")]
    pub stall_factor: f64,
    /// …and past this many seconds too, however quick the phase usually is.
    #[arg(long, default_value_t = 300, env = "FLEETUP_STALL_FLOOR_SECS")]
    pub stall_floor_secs: u64,
    /// Serve HTTPS with this PEM certificate chain (with `--tls-key`; reloaded on SIGHUP).
    /// Without it the coordinator speaks plain HTTP (for loopback or behind a TLS proxy).
    #[arg(long, value_name = "FILE", env = "FLEETUP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The PEM private key of `--tls-cert`.
    #[arg(long, value_name = "FILE", env = "FLEETUP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Sees every answer of the HTTP API (the test suite's contract check); never set from
    /// the command line.
    #[arg(skip)]
    pub observer: Option<crate::api::observe::Observer>,
    /// Allow webhook URLs on loopback, private, link-local and other non-public addresses
    /// (refused by default: a webhook must not reach into the coordinator's own network).
    #[arg(long, env = "FLEETUP_WEBHOOK_ALLOW_PRIVATE")]
    pub webhook_allow_private: bool,
    /// Milliseconds before a failed webhook delivery's first retry; each further retry
    /// waits twice as long (with jitter), up to an hour, for 10 attempts in all.
    #[arg(long, default_value_t = 10_000, env = "FLEETUP_WEBHOOK_RETRY_BASE_MS")]
    pub webhook_retry_base_ms: u64,
}

/// `--session-idle-mins`: a positive number of minutes, fractions allowed.
fn parse_minutes(s: &str) -> Result<Duration, String> {
    let mins: f64 = s.trim().parse().map_err(|_| format!("'{s}' is not a number of minutes"))?;
    if mins.is_nan() || mins <= 0.0 {
        return Err("the idle timeout must be more than 0 minutes".into());
    }
    Duration::try_from_secs_f64(mins * 60.0).map_err(|e| format!("'{s}' minutes: {e}"))
}

impl Config {
    /// Defaults for a database URL and data dir (tests adjust the rest).
    pub fn new(database_url: &str, data_dir: PathBuf) -> Self {
        Self {
            listen: "127.0.0.1:0".into(),
            database_url: database_url.into(),
            trust: Vec::new(),
            data_dir,
            lease_secs: 60,
            delivery_timeout_secs: 900,
            scheduler_interval_ms: 1000,
            heartbeat_flush_ms: 10_000,
            offline_after_secs: 90,
            max_poll_wait_secs: 60,
            max_package_bytes: 2 << 30,
            session_idle: Duration::from_mins(30),
            stall_factor: 3.0,
            stall_floor_secs: 300,
            tls_cert: None,
            tls_key: None,
            observer: None,
            webhook_allow_private: false,
            webhook_retry_base_ms: 10_000,
        }
    }

    /// The certificate pair to serve HTTPS with, if any.
    pub fn tls(&self) -> Option<crate::tls::PemPair> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(crate::tls::PemPair { cert: cert.clone(), key: key.clone() }),
            _ => None,
        }
    }

    /// See `scheduler_interval_ms`.
    pub fn scheduler_interval(&self) -> Duration {
        Duration::from_millis(self.scheduler_interval_ms.max(10))
    }
}

/// The database URL with any password hidden.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("listen", &self.listen)
            .field("database_url", &redact_url(&self.database_url))
            .field("trust", &self.trust)
            .field("data_dir", &self.data_dir)
            .field("lease_secs", &self.lease_secs)
            .field("delivery_timeout_secs", &self.delivery_timeout_secs)
            .field("scheduler_interval_ms", &self.scheduler_interval_ms)
            .field("session_idle", &self.session_idle)
            .field("tls_cert", &self.tls_cert)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn password_is_redacted() {
        assert_eq!(super::redact_url("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(super::redact_url("sqlite:x.db"), "sqlite:x.db");
    }

    #[test]
    fn idle_minutes_take_fractions_and_refuse_nonsense() {
        assert_eq!(super::parse_minutes("30"), Ok(std::time::Duration::from_mins(30)));
        assert_eq!(super::parse_minutes("0.5"), Ok(std::time::Duration::from_secs(30)));
        for bad in ["0", "-1", "soon", "NaN"] {
            assert!(super::parse_minutes(bad).is_err(), "{bad}");
        }
    }
}

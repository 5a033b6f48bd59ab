//! How both binaries log: to stderr, as text or one JSON object per line, and without ANSI
//! colour unless stderr is a terminal (journald and log files get plain text).

use std::io::IsTerminal as _;

/// `--log-format`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line (for log shippers).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "text" => Ok(Self::Text),
            "json" => Ok(Self::Json),
            _ => Err(format!("'{s}' is not a log format: text or json")),
        }
    }
}

/// Installs the process's subscriber: level filter from the environment variable
/// `filter_var` (e.g. `info,fleetup_server=debug`), `info` when unset. Colour only when
/// stderr is a terminal and `NO_COLOR` is unset.
pub fn init(format: LogFormat, filter_var: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env(filter_var).unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            builder.with_ansi(ansi).init();
        }
        LogFormat::Json => builder.json().with_ansi(false).init(),
    }
}

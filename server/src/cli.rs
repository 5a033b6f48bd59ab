//! The command line: `serve`, `token create`, `user create`, `tls init`.

use crate::config::Config;
use crate::model::Role;
use clap::{Parser, Subcommand};

/// fleetup coordinator: rollout plans, the agent protocol, the REST API.
#[derive(Debug, Parser)]
#[command(name = "fleetup-server", version)]
pub struct Cli {
    /// Log lines as `text` or `json` (one object per line). Levels: FLEETUP_LOG.
    #[arg(long, global = true, default_value = "text", env = "FLEETUP_LOG_FORMAT")]
    pub log_format: fleetup_proto::logging::LogFormat,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
#[allow(clippy::large_enum_variant, reason = "parsed once at start; boxing the serve options buys nothing")]
pub enum Command {
    /// Run the coordinator.
    Serve(Config),
    /// Manage API tokens.
    Token {
        /// What to do with tokens.
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage dashboard users.
    User {
        /// What to do with users.
        #[command(subcommand)]
        command: UserCommand,
    },
    /// Certificates for HTTPS.
    Tls {
        /// What to do.
        #[command(subcommand)]
        command: TlsCommand,
    },
}

/// TLS commands.
#[derive(Debug, Subcommand)]
pub enum TlsCommand {
    /// Make a private CA and a server certificate signed by it (ca.pem, ca-key.pem,
    /// server.pem, server-key.pem in DIR) and print the CA's SHA-256 fingerprint. Serve
    /// with `--tls-cert DIR/server.pem --tls-key DIR/server-key.pem`; give agents
    /// `--ca-cert ca.pem`.
    Init {
        /// Where to write the files (created; existing files are never overwritten).
        #[arg(long)]
        dir: std::path::PathBuf,
        /// A name agents use to reach the coordinator: a DNS name or an IP address
        /// (repeatable; the first is the certificate's common name).
        #[arg(long = "name", value_name = "HOST", required = true)]
        names: Vec<String>,
        /// Validity of both certificates in days.
        #[arg(long, default_value_t = 825)]
        days: u32,
    },
}

/// User commands.
#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a dashboard login (password hashed with argon2id).
    Create {
        /// Login name.
        #[arg(long)]
        username: String,
        /// What the user may do.
        #[arg(long)]
        role: Role,
        /// Read the password from the first line of standard input instead of asking.
        #[arg(long)]
        password_stdin: bool,
        /// Database URL (as for `serve`).
        #[arg(long, default_value = "sqlite:fleetup.db", env = "FLEETUP_DATABASE_URL")]
        database_url: String,
    },
}

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token and print it (shown once; only its hash is stored).
    Create {
        /// What the token may do.
        #[arg(long)]
        role: Role,
        /// A name, recorded in the audit log as `token:NAME`.
        #[arg(long)]
        name: String,
        /// Database URL (as for `serve`).
        #[arg(long, default_value = "sqlite:fleetup.db", env = "FLEETUP_DATABASE_URL")]
        database_url: String,
    },
}

/// The command line acts as an admin (whoever can reach the database can do anything).
fn cli_actor() -> crate::ops::Actor {
    crate::ops::Actor::new("cli", Role::Admin)
}

/// Creates an API token in the database and returns the secret.
pub async fn create_token(database_url: &str, role: Role, name: &str) -> Result<String, crate::error::AppError> {
    let store = crate::store::connect(database_url).await?;
    crate::ops::access::create_api_token(&store, &cli_actor(), role, name).await
}

/// Creates a dashboard user in the database (see [`crate::ops::access::create_user`]).
pub async fn create_user(
    database_url: &str,
    username: &str,
    password: &str,
    role: Role,
) -> Result<(), crate::error::AppError> {
    let store = crate::store::connect(database_url).await?;
    crate::ops::access::create_user(&store, &cli_actor(), username, password, role).await
}

/// Reads a password: the first line of standard input, or asked on the terminal without
/// echo (`stty -echo`) when `from_stdin` is false and standard input is a terminal.
pub fn read_password(from_stdin: bool) -> std::io::Result<String> {
    use std::io::{BufRead as _, IsTerminal as _, Write as _};
    let stdin = std::io::stdin();
    let interactive = !from_stdin && stdin.is_terminal();
    let stty = |arg: &str| {
        let _ = std::process::Command::new("stty").arg(arg).stdin(std::process::Stdio::inherit()).status();
    };
    let ask = |prompt: &str| -> std::io::Result<String> {
        if interactive {
            eprint!("{prompt}");
            std::io::stderr().flush()?;
            stty("-echo");
        }
        let mut line = String::new();
        let read = stdin.lock().read_line(&mut line);
        if interactive {
            stty("echo");
            eprintln!();
        }
        read?;
        Ok(line.trim_end_matches(['\n', '\r']).to_owned())
    };
    let password = ask("Password: ")?;
    if interactive && ask("Repeat the password: ")? != password {
        return Err(std::io::Error::other("the passwords differ"));
    }
    Ok(password)
}

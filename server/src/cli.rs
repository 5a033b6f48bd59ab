//! The command line: `serve`, `token create|list|revoke`, `enrollment-token list|revoke`,
//! `user create|list|disable|enable|reset-password`, `tls init`. The token and user commands act on the database directly, as `cli` in the audit log.

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
    /// List and revoke the enrollment tokens agents enroll with.
    EnrollmentToken {
        /// What to do with enrollment tokens.
        #[command(subcommand)]
        command: EnrollmentTokenCommand,
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
    /// List dashboard users (name, role, created, disabled).
    List {
        /// Database URL (as for `serve`).
        #[arg(long, default_value = "sqlite:fleetup.db", env = "FLEETUP_DATABASE_URL")]
        database_url: String,
    },
    /// Disable a user: they cannot log in and their sessions end at once.
    Disable {
        /// Login name.
        #[arg(long)]
        username: String,
        /// Database URL (as for `serve`).
        #[arg(long, default_value = "sqlite:fleetup.db", env = "FLEETUP_DATABASE_URL")]
        database_url: String,
    },
    /// Enable a disabled user again.
    Enable {
        /// Login name.
        #[arg(long)]
        username: String,
        /// Database URL (as for `serve`).
        #[arg(long, default_value = "sqlite:fleetup.db", env = "FLEETUP_DATABASE_URL")]
        database_url: String,
    },
    /// Give a user a new password (asked, or read from standard input); their sessions end.
    ResetPassword {
        /// Login name.
        #[arg(long)]
        username: String,
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
        /// Lifetime: seconds, or a number with s, m, h or d (`90d`, `12h`); at most ten
        /// years. Left out: the token never expires.
        #[arg(long, value_parser = parse_lifetime)]
        expires_in: Option<u64>,
        /// Database URL (as for `serve`).
        #[arg(long, default_value = "sqlite:fleetup.db", env = "FLEETUP_DATABASE_URL")]
        database_url: String,
    },
    /// List API tokens (never their secrets): id, name, role, created, expires, last used,
    /// revoked.
    List {
        /// Database URL (as for `serve`).
        #[arg(long, default_value = "sqlite:fleetup.db", env = "FLEETUP_DATABASE_URL")]
        database_url: String,
    },
    /// Revoke an API token: it is refused (401 `token-revoked`) from its next request on.
    Revoke {
        /// The token's id, as `token list` shows it.
        id: String,
        /// Database URL (as for `serve`).
        #[arg(long, default_value = "sqlite:fleetup.db", env = "FLEETUP_DATABASE_URL")]
        database_url: String,
    },
}

/// Enrollment token commands (they are created over the API or on the dashboard).
#[derive(Debug, Subcommand)]
pub enum EnrollmentTokenCommand {
    /// List enrollment tokens (never their secrets): id, name, uses, expires, state.
    List {
        /// Database URL (as for `serve`).
        #[arg(long, default_value = "sqlite:fleetup.db", env = "FLEETUP_DATABASE_URL")]
        database_url: String,
    },
    /// Revoke an enrollment token: no agent enrolls with it any more (agents enrolled with
    /// it keep working).
    Revoke {
        /// The token's id, as `enrollment-token list` shows it.
        id: String,
        /// Database URL (as for `serve`).
        #[arg(long, default_value = "sqlite:fleetup.db", env = "FLEETUP_DATABASE_URL")]
        database_url: String,
    },
}

/// A lifetime in seconds from `3600`, `3600s`, `30m`, `12h` or `90d`.
pub fn parse_lifetime(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (number, unit) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => (&s[..i], c),
        _ => (s, 's'),
    };
    let scale = match unit {
        's' => 1,
        'm' => 60,
        'h' => 3600,
        'd' => 86_400,
        other => return Err(format!("unknown unit '{other}' in '{s}': use s, m, h or d (90d, 12h, 30m)")),
    };
    let n: u64 =
        number.parse().map_err(|_| format!("'{s}' is not a lifetime: write a number and s, m, h or d (90d)"))?;
    match n.checked_mul(scale) {
        Some(0) => Err("the lifetime must be at least one second".into()),
        Some(secs) => Ok(secs),
        None => Err(format!("'{s}' is too long")),
    }
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

/// Creates an API token with an optional lifetime in seconds; the secret is in the answer.
pub async fn create_expiring_token(
    database_url: &str,
    role: Role,
    name: &str,
    expires_in_secs: Option<u64>,
) -> Result<crate::model::CreatedApiToken, crate::error::AppError> {
    let store = crate::store::connect(database_url).await?;
    let new = crate::model::NewApiToken { name: name.to_owned(), role, expires_in_secs };
    crate::ops::access::issue_api_token(&store, &cli_actor(), &new).await
}

/// Every API token, newest first, as a table for people.
pub async fn list_tokens(database_url: &str) -> Result<String, crate::error::AppError> {
    use std::fmt::Write as _;
    let store = crate::store::connect(database_url).await?;
    let tokens = store.api_tokens_page(None, u64::MAX).await?;
    let now = chrono::Utc::now();
    let time = |t: Option<chrono::DateTime<chrono::Utc>>| {
        t.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string())
    };
    let mut out = format!(
        "{:<28} {:<20} {:<8} {:<16} {:<16} {:<16} {}\n",
        "ID", "NAME", "ROLE", "CREATED", "EXPIRES", "LAST USED", "STATE"
    );
    for t in &tokens {
        let state = t.state(now);
        let _ = writeln!(
            out,
            "{:<28} {:<20} {:<8} {:<16} {:<16} {:<16} {state}",
            t.id.as_str(),
            t.name,
            t.role.as_str(),
            time(Some(t.created_at)),
            time(t.expires_at),
            time(t.last_used_at),
        );
    }
    Ok(out)
}

/// Revokes an API token by id.
pub async fn revoke_token(database_url: &str, id: &str) -> Result<(), crate::error::AppError> {
    let id: crate::model::TokenId = id.parse()?;
    let store = crate::store::connect(database_url).await?;
    crate::ops::access::revoke_api_token(&store, &cli_actor(), &id).await
}

/// Every enrollment token, newest first, as a table for people.
pub async fn list_enrollment_tokens(database_url: &str) -> Result<String, crate::error::AppError> {
    use std::fmt::Write as _;
    let store = crate::store::connect(database_url).await?;
    let now = chrono::Utc::now();
    let mut out = format!("{:<28} {:<20} {:<9} {:<16} {}\n", "ID", "NAME", "USES", "EXPIRES", "STATE");
    for t in store.list_enrollment_tokens().await? {
        let uses = t.max_uses.map_or_else(|| t.uses.to_string(), |m| format!("{}/{m}", t.uses));
        let expires = t.expires_at.map_or_else(|| "-".to_owned(), |e| e.format("%Y-%m-%d %H:%M").to_string());
        let state = if t.revoked_at.is_some() {
            "revoked"
        } else if t.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else if t.max_uses.is_some_and(|m| t.uses >= m) {
            "used-up"
        } else {
            "live"
        };
        let _ = writeln!(out, "{:<28} {:<20} {uses:<9} {expires:<16} {state}", t.id.as_str(), t.name);
    }
    Ok(out)
}

/// Revokes an enrollment token by id.
pub async fn revoke_enrollment_token(database_url: &str, id: &str) -> Result<(), crate::error::AppError> {
    let id: crate::model::TokenId = id.parse()?;
    let store = crate::store::connect(database_url).await?;
    crate::ops::access::revoke_enrollment_token(&store, &cli_actor(), &id).await
}

/// Every dashboard user, by name, as a table for people.
pub async fn list_users(database_url: &str) -> Result<String, crate::error::AppError> {
    use std::fmt::Write as _;
    let store = crate::store::connect(database_url).await?;
    let users = store.users_page(None, u64::MAX).await?;
    let mut out = format!("{:<24} {:<8} {:<16} {}\n", "USERNAME", "ROLE", "CREATED", "DISABLED");
    for u in &users {
        let disabled = u.disabled_at.map_or_else(|| "-".to_owned(), |t| t.format("%Y-%m-%d %H:%M").to_string());
        let created = u.created_at.format("%Y-%m-%d %H:%M").to_string();
        let _ = writeln!(out, "{:<24} {:<8} {created:<16} {disabled}", u.username, u.role.as_str());
    }
    Ok(out)
}

/// Disables (`true`) or enables a dashboard user.
pub async fn set_user_disabled(
    database_url: &str,
    username: &str,
    disabled: bool,
) -> Result<(), crate::error::AppError> {
    let store = crate::store::connect(database_url).await?;
    crate::ops::access::set_user_disabled(&store, &cli_actor(), username, disabled).await.map(drop)
}

/// Gives a dashboard user a new password (their sessions end).
pub async fn reset_password(database_url: &str, username: &str, password: &str) -> Result<(), crate::error::AppError> {
    let store = crate::store::connect(database_url).await?;
    crate::ops::access::reset_password(&store, &cli_actor(), username, password).await
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

#[cfg(test)]
mod tests {
    use super::parse_lifetime;

    #[test]
    fn lifetimes_read_with_their_units() {
        assert_eq!(parse_lifetime("3600"), Ok(3600));
        assert_eq!(parse_lifetime("45s"), Ok(45));
        assert_eq!(parse_lifetime("30m"), Ok(1800));
        assert_eq!(parse_lifetime("12h"), Ok(43_200));
        assert_eq!(parse_lifetime("90d"), Ok(90 * 86_400));
        for bad in ["", "d", "0", "0d", "12w", "-1h", "1.5h", "99999999999999999999d"] {
            assert!(parse_lifetime(bad).is_err(), "{bad}");
        }
    }
}

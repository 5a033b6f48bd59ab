//! The command line: `serve` and `token create`.

use crate::config::Config;
use crate::model::Role;
use clap::{Parser, Subcommand};

/// fleetup coordinator: rollout plans, the agent protocol, the REST API.
#[derive(Debug, Parser)]
#[command(name = "fleetup-server", version)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the coordinator.
    Serve(Config),
    /// Manage API tokens.
    Token {
        /// What to do with tokens.
        #[command(subcommand)]
        command: TokenCommand,
    },
}

/// Token commands.
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Create an API token and print it (shown once; only its hash is stored).
    Create {
        /// What the token may do.
        #[arg(long, value_enum)]
        role: Role,
        /// A name, recorded in the audit log as `token:NAME`.
        #[arg(long)]
        name: String,
        /// Database URL (as for `serve`).
        #[arg(long, default_value = "sqlite:fleetup.db", env = "FLEETUP_DATABASE_URL")]
        database_url: String,
    },
}

/// Creates an API token in the database and returns the secret.
pub async fn create_token(database_url: &str, role: Role, name: &str) -> Result<String, crate::store::StoreError> {
    let store = crate::store::connect(database_url).await?;
    let secret = crate::auth::new_secret("flt");
    let id = crate::store::sql::new_id();
    let audit = crate::store::NewAudit::new(
        "cli",
        "api-token.create",
        "api-token",
        &id,
        serde_json::json!({ "name": name, "role": role.as_str() }),
    );
    store.create_api_token(&id, name, role, &crate::auth::hash_secret(&secret), &audit).await?;
    Ok(secret)
}

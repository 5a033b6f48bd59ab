//! fleetupctl, the operator CLI of a fleetup coordinator: everything an operator does with
//! curl and jq against `/api/v1` (docs/api.md shows both side by side), through the one
//! typed client (`fleetup-client`), with a saved context, rollout spec files applied
//! idempotently, live progress, and `--output json` on every command for scripts.
//!
//! A binary of its own, not a subcommand of `fleetup`: what an operator installs on a
//! laptop links no coordinator, agent or SQLite (docs/decisions.md, "ctl").

mod apply;
mod cli;
mod context;
mod fail;
mod fleet;
mod output;
mod plan;
mod rollouts;
mod spec;
mod watch;

pub use fail::{Failure, code};

use clap::{CommandFactory as _, Parser as _};
use cli::{Cli, Command};
use fleetup_client::Client;
use output::Out;
use std::io::Read as _;
use std::path::PathBuf;

/// Parses the command line, runs it, prints a failure, and returns the exit code.
pub fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let out = Out { mode: cli.output };
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            out.failure(&Failure::error(format!("starting the runtime: {e}")));
            return std::process::ExitCode::from(code::ERROR);
        }
    };
    match runtime.block_on(run(&cli, out)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(f) => {
            out.failure(&f);
            std::process::ExitCode::from(f.exit)
        }
    }
}

/// The context file in use: `--context`/`FLEETUP_CONTEXT`, else the default path.
fn context_path(cli: &Cli) -> fail::Outcome<PathBuf> {
    cli.context.clone().or_else(context::default_path).ok_or_else(|| {
        Failure::usage("no place for the context file: set XDG_CONFIG_HOME or HOME, or pass --context FILE")
    })
}

/// The client of the coordinator in use: the context file, with `--server`,
/// `FLEETUP_TOKEN` and `--ca-cert` over it.
fn connect(cli: &Cli) -> fail::Outcome<Client> {
    let path = context_path(cli)?;
    let saved = context::read(&path)?;
    let env_token = std::env::var("FLEETUP_TOKEN").ok().filter(|t| !t.trim().is_empty());
    let server = cli.server.clone().or_else(|| saved.as_ref().map(|c| c.server.clone())).ok_or_else(|| {
        Failure::auth(format!(
            "no coordinator: run `fleetupctl login --server URL --token-file FILE` (no context in {}), or set FLEETUP_SERVER and FLEETUP_TOKEN",
            path.display()
        ))
    })?;
    let token = match (env_token, &saved) {
        (Some(t), _) => t.trim().to_owned(),
        // The saved token belongs to the saved server: never send it to another one.
        (None, Some(c)) if c.server.trim_end_matches('/') == server.trim_end_matches('/') => c.token.clone(),
        (None, Some(c)) => {
            return Err(Failure::auth(format!(
                "the saved token is for {}, not {server}: set FLEETUP_TOKEN for it, or log in to it",
                c.server
            )));
        }
        (None, None) => {
            return Err(Failure::auth(format!(
                "no token for {server}: run `fleetupctl login --token-file FILE`, or set FLEETUP_TOKEN"
            )));
        }
    };
    context::check_url(&server, cli.insecure_http)?;
    let ca = cli.ca_cert.clone().or_else(|| saved.and_then(|c| c.ca_cert));
    client(&server, &token, ca.as_deref())
}

fn client(server: &str, token: &str, ca: Option<&std::path::Path>) -> fail::Outcome<Client> {
    let mut c = Client::new(server, token)?;
    if let Some(ca) = ca {
        let pem = std::fs::read(ca)
            .map_err(|e| Failure::error(format!("reading the CA certificate {}: {e}", ca.display())))?;
        c = c.with_ca_cert(&pem)?;
    }
    Ok(c)
}

async fn run(cli: &Cli, out: Out) -> fail::Outcome {
    match &cli.command {
        Command::Login(l) => login(cli, out, l).await,
        Command::Logout => {
            let path = context_path(cli)?;
            let removed = context::remove(&path)?;
            out.show(&serde_json::json!({ "removed": removed, "context": path }), || {
                if removed {
                    format!("removed {}", path.display())
                } else {
                    format!("no context in {}", path.display())
                }
            });
            Ok(())
        }
        Command::Context => {
            let path = context_path(cli)?;
            let saved = context::read(&path)?;
            let server = cli.server.clone().or_else(|| saved.as_ref().map(|c| c.server.clone()));
            let token_from = if std::env::var("FLEETUP_TOKEN").is_ok_and(|t| !t.trim().is_empty()) {
                "FLEETUP_TOKEN"
            } else if saved.is_some() {
                "context file"
            } else {
                "none"
            };
            let ca = cli.ca_cert.clone().or_else(|| saved.and_then(|c| c.ca_cert));
            let v = serde_json::json!({ "context": path, "server": server, "token": token_from, "ca_cert": ca });
            out.show(&v, || {
                format!(
                    "context: {}\nserver:  {}\ntoken:   {token_from}\nca cert: {}",
                    path.display(),
                    server.as_deref().unwrap_or("(none)"),
                    ca.map_or_else(|| "(system roots)".into(), |c| c.display().to_string())
                )
            });
            Ok(())
        }
        Command::Completions { shell } => {
            clap_complete::generate(*shell, &mut Cli::command(), "fleetupctl", &mut std::io::stdout());
            Ok(())
        }
        Command::Rollout(r) => {
            // A spec file is checked before anything else: its mistakes are found without a
            // context or a coordinator (in CI, say).
            if let cli::RolloutCmd::Apply { file, .. } = r {
                spec::load(file).map_err(|e| Failure::usage(e.to_string()))?;
            }
            rollouts::run(&connect(cli)?, out, r).await
        }
        Command::Watch(w) => {
            let client = connect(cli)?;
            let r = rollouts::find(&client, &w.rollout).await?;
            watch::watch(&client, out, r.id, w).await
        }
        Command::Decide(d) => rollouts::decide(&connect(cli)?, out, d).await,
        Command::Logs(l) => rollouts::logs(&connect(cli)?, out, l).await,
        Command::Agents(a) => fleet::agents(&connect(cli)?, out, a).await,
        Command::Packages(p) => fleet::packages(&connect(cli)?, out, p).await,
        Command::Tokens(t) => fleet::tokens(&connect(cli)?, out, t).await,
    }
}

/// `login`: checks the token against the coordinator, then saves the context.
async fn login(cli: &Cli, out: Out, l: &cli::Login) -> fail::Outcome {
    let server = cli
        .server
        .clone()
        .ok_or_else(|| Failure::usage("login needs --server URL (or FLEETUP_SERVER): the coordinator to log in to"))?;
    let server = server.trim_end_matches('/').to_owned();
    context::check_url(&server, cli.insecure_http)?;
    let token = if let Some(f) = &l.token_file {
        std::fs::read_to_string(f)
            .map_err(|e| Failure::error(format!("reading the token from {}: {e}", f.display())))?
    } else {
        let mut s = String::new();
        std::io::stdin()
            .read_to_string(&mut s)
            .map_err(|e| Failure::error(format!("reading the token from stdin: {e}")))?;
        s
    };
    let token = token.lines().map(str::trim).find(|l| !l.is_empty()).unwrap_or_default().to_owned();
    if token.is_empty() {
        return Err(Failure::usage("the token is empty"));
    }
    let path = context_path(cli)?;
    // Logging in again to the same coordinator keeps the CA it was saved with.
    let saved_ca = context::read(&path)
        .ok()
        .flatten()
        .filter(|c| c.server.trim_end_matches('/') == server)
        .and_then(|c| c.ca_cert);
    let ca_cert = cli.ca_cert.as_ref().map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone())).or(saved_ca);
    let c = client(&server, &token, ca_cert.as_deref())?;
    // One authenticated read: a wrong URL, CA or token fails here, not at the first command.
    c.request(fleetup_client::Method::GET, "/rollouts")
        .query(&[("limit", "1")])
        .send()
        .await
        .map_err(|e| Failure::error(format!("{server} did not answer: {}", fail::chain(&e))))
        .and_then(|r| match r.status().as_u16() {
            200 => Ok(()),
            401 | 403 => Err(Failure::auth(format!("{server} refused the token ({})", r.status()))),
            s => Err(Failure::error(format!(
                "{server} answered {s} to GET /api/v1/rollouts: is it a fleetup coordinator?"
            ))),
        })?;
    context::write(&path, &context::Context { server: server.clone(), token, ca_cert })?;
    out.show(&serde_json::json!({ "server": server, "context": path }), || {
        format!("logged in to {server}; context saved in {} (mode 0600)", path.display())
    });
    Ok(())
}

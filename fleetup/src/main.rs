//! The `fleetup` binary: the umbrella command that needs the whole product in one file.
//!
//! `fleetup demo` runs a coordinator, agents and demo services on this machine
//! ([`demo`]). Its agents and services are child processes of this same binary, through two
//! hidden commands: `fleetup agent …` is `fleetup-agent …` and `fleetup demo-service …` is
//! `fleetup-demo-service …`. They are dispatched before the async runtime starts, because
//! the agent builds its own. Living here, not in `fleetup-server`, keeps the coordinator's
//! binary free of the agent and the demo service (docs/decisions.md).

mod demo;

use clap::Parser as _;
use std::process::ExitCode;

/// fleetup: roll software updates out to fleets of Linux servers.
#[derive(Debug, clap::Parser)]
#[command(name = "fleetup", version)]
struct Cli {
    /// What to do.
    #[command(subcommand)]
    command: Command,
}

/// Commands.
#[derive(Debug, clap::Subcommand)]
enum Command {
    /// Run a whole demo fleet on this machine: the coordinator, a handful of agents with
    /// the demo service, the sample rollup staged. Ctrl-C stops everything.
    Demo(demo::DemoArgs),
}

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match args.get(1).and_then(|a| a.to_str()) {
        Some("agent") => {
            args.remove(0);
            return fleetup_agent::cli::main_from(args);
        }
        Some("demo-service") => {
            fleetup_demo_service::main_from(args.into_iter().skip(2).map(|a| a.to_string_lossy().into_owned()));
            return ExitCode::SUCCESS;
        }
        _ => {}
    }
    let Command::Demo(demo_args) = Cli::parse().command;
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run_demo(demo_args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run_demo(args: demo::DemoArgs) -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("FLEETUP_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    // The handlers are installed now, before anything starts: a stream created later would
    // not see a signal that came earlier, and until one exists SIGINT kills the process
    // outright, leaving its children running.
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let shutdown = async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    };
    demo::run(args, shutdown).await
}

//! Command-line interface of `fleetup-agent`.

mod install;
mod prompt;
mod run;
mod signals;

use crate::engine::{BackendKind, CrlRemediation};
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;

/// fleetup-agent: installs signed rollup packages on this server, for a fleetup
/// coordinator or from the command line, and builds and signs packages.
#[derive(Debug, Parser)]
#[command(name = "fleetup-agent", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Create an ed25519 signing key pair: KEY (secret, mode 0600) and KEY.pub.
    Keygen {
        /// Where to write the secret key; the public key goes to the same path + `.pub`.
        #[arg(long)]
        out: PathBuf,
    },
    /// Build a signed package from a directory holding manifest.toml, payload/, scripts/.
    Pack {
        /// The rollup source directory.
        dir: PathBuf,
        /// The secret signing key (from `keygen`).
        #[arg(long)]
        key: PathBuf,
        /// The package file to write.
        #[arg(long)]
        out: PathBuf,
    },
    /// Check a package's signature and the sha256 of every file, writing nothing.
    Verify {
        /// The package file.
        file: PathBuf,
        /// A trusted public key (repeatable).
        #[arg(long, required = true)]
        trust: Vec<PathBuf>,
    },
    /// Install a signed package into an install root, phase by phase (see docs/engine.md).
    ///
    /// An interrupted earlier install recorded in the state dir is finished first (rolled
    /// back, or completed) and reported; the command then ends without installing.
    Install {
        /// The package file.
        package: PathBuf,
        /// The install root (holds the product's files).
        #[arg(long, env = "FLEETUP_ROOT")]
        root: PathBuf,
        /// A trusted public key (repeatable).
        #[arg(long, required = true)]
        trust: Vec<PathBuf>,
        /// The agent's state dir: journal, logs/<install-id>/, hooks/pre-install.d/, hooks/post-install.d/.
        #[arg(long, env = "FLEETUP_STATE_DIR", default_value = "/var/lib/fleetup-agent")]
        state_dir: PathBuf,
        /// Answer decisions automatically: warnings -> continue; files in use -> retry 3 times (1 s apart), then exit.
        #[arg(long)]
        yes: bool,
        /// Print one engine event per line as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// How services are stopped and started: exec (commands + pidfile) or systemd.
        #[arg(long, default_value = "systemd", value_parser = parse_backend)]
        services_backend: BackendKind,
        /// Hosts file used to resolve CRL host names and, with --crl-remediation hosts-file, changed for the install only.
        #[arg(long, default_value = "/etc/hosts")]
        hosts_file: PathBuf,
        /// none: an unreachable CRL endpoint is a warning (continue/cancel); hosts-file: map its host to 127.0.0.1 during the install, restored afterwards.
        #[arg(long, default_value = "none", value_parser = parse_remediation)]
        crl_remediation: CrlRemediation,
        /// A host variable for ${name} in the manifest (repeatable): --var port=8080.
        #[arg(long = "var", value_name = "NAME=VALUE")]
        vars: Vec<String>,
        /// This server's device class, matched against the manifest's [target] device_class
        /// (a package for another class is refused in check-system).
        #[arg(long, env = "FLEETUP_DEVICE_CLASS")]
        device_class: Option<String>,
        /// Install even if the package is older than the highest version of its rollup
        /// installed here (the high-water mark in the state dir).
        #[arg(long)]
        allow_downgrade: bool,
    },
    /// Run as an agent of a fleetup coordinator: enroll once, then long-poll for jobs and
    /// install them (see docs/agent.md).
    Run(run::RunArgs),
    /// Enroll with a coordinator now and write the options given (not the token) to the
    /// configuration file: then `systemctl enable --now fleetup-agent` needs nothing more.
    /// Takes the options of `run`, e.g. `enroll --server https://… --token … --ca-cert FILE`.
    Enroll(run::RunArgs),
    /// Finish an interrupted install recorded in the state dir (roll back or complete it).
    Recover {
        /// The agent's state dir.
        #[arg(long, env = "FLEETUP_STATE_DIR", default_value = "/var/lib/fleetup-agent")]
        state_dir: PathBuf,
        /// Print one engine event per line as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn parse_backend(s: &str) -> Result<BackendKind, String> {
    BackendKind::parse(s)
}

fn parse_remediation(s: &str) -> Result<CrlRemediation, String> {
    match s {
        "none" => Ok(CrlRemediation::None),
        "hosts-file" => Ok(CrlRemediation::HostsFile),
        _ => Err(format!("unknown CRL remediation '{s}'; expected none or hosts-file")),
    }
}

/// Runs the CLI; errors are printed with their whole cause chain.
pub fn main() -> ExitCode {
    main_from(std::env::args_os())
}

/// Runs the CLI on the given arguments (the first is the program name). The coordinator's
/// `demo` uses this to run agents from its own binary.
pub fn main_from<I, T>(args: I) -> ExitCode
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let cli = Cli::parse_from(args);
    let result = match cli.command {
        Command::Keygen { out } => crate::packaging::keygen(&out).map(|()| ExitCode::SUCCESS),
        Command::Pack { dir, key, out } => crate::packaging::pack(&dir, &key, &out).map(|()| ExitCode::SUCCESS),
        Command::Verify { file, trust } => crate::packaging::verify(&file, &trust).map(|()| ExitCode::SUCCESS),
        Command::Install {
            package,
            root,
            trust,
            state_dir,
            yes,
            json,
            services_backend,
            hosts_file,
            crl_remediation,
            vars,
            device_class,
            allow_downgrade,
        } => install::install(install::InstallArgs {
            package,
            root,
            trust,
            state_dir,
            yes,
            json,
            backend: services_backend,
            hosts_file,
            crl_remediation,
            vars,
            device_class,
            allow_downgrade,
        }),
        Command::Recover { state_dir, json } => install::recover(&state_dir, json),
        Command::Run(args) => run::run(args),
        Command::Enroll(args) => run::enroll(args),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

//! Command-line interface of `fleetup-agent`.

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
}

/// Runs the CLI; errors are printed with their whole cause chain.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Keygen { out } => crate::packaging::keygen(&out),
        Command::Pack { dir, key, out } => crate::packaging::pack(&dir, &key, &out),
        Command::Verify { file, trust } => crate::packaging::verify(&file, &trust),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

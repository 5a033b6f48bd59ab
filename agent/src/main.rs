//! The `fleetup-agent` binary: see `fleetup-agent --help`.

fn main() -> std::process::ExitCode {
    fleetup_agent::cli::main()
}

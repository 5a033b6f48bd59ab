//! `fleetupctl`: parses the command line and hands it to [`fleetup_ctl::run`], whose
//! failure carries the documented exit code (docs/api.md, "fleetupctl exit codes").

fn main() -> std::process::ExitCode {
    fleetup_ctl::main()
}

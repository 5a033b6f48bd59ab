//! The `fleetup-server` binary.

fn main() {
    eprintln!("fleetup-server: not built yet");
    std::process::exit(2);
}

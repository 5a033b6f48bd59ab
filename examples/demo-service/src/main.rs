//! The `fleetup-demo-service` binary; see the library.

fn main() {
    fleetup_demo_service::main_from(std::env::args().skip(1));
}

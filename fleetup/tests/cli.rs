//! The umbrella binary's command line: `demo` is offered, the child-process commands the
//! demo uses are there but hidden. (The demo itself is tested end to end in
//! `tests/e2e/demo.rs`.) Having an integration test also makes `cargo test --workspace`
//! build the `fleetup` binary that the e2e tests run.

use std::process::Command;

fn fleetup(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetup")).args(args).output().expect("running fleetup");
    (out.status.success(), format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn help_offers_the_demo_and_hides_the_child_commands() {
    let (ok, help) = fleetup(&["--help"]);
    assert!(ok, "{help}");
    assert!(help.contains("demo"), "{help}");
    assert!(!help.contains("demo-service") && !help.contains("agent "), "hidden commands stay hidden: {help}");
    let (ok, demo) = fleetup(&["demo", "--help"]);
    assert!(ok && demo.contains("--hosts") && demo.contains("--listen"), "{demo}");
}

#[test]
fn agent_is_the_agents_command_line() {
    let (ok, help) = fleetup(&["agent", "--help"]);
    assert!(ok, "{help}");
    for command in ["run", "keygen", "pack", "verify"] {
        assert!(help.contains(command), "fleetup agent offers {command}: {help}");
    }
}

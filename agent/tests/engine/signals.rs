//! Ctrl-C and SIGTERM are a cancel request to the real `fleetup-agent install`: honoured
//! as the phase table says, with a line on stderr and a documented exit status, never a
//! kill that leaves the tree mixed and the journal open.

use crate::support::{Fixture, StderrLines, crl_stub_ok, tree};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::process::{Child, ExitStatus, Stdio};
use std::time::Duration;

fn spawn(fx: &Fixture) -> (Child, StderrLines) {
    let mut child = fx.cli().stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let lines = StderrLines::of(&mut child);
    (child, lines)
}

fn signal(child: &Child, sig: Signal) {
    kill(Pid::from_raw(child.id() as i32), sig).unwrap();
}

fn wait_exit(child: &mut Child) -> ExitStatus {
    fleetup_e2e::wait_for("the engine to exit", Duration::from_mins(1), || child.try_wait().unwrap())
}

#[test]
fn sigterm_in_a_pre_hook_cancels_with_nothing_changed_and_exit_143() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let running = fx.tmp.path().join("hook-running");
    fx.host_hook("pre-install.d", "10-slow", &format!("touch '{}'; sleep 30", running.display()));
    let before = tree(&fx.root);
    let pid = fx.service_pid();
    let (mut child, mut lines) = spawn(&fx);
    fleetup_e2e::wait_for("the pre-install hook to run", Duration::from_secs(30), || running.exists().then_some(()));
    signal(&child, Signal::SIGTERM);
    let line = lines.wait_for("SIGTERM received", Duration::from_secs(10)).unwrap();
    assert!(line.contains("cancel during 'pre-hooks': the install ends now; nothing has been changed"), "{line}");
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(143), "{status:?}; stderr: {:?}", lines.seen);
    assert_eq!(tree(&fx.root), before);
    assert_eq!(fx.service_pid(), pid, "the service was restarted");
    assert!(fx.service_running());
    assert!(!fx.state.join("journal.jsonl").exists(), "the journal was left open");
    assert!(fx.leftover_staging().is_empty());
}

#[test]
fn ctrl_c_after_the_files_are_in_place_finishes_forward_and_a_second_says_what_is_being_done() {
    // post-precompile waits for the test, so the signals arrive while it runs.
    let fx = Fixture::new(&crl_stub_ok(), |t| {
        t.replace(
            r#"command = 'sh "${staging}/scripts/precompile.sh" "${root}"'"#,
            r#"command = 'touch "${root}/../precompile-running"; while [ ! -e "${root}/../go" ]; do sleep 0.05; done; sh "${staging}/scripts/precompile.sh" "${root}"'"#,
        )
    });
    let running = fx.tmp.path().join("precompile-running");
    let (mut child, mut lines) = spawn(&fx);
    fleetup_e2e::wait_for("post-precompile to run", Duration::from_secs(30), || running.exists().then_some(()));
    signal(&child, Signal::SIGINT);
    let first = lines.wait_for("SIGINT received", Duration::from_secs(10)).unwrap();
    assert!(first.contains("cancel refused during 'post-precompile'"), "{first}");
    signal(&child, Signal::SIGINT);
    let second = lines.wait_for("SIGINT received again", Duration::from_secs(10)).unwrap();
    assert!(second.contains("still in 'post-precompile'"), "{second}");
    std::fs::write(fx.tmp.path().join("go"), "").unwrap();
    let status = wait_exit(&mut child);
    assert_eq!(status.code(), Some(0), "{status:?}; stderr: {:?}", lines.seen);
    fx.wait_version("1.1.0");
    assert!(!fx.state.join("journal.jsonl").exists());
}

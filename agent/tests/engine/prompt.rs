//! The terminal prompt, tested in a real pseudo-terminal: the progress display does not
//! draw over an open question, `c` (the cancel key the spinner advertises) is no answer,
//! and anything that is not a whole answer word asks again.

use crate::support::{Fixture, crl_stub_ok, tree};
use nix::pty::{Winsize, openpty};
use std::fs::File;
use std::io::{Read as _, Write as _};
use std::process::{Child, Stdio};
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

/// The operator's side of a pseudo-terminal the engine runs on.
struct Terminal {
    output: Receiver<Vec<u8>>,
    /// Everything the engine wrote so far.
    transcript: String,
    keys: File,
}

impl Terminal {
    fn spawn(mut cmd: std::process::Command) -> (Child, Self) {
        let size = Winsize { ws_row: 24, ws_col: 120, ws_xpixel: 0, ws_ypixel: 0 };
        let pty = openpty(Some(&size), None).unwrap();
        let slave = File::from(pty.slave);
        let child = cmd
            .env("TERM", "xterm-256color")
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .unwrap();
        let mut master = File::from(pty.master);
        let keys = master.try_clone().unwrap();
        let (tx, output) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // EIO once the engine (the last holder of the slave) exits.
            while let Ok(n @ 1..) = master.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        (child, Self { output, transcript: String::new(), keys })
    }

    /// Reads until the transcript after byte `from` contains `want`, within `deadline`.
    fn wait_for(&mut self, from: usize, want: &str, deadline: Duration) -> usize {
        let until = Instant::now() + deadline;
        loop {
            if let Some(at) = self.transcript[from..].find(want) {
                return from + at + want.len();
            }
            match self.output.recv_timeout(until.saturating_duration_since(Instant::now())) {
                Ok(bytes) => self.transcript.push_str(&String::from_utf8_lossy(&bytes)),
                Err(e) => panic!("no {want:?} on the terminal ({e}); it shows:\n{}", self.transcript),
            }
        }
    }

    /// Everything the engine draws during `window` (nothing is expected).
    fn drawn_during(&mut self, window: Duration) -> String {
        let from = self.transcript.len();
        let until = Instant::now() + window;
        while let Ok(bytes) = self.output.recv_timeout(until.saturating_duration_since(Instant::now())) {
            self.transcript.push_str(&String::from_utf8_lossy(&bytes));
        }
        self.transcript[from..].to_owned()
    }

    fn type_line(&mut self, line: &str) {
        self.keys.write_all(format!("{line}\n").as_bytes()).unwrap();
    }
}

#[test]
fn the_prompt_is_not_drawn_over_and_c_is_no_answer() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    // A warning prerequisite: the engine asks continue / cancel in check-system.
    std::fs::write(fx.root.join("etc/maintenance-mode"), "ops is on it\n").unwrap();
    let before = tree(&fx.root);
    let pid = fx.service_pid();
    let (mut child, mut term) = Terminal::spawn(fx.cli_interactive(&fx.state));
    let prompt = "answer [continue/cancel]: ";
    let asked = term.wait_for(0, prompt, Duration::from_secs(30));
    // The spinner ticks every 120 ms; while the question is open nothing may be drawn
    // (a bounded window to observe an absence, not a synchronisation).
    let drawn = term.drawn_during(Duration::from_millis(500));
    assert!(drawn.is_empty(), "drawn over the open question: {drawn:?}");
    term.type_line("c");
    let refused = term.wait_for(asked, "'c' is not an answer here", Duration::from_secs(10));
    let asked_again = term.wait_for(refused, prompt, Duration::from_secs(10));
    term.type_line("cancel");
    term.wait_for(asked_again, "outcome: cancelled", Duration::from_secs(30));
    let status = fleetup_e2e::wait_for("the engine to exit", Duration::from_mins(1), || child.try_wait().unwrap());
    assert_eq!(status.code(), Some(1), "{}", term.transcript);
    assert_eq!(tree(&fx.root), before);
    assert_eq!(fx.service_pid(), pid, "the service was restarted");
}

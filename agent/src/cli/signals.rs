//! Ctrl-C and SIGTERM on the command line are a cancel request, not a kill.
//!
//! Dying on the default disposition left the tree mixed, the journal open and services down
//! until someone ran `recover`. Instead both signals are blocked in every thread (the mask
//! is set before any thread is spawned and inherited by all; `std::process::Command`
//! clears it in the children it starts) and a watcher thread takes them with `sigwait`:
//! the first asks the engine to cancel, which it honours as the phase table says (full
//! rollback up to `update-files`, finish forward from `post-precompile`) and says so on
//! stderr; each later one says what is still being done. No signal handler and no
//! `unsafe`: `sigwait` runs in an ordinary thread.

use crate::engine::CancelHandle;
use nix::sys::signal::{SigSet, Signal};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicI32, Ordering};

/// The signals taken as a cancel request.
fn set() -> SigSet {
    let mut s = SigSet::empty();
    s.add(Signal::SIGINT);
    s.add(Signal::SIGTERM);
    s
}

/// Watches SIGINT and SIGTERM for one install; see the module docs.
#[derive(Debug, Clone)]
pub(crate) struct SignalWatch {
    /// The first signal received (0: none).
    first: Arc<AtomicI32>,
}

impl SignalWatch {
    /// Blocks both signals in this thread; call it before any thread is spawned, so that
    /// every thread inherits the mask and only the watcher takes them.
    pub(crate) fn block() -> anyhow::Result<()> {
        set().thread_block()?;
        Ok(())
    }

    /// Starts the watcher that turns the (blocked) signals into `cancel` requests.
    pub(crate) fn start(cancel: CancelHandle) -> anyhow::Result<Self> {
        let watch = Self { first: Arc::new(AtomicI32::new(0)) };
        let first = watch.first.clone();
        std::thread::Builder::new().name("signals".into()).spawn(move || {
            let mut first_answer = String::new();
            while let Ok(sig) = set().wait() {
                let name = sig.as_str();
                if first.compare_exchange(0, sig as i32, Ordering::SeqCst, Ordering::SeqCst).is_ok() {
                    let (Ok(m) | Err(m)) = cancel.cancel();
                    eprintln!("\n{name} received: {m}");
                    first_answer = m;
                } else {
                    let phase = cancel.current_phase().map_or("finishing".to_owned(), |p| format!("in '{p}'"));
                    eprintln!(
                        "\n{name} received again: still {phase}; the cancel asked earlier stands ({first_answer}). \
                         The install ends on its own; killing it (kill -9) would leave it for `fleetup-agent recover`."
                    );
                }
            }
        })?;
        Ok(watch)
    }

    /// The exit status for an install that ended with `status`: `128 + signal number`
    /// (130 for Ctrl-C, 143 for SIGTERM) when a signal asked to cancel and the install did
    /// not succeed anyway, so scripts can tell "stopped on request" from a failure.
    pub(crate) fn exit_code(&self, status: ExitCode, succeeded: bool) -> ExitCode {
        match self.first.load(Ordering::SeqCst) {
            0 => status,
            _ if succeeded => status,
            sig => ExitCode::from(128 + sig as u8),
        }
    }
}

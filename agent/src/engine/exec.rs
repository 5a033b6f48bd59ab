//! Running commands (hooks, precompile steps, prerequisite checks) with a deadline.
//!
//! Each command runs as `sh -c` in its own process group, its output appended to a log
//! file. At the deadline (or on a cancel, where the phase allows one) the whole group
//! is killed, so a hook's children cannot outlive it and hold the install up.

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::os::unix::process::CommandExt as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Why a command did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExecError {
    /// It could not be started.
    Spawn(String),
    /// It exited with this non-zero status.
    Exited(i32),
    /// It failed otherwise (killed by a signal, could not be waited for).
    Failed(String),
    /// It ran past its deadline; its process group was killed.
    Deadline(Duration),
    /// A cancel arrived; its process group was killed.
    Cancelled,
}

impl std::fmt::Display for ExecError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExecError::Spawn(e) => write!(f, "could not start: {e}"),
            ExecError::Exited(code) => write!(f, "exit status: {code}"),
            ExecError::Failed(s) => write!(f, "{s}"),
            ExecError::Deadline(d) => {
                write!(f, "still running after its deadline of {} s; killed with its process group", d.as_secs_f32())
            }
            ExecError::Cancelled => write!(f, "cancelled; killed with its process group"),
        }
    }
}

/// One command to run.
#[derive(Debug)]
pub struct Shell<'a> {
    /// `sh -c` text.
    pub command: &'a str,
    /// Working directory.
    pub cwd: &'a Path,
    /// Extra environment.
    pub env: &'a [(String, String)],
    /// Deadline.
    pub deadline: Duration,
    /// Log file (stdout and stderr appended).
    pub log: &'a Path,
}

/// Runs a command to completion, its deadline, or `cancelled()` turning true.
pub fn run(cmd: &Shell<'_>, cancelled: &dyn Fn() -> bool) -> Result<(), ExecError> {
    super::events::append_log(cmd.log, &format!("$ {}", cmd.command));
    let out =
        OpenOptions::new().append(true).create(true).open(cmd.log).map_err(|e| ExecError::Spawn(e.to_string()))?;
    let err = out.try_clone().map_err(|e| ExecError::Spawn(e.to_string()))?;
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(cmd.command)
        .current_dir(cmd.cwd)
        .envs(cmd.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| ExecError::Spawn(format!("sh -c {}: {e}", cmd.command)))?;
    let pgid = Pid::from_raw(child.id() as i32);
    let start = Instant::now();
    let mut poll = Poll::new(Duration::from_millis(1), Duration::from_millis(20));
    let result = loop {
        match child.try_wait() {
            Ok(Some(status)) if status.success() => break Ok(()),
            Ok(Some(status)) => {
                break Err(status.code().map_or_else(|| ExecError::Failed(status.to_string()), ExecError::Exited));
            }
            Ok(None) => {}
            Err(e) => break Err(ExecError::Failed(e.to_string())),
        }
        if start.elapsed() >= cmd.deadline {
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait();
            break Err(ExecError::Deadline(cmd.deadline));
        }
        if cancelled() {
            let _ = killpg(pgid, Signal::SIGKILL);
            let _ = child.wait();
            break Err(ExecError::Cancelled);
        }
        poll.sleep();
    };
    // Children left behind in the group (background jobs of a hook) go too.
    let _ = killpg(pgid, Signal::SIGKILL);
    super::events::append_log(
        cmd.log,
        &match &result {
            Ok(()) => format!("ok after {} ms", start.elapsed().as_millis()),
            Err(e) => format!("error after {} ms: {e}", start.elapsed().as_millis()),
        },
    );
    result
}

/// Polling intervals for waits on other processes: short at first (most waits end
/// quickly: a hook, a stopping service, a starting one), doubling up to `max`.
#[derive(Debug)]
pub(crate) struct Poll {
    next: Duration,
    max: Duration,
}

impl Poll {
    pub(crate) fn new(first: Duration, max: Duration) -> Self {
        Self { next: first, max }
    }

    /// Sleeps the next interval.
    pub(crate) fn sleep(&mut self) {
        self.sleep_at_most(self.max);
    }

    /// Sleeps the next interval, but no longer than `limit` (what is left of a deadline).
    pub(crate) fn sleep_at_most(&mut self, limit: Duration) {
        std::thread::sleep(self.next.min(limit));
        self.next = (self.next * 2).min(self.max);
    }
}

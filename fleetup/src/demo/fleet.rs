//! Everything the demo has started, recorded the moment it starts, so that a stop at any
//! instant (Ctrl-C during startup, an error, a panic) stops exactly what exists so far.
//!
//! The demo services run detached in their own process groups, as the exec backend starts
//! them, and an agent restarts them during an install: so a service is stopped both by the
//! pid it was started with and by the pid file the agent keeps up to date.

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

/// How long agents get to exit on SIGTERM before SIGKILL.
const GRACE: Duration = Duration::from_secs(5);

/// The processes and the coordinator of a running (or starting) demo.
#[derive(Debug, Default)]
pub struct Fleet {
    /// Agent processes.
    agents: Vec<Child>,
    /// Demo services: the process started and its pid file.
    services: Vec<(Child, PathBuf)>,
    /// Tells the in-process coordinator to stop, and its task.
    server: Option<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<anyhow::Result<()>>)>,
}

impl Fleet {
    /// Records an agent process.
    pub fn add_agent(&mut self, child: Child) {
        self.agents.push(child);
    }

    /// Records a demo service and the pid file its agent will keep.
    pub fn add_service(&mut self, child: Child, pidfile: PathBuf) {
        self.services.push((child, pidfile));
    }

    /// Records the coordinator task and the sender that stops it.
    pub fn set_server(
        &mut self,
        stop: tokio::sync::oneshot::Sender<()>,
        task: tokio::task::JoinHandle<anyhow::Result<()>>,
    ) {
        self.server = Some((stop, task));
    }

    /// The coordinator task, to watch it while starting.
    pub fn server_task(&mut self) -> Option<&mut tokio::task::JoinHandle<anyhow::Result<()>>> {
        self.server.as_mut().map(|(_, task)| task)
    }

    /// Forgets the coordinator task after it ended by itself (it must not be awaited twice).
    pub fn forget_server(&mut self) {
        self.server = None;
    }

    /// How many agents were started.
    pub fn agent_count(&self) -> usize {
        self.agents.len()
    }

    /// Stops every process started so far: SIGTERM to all agents at once, SIGKILL to those
    /// still running after [`GRACE`]; then every demo service. Idempotent.
    pub fn stop_processes(&mut self) {
        for agent in &self.agents {
            let _ = kill(pid_of(agent), Signal::SIGTERM);
        }
        let deadline = Instant::now() + GRACE;
        for agent in &mut self.agents {
            while matches!(agent.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = agent.kill();
            let _ = agent.wait();
        }
        self.agents.clear();
        for (service, pidfile) in &mut self.services {
            let current = std::fs::read_to_string(&*pidfile).ok().and_then(|p| p.trim().parse::<i32>().ok());
            for pid in [Some(pid_of(service)), current.map(Pid::from_raw)].into_iter().flatten() {
                // Its own process group (the exec backend's way): the group takes any child too.
                let _ = killpg(pid, Signal::SIGKILL);
                let _ = kill(pid, Signal::SIGKILL);
            }
            let _ = service.wait();
        }
        self.services.clear();
    }

    /// Stops the processes, then the coordinator (waiting up to 10 s for it to finish).
    pub async fn stop(&mut self) {
        self.stop_processes();
        if let Some((stop, task)) = self.server.take() {
            let _ = stop.send(());
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
    }
}

impl Drop for Fleet {
    /// The safety net for an early return or a panic: no child outlives the demo.
    fn drop(&mut self) {
        self.stop_processes();
    }
}

fn pid_of(child: &Child) -> Pid {
    Pid::from_raw(i32::try_from(child.id()).unwrap_or(i32::MAX))
}

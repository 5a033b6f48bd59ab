//! Service control through a backend, and health checks.
//!
//! `exec` runs the service itself (start command detached in its own process group,
//! pid in a pidfile under the root), for hosts and tests without systemd; `systemd`
//! uses systemctl. Every action is logged to `service-control.log` by the caller.

use super::exec::{self, Poll, Shell};
use super::http;
use chrono::{DateTime, Utc};
use fleetup_proto::manifest::{HealthCheck, Service};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Which backend controls services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    /// start/stop/status commands and a pidfile.
    #[default]
    Exec,
    /// systemctl.
    Systemd,
}

impl BackendKind {
    /// `exec` or `systemd`.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Exec => "exec",
            BackendKind::Systemd => "systemd",
        }
    }

    /// Parses `exec` or `systemd`.
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "exec" => Ok(BackendKind::Exec),
            "systemd" => Ok(BackendKind::Systemd),
            _ => Err(format!("unknown services backend '{s}'; expected exec or systemd")),
        }
    }
}

/// Controls the services of one install.
#[derive(Debug, Clone)]
pub struct Services {
    /// Backend.
    pub kind: BackendKind,
    /// Install root (cwd of exec commands, base of pidfiles).
    pub root: PathBuf,
    /// Variables for `${name}` in commands.
    pub vars: BTreeMap<String, String>,
    /// Where each exec service's output goes (`<dir>/<name>.out`).
    pub output_dir: PathBuf,
    /// `service-control.log`.
    pub log: PathBuf,
}

impl Services {
    fn note(&self, line: &str) {
        super::events::append_log(&self.log, line);
    }

    fn expand(&self, s: &str) -> Result<String, String> {
        fleetup_proto::manifest::expand(s, &self.vars)
    }

    fn unit(svc: &Service) -> String {
        svc.systemd_unit.clone().unwrap_or_else(|| format!("{}.service", svc.name))
    }

    fn short(&self, command: &str, deadline: Duration) -> Result<(), String> {
        exec::run(&Shell { command, cwd: &self.root, env: &[], deadline, log: &self.log }, &|| false)
            .map_err(|e| format!("`{command}`: {e}"))
    }

    /// The service's main process, if it runs: the pidfile's pid (exec), or systemd's
    /// `MainPID`.
    pub(crate) fn main_pid(&self, svc: &Service) -> Option<u32> {
        let pid = match self.kind {
            BackendKind::Exec => self.tracked_pid(svc).filter(|p| pid_alive(*p))?,
            BackendKind::Systemd => {
                let out = Command::new("systemctl")
                    .args(["show", "--property=MainPID", "--value", &Self::unit(svc)])
                    .output()
                    .ok()?;
                String::from_utf8_lossy(&out.stdout).trim().parse().ok().filter(|p| *p > 0)?
            }
        };
        u32::try_from(pid).ok()
    }

    /// The pid the exec backend's pidfile names for `svc`, if any.
    pub(crate) fn tracked_pid(&self, svc: &Service) -> Option<i32> {
        read_pid(&self.pidfile(svc).ok()?)
    }

    fn pidfile(&self, svc: &Service) -> Result<PathBuf, String> {
        let exec = svc
            .exec
            .as_ref()
            .ok_or_else(|| format!("service {} has no [services.exec] section for the exec backend", svc.name))?;
        Ok(self.root.join(&exec.pidfile))
    }

    /// True if the service is running now.
    pub fn is_running(&self, svc: &Service) -> Result<bool, String> {
        match self.kind {
            BackendKind::Systemd => Ok(Command::new("systemctl")
                .args(["is-active", "--quiet", &Self::unit(svc)])
                .status()
                .map_err(|e| format!("systemctl: {e}"))?
                .success()),
            BackendKind::Exec => {
                let exec =
                    svc.exec.as_ref().ok_or_else(|| format!("service {} has no [services.exec] section", svc.name))?;
                if let Some(status) = &exec.status {
                    return Ok(self.short(&self.expand(status)?, Duration::from_secs(10)).is_ok());
                }
                Ok(read_pid(&self.pidfile(svc)?).is_some_and(pid_alive))
            }
        }
    }

    /// Starts the service (no-op if running). Does not wait for health. Nothing is
    /// journaled: for callers outside an install (tests, tools).
    pub fn start(&self, svc: &Service) -> Result<(), String> {
        self.start_tracked(svc, &mut |_| Ok(()))
    }

    /// [`Self::start`], telling `on_spawn` about the exec backend's new process group
    /// before the service runs (the engine journals it there).
    pub(crate) fn start_tracked(&self, svc: &Service, on_spawn: OnSpawn<'_>) -> Result<(), String> {
        match self.launch(svc, on_spawn)? {
            Some(l) => l.alive_for(ALIVE_WINDOW),
            None => Ok(()),
        }
    }

    /// Starts the service (no-op if running) and waits until it is healthy. The checks
    /// of [`Self::start`] and [`Self::wait_healthy`] both hold; they overlap in time: the
    /// health check is polled from the start, a freshly started process must stay alive
    /// for the whole start window, and its death ends the wait at once.
    /// Returns when the service first passed its health check: it serves from then on,
    /// while the rest of the start window is only watched (the outage ends there).
    /// Errors read `starting <name>: …` (the start failed or the process died) or
    /// `service <name> unhealthy …`.
    pub(crate) fn start_and_wait_healthy(
        &self,
        svc: &Service,
        hosts_file: &Path,
        on_spawn: OnSpawn<'_>,
    ) -> Result<DateTime<Utc>, String> {
        let starting = |e: String| format!("starting {}: {e}", svc.name);
        let launched = self.launch(svc, on_spawn).map_err(starting)?;
        if let Err(e) = self.healthy(svc, hosts_file, launched.as_ref()) {
            return Err(match launched.as_ref().map(Launched::check_alive) {
                Some(Err(died)) => starting(died),
                _ => format!("service {} {e}", svc.name),
            });
        }
        let serving = Utc::now();
        if let Some(l) = launched {
            l.alive_for(ALIVE_WINDOW).map_err(starting)?;
        }
        Ok(serving)
    }

    /// Starts the service unless it runs; for the exec backend, returns the new process.
    ///
    /// The exec backend's start shell is spawned in its own process group and held on
    /// its stdin until `on_spawn` has recorded the group: if the engine dies before that,
    /// the shell reads end-of-file and exits without starting anything; after it, every
    /// process the start makes is in a recorded group, tracked or not by the pidfile.
    fn launch(&self, svc: &Service, on_spawn: OnSpawn<'_>) -> Result<Option<Launched>, String> {
        if self.is_running(svc)? {
            self.note(&format!("start {}: already running", svc.name));
            return Ok(None);
        }
        self.note(&format!("start {} ({} backend)", svc.name, self.kind.as_str()));
        let deadline = Duration::from_secs(svc.start_deadline_secs.max(1));
        match self.kind {
            BackendKind::Systemd => {
                self.short(&format!("systemctl start '{}'", Self::unit(svc)), deadline).map(|()| None)
            }
            BackendKind::Exec => {
                let exec =
                    svc.exec.as_ref().ok_or_else(|| format!("service {} has no [services.exec] section", svc.name))?;
                let start = self.expand(&exec.start)?;
                std::fs::create_dir_all(&self.output_dir).map_err(|e| e.to_string())?;
                let out = self.output_dir.join(format!("{}.out", svc.name));
                // `&` makes sh fork the service and exit: the service is re-parented and
                // outlives the engine (a killed engine must not take services with it).
                let script = format!("read go || exit 1\n{start} </dev/null >>'{}' 2>&1 &\necho $!", out.display());
                let mut child = Command::new("sh")
                    .arg("-c")
                    .arg(&script)
                    .current_dir(&self.root)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::null())
                    .process_group(0)
                    .spawn()
                    .map_err(|e| format!("starting {}: {e}", svc.name))?;
                let mut go = child.stdin.take().expect("piped");
                let pgid = child.id() as i32;
                if let Err(e) = on_spawn(Spawned { name: &svc.name, pgid }) {
                    drop(go); // the shell reads end-of-file and exits
                    let _ = child.wait();
                    return Err(e);
                }
                go.write_all(b"go\n").map_err(|e| format!("starting {}: {e}", svc.name))?;
                drop(go);
                let at = Instant::now();
                let mut text = String::new();
                child.stdout.take().expect("piped").read_to_string(&mut text).map_err(|e| e.to_string())?;
                let _ = child.wait();
                let pid: i32 =
                    text.trim().parse().map_err(|_| format!("starting {}: no pid from the start command", svc.name))?;
                pause_after_service_start();
                let pidfile = self.pidfile(svc)?;
                if let Some(dir) = pidfile.parent() {
                    std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
                }
                let tmp = pidfile.with_extension("pid.tmp");
                std::fs::write(&tmp, format!("{pid}\n")).map_err(|e| e.to_string())?;
                std::fs::rename(&tmp, &pidfile).map_err(|e| e.to_string())?;
                self.note(&format!("start {}: pid {pid}", svc.name));
                Ok(Some(Launched { name: svc.name.clone(), pid, out, at }))
            }
        }
    }

    /// Stops the service within its stop deadline (SIGTERM, then SIGKILL at the deadline).
    pub fn stop(&self, svc: &Service) -> Result<(), String> {
        if !self.is_running(svc)? {
            self.note(&format!("stop {}: not running", svc.name));
            return Ok(());
        }
        self.note(&format!("stop {} ({} backend)", svc.name, self.kind.as_str()));
        let deadline = Duration::from_secs(svc.stop_deadline_secs.max(1));
        match self.kind {
            BackendKind::Systemd => self.short(&format!("systemctl stop '{}'", Self::unit(svc)), deadline),
            BackendKind::Exec => {
                let exec =
                    svc.exec.as_ref().ok_or_else(|| format!("service {} has no [services.exec] section", svc.name))?;
                if let Some(stop) = &exec.stop {
                    return self.short(&self.expand(stop)?, deadline);
                }
                let pidfile = self.pidfile(svc)?;
                let Some(pid) = read_pid(&pidfile) else { return Ok(()) };
                let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
                let t = Instant::now();
                let mut poll = Poll::new(Duration::from_millis(2), Duration::from_millis(20));
                while pid_alive(pid) {
                    if t.elapsed() >= deadline {
                        self.note(&format!("stop {}: still running after {} s, SIGKILL", svc.name, deadline.as_secs()));
                        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
                        let t2 = Instant::now();
                        while pid_alive(pid) {
                            if t2.elapsed() > Duration::from_secs(5) {
                                return Err(format!("service {} (pid {pid}) survived SIGKILL", svc.name));
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        break;
                    }
                    poll.sleep();
                }
                let _ = std::fs::remove_file(&pidfile);
                self.note(&format!("stop {}: stopped (pid {pid})", svc.name));
                Ok(())
            }
        }
    }

    /// Waits until the service is healthy, or its health deadline passes.
    pub fn wait_healthy(&self, svc: &Service, hosts_file: &Path) -> Result<(), String> {
        self.healthy(svc, hosts_file, None)
    }

    /// [`Self::wait_healthy`], failing at once if `launched` dies meanwhile.
    fn healthy(&self, svc: &Service, hosts_file: &Path, launched: Option<&Launched>) -> Result<(), String> {
        let Some(h) = &svc.health else {
            return if self.is_running(svc)? { Ok(()) } else { Err(format!("service {} is not running", svc.name)) };
        };
        let result = health(self, h, hosts_file, &|| launched.map_or(Ok(()), Launched::check_alive));
        self.note(&format!(
            "health {}: {}",
            svc.name,
            result.as_ref().map_or_else(Clone::clone, |()| "healthy".into())
        ));
        result
    }
}

/// A service process group just spawned by the exec backend, not yet running the service.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Spawned<'a> {
    /// The service.
    pub name: &'a str,
    /// Its process group (the start shell's pid).
    pub pgid: i32,
}

/// Called between spawning a service's start shell and letting it run; an error stops the
/// start before anything runs.
pub(crate) type OnSpawn<'a> = &'a mut dyn FnMut(Spawned<'_>) -> Result<(), String>;

/// Kill tests: [`super::journal::PAUSE_SPAWN_ENV`] parks the engine after the K-th
/// service start of this process, once the service runs and before its pidfile is written.
fn pause_after_service_start() {
    static STARTED: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let k = STARTED.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
    if std::env::var(super::journal::PAUSE_SPAWN_ENV).ok().and_then(|v| v.parse().ok()) == Some(k) {
        super::journal::park_forever(&format!("service start {k}"));
    }
}

/// How long a freshly started exec service must stay alive (a bad command dies at once).
const ALIVE_WINDOW: Duration = Duration::from_millis(150);

/// A service process the exec backend just started.
struct Launched {
    name: String,
    pid: i32,
    out: PathBuf,
    at: Instant,
}

impl Launched {
    fn check_alive(&self) -> Result<(), String> {
        if pid_alive(self.pid) {
            Ok(())
        } else {
            Err(format!("service {} exited right after starting; see {}", self.name, self.out.display()))
        }
    }

    /// Checks that the process stays alive until `window` after its start.
    fn alive_for(&self, window: Duration) -> Result<(), String> {
        loop {
            self.check_alive()?;
            let left = window.saturating_sub(self.at.elapsed());
            if left.is_zero() {
                return Ok(());
            }
            std::thread::sleep(left.min(Duration::from_millis(25)));
        }
    }
}

/// Polls the health check until it passes or its deadline passes: first at once, then
/// at growing intervals (5 ms doubling up to 100 ms), so a service that comes up quickly
/// is seen quickly and a slow one is not hammered. `watch` runs before every probe; its
/// error ends the wait.
fn health(
    services: &Services,
    h: &HealthCheck,
    hosts_file: &Path,
    watch: &dyn Fn() -> Result<(), String>,
) -> Result<(), String> {
    let deadline = Duration::from_secs(h.deadline_secs.max(1));
    let start = Instant::now();
    let mut last = String::from("not checked");
    let mut poll = Poll::new(Duration::from_millis(5), Duration::from_millis(100));
    while start.elapsed() < deadline {
        watch()?;
        let left = deadline.saturating_sub(start.elapsed()).min(Duration::from_secs(2));
        let ok = if let Some(url) = &h.http {
            let url = services.expand(url)?;
            let parsed = http::parse_url(&url)?;
            match http::resolve(&parsed, hosts_file).and_then(|a| http::get(a, &parsed, left)) {
                Ok(r) if (200..300).contains(&r.status) => match &h.expect {
                    Some(e) if !r.body.contains(e.as_str()) => {
                        last = format!("{url} answered {} without '{e}': {}", r.status, r.body.trim());
                        false
                    }
                    _ => true,
                },
                Ok(r) => {
                    last = format!("{url} answered {}: {}", r.status, r.body.trim());
                    false
                }
                Err(e) => {
                    last = e;
                    false
                }
            }
        } else if let Some(cmd) = &h.command {
            match services.short(&services.expand(cmd)?, left) {
                Ok(()) => true,
                Err(e) => {
                    last = e;
                    false
                }
            }
        } else {
            true
        };
        if ok {
            return Ok(());
        }
        poll.sleep_at_most(deadline.saturating_sub(start.elapsed()));
    }
    Err(format!("unhealthy after {} s: {last}", deadline.as_secs()))
}

fn read_pid(pidfile: &Path) -> Option<i32> {
    std::fs::read_to_string(pidfile).ok()?.trim().parse().ok()
}

/// True if the process exists and is not a zombie.
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 || kill(Pid::from_raw(pid), None).is_err() {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat.rsplit_once(')').and_then(|(_, rest)| rest.split_whitespace().next()).is_none_or(|s| s != "Z"),
        Err(_) => false,
    }
}

use std::os::unix::process::CommandExt as _;

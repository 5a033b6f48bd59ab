//! Real systemd hosts for end-to-end tests: a Debian root filesystem built once with
//! `mmdebstrap` (cached under `target/nspawn/`, keyed by its package list), booted as
//! ephemeral `systemd-nspawn` containers that share the host's network (agents inside
//! reach a coordinator on 127.0.0.1), reached with `nsenter`. Needs root.

use crate::{skip_or_fail, wait_for, workspace_root};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

/// The packages of the root filesystem besides minbase (the cache key).
pub const PACKAGES: &str = "systemd,systemd-sysv,dbus,python3,curl";

/// Why real hosts cannot run here, or `None` when they can.
fn missing() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("systemd-nspawn hosts need root".into());
    }
    for tool in ["systemd-nspawn", "mmdebstrap", "nsenter"] {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map_or(true, |o| !o.status.success())
        {
            return Some(format!("{tool} is not installed (apt-get install -y systemd-container mmdebstrap)"));
        }
    }
    None
}

/// The cached root filesystem, built on first use; `None` (skipped loudly, or a failure
/// under `FLEETUP_TEST_REQUIRE_ALL=1`) when this machine cannot run hosts.
pub fn rootfs(test: &str) -> Option<PathBuf> {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    if let Some(why) = missing() {
        skip_or_fail(test, &why);
        return None;
    }
    // Without it nspawn refuses to start.
    std::fs::create_dir_all("/run/systemd/nspawn").expect("/run/systemd/nspawn");
    let _guard = BUILD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    // The key: the suite and the package list, readable in the directory name.
    let key = format!("bookworm-minbase-{}", PACKAGES.replace(',', "+"));
    let dir = workspace_root().join("target/nspawn");
    let root = dir.join(format!("rootfs-{key}"));
    if root.join("usr/lib/systemd/systemd").exists() {
        return Some(root);
    }
    std::fs::create_dir_all(&dir).unwrap();
    let tmp = dir.join(format!("rootfs-{key}.tmp"));
    let _ = std::fs::remove_dir_all(&tmp);
    eprintln!("building the Debian root filesystem for nspawn hosts (once, ~1-2 min): {}", root.display());
    let out = Command::new("mmdebstrap")
        .args(["--variant=minbase", &format!("--include={PACKAGES}"), "bookworm"])
        .arg(&tmp)
        .output()
        .expect("running mmdebstrap");
    if !out.status.success() {
        let why = format!("mmdebstrap failed: {}", String::from_utf8_lossy(&out.stderr));
        skip_or_fail(test, &why);
        return None;
    }
    std::fs::rename(&tmp, &root).unwrap();
    Some(root)
}

/// One booted host: an ephemeral snapshot of the root filesystem running systemd.
#[derive(Debug)]
pub struct NspawnHost {
    /// Its machine name (also its host name).
    pub name: String,
    nspawn: Child,
    /// PID of its systemd (PID 1 inside), for `nsenter`.
    pub leader: i32,
    log: PathBuf,
}

impl NspawnHost {
    /// Boots `name` from an ephemeral snapshot of `rootfs` (its changes vanish when it
    /// stops) with `share` bound read-only at `/mnt/fleetup`; waits until systemd has
    /// reached its default target ("running" or "degraded").
    pub fn boot(rootfs: &Path, name: &str, share: &Path, logs: &Path) -> Self {
        Self::start(rootfs, true, name, share, logs)
    }

    /// Like [`NspawnHost::boot`] from a root filesystem of its own (`root`, e.g. a copy
    /// from [`own_copy`]), which keeps its changes across a restart.
    pub fn boot_persistent(root: &Path, name: &str, share: &Path, logs: &Path) -> Self {
        Self::start(root, false, name, share, logs)
    }

    /// Stops the host abruptly: SIGKILL to its init ends every process inside at once, with
    /// no shutdown (a crash, not a power cut: the host kernel's page cache survives).
    pub fn kill_abruptly(mut self) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.leader), nix::sys::signal::Signal::SIGKILL);
        wait_for(&format!("{} to stop", self.name), Duration::from_secs(30), || (!self.is_running()).then_some(()));
    }

    fn start(rootfs: &Path, ephemeral: bool, name: &str, share: &Path, logs: &Path) -> Self {
        let log = logs.join(format!("nspawn-{name}-{}.log", std::fs::read_dir(logs).map_or(0, Iterator::count)));
        let out = std::fs::File::create(&log).unwrap();
        let nspawn = Command::new("systemd-nspawn")
            .arg("-D")
            .arg(rootfs)
            .args(ephemeral.then_some("--ephemeral"))
            .args(["-b", "--register=no", "--keep-unit", "-M", name, "--hostname", name])
            .arg(format!("--bind-ro={}:/mnt/fleetup", share.display()))
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("systemd-nspawn");
        let pid = i32::try_from(nspawn.id()).unwrap();
        let leader = wait_for(&format!("{name}'s systemd"), Duration::from_mins(1), || child_named(pid, "systemd"));
        let mut host = Self { name: name.to_owned(), nspawn, leader, log };
        let state = wait_for(&format!("{name} to boot"), Duration::from_secs(90), || {
            let s = host.sh("systemctl is-system-running 2>/dev/null || true");
            let s = s.trim().to_owned();
            (s == "running" || s == "degraded").then_some(s)
        });
        eprintln!("{name}: booted ({state}), systemd pid {}", host.leader);
        assert!(host.is_running(), "{name} stopped while booting:\n{}", host.console());
        host
    }

    /// Runs `argv` inside the host (all its namespaces).
    pub fn exec(&self, argv: &[&str]) -> Output {
        Command::new("nsenter").args(["-t", &self.leader.to_string(), "-a", "--"]).args(argv).output().expect("nsenter")
    }

    /// `sh -c script` inside the host; stdout (stderr appended), whatever the status.
    pub fn sh(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    }

    /// `sh -c script` inside the host, panicking with its output when it fails.
    pub fn run(&self, script: &str) -> String {
        let out = self.exec(&["sh", "-c", script]);
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{}: `{script}` failed:\n{text}", self.name);
        text
    }

    /// The container's console output (boot messages).
    pub fn console(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn is_running(&mut self) -> bool {
        matches!(self.nspawn.try_wait(), Ok(None))
    }
}

impl Drop for NspawnHost {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.nspawn.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if !self.is_running() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.nspawn.kill();
        let _ = self.nspawn.wait();
    }
}

/// A copy of `rootfs` at `to` for a host that must survive a restart.
pub fn own_copy(rootfs: &Path, to: &Path) {
    let ok = Command::new("cp").arg("-a").arg(rootfs).arg(to).status().expect("cp");
    assert!(ok.success(), "copying the root filesystem to {}", to.display());
}

/// A child process of `parent` whose command name is `comm`.
fn child_named(parent: i32, comm: &str) -> Option<i32> {
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // pid (comm) state ppid …
        let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
        let name = head.split_once(" (").map_or("", |(_, n)| n);
        let ppid = rest.split_whitespace().nth(1).and_then(|p| p.parse::<i32>().ok());
        if name == comm && ppid == Some(parent) {
            return Some(pid);
        }
    }
    None
}

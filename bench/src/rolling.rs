//! P7: the sample update rolled over many simulated hosts (separate roots, each with the
//! demo service on its own loopback port) in batches of five, three ways: fleetup (a real
//! coordinator and one real `fleetup-agent run` per host), a plain shell script with no
//! orchestration (`bench/p7/rolling.sh`, the floor) and Ansible (`bench/p7/rolling.yml`).

use crate::engine::start_demo;
use crate::harness::{Backend, BenchServer};
use crate::stats::median;
use crate::{Bins, Size};
use anyhow::Result;
use fleetup_e2e::copy_tree;
use fleetup_e2e::fleet::{Proc, free_port};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod profile;

/// Hosts per batch.
pub const BATCH: usize = 5;

/// A simulated host: root at 1.0 with the demo service running.
#[derive(Debug)]
struct Host {
    dir: PathBuf,
    root: PathBuf,
    port: u16,
}

impl Host {
    fn new(bins: &Bins, base: &Path, i: usize) -> Result<Self> {
        let dir = base.join(format!("h{i:03}"));
        let root = dir.join("root");
        copy_tree(&crate::workspace_root().join("examples/base-1.0"), &root)?;
        std::fs::write(dir.join("hosts"), "127.0.0.1 localhost\n")?;
        let port = free_port();
        start_demo(bins, &root, port)?;
        Ok(Self { dir, root, port })
    }

    fn version(&self) -> String {
        std::fs::read_to_string(self.root.join("lib/demo/VERSION")).unwrap_or_default().trim().to_owned()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.root.join("run/demo.pid"))
            && let Ok(pid) = pid.trim().parse::<i32>()
        {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

fn hosts(bins: &Bins, base: &Path, n: usize) -> Result<Vec<Host>> {
    let _ = std::fs::remove_dir_all(base);
    (0..n).map(|i| Host::new(bins, base, i)).collect()
}

fn check_updated(hosts: &[Host], how: &str) -> Result<()> {
    for h in hosts {
        anyhow::ensure!(h.version() == "1.1.0", "{how}: {} is at '{}' after the roll", h.dir.display(), h.version());
        let cur = std::fs::read_link(h.root.join("www/current"))?;
        anyhow::ensure!(cur == Path::new("releases/1.1.0"), "{how}: web app not switched on {}", h.dir.display());
    }
    Ok(())
}

/// The `ansible-playbook` to use: `FLEETUP_BENCH_ANSIBLE`, or the venv under the target dir.
pub fn ansible_playbook(bins: &Bins) -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FLEETUP_BENCH_ANSIBLE") {
        return Some(p.into());
    }
    let p = bins.dir.parent()?.join("ansible-venv/bin/ansible-playbook");
    p.exists().then_some(p)
}

/// One fleetup roll: a coordinator, one agent per host, waves of five. Its time, and where
/// each host's time went ([`profile`]).
async fn fleetup_once(bins: &Bins, base: &Path, n: usize) -> Result<(f64, Value)> {
    let server = BenchServer::start(bins, &base.join("server"), Backend::Sqlite, &[]).await?;
    let hosts = hosts(bins, &base.join("hosts"), n)?;
    let pkg = server.upload(bins, &crate::workspace_root().join("examples/sample-rollup")).await?;
    let token = server.enrollment_token(n, &[("bench", "p7")]).await?;
    let mut agents = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        let mut cmd = Command::new(bins.path("fleetup-agent"));
        cmd.args(["run", "--server", &server.url, "--enroll-token", &token, "--hostname", &format!("h{i:03}")])
            .arg("--state-dir")
            .arg(h.dir.join("state"))
            .arg("--root")
            .arg(&h.root)
            .arg("--trust")
            .arg(&server.key_pub)
            .arg("--hosts-file")
            .arg(h.dir.join("hosts"))
            .args(["--services-backend", "exec"])
            .args(["--var", &format!("port={}", h.port)])
            .args(["--var", &format!("demo_service_bin={}", bins.path("fleetup-demo-service").display())])
            // A CRL endpoint that refuses at once: the warning is answered by the rollout policy.
            .args(["--var", "crl_base=http://127.0.0.1:1"])
            .env("RUST_LOG", std::env::var("FLEETUP_BENCH_AGENT_LOG").unwrap_or_else(|_| "warn".into()));
        agents.push(Proc::spawn(cmd, h.dir.join("agent.log")));
    }
    server.wait_enrolled(n, Duration::from_mins(1), "the agents to enroll").await?;
    let waves: Vec<Value> = (0..n.div_ceil(BATCH)).map(|_| json!(BATCH)).collect();
    let spec = serde_json::from_value(json!({
        "name": "p7", "package_id": pkg, "targets": { "labels": { "bench": "p7" } },
        "waves": waves, "concurrency": BATCH, "policies": { "warning": "continue" },
    }))?;
    let rid = server.client.create_rollout(&spec).await?.id;
    // Let every agent's long-poll be held before the clock starts.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let t = Instant::now();
    let started = chrono::Utc::now();
    server.client.start(&rid).await?;
    let done = server.wait_rollout_finished(&rid, Duration::from_mins(10)).await?;
    let secs = t.elapsed().as_secs_f64();
    let succeeded = done.counts.get(&fleetup_proto::api::JobState::Succeeded).copied();
    anyhow::ensure!(succeeded == Some(n as u64), "p7 rollout: {:?}", done.counts);
    check_updated(&hosts, "fleetup")?;
    drop(agents);
    Ok((secs, profile::profile(&server.client, &rid, started).await?))
}

fn hosts_file(base: &Path, hosts: &[Host]) -> Result<PathBuf> {
    let mut s = String::new();
    for h in hosts {
        writeln!(s, "{} {}", h.root.display(), h.port)?;
    }
    let p = base.join("hosts.txt");
    std::fs::write(&p, s)?;
    Ok(p)
}

fn shell_once(bins: &Bins, base: &Path, n: usize) -> Result<f64> {
    let hosts = hosts(bins, &base.join("hosts"), n)?;
    let list = hosts_file(base, &hosts)?;
    let t = Instant::now();
    let out = Command::new("sh")
        .arg(crate::workspace_root().join("bench/p7/rolling.sh"))
        .arg(&list)
        .arg(crate::workspace_root().join("examples/sample-rollup"))
        .arg(bins.path("fleetup-demo-service"))
        .arg(BATCH.to_string())
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(out.status.success(), "rolling.sh: {}", String::from_utf8_lossy(&out.stderr));
    check_updated(&hosts, "shell")?;
    Ok(secs)
}

fn ansible_once(bins: &Bins, playbook: &Path, base: &Path, n: usize) -> Result<f64> {
    let hosts = hosts(bins, &base.join("hosts"), n)?;
    let mut inv = String::from("[fleet]\n");
    let python = playbook.parent().map(|d| d.join("python3")).filter(|p| p.exists());
    for (i, h) in hosts.iter().enumerate() {
        write!(inv, "h{i:03} ansible_connection=local root={} port={}", h.root.display(), h.port)?;
        if let Some(py) = &python {
            write!(inv, " ansible_python_interpreter={}", py.display())?;
        }
        inv.push('\n');
    }
    let inv_path = base.join("inventory.ini");
    std::fs::write(&inv_path, inv)?;
    let t = Instant::now();
    let out = Command::new(playbook)
        .arg("-i")
        .arg(&inv_path)
        .arg(crate::workspace_root().join("bench/p7/rolling.yml"))
        .args(["-e", &format!("rollup={}", crate::workspace_root().join("examples/sample-rollup").display())])
        .args(["-e", &format!("demo_bin={}", bins.path("fleetup-demo-service").display())])
        .env("ANSIBLE_CONFIG", crate::workspace_root().join("bench/p7/ansible.cfg"))
        .env("ANSIBLE_LOCAL_TEMP", base.join("ansible-tmp"))
        .env("ANSIBLE_REMOTE_TEMP", base.join("ansible-tmp"))
        .output()?;
    let secs = t.elapsed().as_secs_f64();
    anyhow::ensure!(
        out.status.success(),
        "ansible-playbook: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    check_updated(&hosts, "ansible")?;
    Ok(secs)
}

/// P7 over `n` hosts, `runs` times each; medians and ratios to the shell floor.
pub async fn p7(bins: &Bins, size: Size, work: &Path) -> Result<Value> {
    let (n, runs) = match size {
        Size::Tiny => (5, 1),
        Size::Small => (10, 1),
        Size::Full => (50, 3),
    };
    let dir = work.join("p7");
    let playbook = ansible_playbook(bins);
    let (mut fl, mut sh, mut an, mut profiles) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for run in 0..runs {
        let s = shell_once(bins, &dir.join(format!("shell{run}")), n)?;
        eprintln!("[p7] run {run}: shell {s:.2} s");
        sh.push(s);
        let (f, prof) = fleetup_once(bins, &dir.join(format!("fleetup{run}")), n).await?;
        eprintln!("[p7] run {run}: fleetup {f:.2} s; where a host's time went (ms): {}", prof["host_median_ms"]);
        fl.push(f);
        profiles.push(prof);
        // Ansible takes minutes per run at 50 hosts on two cores: one run at full size.
        if let Some(pb) = playbook.as_ref().filter(|_| run == 0) {
            let a = ansible_once(bins, pb, &dir.join(format!("ansible{run}")), n)?;
            eprintln!("[p7] run {run}: ansible {a:.2} s");
            an.push(a);
        }
    }
    let floor = median(&sh);
    Ok(json!({
        "hosts": n, "batch": BATCH, "runs": runs,
        "shell_secs_median": floor,
        "fleetup_secs_median": median(&fl),
        "ansible_secs_median": if an.is_empty() { Value::Null } else { json!(median(&an)) },
        "fleetup_over_floor": median(&fl) / floor,
        "ansible_over_floor": if an.is_empty() { Value::Null } else { json!(median(&an) / floor) },
        "ansible_over_fleetup": if an.is_empty() { Value::Null } else { json!(median(&an) / median(&fl)) },
        "shell_all": sh, "fleetup_all": fl, "ansible_all": an, "fleetup_profiles": profiles,
        "ansible": playbook.map(|p| p.display().to_string()),
    }))
}

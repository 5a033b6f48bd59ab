//! P4–P6: the agent binary and the install engine on this machine.
//!
//! P4 runs a real `fleetup-agent run` idle against a real coordinator. P5 installs a large
//! generated rollup with the engine and, for comparison, does the naive thing with the same
//! payload (stop → unpack → start). P6 installs a package whose five CRL endpoints are
//! loopback ports that accept and never answer.

use crate::harness::{Backend, BenchServer, pack};
use crate::stats::{CpuMeter, median, rss_kib};
use crate::{Bins, Size};
use anyhow::{Context as _, Result};
use fleetup_e2e::copy_tree;
use fleetup_e2e::fleet::{Proc, free_port};
use fleetup_proto::{EngineEvent, InstallSummary};
use serde_json::{Value, json};
use std::fmt::Write as _;
use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// P4: idle agent RSS and CPU, binary size.
pub async fn p4(bins: &Bins, size: Size, work: &Path) -> Result<Value> {
    let idle_secs = match size {
        Size::Tiny => 2,
        Size::Small => 10,
        Size::Full => 60,
    };
    let dir = work.join("p4");
    let _ = std::fs::remove_dir_all(&dir);
    let server = BenchServer::start(bins, &dir.join("server"), Backend::Sqlite, &[]).await?;
    let token = server.enrollment_token(1, &[]).await?;
    let host = dir.join("host");
    copy_tree(&crate::workspace_root().join("examples/base-1.0"), &host.join("root"))?;
    std::fs::write(host.join("hosts"), "127.0.0.1 localhost\n")?;
    let mut cmd = Command::new(bins.path("fleetup-agent"));
    cmd.args(["run", "--server", &server.url, "--enroll-token", &token, "--hostname", "idle"])
        .arg("--state-dir")
        .arg(host.join("state"))
        .arg("--root")
        .arg(host.join("root"))
        .arg("--trust")
        .arg(&server.key_pub)
        .arg("--hosts-file")
        .arg(host.join("hosts"))
        .args(["--services-backend", "exec"])
        .env("RUST_LOG", "info");
    let agent = Proc::spawn(cmd, host.join("agent.log"));
    if let Err(e) = server.wait_enrolled(1, Duration::from_secs(30), "the idle agent to enroll").await {
        anyhow::bail!("{e:#}\n{}", agent.output());
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = agent.child.id();
    let cpu = CpuMeter::start(pid);
    let mut rss = Vec::new();
    for _ in 0..idle_secs {
        tokio::time::sleep(Duration::from_secs(1)).await;
        rss.push(rss_kib(pid) as f64);
    }
    let cpu_share = cpu.finish();
    let bin = bins.path("fleetup-agent");
    let size_bytes = std::fs::metadata(&bin)?.len();
    // The release profile strips symbols already; `strip` shows what is left to gain.
    let stripped = dir.join("fleetup-agent.stripped");
    let stripped_bytes = Command::new("strip")
        .arg("-o")
        .arg(&stripped)
        .arg(&bin)
        .status()
        .ok()
        .filter(std::process::ExitStatus::success)
        .and_then(|_| std::fs::metadata(&stripped).ok())
        .map(|m| m.len());
    Ok(json!({
        "idle_secs": idle_secs,
        "rss_mib_median": median(&rss) / 1024.0,
        "rss_mib_max": rss.iter().copied().fold(0.0, f64::max) / 1024.0,
        "idle_cpu_percent_of_core": cpu_share * 100.0,
        "idle_cpu_ms_per_minute": cpu_share * 60_000.0,
        "binary": bin.display().to_string(),
        "binary_bytes": size_bytes,
        "binary_bytes_after_strip": stripped_bytes,
    }))
}

/// P5 sizes: (files, bytes per file, runs).
fn p5_size(size: Size) -> (usize, usize, usize) {
    match size {
        Size::Tiny => (20, 10 * 1024, 1),
        Size::Small => (200, 100 * 1024, 3),
        Size::Full => (2000, 100 * 1024, 3),
    }
}

/// Fills `buf` with incompressible bytes (xorshift), so the package is as big as the payload.
fn noise(buf: &mut [u8], mut seed: u64) {
    for chunk in buf.chunks_mut(8) {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let b = seed.to_le_bytes();
        chunk.copy_from_slice(&b[..chunk.len()]);
    }
}

/// A started demo service on `port` with its pid file under `root/run/demo.pid`.
pub(crate) fn start_demo(bins: &Bins, root: &Path, port: u16) -> Result<()> {
    let child =
        fleetup_demo_service::launch(&bins.path("fleetup-demo-service"), root, port, &root.join("run/demo.log"))?;
    // Detached like a daemon (the exec backend stops it through its pid file); reaped by
    // a thread so a stopped service does not linger as a zombie the engine waits on.
    std::thread::spawn(move || {
        let mut child = child;
        let _ = child.wait();
    });
    wait_health(port, Duration::from_secs(20))
}

/// Waits until the demo service answers `/health`.
pub fn wait_health(port: u16, deadline: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if health(port).is_some() {
            return Ok(());
        }
        anyhow::ensure!(start.elapsed() < deadline, "demo service on {port} did not answer");
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn health(port: u16) -> Option<String> {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.contains("200").then_some(out)
}

fn stop_demo(root: &Path) {
    if let Ok(pid) = std::fs::read_to_string(root.join("run/demo.pid"))
        && let Ok(pid) = pid.trim().parse::<i32>()
    {
        let pid = nix::unistd::Pid::from_raw(pid);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let start = Instant::now();
        while nix::sys::signal::kill(pid, None).is_ok() && start.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Runs `fleetup-agent install --json` and returns the final summary and the wall time.
pub fn install(
    bins: &Bins,
    pkg: &Path,
    key_pub: &Path,
    host: &Path,
    vars: &[(&str, String)],
) -> Result<(InstallSummary, f64)> {
    let mut cmd = Command::new(bins.path("fleetup-agent"));
    cmd.arg("install")
        .arg(pkg)
        .arg("--root")
        .arg(host.join("root"))
        .arg("--trust")
        .arg(key_pub)
        .arg("--state-dir")
        .arg(host.join("state"))
        .arg("--hosts-file")
        .arg(host.join("hosts"))
        .args(["--yes", "--json", "--services-backend", "exec"]);
    for (k, v) in vars {
        cmd.args(["--var", &format!("{k}={v}")]);
    }
    let t = Instant::now();
    let out = cmd.output()?;
    let wall = t.elapsed().as_secs_f64();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let last = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<EngineEvent>(l).ok())
        .filter_map(|e| e.summary())
        .next_back();
    let summary =
        last.with_context(|| format!("no summary from install:\n{stdout}\n{}", String::from_utf8_lossy(&out.stderr)))?;
    Ok((summary, wall))
}

/// P5: engine outage vs total for a big payload, against stop → unpack → start.
pub fn p5(bins: &Bins, size: Size, work: &Path) -> Result<Value> {
    let (files, bytes, runs) = p5_size(size);
    let dir = work.join("p5");
    let _ = std::fs::remove_dir_all(&dir);
    let src = dir.join("rollup");
    let base = dir.join("base");
    copy_tree(&crate::workspace_root().join("examples/base-1.0"), &base)?;
    std::fs::create_dir_all(src.join("payload/data"))?;
    std::fs::create_dir_all(base.join("data"))?;
    let mut manifest = String::from(
        "[rollup]\nname = \"big\"\nversion = \"2.0.0\"\n\n[target]\nos = \"linux\"\n\n\
         [[services]]\nname = \"demo\"\nstop_deadline_secs = 30\nstart_deadline_secs = 30\n\n\
         [services.exec]\nstart = '\"${demo_service_bin}\" --listen 127.0.0.1:${port} --root \"${root}\"'\n\
         pidfile = \"run/demo.pid\"\n\n[services.health]\nhttp = \"http://127.0.0.1:${port}/health\"\ndeadline_secs = 30\n",
    );
    let mut buf = vec![0u8; bytes];
    for i in 0..files {
        noise(&mut buf, 0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
        std::fs::write(src.join(format!("payload/data/f{i:04}.bin")), &buf)?;
        std::fs::write(base.join(format!("data/f{i:04}.bin")), b"old version\n")?;
        write!(manifest, "\n[[files]]\npath = \"data/f{i:04}.bin\"\naction = \"replace\"\n")?;
    }
    std::fs::write(src.join("manifest.toml"), manifest)?;
    let key = dir.join("k.key");
    anyhow::ensure!(
        Command::new(bins.path("fleetup-agent")).args(["keygen", "--out"]).arg(&key).output()?.status.success()
    );
    let key_pub = dir.join("k.key.pub");
    let pkg = dir.join("big.fup");
    let t = Instant::now();
    pack(bins, &src, &key, &pkg)?;
    let pack_secs = t.elapsed().as_secs_f64();
    let tgz = dir.join("payload.tar.gz");
    anyhow::ensure!(
        Command::new("tar").arg("czf").arg(&tgz).arg("-C").arg(src.join("payload")).arg("data").status()?.success()
    );

    let mut outage = Vec::new();
    let mut total = Vec::new();
    let mut naive = Vec::new();
    let mut update_files = Vec::new();
    for run in 0..runs {
        // fleetup
        let host = dir.join(format!("host-f{run}"));
        copy_tree(&base, &host.join("root"))?;
        std::fs::write(host.join("hosts"), "127.0.0.1 localhost\n")?;
        let port = free_port();
        start_demo(bins, &host.join("root"), port)?;
        let demo = bins.path("fleetup-demo-service").display().to_string();
        let (s, wall) =
            install(bins, &pkg, &key_pub, &host, &[("port", port.to_string()), ("demo_service_bin", demo)])?;
        stop_demo(&host.join("root"));
        anyhow::ensure!(s.outcome == fleetup_proto::InstallOutcome::Succeeded, "install: {s:?}");
        let phase = |p: fleetup_proto::PhaseId| s.phase_ms.get(&p).copied().unwrap_or_default();
        let (update, validate) =
            (phase(fleetup_proto::PhaseId::UpdateFiles), phase(fleetup_proto::PhaseId::ValidateFiles));
        eprintln!(
            "[p5] run {run}: outage {} ms of {} ms (wall {wall:.2} s); update-files {update} ms, validate-files {validate} ms, start-services {} ms",
            s.outage_ms,
            s.total_ms,
            phase(fleetup_proto::PhaseId::StartServices)
        );
        update_files.push(update as f64);
        outage.push(s.outage_ms as f64);
        total.push(s.total_ms as f64);
        let _ = std::fs::remove_dir_all(&host);
        // naive: stop, unpack the same payload over the root, start, wait healthy.
        let host = dir.join(format!("host-n{run}"));
        copy_tree(&base, &host.join("root"))?;
        let port = free_port();
        let root = host.join("root");
        start_demo(bins, &root, port)?;
        let t = Instant::now();
        stop_demo(&root);
        anyhow::ensure!(Command::new("tar").arg("xzf").arg(&tgz).arg("-C").arg(&root).status()?.success());
        start_demo(bins, &root, port)?;
        let n = t.elapsed().as_secs_f64() * 1000.0;
        stop_demo(&root);
        eprintln!("[p5] run {run}: naive outage {n:.0} ms");
        naive.push(n);
        let _ = std::fs::remove_dir_all(&host);
    }
    let (o, tt, nv) = (median(&outage), median(&total), median(&naive));
    Ok(json!({
        "files": files, "payload_bytes": files * bytes,
        "package_bytes": std::fs::metadata(&pkg)?.len(), "pack_secs": pack_secs, "runs": runs,
        "outage_ms_median": o, "total_ms_median": tt, "outage_share_percent": 100.0 * o / tt.max(1.0),
        "naive_outage_ms_median": nv, "naive_over_fleetup_outage": nv / o.max(1.0),
        "outage_ms_all": outage, "total_ms_all": total, "naive_ms_all": naive,
        "update_files_ms_median": median(&update_files), "update_files_ms_all": update_files,
    }))
}

/// Five loopback listeners that accept connections and never answer; kept open while the
/// returned handles live.
pub fn silent_endpoints(n: usize) -> Result<(Vec<String>, Vec<std::thread::JoinHandle<()>>)> {
    let mut urls = Vec::new();
    let mut threads = Vec::new();
    for i in 0..n {
        let l = std::net::TcpListener::bind((format!("127.0.0.{}", 20 + i).as_str(), 0))?;
        let addr = l.local_addr()?;
        urls.push(format!("http://{addr}/pki/crl/ca-{i}.crl"));
        threads.push(std::thread::spawn(move || {
            let mut held = Vec::new();
            for s in l.incoming().flatten() {
                held.push(s);
            }
        }));
    }
    Ok((urls, threads))
}

/// P6: check-system with five unreachable (silent) CRL endpoints.
pub fn p6(bins: &Bins, size: Size, work: &Path) -> Result<Value> {
    let runs = if size == Size::Tiny { 1 } else { 5 };
    let dir = work.join("p6");
    let _ = std::fs::remove_dir_all(&dir);
    let (urls, _threads) = silent_endpoints(5)?;
    let src = dir.join("rollup");
    std::fs::create_dir_all(src.join("payload/lib/demo"))?;
    std::fs::write(src.join("payload/lib/demo/crl-test.txt"), "x\n")?;
    let endpoints = urls.iter().map(|u| format!("\"{u}\"")).collect::<Vec<_>>().join(", ");
    std::fs::write(
        src.join("manifest.toml"),
        format!(
            "[rollup]\nname = \"crl\"\nversion = \"1.0.1\"\n\n[[files]]\npath = \"lib/demo/crl-test.txt\"\naction = \"add\"\n\n\
             [crl]\nendpoints = [{endpoints}]\n"
        ),
    )?;
    let key = dir.join("k.key");
    anyhow::ensure!(
        Command::new(bins.path("fleetup-agent")).args(["keygen", "--out"]).arg(&key).output()?.status.success()
    );
    let pkg = dir.join("crl.fup");
    pack(bins, &src, &key, &pkg)?;
    let mut check = Vec::new();
    let mut walls = Vec::new();
    for run in 0..runs {
        let host = dir.join(format!("host{run}"));
        copy_tree(&crate::workspace_root().join("examples/base-1.0"), &host.join("root"))?;
        std::fs::write(host.join("hosts"), "127.0.0.1 localhost\n")?;
        let (s, wall) = install(bins, &pkg, &dir.join("k.key.pub"), &host, &[])?;
        let ms = s.phase_ms.get(&fleetup_proto::PhaseId::CheckSystem).copied().unwrap_or(0) as f64;
        eprintln!("[p6] run {run}: check-system {ms} ms, install {wall:.2} s, {}", s.outcome);
        check.push(ms);
        walls.push(wall);
    }
    Ok(json!({
        "endpoints": urls, "runs": runs,
        "check_system_secs_median": median(&check) / 1000.0,
        "install_wall_secs_median": median(&walls),
        "check_system_ms_all": check,
    }))
}

/// Where a P5/P6 working directory lives.
pub fn work_dir(out: &Path) -> PathBuf {
    out.join("work")
}

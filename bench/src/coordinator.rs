//! P1–P3: one coordinator under a simulated fleet.
//!
//! One run per backend: enroll N agents, hold them long-polling, measure the poll path
//! (`wait=0` probes from extra agents) and the server's CPU while they are held; start a
//! rollout whose single wave covers `wave` agents and time how long until 99 % of them have
//! their job (P1); read that rollout's jobs (P3); run the same wave again with the agents
//! pacing their reports like a real install (P1 paced: the dispatch without the report
//! flood of the first, where every agent reports its whole install at once); then a rollout
//! where agents report phase by phase as fast as they are acknowledged (P2: durable
//! events/s, visibility).

use crate::harness::{Backend, BenchServer};
use crate::sim::{Fleet, ReportMode};
use crate::stats::{CpuMeter, percentile, rss_anon_kib, rss_kib};
use crate::{Bins, Size, Transport};
use anyhow::{Context as _, Result};
use fleetup_client::Method;
use fleetup_proto::id::{PackageId, RolloutId};
use serde_json::{Value, json};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

/// Sizes of one coordinator run.
#[derive(Debug, Clone, Copy)]
pub struct CoordSize {
    /// Agents held long-polling.
    pub agents: usize,
    /// Agents in the timed wave (and jobs in the P3 rollout).
    pub wave: usize,
    /// Jobs in the P2 rollout.
    pub p2_jobs: usize,
    /// Seconds of steady-state measurement.
    pub steady_secs: u64,
    /// New long-polls opened per second.
    pub ramp_per_sec: usize,
    /// How much slower than recorded the paced wave's installs run (the recording, of the
    /// sample rollup on this machine, took 0.59 s; 10 spreads each install's reports over
    /// about 6 s, beyond the wave's dispatch goals of 1–2 s).
    pub pace_scale: f64,
}

/// The default [`CoordSize::pace_scale`].
pub const PACE_SCALE: f64 = 10.0;

impl CoordSize {
    /// The sizes for a `--size`.
    pub fn of(size: Size) -> Self {
        match size {
            Size::Tiny => {
                Self { agents: 20, wave: 10, p2_jobs: 10, steady_secs: 2, ramp_per_sec: 1000, pace_scale: PACE_SCALE }
            }
            Size::Small => Self {
                agents: 2000,
                wave: 1000,
                p2_jobs: 300,
                steady_secs: 5,
                ramp_per_sec: 2000,
                pace_scale: PACE_SCALE,
            },
            Size::Full => Self {
                agents: 50_000,
                wave: 10_000,
                p2_jobs: 2000,
                steady_secs: 20,
                ramp_per_sec: 3000,
                pace_scale: PACE_SCALE,
            },
        }
    }
}

const PROBES: usize = 4;

/// Runs P1–P3 on one backend; returns the figures as JSON.
pub async fn run(
    bins: &Bins,
    backend: Backend,
    sz: CoordSize,
    transport: Transport,
    work: &std::path::Path,
) -> Result<Value> {
    let dir = work.join(format!("coord-{}", backend.as_str()));
    let _ = std::fs::remove_dir_all(&dir);
    let server =
        BenchServer::start(bins, &dir, backend, &["--max-poll-wait-secs", "60", "--lease-secs", "600"]).await?;
    let pkg = server.upload(bins, &crate::workspace_root().join("examples/sample-rollup")).await?;
    let poll_wait = 60;
    let fleet = Fleet::new(&server.url, &server.token, sz.agents + PROBES, poll_wait, transport)?;
    let others = sz.agents - sz.wave + PROBES;
    let wave_token = server.enrollment_token(sz.wave, &[("bench", "wave")]).await?;
    let other_token = server.enrollment_token(others, &[("bench", "idle")]).await?;

    eprintln!("[{}] enrolling {} agents", backend.as_str(), sz.agents + PROBES);
    let t = Instant::now();
    let mut agents = fleet.enroll(sz.wave, 0, &wave_token, 32).await?;
    agents.extend(fleet.enroll(others, sz.wave, &other_token, 32).await?);
    let enroll_secs = t.elapsed().as_secs_f64();
    let probes = agents.split_off(sz.agents);

    eprintln!("[{}] opening {} long-polls", backend.as_str(), sz.agents);
    let t = Instant::now();
    fleet.start_polling(&agents, sz.ramp_per_sec, 0).await;
    let deadline = Instant::now() + Duration::from_mins(2);
    while fleet.obs.polls_in_flight.load(Ordering::Relaxed) < sz.agents && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let open_secs = t.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held_server = server.metric("fleetup_long_polls_held").await;
    let held_client = fleet.obs.polls_in_flight.load(Ordering::Relaxed);

    eprintln!("[{}] steady state for {} s ({} held)", backend.as_str(), sz.steady_secs, held_client);
    let cpu = CpuMeter::start(server.pid());
    let probe_ms =
        crate::sim::probe_polls(&fleet, &probes, Duration::from_secs(sz.steady_secs), Duration::from_millis(20)).await;
    let steady_cpu = cpu.finish();
    let server_rss_mib = rss_kib(server.pid()) as f64 / 1024.0;
    let server_rss_anon_mib = rss_anon_kib(server.pid()) as f64 / 1024.0;

    // P1 wave: every wave agent is told at once (concurrency = wave size).
    fleet.set_mode(ReportMode::OneBatch, sz.pace_scale);
    let rid = one_wave_rollout(&server, "p1-wave", &pkg, json!({ "labels": { "bench": "wave" } }), sz.wave).await?;
    fleet.reset();
    eprintln!("[{}] starting a wave of {}", backend.as_str(), sz.wave);
    let wave = run_wave(&server, &fleet, &rid, sz.wave).await?;
    let wave_events = fleet.obs.events_accepted.load(Ordering::Relaxed);
    let wave_ingest = ingest_rate(&fleet, wave_events);
    let mut p1 = json!({
        "transport": transport.as_str(),
        "agents_held_client": held_client,
        "agents_held_server_gauge": held_server,
        "enroll_secs": enroll_secs,
        "enroll_per_sec": (sz.agents + PROBES) as f64 / enroll_secs,
        "open_polls_secs": open_secs,
        "poll_path_ms": { "p50": percentile(&probe_ms, 50.0), "p99": percentile(&probe_ms, 99.0), "n": probe_ms.len() },
        "steady_cpu_cores": steady_cpu,
        "server_rss_mib": server_rss_mib,
        "server_rss_anon_mib": server_rss_anon_mib,
        "poll_errors": fleet.obs.poll_errors.load(Ordering::Relaxed),
        "wave": sz.wave,
    });
    merge(&mut p1, wave);

    // P3: the jobs of that rollout.
    let p3 = jobs_api(bins, &server, &rid, sz.wave).await?;
    eprintln!("[{}] P3 {p3}", backend.as_str());

    let paced = paced_wave(bins, &server, &fleet, sz, &dir).await?;
    eprintln!(
        "[{}] P1 wave of {} to 99 %: {:.3} s with the report flood, {:.3} s paced (installs {}x the recorded times)",
        backend.as_str(),
        sz.wave,
        p1["wave_p99_secs"].as_f64().unwrap_or(f64::NAN),
        paced["wave_p99_secs"].as_f64().unwrap_or(f64::NAN),
        sz.pace_scale
    );
    p1["wave_paced"] = paced;
    eprintln!("[{}] P1 {p1}", backend.as_str());

    // P2: per-phase reports, as fast as they are acknowledged.
    fleet.set_mode(ReportMode::PerPhase, sz.pace_scale);
    // Agents that did not install in the P1 wave: those did, and a server already on the
    // version is skipped at staging.
    anyhow::ensure!(sz.wave + sz.p2_jobs <= agents.len(), "P2 needs {} agents besides the wave's", sz.p2_jobs);
    let ids: Vec<&str> = agents[sz.wave..sz.wave + sz.p2_jobs].iter().map(|a| a.id.as_str()).collect();
    let rid2 = one_wave_rollout(&server, "p2-events", &pkg, json!({ "agents": ids }), sz.p2_jobs).await?;
    fleet.reset();
    eprintln!("[{}] P2: {} jobs reporting phase by phase", backend.as_str(), sz.p2_jobs);
    let cpu = CpuMeter::start(server.pid());
    server.client.start(&rid2).await?;
    let done = server.wait_rollout_finished(&rid2, Duration::from_mins(15)).await?;
    let deadline = Instant::now() + Duration::from_mins(1);
    while (fleet.obs.jobs_done.load(Ordering::Relaxed) as usize) < sz.p2_jobs && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let p2_cpu = cpu.finish();
    let events = fleet.obs.events_accepted.load(Ordering::Relaxed);
    let post_ms = fleet.obs.post_ms.lock().unwrap().clone();
    let vis = fleet.obs.visible_ms.lock().unwrap().clone();
    let p2 = json!({
        "jobs": sz.p2_jobs,
        "events": events,
        "events_per_sec_per_phase_batches": ingest_rate(&fleet, events),
        "events_per_batch": events as f64 / post_ms.len().max(1) as f64,
        "post_ms": { "p50": percentile(&post_ms, 50.0), "p99": percentile(&post_ms, 99.0) },
        "visibility_ms": { "p50": percentile(&vis, 50.0), "p99": percentile(&vis, 99.0), "n": vis.len() },
        "events_per_sec_whole_stream_batches": wave_ingest,
        "cpu_cores": p2_cpu,
        "counts": done.counts,
        "report_errors": fleet.obs.report_errors.load(Ordering::Relaxed),
    });
    eprintln!("[{}] P2 {p2}", backend.as_str());
    fleet.stop.cancel();
    Ok(json!({ "backend": backend.as_str(), "sizes": format!("{sz:?}"), "p1": p1, "p2": p2, "p3": p3 }))
}

/// P1 paced: the wave's agents get a job of a newer version of the package (a server already
/// on a version is skipped at staging) and report each phase when the recorded install sent
/// it, scaled by `sz.pace_scale`. Times to 50 / 99 / 100 % of the agents holding their job,
/// as for the flood, and every event accounted for.
async fn paced_wave(bins: &Bins, server: &BenchServer, fleet: &Fleet, sz: CoordSize, dir: &Path) -> Result<Value> {
    let src = dir.join("paced-rollup");
    let _ = std::fs::remove_dir_all(&src);
    let copied = std::process::Command::new("cp")
        .arg("-a")
        .arg(crate::workspace_root().join("examples/sample-rollup"))
        .arg(&src)
        .status()?;
    anyhow::ensure!(copied.success(), "copying the sample rollup to {}", src.display());
    let manifest = src.join("manifest.toml");
    let text = std::fs::read_to_string(&manifest)?;
    anyhow::ensure!(text.contains("version = \"1.1.0\""), "the sample rollup is no longer 1.1.0: update the bench");
    std::fs::write(&manifest, text.replacen("version = \"1.1.0\"", "version = \"1.2.0\"", 1))?;
    let pkg = server.upload(bins, &src).await?;
    let rid = one_wave_rollout(server, "p1-paced", &pkg, json!({ "labels": { "bench": "wave" } }), sz.wave).await?;
    fleet.set_mode(ReportMode::Paced, sz.pace_scale);
    fleet.reset();
    let errors_before = fleet.obs.report_errors.load(Ordering::Relaxed);
    eprintln!(
        "[{}] starting a paced wave of {} (installs {}x the recorded times)",
        server.backend.as_str(),
        sz.wave,
        sz.pace_scale
    );
    let mut out = run_wave(server, fleet, &rid, sz.wave).await?;
    let deadline = Instant::now() + Duration::from_mins(1);
    while (fleet.obs.jobs_done.load(Ordering::Relaxed) as usize) < sz.wave && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let events = fleet.obs.events_accepted.load(Ordering::Relaxed);
    merge(
        &mut out,
        json!({
            "pace_scale": sz.pace_scale,
            "events": events,
            "events_expected": sz.wave * fleet.events_per_install(),
            "report_errors": fleet.obs.report_errors.load(Ordering::Relaxed) - errors_before,
        }),
    );
    Ok(out)
}

/// Starts the rollout `rid` (one wave of `wave` agents of `fleet`) and waits until every
/// agent holds its job and the rollout finished. Times to 50 / 99 / 100 % of the agents
/// holding their job and to the end, from the fleet's reset, and the server's CPU meanwhile.
async fn run_wave(server: &BenchServer, fleet: &Fleet, rid: &RolloutId, wave: usize) -> Result<Value> {
    let cpu = CpuMeter::start(server.pid());
    server.client.start(rid).await?;
    let deadline = Instant::now() + Duration::from_mins(10);
    while fleet.obs.assignments.lock().unwrap().len() < wave && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let arrivals: Vec<f64> = fleet.obs.assignments.lock().unwrap().iter().map(Duration::as_secs_f64).collect();
    let finished = server.wait_rollout_finished(rid, Duration::from_mins(10)).await?;
    let total = fleet.since_epoch().as_secs_f64();
    Ok(json!({
        "wave_assigned": arrivals.len(),
        "wave_p99_secs": percentile(&arrivals, 99.0),
        "wave_p50_secs": percentile(&arrivals, 50.0),
        "wave_100_secs": percentile(&arrivals, 100.0),
        "wave_all_finished_secs": total,
        "wave_cpu_cores": cpu.finish(),
        "wave_counts": finished.counts,
    }))
}

/// `extra`'s fields added to the object `into`.
fn merge(into: &mut Value, extra: Value) {
    if let (Some(into), Value::Object(extra)) = (into.as_object_mut(), extra) {
        into.extend(extra);
    }
}

/// Accepted events per second between the first report sent and the last acknowledged.
fn ingest_rate(fleet: &Fleet, events: u64) -> f64 {
    let first = *fleet.obs.first_post.lock().unwrap();
    let last = *fleet.obs.last_ack.lock().unwrap();
    match (first, last) {
        (Some(f), Some(l)) if l > f => events as f64 / l.checked_sub(f).unwrap().as_secs_f64(),
        _ => 0.0,
    }
}

/// Stages a rollout of `pkg` over `targets` in one wave with `concurrency` (every target at
/// once), warnings continued; returns its id.
async fn one_wave_rollout(
    server: &BenchServer,
    name: &str,
    pkg: &PackageId,
    targets: Value,
    concurrency: usize,
) -> Result<RolloutId> {
    let spec = serde_json::from_value(json!({
        "name": name, "package_id": pkg, "targets": targets,
        "waves": ["100%"], "concurrency": concurrency, "policies": { "warning": "continue" },
    }))?;
    Ok(server.client.create_rollout(&spec).await?.id)
}

/// P3: the jobs API over a rollout of `n` jobs, every page followed by cursor, in the full
/// and the summary view, at the default page (500) and the largest (5000); the rollout; and
/// the dashboard's rollout page with the fragments it refreshes, logged in as a browser is.
/// A part that fails is recorded as `{"error": …}` and the run goes on.
async fn jobs_api(bins: &Bins, server: &BenchServer, rid: &RolloutId, n: usize) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for view in ["full", "summary"] {
        for limit in [500usize, 5000] {
            let v =
                all_pages(server, rid, view, limit, n).await.unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
            out.insert(format!("{view}_limit_{limit}"), v);
        }
    }
    let mut lat = Vec::new();
    for _ in 0..10 {
        let t = Instant::now();
        server.client.rollout(rid).await?;
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    out.insert("rollout_ms_p95".into(), json!(percentile(&lat, 95.0)));
    let html = dashboard(bins, server, rid, n).await.unwrap_or_else(|e| json!({ "error": format!("{e:#}") }));
    out.insert("html".into(), html);
    Ok(Value::Object(out))
}

/// p50 / p95 of latencies in milliseconds.
fn latency(ms: &[f64]) -> Value {
    json!({ "p50": percentile(ms, 50.0), "p95": percentile(ms, 95.0), "n": ms.len() })
}

/// Sends `req` (an API request from the client, or a dashboard request with the session
/// cookie): (status, body, milliseconds until the whole body arrived). The raw bytes are
/// the measurement, so this does not go through the client's typed calls; parsing is not
/// timed.
async fn timed_get(what: &str, req: reqwest::RequestBuilder) -> Result<(u16, Vec<u8>, f64)> {
    let t = Instant::now();
    let resp = req.send().await.with_context(|| what.to_owned())?;
    let status = resp.status().as_u16();
    let body = resp.bytes().await?;
    let ms = t.elapsed().as_secs_f64() * 1000.0;
    Ok((status, body.to_vec(), ms))
}

/// Reads every job of the rollout 5 times, page by page.
async fn all_pages(server: &BenchServer, rid: &RolloutId, view: &str, limit: usize, n: usize) -> Result<Value> {
    let mut lat = Vec::new();
    let mut bytes = 0;
    let mut whole = Vec::new();
    let mut paging = "cursor";
    for round in 0..5 {
        let t_all = Instant::now();
        let (mut total, mut seen, mut next) = (0, 0, Some(String::new()));
        while let Some(cursor) = next.take() {
            // The full view is the default: no `view` (a build without views refuses the word).
            let view_q = if view == "full" { String::new() } else { format!("view={view}&") };
            let mut path = format!("/rollouts/{rid}/jobs?{view_q}limit={limit}");
            if !cursor.is_empty() {
                path = format!("{path}&{cursor}");
            }
            let (status, body, ms) = timed_get(&path, server.client.request(Method::GET, &path)).await?;
            anyhow::ensure!(status == 200, "jobs page: {status} {}", String::from_utf8_lossy(&body));
            lat.push(ms);
            total += body.len();
            let page: Value = serde_json::from_slice(&body)?;
            if let Some(jobs) = page.as_array() {
                // A build from before cursor paging (a bare array, paged by offset): what
                // before/after comparisons run against.
                paging = "offset";
                seen += jobs.len();
                next = (jobs.len() == limit).then(|| format!("offset={seen}"));
            } else {
                seen += page["jobs"].as_array().context("a page without \"jobs\"")?.len();
                next = page["next"].as_str().map(|c| format!("cursor={c}"));
            }
        }
        whole.push(t_all.elapsed().as_secs_f64() * 1000.0);
        anyhow::ensure!(seen == n, "{view}: walked {seen} jobs, the rollout has {n}");
        if round == 0 {
            bytes = total;
        }
    }
    Ok(json!({
        "paging": paging,
        "pages": n.div_ceil(limit),
        "page_ms_p95": percentile(&lat, 95.0),
        "page_ms_p50": percentile(&lat, 50.0),
        "all_pages_ms_median": percentile(&whole, 50.0),
        "bytes_all_pages": bytes,
        "bytes_per_job": bytes as f64 / n as f64,
    }))
}

/// The dashboard's rollout page for the rollout, its grid fragment (first and last page of
/// servers; htmx fetches it when the page's live stream says "changed"), its panels
/// fragment, the fleet overview (fragment and image) and a page of the agents: 10 timed
/// loads each after one warm-up, logged in.
async fn dashboard(bins: &Bins, server: &BenchServer, rid: &RolloutId, n: usize) -> Result<Value> {
    let (browser, cookie) = server.dashboard_login(bins).await?;
    let last = n.div_ceil(100);
    let mut out = serde_json::Map::new();
    for (name, path, htmx, marker) in [
        ("page", format!("/rollouts/{rid}"), false, "server(s)"),
        ("grid_first", format!("/rollouts/{rid}/grid?page=1&state="), true, "server(s)"),
        ("grid_last", format!("/rollouts/{rid}/grid?page={last}&state="), true, "server(s)"),
        ("panels", format!("/rollouts/{rid}/panels"), true, "page-head"),
        ("overview", format!("/rollouts/{rid}/mosaic"), true, "Fleet overview"),
        ("overview_png", format!("/rollouts/{rid}/mosaic.png"), false, "IHDR"),
        ("agents", "/agents?page=37".to_owned(), false, "agent(s)"),
    ] {
        let url = format!("{}{path}", server.url);
        let mut lat = Vec::new();
        let mut bytes = 0;
        for i in 0..11 {
            let req = browser.get(&url).header("cookie", &cookie);
            let req = if htmx { req.header("hx-request", "true") } else { req };
            let (status, body, ms) = timed_get(&url, req).await?;
            anyhow::ensure!(status == 200, "{path}: {status}");
            anyhow::ensure!(String::from_utf8_lossy(&body).contains(marker), "{path} is not the dashboard's");
            if i > 0 {
                lat.push(ms);
            }
            bytes = body.len();
        }
        out.insert(name.into(), json!({ "ms": latency(&lat), "bytes": bytes }));
    }
    Ok(Value::Object(out))
}

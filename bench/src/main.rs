//! `fleetup-bench`: runs the figures of `docs/benchmarks.md` and prints them as JSON.

use anyhow::Result;
use clap::{Parser, Subcommand};
use fleetup_bench::harness::Backend;
use fleetup_bench::{Bins, Size, Transport, coordinator, engine, rolling};
use serde_json::{Value, json};
use std::path::{Path, PathBuf};

/// Benchmarks for fleetup: simulated agents against a real coordinator, the engine, and a
/// rolling update against a shell script and Ansible. Binaries are taken from beside this
/// executable (build with `cargo build --release --workspace`).
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// How big: tiny (seconds), small (about a minute for `all`), full (the goals' sizes).
    #[arg(long, value_enum, default_value = "small", global = true)]
    size: Size,
    /// Where results (`<figure>.json`) and working directories go.
    #[arg(long, default_value = "target/bench-results", global = true)]
    out: PathBuf,
    /// Store(s) for the coordinator figures (P1–P3).
    #[arg(long, value_enum, global = true)]
    backend: Option<Backend>,
    /// How simulated agents connect (P1–P3): h1 = one connection per agent, as real agents
    /// do; h2 = 100 agents' long-polls per HTTP/2 connection, for a fleet above the open-file limit.
    #[arg(long, value_enum, default_value = "h1", global = true)]
    transport: Transport,
    /// P1's paced wave: simulated agents send each phase's events when the recorded install
    /// of the sample rollup did (0.59 s in all), its times multiplied by this. P1 reports the
    /// wave with the report flood and paced.
    #[arg(long, default_value_t = coordinator::PACE_SCALE, global = true)]
    pace_scale: f64,
    #[command(subcommand)]
    figure: Figure,
}

#[derive(Debug, Subcommand)]
enum Figure {
    /// P1: long-polling agents held, poll-path p99 and CPU, wave dispatch time (one run also gives P2, P3).
    P1,
    /// P2: durable events/s and event → API visibility (same run as P1).
    P2,
    /// P3: jobs API (cursor pages, full and summary views) and the logged-in dashboard page (same run as P1).
    P3,
    /// P4: agent idle RSS, idle CPU, binary size.
    P4,
    /// P5: engine outage vs total for a big payload, against stop → unpack → start.
    P5,
    /// P6: check-system with five silent CRL endpoints.
    P6,
    /// P7: the sample update over many hosts in batches of 5: fleetup vs shell vs Ansible.
    P7,
    /// Every figure.
    All,
}

#[tokio::main]
async fn main() -> Result<()> {
    let cli = Cli::parse();
    let bins = Bins::beside_exe()?;
    let nofile = fleetup_bench::raise_nofile();
    std::fs::create_dir_all(&cli.out)?;
    let work = std::path::absolute(cli.out.join("work"))?;
    let backends = cli.backend.map_or_else(|| vec![Backend::Sqlite, Backend::Postgres], |b| vec![b]);
    let mut results = serde_json::Map::new();
    results.insert("machine".into(), machine(nofile));
    let coord = matches!(cli.figure, Figure::P1 | Figure::P2 | Figure::P3 | Figure::All);
    let mut sz = coordinator::CoordSize::of(cli.size);
    sz.pace_scale = cli.pace_scale;
    // Over HTTP/1.1, one descriptor per held long-poll, in this process and in the server: the
    // open-file limit (which this process could not raise past its hard limit) caps the fleet.
    let cap = usize::try_from(nofile.saturating_sub(1500)).unwrap_or(usize::MAX);
    if coord && cli.transport == Transport::H1 && sz.agents > cap {
        eprintln!("RLIMIT_NOFILE is {nofile}: holding {cap} agents instead of {}", sz.agents);
        results.insert("agents_capped_by_nofile".into(), json!({ "requested": sz.agents, "held": cap }));
        sz.agents = cap;
        sz.wave = sz.wave.min(cap);
    }
    if coord {
        for b in &backends {
            let v = coordinator::run(&bins, *b, sz, cli.transport, &work).await?;
            let name = match cli.transport {
                Transport::H1 => b.as_str().to_owned(),
                Transport::H2 => format!("{}-h2", b.as_str()),
            };
            save(&cli.out, &format!("coordinator-{name}"), &v)?;
            results.insert(format!("coordinator_{name}"), v);
        }
    }
    if matches!(cli.figure, Figure::P4 | Figure::All) {
        let v = engine::p4(&bins, cli.size, &work).await?;
        save(&cli.out, "p4", &v)?;
        results.insert("p4".into(), v);
    }
    if matches!(cli.figure, Figure::P5 | Figure::All) {
        let v = engine::p5(&bins, cli.size, &work)?;
        save(&cli.out, "p5", &v)?;
        results.insert("p5".into(), v);
    }
    if matches!(cli.figure, Figure::P6 | Figure::All) {
        let v = engine::p6(&bins, cli.size, &work)?;
        save(&cli.out, "p6", &v)?;
        results.insert("p6".into(), v);
    }
    if matches!(cli.figure, Figure::P7 | Figure::All) {
        let v = rolling::p7(&bins, cli.size, &work).await?;
        save(&cli.out, "p7", &v)?;
        results.insert("p7".into(), v);
    }
    println!("{}", serde_json::to_string_pretty(&Value::Object(results))?);
    Ok(())
}

fn save(out: &Path, name: &str, v: &Value) -> Result<()> {
    std::fs::write(out.join(format!("{name}.json")), serde_json::to_string_pretty(v)?)?;
    Ok(())
}

fn machine(nofile: u64) -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model =
        cpuinfo.lines().find_map(|l| l.strip_prefix("model name")).map(|l| l.trim_start_matches([' ', '\t', ':']));
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    json!({
        "nproc": std::thread::available_parallelism().map_or(0, std::num::NonZero::get),
        "cpu": model,
        "mem_total": mem.lines().next(),
        "loadavg_at_start": fleetup_bench::stats::loadavg(),
        "nofile": nofile,
        "date": chrono::Utc::now().to_rfc3339(),
    })
}

//! fleetup-bench: the benchmark harness behind `docs/benchmarks.md`.
//!
//! Every figure runs against real processes (a spawned `fleetup-server` on SQLite or on a
//! throwaway Postgres database, real `fleetup-agent` binaries, the demo service), and only
//! simulates what would need thousands of machines: the agents of P1–P3 are tasks of this
//! process that speak the agent protocol and replay a recorded engine event stream.
//! Nothing here is a pass/fail timing test; the figures are printed and written as JSON.

pub mod coordinator;
pub mod engine;
pub mod harness;
pub mod rolling;
pub mod sim;
pub mod stats;

use std::path::{Path, PathBuf};

/// How big a run is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Size {
    /// A few seconds per figure: the smoke test.
    Tiny,
    /// About a minute for `all`.
    Small,
    /// The sizes the goals name (50,000 agents, a 10,000-server wave, 200 MB payload, 50 hosts).
    Full,
}

/// How simulated agents reach the coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Transport {
    /// HTTP/1.1, one TCP connection per agent: what real agents do. Each held long-poll
    /// costs one descriptor here and one in the server, so `RLIMIT_NOFILE` caps the fleet.
    H1,
    /// HTTP/2 over cleartext (prior knowledge), [`sim::AGENTS_PER_H2_CONNECTION`] agents per
    /// connection: every agent still holds its own long-poll (one stream), but a fleet larger
    /// than the open-file limit fits in one coordinator. For machines whose hard limit is low.
    H2,
}

impl Transport {
    /// Name used in result files.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::H1 => "h1",
            Self::H2 => "h2",
        }
    }
}

/// Where the workspace's binaries are (`fleetup-server`, `fleetup-agent`, `fleetup-demo-service`).
#[derive(Debug, Clone)]
pub struct Bins {
    /// The directory holding them.
    pub dir: PathBuf,
}

impl Bins {
    /// The binaries beside the running executable (`target/release/fleetup-bench` finds
    /// `target/release/fleetup-server`), or in `FLEETUP_BIN_DIR`.
    pub fn beside_exe() -> anyhow::Result<Self> {
        if let Ok(d) = std::env::var("FLEETUP_BIN_DIR") {
            return Ok(Self { dir: d.into() });
        }
        let exe = std::env::current_exe()?;
        let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
        if !dir.join("fleetup-server").exists()
            && let Some(up) = dir.parent()
        {
            dir = up.to_path_buf();
        }
        anyhow::ensure!(
            dir.join("fleetup-server").exists() && dir.join("fleetup-agent").exists(),
            "fleetup-server / fleetup-agent not found in {}: run `cargo build --release --workspace` first",
            dir.display()
        );
        Ok(Self { dir })
    }

    /// Path of one binary.
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// The workspace root (for `examples/` and `bench/` files).
pub fn workspace_root() -> PathBuf {
    fleetup_e2e::workspace_root()
}

/// Raises RLIMIT_NOFILE as far as allowed (children inherit it: the spawned server needs
/// one descriptor per held long-poll too). Returns the new soft limit.
pub fn raise_nofile() -> u64 {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap_or((1024, 1024));
    let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open").ok().and_then(|s| s.trim().parse().ok());
    for want in [nr_open.unwrap_or(hard), 1 << 20, 262_144, hard] {
        if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_ok() {
            return want;
        }
    }
    getrlimit(Resource::RLIMIT_NOFILE).map_or(0, |l| l.0)
}

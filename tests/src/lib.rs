//! Helpers shared by the end-to-end tests: finding the workspace's binaries, waiting on
//! conditions with deadlines, and the loud skip rule for optional infrastructure.

pub mod browser;
pub mod fleet;
pub mod mitm;
pub mod nspawn;
pub mod proxy;
pub mod sim;
pub mod tls;

use std::path::PathBuf;
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ has a parent").to_path_buf()
}

/// True when `FLEETUP_TEST_REQUIRE_ALL=1`: optional infrastructure (Postgres, Chromium)
/// must be there, and a test that would skip fails instead.
pub fn require_all() -> bool {
    std::env::var("FLEETUP_TEST_REQUIRE_ALL").is_ok_and(|v| v == "1")
}

/// Skips loudly, or panics under `FLEETUP_TEST_REQUIRE_ALL=1`.
pub fn skip_or_fail(test: &str, missing: &str) {
    assert!(!require_all(), "{test}: {missing}, and FLEETUP_TEST_REQUIRE_ALL=1 forbids skipping");
    eprintln!("\n*** SKIPPED {test}: {missing} (set FLEETUP_TEST_REQUIRE_ALL=1 to make this a failure) ***\n");
}

/// Polls `check` until it returns `Some`, or panics with `what` after `deadline`.
pub fn wait_for<T>(what: &str, deadline: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let start = Instant::now();
    loop {
        if let Some(v) = check() {
            return v;
        }
        assert!(start.elapsed() < deadline, "timed out after {deadline:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// Path of a binary of this workspace (`fleetup-agent`, `fleetup-server`,
/// `fleetup-demo-service`). `cargo test --workspace` builds them all (every package with
/// a binary also has integration tests); if one is missing (a `-p` run), it is built
/// here. It is not rebuilt when present: cargo holds the build lock while tests run.
pub fn binary(name: &str) -> PathBuf {
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let exe = std::env::current_exe().expect("test binary path");
    // target/<profile>/deps/<test> -> target/<profile>/<name>
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    let path = dir.join(name);
    let _guard = BUILD.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = std::process::Command::new(cargo);
        cmd.current_dir(workspace_root()).args(["build", "--quiet", "--bin", name]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("running cargo build");
        assert!(status.success(), "cargo build --bin {name} failed");
    }
    assert!(path.exists(), "{} was not built", path.display());
    path
}

/// Copies a directory tree (files, directories, symlinks as links).
pub fn copy_tree(from: &std::path::Path, to: &std::path::Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(entry.path())?, &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// `packaging/build-debs.sh` on the binaries of this build, uncompressed (fast), into
/// `out`; returns the agent's and the server's .deb, in that order.
pub fn build_debs(out: &std::path::Path) -> Vec<PathBuf> {
    let bin_dir = binary("fleetup-agent").parent().expect("a target dir").to_path_buf();
    binary("fleetup-server");
    let built = std::process::Command::new(workspace_root().join("packaging/build-debs.sh"))
        .arg("--bin-dir")
        .arg(&bin_dir)
        .arg("--out")
        .arg(out)
        .env("DEB_COMPRESS", "none")
        .output()
        .expect("running packaging/build-debs.sh");
    assert!(built.status.success(), "build-debs.sh: {}", String::from_utf8_lossy(&built.stderr));
    String::from_utf8_lossy(&built.stdout).lines().map(PathBuf::from).collect()
}

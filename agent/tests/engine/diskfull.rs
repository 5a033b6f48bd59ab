//! A full disk, on a tiny tmpfs mounted for the test (the tests run as root): as the
//! install root's filesystem and as the state dir. The install aborts, nothing is left
//! half-applied, and the report names the cause.

use crate::mini::Mini;
use fleetup_proto::{InstallOutcome, PhaseId};
use std::path::Path;

/// A tmpfs of `size` mounted on a temporary directory of its own, unmounted (lazily)
/// when dropped, then the directory removed.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .unwrap();
        assert!(ok.success(), "mounting a tmpfs on {} (the tests run as root)", dir.path().display());
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// Fills the filesystem holding `dir` (a shell command for a hook or a prerequisite).
fn fill(dir: &str) -> String {
    format!("dd if=/dev/zero of={dir}/filler bs=64k 2>/dev/null; true")
}

#[test]
fn a_root_filesystem_too_small_for_the_payload_is_refused_before_anything_changes() {
    let (fs, tmp) = (Tmpfs::mount("4m"), tempfile::tempdir().unwrap());
    let (root, state) = (fs.path().join("root"), tmp.path().join("state"));
    let m = Mini::with_dirs(tmp, root, state);
    let big = "x".repeat(6 << 20);
    let pkg = m.package_with("1.0.0", "", &[("payload/lib/app/big.bin", &big)]);
    let before = m.tree();
    let s = m.install(&pkg, &[]).summary();
    assert_eq!((s.outcome, s.failed_phase), (InstallOutcome::Failed, Some(PhaseId::CheckSystem)), "{s:?}");
    let error = s.error.unwrap_or_default();
    assert!(error.contains("not enough free space on the filesystem of") && error.contains("needed"), "{error}");
    assert_eq!(m.tree(), before);
    assert_eq!(m.leftover_staging(), 0);
}

#[test]
fn the_root_filesystem_filling_up_during_the_install_aborts_it_cleanly_and_says_why() {
    let (fs, tmp) = (Tmpfs::mount("8m"), tempfile::tempdir().unwrap());
    let (root, state) = (fs.path().join("root"), tmp.path().join("state"));
    let m = Mini::with_dirs(tmp, root, state);
    // Another writer fills the disk after the space check (a prerequisite runs after it).
    let filler = fs.path().display().to_string();
    let extra = format!(
        "[[prerequisites]]\nkind = \"command-succeeds\"\ncommand = \"{}\"\nseverity = \"fatal\"\nmessage = \"x\"\n",
        fill(&filler)
    );
    let pkg = m.package_with("1.0.0", &extra, &[("payload/lib/app/data.bin", &"y".repeat(1 << 20))]);
    let before = m.tree();
    let s = m.install(&pkg, &[]).summary();
    assert_ne!(s.outcome, InstallOutcome::Succeeded, "{s:?}");
    assert!(matches!(s.outcome, InstallOutcome::Failed | InstallOutcome::RolledBack), "{s:?}");
    let error = s.error.unwrap_or_default();
    assert!(error.contains("No space left on device"), "{error}");
    assert_eq!(m.tree(), before, "half-applied");
    assert_eq!(m.leftover_staging(), 0, "staging left on the full disk");
    // Once space is freed, the same package installs.
    std::fs::remove_file(fs.path().join("filler")).unwrap();
    let pkg = m.package_with("1.0.0", "", &[("payload/lib/app/data.bin", &"y".repeat(1 << 20))]);
    let ran = m.install(&pkg, &[]);
    assert_eq!(ran.summary().outcome, InstallOutcome::Succeeded, "{}", ran.stderr);
}

#[test]
fn the_state_dir_filling_up_during_the_install_never_claims_success_and_recovers() {
    let (fs, tmp) = (Tmpfs::mount("2m"), tempfile::tempdir().unwrap());
    let (root, state) = (tmp.path().join("root"), fs.path().join("state"));
    let m = Mini::with_dirs(tmp, root, state);
    // A pre-install script fills the state dir's filesystem: the journal and the event
    // log cannot be written from then on.
    let pkg = m.package_with(
        "1.0.0",
        "[scripts]\npre_install = [\"scripts/fill.sh\"]\n",
        &[("scripts/fill.sh", &format!("{}\n", fill("\"$FLEETUP_STATE_DIR\"")))],
    );
    let before = m.tree();
    let ran = m.install(&pkg, &[]);
    assert!(!ran.status.success(), "a full state dir must not end in success: {}", ran.stderr);
    let s = ran.events.iter().find_map(fleetup_proto::EngineEvent::summary);
    if let Some(s) = &s {
        assert_ne!(s.outcome, InstallOutcome::Succeeded, "{s:?}");
        let error = s.error.clone().unwrap_or_default();
        assert!(error.contains("No space left on device"), "{error}");
    }
    assert_eq!(m.tree(), before, "half-applied");
    // With space again, the interrupted install (if its journal stayed open) is finished
    // and the package then installs.
    std::fs::remove_file(m.state.join("filler")).unwrap();
    let pkg = m.package("1.0.0");
    let mut ran = m.install(&pkg, &[]);
    if ran.stderr.contains("an interrupted install") {
        ran = m.install(&pkg, &[]);
    }
    assert_eq!(ran.summary().outcome, InstallOutcome::Succeeded, "{}", ran.stderr);
}

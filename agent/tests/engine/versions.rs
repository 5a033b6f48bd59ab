//! What the engine decides from versions and targets before anything changes: an older
//! version than the high-water mark is refused (across restarts) unless allowed; the
//! version already installed ends at once, changing nothing; a package for another OS or
//! device class is refused.

use crate::mini::Mini;
use fleetup_proto::{InstallOutcome, PhaseId};

#[test]
fn an_older_version_is_refused_across_restarts_unless_a_downgrade_is_allowed() {
    let m = Mini::new();
    let v2 = m.package("2.0.0");
    assert_eq!(m.install(&v2, &[]).summary().outcome, InstallOutcome::Succeeded);
    assert_eq!(m.version(), "2.0.0");
    // Each install is a new process on the same state dir: the mark is on disk.
    for older in ["1.0.0", "1.5.0"] {
        let before = m.tree();
        let ran = m.install(&m.package(older), &[]);
        let s = ran.summary();
        assert_eq!(s.outcome, InstallOutcome::Failed, "{older}: {s:?}");
        assert_eq!(s.failed_phase, Some(PhaseId::CheckSystem));
        let error = s.error.unwrap_or_default();
        assert!(
            error.contains(&format!("mini {older} is older than 2.0.0, the highest version installed here"))
                && error.contains("--allow-downgrade"),
            "{error}"
        );
        assert_eq!(ran.status.code(), Some(1));
        assert_eq!(m.tree(), before, "{older}: the root changed");
        assert_eq!(m.leftover_staging(), 0);
    }
    let marks: serde_json::Value =
        serde_json::from_slice(&std::fs::read(m.state.join(fleetup_agent::engine::VERSIONS_FILE)).unwrap()).unwrap();
    assert_eq!(marks["rollups"]["mini"]["high_water"], "2.0.0", "{marks}");
    // Allowed explicitly: installed, and the mark follows the operator's choice.
    let ran = m.install(&m.package("1.0.0"), &["--allow-downgrade"]);
    assert_eq!(ran.summary().outcome, InstallOutcome::Succeeded, "{}", ran.stderr);
    assert_eq!(m.version(), "1.0.0");
    let ran = m.install(&m.package("1.5.0"), &[]);
    assert_eq!(ran.summary().outcome, InstallOutcome::Succeeded, "a later fix of the chosen version: {}", ran.stderr);
    assert_eq!(m.version(), "1.5.0");
}

#[test]
fn the_version_already_installed_ends_at_once_changing_nothing() {
    let m = Mini::new();
    assert_eq!(m.install(&m.package("1.0.0"), &[]).summary().outcome, InstallOutcome::Succeeded);
    let before = m.tree();
    let ino = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(m.root.join("lib/app/VERSION")).unwrap());
    let ran = m.install(&m.package("1.0.0"), &[]);
    let s = ran.summary();
    assert_eq!(s.outcome, InstallOutcome::AlreadyInstalled, "{s:?}");
    assert_eq!(s.error, None, "not an error");
    assert_eq!(ran.status.code(), Some(0), "{}", ran.stderr);
    assert!(ran.last_message().contains("mini 1.0.0 is already installed: nothing changed"), "{}", ran.last_message());
    let json = serde_json::to_string(ran.events.last().unwrap()).unwrap();
    assert!(json.contains("\"outcome\":\"already-installed\""), "{json}");
    // Nothing ran past check-system.
    assert!(ran.events.iter().all(|e| e.phase == PhaseId::CheckSystem), "{:?}", ran.events);
    assert_eq!(m.tree(), before);
    let after = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(m.root.join("lib/app/VERSION")).unwrap());
    assert_eq!(after, ino, "the file was replaced");
    assert_eq!(m.leftover_staging(), 0);
}

#[test]
fn the_from_version_file_saying_the_version_is_installed_ends_at_once() {
    let m = Mini::new();
    std::fs::create_dir_all(m.root.join("lib/app")).unwrap();
    std::fs::write(m.root.join("lib/app/VERSION"), "1.1.0\n").unwrap();
    let pkg =
        m.package_with("1.1.0", "[check.from_version]\nfile = \"lib/app/VERSION\"\nversions = [\"1.0.0\"]\n", &[]);
    let before = m.tree();
    let ran = m.install(&pkg, &[]);
    assert_eq!(ran.summary().outcome, InstallOutcome::AlreadyInstalled, "{}", ran.stderr);
    assert!(
        ran.last_message().contains("lib/app/VERSION says the installed version is 1.1.0"),
        "{}",
        ran.last_message()
    );
    assert_eq!(m.tree(), before);
}

#[test]
fn a_package_for_another_os_or_device_class_is_refused_before_anything_changes() {
    let m = Mini::new();
    let cases: [(&str, &[&str], &str); 4] = [
        ("os = \"windows\"", &[], "this rollup is for os 'windows' ([target] os), but this server runs linux"),
        (
            "device_class = \"router\"",
            &["--device-class", "web"],
            "this rollup is for device class 'router' ([target] device_class), but this server is 'web'",
        ),
        (
            "device_class = \"router\"",
            &[],
            "but this server declares none: give the agent the label device-class=router",
        ),
        (
            "os = \"windows\"\ndevice_class = \"router\"",
            &["--device-class", "web"],
            "runs linux; this rollup is for device class 'router'",
        ),
    ];
    for (target, args, want) in cases {
        let before = m.tree();
        let ran = m.install(&m.package_with("1.0.0", &format!("[target]\n{target}\n"), &[]), args);
        let s = ran.summary();
        assert_eq!((s.outcome, s.failed_phase), (InstallOutcome::Failed, Some(PhaseId::CheckSystem)), "{target}");
        let error = s.error.unwrap_or_default();
        assert!(error.contains(want), "{target}: {error}");
        assert_eq!(m.tree(), before);
    }
    let ran = m.install(
        &m.package_with("1.0.0", "[target]\nos = \"linux\"\ndevice_class = \"router\"\n", &[]),
        &["--device-class", "router"],
    );
    assert_eq!(ran.summary().outcome, InstallOutcome::Succeeded, "{}", ran.stderr);
}

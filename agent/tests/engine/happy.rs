//! The sample upgrade 1.0 -> 1.1 through the real CLI.

use crate::support::{Fixture, crl_stub_ok, parse_events, tree};
use fleetup_agent::engine::AutoDecider;
use fleetup_proto::{InstallOutcome, PhaseId, PhaseStatus};
use std::os::unix::fs::{MetadataExt as _, PermissionsExt as _};
use std::sync::Arc;

#[test]
fn sample_upgrade_succeeds_end_to_end() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    // Record the inode of a staged file from a pre-install hook: after the install the
    // same inode must be in the root (rename, not copy).
    let inode_file = fx.tmp.path().join("staged-inode");
    fx.host_hook(
        "pre-install.d",
        "10-inode",
        &format!("stat -c %i \"$FLEETUP_STAGING/payload/lib/demo/messages.txt\" > '{}'", inode_file.display()),
    );
    let before = tree(&fx.root);
    let out = fx.cli().output().unwrap();
    assert!(
        out.status.success(),
        "install failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    let events = parse_events(&out.stdout);

    // Numbered from 1 without gaps; exactly one summary, last.
    for (i, e) in events.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1);
    }
    let summaries: Vec<_> = events.iter().filter_map(fleetup_proto::EngineEvent::summary).collect();
    assert_eq!(summaries.len(), 1);
    let s = &summaries[0];
    assert_eq!(s.outcome, InstallOutcome::Succeeded, "{s:?}");
    assert!(events.last().unwrap().summary().is_some());
    // Every phase reported succeeded.
    for p in PhaseId::INSTALL {
        assert!(events.iter().any(|e| e.phase == p && e.status == PhaseStatus::Succeeded), "phase {p} not succeeded");
        assert!(s.phase_ms.contains_key(&p), "no duration for {p}");
    }
    assert!(!events.iter().any(|e| e.phase == PhaseId::Rollback));

    // Files.
    let r = &fx.root;
    assert_eq!(std::fs::read_to_string(r.join("lib/demo/VERSION")).unwrap().trim(), "1.1.0");
    assert!(r.join("lib/demo/feature-x.txt").is_file());
    assert!(!r.join("lib/demo/legacy.txt").exists());
    let ws = fleetup_e2e::workspace_root();
    assert_eq!(
        std::fs::read(r.join("lib/demo/messages.txt")).unwrap(),
        std::fs::read(ws.join("examples/sample-rollup/payload/lib/demo/messages.txt")).unwrap()
    );
    assert_eq!(std::fs::metadata(r.join("lib/demo/messages.txt")).unwrap().permissions().mode() & 0o777, 0o644);
    let staged_inode: u64 = std::fs::read_to_string(&inode_file).unwrap().trim().parse().unwrap();
    assert_eq!(
        std::fs::metadata(r.join("lib/demo/messages.txt")).unwrap().ino(),
        staged_inode,
        "the file was copied, not renamed"
    );
    // Config patched.
    assert!(std::fs::read_to_string(r.join("etc/demo.conf")).unwrap().contains("cache_mb = 256"));
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.join("etc/settings.json")).unwrap()).unwrap();
    assert_eq!(settings["features"]["fast_start"], true);
    assert!(
        std::fs::read_to_string(r.join("etc/runtime.xml"))
            .unwrap()
            .contains("<generatePublisherEvidence enabled=\"false\"/>")
    );
    // Web app switched; the old release is kept.
    assert_eq!(std::fs::read_link(r.join("www/current")).unwrap().to_str().unwrap(), "releases/1.1.0");
    assert!(r.join("www/releases/1.0.0/index.html").is_file());
    // Service answers 1.1 and serves the new web app.
    fx.wait_version("1.1.0");
    let (status, body) = fx.get("/").unwrap();
    assert_eq!(status, 200);
    assert_eq!(body.as_bytes(), std::fs::read(ws.join("examples/sample-rollup/webapp/index.html")).unwrap());
    // Backups and staging gone; journal closed; logs written.
    assert!(fx.leftover_staging().is_empty(), "{:?}", fx.leftover_staging());
    assert!(!fx.state.join("journal.jsonl").exists());
    let logs: Vec<_> = std::fs::read_dir(fx.state.join("logs"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.join("events.jsonl").exists())
        .collect();
    assert_eq!(logs.len(), 1);
    for f in [
        "check-system.log",
        "pre-hooks.log",
        "service-control.log",
        "patch-config.log",
        "update-webapp.log",
        "update-files.log",
    ] {
        assert!(logs[0].join(f).is_file(), "missing log {f}");
    }
    let svc_log = std::fs::read_to_string(logs[0].join("service-control.log")).unwrap();
    assert!(svc_log.contains("stop demo") && svc_log.contains("start demo"), "{svc_log}");
    // The tree changed exactly as the manifest says.
    let after = tree(&fx.root);
    assert_ne!(before, after);
    assert!(after.contains_key("www/releases/1.1.0/app.js"));

    // Outage: measured, shorter than the whole, and without staging or copying in it.
    assert!(s.outage_ms > 0 && s.outage_ms < s.total_ms, "{s:?}");
    let outage_phases: u64 = [
        PhaseId::StopServices,
        PhaseId::ValidateFiles,
        PhaseId::UpdateFiles,
        PhaseId::PostPrecompile,
        PhaseId::StartServices,
    ]
    .iter()
    .map(|p| s.phase_ms[p])
    .sum();
    assert!(s.outage_ms <= outage_phases + 50, "{s:?}");
    // It ends when the restarted service first answered its health check (the event's
    // `serving_since`), not at the end of the start window that keeps watching it after.
    let stop = events.iter().find(|e| e.phase == PhaseId::StopServices).unwrap().at;
    let started = events.iter().find(|e| e.phase == PhaseId::StartServices && e.data.get("serving_since").is_some());
    let serving: chrono::DateTime<chrono::Utc> =
        started.unwrap().data["serving_since"].as_str().unwrap().parse().unwrap();
    assert_eq!(s.outage_ms, (serving - stop).num_milliseconds() as u64, "{s:?}");
    let phase_end = events.iter().rev().find(|e| e.phase == PhaseId::StartServices).unwrap().at;
    assert!(serving < phase_end, "serving since {serving}, start-services ended {phase_end}");
    assert!(s.phase_ms[&PhaseId::UpdateFiles] < 500, "update-files took {} ms", s.phase_ms[&PhaseId::UpdateFiles]);
    let upd = events.iter().find(|e| e.phase == PhaseId::UpdateFiles && e.status == PhaseStatus::Succeeded).unwrap();
    assert!(upd.message.contains("0 bytes copied"), "{}", upd.message);
    eprintln!("sample install: outage {} ms of {} ms total; phases {:?}", s.outage_ms, s.total_ms, s.phase_ms);
}

#[test]
fn human_output_names_each_phase_and_what_a_cancel_would_do() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let cmd = fx.cli();
    let args: Vec<_> = cmd.get_args().filter(|a| *a != "--json").map(std::ffi::OsStr::to_owned).collect();
    let mut cmd = std::process::Command::new(cmd.get_program());
    cmd.args(args).stdin(std::process::Stdio::null());
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    for p in PhaseId::INSTALL {
        assert!(text.contains(p.title()), "no '{}' in:\n{text}", p.title());
    }
    assert!(text.contains("the install ends now; nothing has been changed"), "{text}");
    assert!(text.contains("everything changed so far is rolled back"), "{text}");
    assert!(text.contains("cancel not possible now"), "{text}");
    assert!(text.contains("outcome: succeeded"), "{text}");
    fx.wait_version("1.1.0");
}

#[test]
fn untrusted_package_fails_in_check_system_without_touching_anything() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let other = fleetup_proto::SecretKey::generate().unwrap();
    std::fs::write(&fx.key_pub, other.public().to_text()).unwrap();
    let before = tree(&fx.root);
    let out = fx.cli().output().unwrap();
    assert!(!out.status.success());
    let events = parse_events(&out.stdout);
    let s = events.last().unwrap().summary().unwrap();
    assert_eq!(s.outcome, InstallOutcome::Failed);
    assert_eq!(s.failed_phase, Some(PhaseId::CheckSystem));
    assert!(s.error.as_deref().unwrap().contains("not trusted"), "{s:?}");
    assert_eq!(tree(&fx.root), before);
    fx.wait_version("1.0.0");
}

#[test]
fn post_install_precompile_runs_inside_the_outage_or_after_the_start_as_the_manifest_says() {
    let fx = Fixture::new(&crl_stub_ok(), |t| {
        t + r#"
[[precompile.after]]
command = 'test ! -e run/demo.pid && touch "${root}/../ran-while-stopped"'
deadline_secs = 10

[[precompile.after]]
command = 'kill -0 "$(cat run/demo.pid)" && touch "${root}/../ran-while-running"'
deadline_secs = 10
after_start = true
"#
    });
    let (summary, events) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
    assert!(fx.tmp.path().join("ran-while-stopped").exists(), "the outage command did not run during the outage");
    assert!(fx.tmp.path().join("ran-while-running").exists(), "the after-start command did not run after the start");
    let after_start = events
        .iter()
        .position(|e| e.phase == PhaseId::PostHooks && e.message.starts_with("post-install precompile 1/1"))
        .expect("after-start precompile reported in post-hooks");
    let started = events.iter().position(|e| e.phase == PhaseId::StartServices && e.status.is_terminal()).unwrap();
    assert!(after_start > started);
}

#[test]
fn staging_and_update_files_report_progress_at_a_bounded_rate() {
    const N: usize = 400;
    let extra: Vec<(String, String)> =
        (0..N).map(|i| (format!("lib/demo/data/f{i:04}.txt"), format!("{i}\n"))).collect();
    let extra_refs: Vec<(&str, &str)> = extra.iter().map(|(p, c)| (p.as_str(), c.as_str())).collect();
    // Inside the sample's lib/demo tree: added by it, with no entry of their own.
    let fx = crate::support::Fixture::with_payload(&crl_stub_ok(), |t| t, &extra_refs);
    let (summary, events) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
    for phase in [PhaseId::PrePrecompile, PhaseId::UpdateFiles] {
        let progress: Vec<_> = events
            .iter()
            .filter(|e| {
                e.phase == phase
                    && e.data
                        .get("progress")
                        .is_some_and(|p| p.get("bytes_total").is_some() || phase == PhaseId::UpdateFiles)
            })
            .collect();
        assert!(!progress.is_empty(), "{phase}: no progress events");
        let last = &progress.last().unwrap().data["progress"];
        assert_eq!(last["done"], last["total"], "{phase}: the last progress event is not the end: {last}");
        assert!(last["total"].as_u64().unwrap() >= N as u64, "{phase}: {last}");
        if phase == PhaseId::PrePrecompile {
            assert_eq!(last["bytes_done"], last["bytes_total"]);
            assert!(last["bytes_total"].as_u64().unwrap() > 0);
        }
        // Bounded rate: at least 250 ms between two events, except before the last.
        for w in progress[..progress.len() - 1].windows(2) {
            let gap = w[1].at - w[0].at;
            assert!(gap >= chrono::Duration::milliseconds(250), "{phase}: two progress events {gap} apart");
        }
    }
}

#[test]
fn host_variables_reach_hooks_as_environment_variables() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let seen = fx.tmp.path().join("hook-env");
    fx.host_hook(
        "post-install.d",
        "10-env",
        &format!("echo \"$FLEETUP_VAR_PORT $FLEETUP_VAR_CRL_BASE\" > '{}'", seen.display()),
    );
    let (summary, _) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
    let want = format!("{} {}\n", fx.port, fx.vars["crl_base"]);
    assert_eq!(std::fs::read_to_string(&seen).unwrap(), want);
}

#[test]
fn old_web_app_releases_beyond_keep_releases_are_removed() {
    let fx = Fixture::new(&crl_stub_ok(), |t| t.replace("web_root = \"www\"", "web_root = \"www\"\nkeep_releases = 2"));
    let releases = fx.root.join("www/releases");
    for (v, when) in [("0.8.0", "2020-01-01"), ("0.9.0", "2021-01-01"), ("1.0.0", "2022-01-01")] {
        std::fs::create_dir_all(releases.join(v)).unwrap();
        assert!(
            std::process::Command::new("touch").args(["-d", when]).arg(releases.join(v)).status().unwrap().success()
        );
    }
    let (summary, _) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
    let mut left: Vec<String> =
        std::fs::read_dir(&releases).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    left.sort();
    assert_eq!(left, ["1.0.0", "1.1.0"], "the current release and the one before it are kept");
    assert_eq!(std::fs::read_link(fx.root.join("www/current")).unwrap().to_str().unwrap(), "releases/1.1.0");
}

#[test]
fn config_patches_set_ini_keys_and_remove_keys() {
    let fx = Fixture::new(&crl_stub_ok(), |t| {
        t + r#"
[[config_patches]]
file = "etc/app.ini"
format = "ini"
section = "cache"
key = "port"
value = 6380

[[config_patches]]
file = "etc/demo.conf"
format = "key-value"
key = "log_level"
remove = true

[[config_patches]]
file = "etc/settings.json"
format = "json"
pointer = "/cache/size_mb"
remove = true
"#
    });
    std::fs::write(fx.root.join("etc/app.ini"), "[db]\nport = 5432\n\n[cache]\nport = 6379\n").unwrap();
    let (summary, _) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
    let r = &fx.root;
    assert_eq!(std::fs::read_to_string(r.join("etc/app.ini")).unwrap(), "[db]\nport = 5432\n\n[cache]\nport = 6380\n");
    let conf = std::fs::read_to_string(r.join("etc/demo.conf")).unwrap();
    assert!(!conf.contains("log_level") && conf.contains("cache_mb = 256"), "{conf}");
    let settings: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(r.join("etc/settings.json")).unwrap()).unwrap();
    assert_eq!(settings["cache"], serde_json::json!({}), "{settings}");
    assert_eq!(settings["features"]["fast_start"], true);
}

/// The sample's one `tree` entry as the four per-file entries it stands for.
fn as_files(t: &str) -> String {
    let tree = "[[files]]\npath = \"lib/demo\"\naction = \"tree\"\nmode = \"0644\"\n";
    assert!(t.contains(tree), "the sample's [[files]] changed");
    t.replace(
        tree,
        "[[files]]\npath = \"lib/demo/VERSION\"\naction = \"replace\"\nmode = \"0644\"\n\n\
         [[files]]\npath = \"lib/demo/messages.txt\"\naction = \"replace\"\nmode = \"0644\"\n\n\
         [[files]]\npath = \"lib/demo/feature-x.txt\"\naction = \"add\"\nmode = \"0644\"\n\n\
         [[files]]\npath = \"lib/demo/legacy.txt\"\naction = \"remove\"\n",
    )
}

#[test]
fn a_tree_entry_replaces_a_directory_as_a_unit() {
    let per_file = Fixture::new(&crl_stub_ok(), |t| as_files(&t));
    let (summary, _) = per_file.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
    // The sample as shipped: lib/demo as one tree entry.
    let fx = Fixture::new(&crl_stub_ok(), |t| t);
    let (summary, events) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
    // Added, replaced, and legacy.txt (no longer in the tree) removed: as the four entries.
    assert_eq!(tree(&fx.root), tree(&per_file.root));
    assert!(!fx.root.join("lib/demo/legacy.txt").exists());
    assert!(
        events.iter().any(|e| e.phase == PhaseId::UpdateFiles && e.message.starts_with("4 file(s) updated")),
        "{:?}",
        events.iter().filter(|e| e.phase == PhaseId::UpdateFiles).map(|e| &e.message).collect::<Vec<_>>()
    );
    fx.wait_version("1.1.0");
}

#[test]
fn a_tree_entry_is_rolled_back_whole() {
    let fx = Fixture::new(&crl_stub_ok(), |t| {
        t.replace("deadline_secs = 8\n\n[[prerequisites]]", "deadline_secs = 1\n\n[[prerequisites]]")
    });
    fx.mark_unhealthy("1.1.0");
    let before = tree(&fx.root);
    let (summary, _) = fx.install_lib(Arc::new(AutoDecider::default()), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::RolledBack, "{summary:?}");
    assert_eq!(tree(&fx.root), before);
    fx.wait_version("1.0.0");
}

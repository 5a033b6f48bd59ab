//! The .deb packages an operator installs: `packaging/build-debs.sh` from the built
//! binaries, then what is inside them, read back with `dpkg-deb` as an operator would.

use fleetup_e2e::skip_or_fail;
use std::process::Command;

fn dpkg_deb(args: &[&str], deb: &std::path::Path) -> String {
    let out = Command::new("dpkg-deb").args(args).arg(deb).output().unwrap();
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn debs_hold_binaries_units_config_and_state_dirs() {
    if Command::new("dpkg-deb").arg("--version").output().is_err() {
        skip_or_fail("debs_hold_binaries_units_config_and_state_dirs", "dpkg-deb is not installed");
        return;
    }
    let out_dir = tempfile::tempdir().unwrap();
    let debs = fleetup_e2e::build_debs(out_dir.path());
    assert_eq!(debs.len(), 2, "{debs:?}");
    let (agent, server) = (&debs[0], &debs[1]);

    let files = dpkg_deb(&["-c"], agent);
    for want in [
        "./usr/bin/fleetup-agent",
        "./lib/systemd/system/fleetup-agent.service",
        "./etc/fleetup/agent.toml.example",
        "./usr/share/doc/fleetup-agent/operations.md",
    ] {
        assert!(files.lines().any(|l| l.ends_with(want)), "{want} not in the agent package:\n{files}");
    }
    assert!(files.lines().any(|l| l.starts_with("drwx------") && l.ends_with("./var/lib/fleetup-agent/")), "{files}");
    assert_eq!(dpkg_deb(&["-f"], agent).lines().find(|l| l.starts_with("Package:")), Some("Package: fleetup-agent"));

    let files = dpkg_deb(&["-c"], server);
    for want in ["./usr/bin/fleetup-server", "./lib/systemd/system/fleetup-server.service", "./etc/fleetup/server.env"]
    {
        assert!(files.lines().any(|l| l.ends_with(want)), "{want} not in the server package:\n{files}");
    }
    assert!(files.lines().any(|l| l.ends_with("./var/lib/fleetup-server/")), "{files}");

    // Unpacked: the units start the packaged binaries, Type=notify; the server's postinst
    // makes its system user; the binaries run.
    let x = tempfile::tempdir().unwrap();
    for deb in &debs {
        let ok = Command::new("dpkg-deb").arg("-x").arg(deb).arg(x.path()).status().unwrap();
        assert!(ok.success());
    }
    for unit in ["fleetup-agent", "fleetup-server"] {
        let text = std::fs::read_to_string(x.path().join(format!("lib/systemd/system/{unit}.service"))).unwrap();
        assert!(text.contains(&format!("ExecStart=/usr/bin/{unit} ")), "{unit}:\n{text}");
        assert!(text.contains("Type=notify"), "{unit}:\n{text}");
        let v = Command::new(x.path().join("usr/bin").join(unit)).arg("--version").output().unwrap();
        assert!(String::from_utf8_lossy(&v.stdout).starts_with(unit), "{unit} --version");
    }
    let ctl = tempfile::tempdir().unwrap();
    assert!(Command::new("dpkg-deb").arg("-e").arg(server).arg(ctl.path()).status().unwrap().success());
    let postinst = std::fs::read_to_string(ctl.path().join("postinst")).unwrap();
    assert!(postinst.contains("useradd --system"), "{postinst}");
    assert_eq!(std::fs::read_to_string(ctl.path().join("conffiles")).unwrap().trim(), "/etc/fleetup/server.env");
}

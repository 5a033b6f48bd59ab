//! Unreachable CRL endpoints: a warning within the short deadline, never a stall; the
//! opt-in hosts-file remediation changes the given file only during the install.

use crate::support::{Fixture, crl_stub_silent, free_port, parse_events, tree};
use fleetup_agent::engine::ScriptedDecider;
use fleetup_proto::{DecisionAnswer, DecisionKind, InstallOutcome, PhaseId};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[test]
fn silent_and_refusing_crl_endpoints_warn_within_the_deadline() {
    let (_silent, silent_port) = crl_stub_silent("127.0.0.1");
    let refused_port = free_port();
    let fx = Fixture::new(&format!("http://127.0.0.1:{silent_port}"), |t| {
        t.replace(
            "endpoints = [\"${crl_base}/pki/crl/products/fleetup-demo-ca.crl\"]\nprobe_deadline_secs = 3",
            &format!("endpoints = [\"${{crl_base}}/pki/crl/products/fleetup-demo-ca.crl\", \"http://127.0.0.1:{refused_port}/ca.crl\"]\nprobe_deadline_secs = 1"),
        )
    });
    let decider = Arc::new(ScriptedDecider::new(|_| DecisionAnswer::Continue));
    let t = Instant::now();
    let (summary, events) = fx.install_lib(decider.clone(), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Succeeded, "{summary:?}");
    let asked = decider.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "one question for all dead endpoints: {asked:?}");
    for a in &asked {
        let DecisionKind::Warning { code, remediation } = &a.kind else { panic!("{a:?}") };
        assert_eq!(code, "crl-unreachable");
        let r = remediation.as_deref().unwrap();
        assert!(r.contains("firewall") && r.contains("127.0.0.1"), "{r}");
    }
    assert!(
        asked.iter().any(|a| a.message.contains(&silent_port.to_string()) && a.message.contains("no answer")),
        "{asked:?}"
    );
    assert!(
        asked
            .iter()
            .any(|a| a.message.contains(&refused_port.to_string()) && a.message.to_lowercase().contains("refused")),
        "{asked:?}"
    );
    let probe = events.iter().find(|e| e.data.get("step").and_then(|s| s.as_str()) == Some("crl")).unwrap();
    let probe_ms = probe.data["probe_ms"].as_u64().unwrap();
    eprintln!("CRL probes (one silent, one refusing, deadline 1 s): {probe_ms} ms");
    assert!(probe_ms < 1600, "probes took {probe_ms} ms with a 1 s deadline");
    assert!(summary.phase_ms[&PhaseId::CheckSystem] < 3000, "{summary:?}");
    assert!(t.elapsed() < Duration::from_secs(30));
}

#[test]
fn one_question_lists_every_dead_endpoint_and_names_the_hosts_file_in_use() {
    let refused_port = free_port();
    let fx = Fixture::new(&format!("http://crl-a.fleetup.test:{refused_port}"), |t| {
        t.replace(
            "endpoints = [\"${crl_base}/pki/crl/products/fleetup-demo-ca.crl\"]",
            &format!("endpoints = [\"${{crl_base}}/a.crl\", \"http://crl-b.fleetup.test:{refused_port}/b.crl\"]"),
        )
    });
    std::fs::write(&fx.hosts, "127.0.0.1 crl-a.fleetup.test crl-b.fleetup.test\n").unwrap();
    let decider = Arc::new(ScriptedDecider::new(|_| DecisionAnswer::Cancel));
    let (summary, _) = fx.install_lib(decider.clone(), |_, _| {});
    assert_eq!(summary.outcome, InstallOutcome::Cancelled, "{summary:?}");
    let asked = decider.asked.lock().unwrap().clone();
    assert_eq!(asked.len(), 1, "{asked:?}");
    assert!(asked[0].message.contains("2 CRL endpoints are unreachable"), "{}", asked[0].message);
    let DecisionKind::Warning { remediation, .. } = &asked[0].kind else { panic!("{:?}", asked[0]) };
    let text = remediation.as_deref().unwrap();
    for want in [
        "crl-a.fleetup.test:",
        "crl-b.fleetup.test:",
        &format!("adding these lines to {}", fx.hosts.display()),
        "    127.0.0.1 crl-a.fleetup.test\n    127.0.0.1 crl-b.fleetup.test\n",
    ] {
        assert!(text.contains(want), "the remediation does not say {want:?}:\n{text}");
    }
    assert!(!text.contains("/etc/hosts"), "names /etc/hosts, not the hosts file in use:\n{text}");
}

#[test]
fn hosts_file_remediation_applies_during_install_and_restores_exactly() {
    // The CRL host resolves (through the given hosts file) to a silent loopback port.
    let (_silent, port) = crl_stub_silent("127.0.0.2");
    let fx = Fixture::new(&format!("http://crl.fleetup.test:{port}"), |t| {
        t.replace("probe_deadline_secs = 3", "probe_deadline_secs = 1")
    });
    let original = b"127.0.0.1 localhost\n127.0.0.2 crl.fleetup.test\n# no trailing newline after this".to_vec();
    std::fs::write(&fx.hosts, &original).unwrap();
    let observed = fx.tmp.path().join("hosts-during-install");
    fx.host_hook("pre-install.d", "10-look", &format!("cp \"$FLEETUP_HOSTS_FILE\" '{}'", observed.display()));
    let out = fx.cli().args(["--crl-remediation", "hosts-file"]).output().unwrap();
    assert!(out.status.success(), "{}\n{}", String::from_utf8_lossy(&out.stderr), String::from_utf8_lossy(&out.stdout));
    let events = parse_events(&out.stdout);
    assert!(events.iter().any(|e| e.data.pointer("/warning/applied").and_then(|v| v.as_str()) == Some("hosts-file")));
    let during = std::fs::read_to_string(&observed).unwrap();
    assert!(during.starts_with("127.0.0.1 crl.fleetup.test"), "{during}");
    assert_eq!(std::fs::read(&fx.hosts).unwrap(), original, "hosts file not restored byte for byte");
    fx.wait_version("1.1.0");
}

#[test]
fn hosts_file_is_restored_when_the_install_fails() {
    let (_silent, port) = crl_stub_silent("127.0.0.2");
    let fx = Fixture::new(&format!("http://crl.fleetup.test:{port}"), |t| {
        t.replace("probe_deadline_secs = 3", "probe_deadline_secs = 1")
    });
    let original = b"127.0.0.2 crl.fleetup.test\n".to_vec();
    std::fs::write(&fx.hosts, &original).unwrap();
    let observed = fx.tmp.path().join("hosts-during-install");
    fx.host_hook("pre-install.d", "10-look", &format!("cp \"$FLEETUP_HOSTS_FILE\" '{}'", observed.display()));
    fx.host_hook("pre-install.d", "20-fail", "exit 1");
    let before = tree(&fx.root);
    let out = fx.cli().args(["--crl-remediation", "hosts-file"]).output().unwrap();
    assert!(!out.status.success());
    let events = parse_events(&out.stdout);
    assert_eq!(events.last().unwrap().summary().unwrap().outcome, InstallOutcome::Failed);
    assert!(std::fs::read_to_string(&observed).unwrap().contains("127.0.0.1 crl.fleetup.test"));
    assert_eq!(std::fs::read(&fx.hosts).unwrap(), original);
    assert_eq!(tree(&fx.root), before);
}

//! A rollout's plan for people: which package, how many servers, which waves, under which
//! rules. Before staging (`apply --dry-run`) it is computed here from the agents the
//! targets select, with the coordinator's wave arithmetic; after staging it is the
//! coordinator's own (the rollout's waves and their first hosts), which is authoritative.

use crate::output::servers;
use crate::spec::percent;
use fleetup_proto::api::{Package, Rollout, RolloutSpec, Threshold, WaveSpec};
use serde::Serialize;
use std::fmt::Write as _;

/// How many hosts of a wave are named in a plan; the rest are counted.
pub const HOSTS_SHOWN: usize = 5;

/// A plan, as printed (and as `--output json` shows it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Plan {
    /// The rollout's name.
    pub name: String,
    /// The package: `name version (id)`.
    pub package: String,
    /// The servers targeted.
    pub targets: u64,
    /// How they were chosen (`labels env=test`, `hosts web-1, web-2`).
    pub selector: String,
    /// The waves.
    pub waves: Vec<PlanWave>,
    /// The rules, one phrase each.
    pub rules: Vec<String>,
}

/// One wave of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanWave {
    /// 1-based.
    pub number: u32,
    /// Servers in it.
    pub size: u64,
    /// The first [`HOSTS_SHOWN`] of them.
    pub hosts: Vec<String>,
}

/// Splits `total` servers into waves as the coordinator does: a count is that wave's size,
/// a percentage brings the servers covered so far up to that share (rounded up); empty
/// waves are dropped and servers the plan does not reach form one last wave.
pub fn wave_sizes(total: u64, plan: &[WaveSpec]) -> Vec<u64> {
    let mut sizes = Vec::new();
    let mut covered = 0u64;
    for w in plan {
        let target = match w {
            WaveSpec::Count(n) => covered.saturating_add(*n),
            WaveSpec::Percent(p) => ((percent(p).unwrap_or(100.0) * total as f64) / 100.0).ceil() as u64,
        }
        .min(total);
        if target > covered {
            sizes.push(target - covered);
            covered = target;
        }
    }
    if covered < total {
        sizes.push(total - covered);
    }
    sizes
}

fn threshold(t: &Threshold) -> String {
    match t {
        Threshold::Count(n) => n.to_string(),
        Threshold::Percent(p) => p.clone(),
    }
}

/// The rules of a spec, one phrase each.
pub fn rules(spec: &RolloutSpec) -> Vec<String> {
    let mut r = vec![
        format!("{} at a time in a wave", spec.concurrency),
        format!("next wave after {} succeeded", threshold(&spec.success_threshold)),
    ];
    r.push(match &spec.error_threshold {
        Some(t) => format!(
            "{} on {} failed",
            serde_json::to_value(spec.error_action)
                .ok()
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            threshold(t)
        ),
        None => "no error threshold".into(),
    });
    if spec.approval_required {
        r.push("approval before each wave after the first".into());
    }
    let p = serde_json::to_value(spec.policies).unwrap_or_default();
    let word = |v: &serde_json::Value| {
        v.as_str().map_or_else(|| v.get("mode").and_then(|m| m.as_str()).unwrap_or("?").to_owned(), str::to_owned)
    };
    r.push(format!(
        "warnings: {}, files in use: {}, CRL remediation: {}",
        word(&p["warning"]),
        word(&p["files_in_use"]),
        word(&p["crl_remediation"])
    ));
    if spec.maintenance_window.is_some() {
        r.push("only in its maintenance window".into());
    }
    if let Some(at) = spec.start_at {
        r.push(format!("not before {}", at.to_rfc3339()));
    }
    if spec.soak_secs > 0 {
        r.push(format!("{} s soak between waves", spec.soak_secs));
    }
    r
}

/// The plan of a spec not staged yet: `hosts` are the targeted agents' hostnames in the
/// coordinator's order (by hostname).
pub fn local(spec: &RolloutSpec, package: &Package, selector: String, hosts: &[String]) -> Plan {
    let mut left = hosts.iter();
    let waves = wave_sizes(hosts.len() as u64, &spec.waves)
        .into_iter()
        .enumerate()
        .map(|(i, size)| {
            let wave: Vec<String> = left.by_ref().take(size as usize).cloned().collect();
            PlanWave { number: i as u32 + 1, size, hosts: wave.into_iter().take(HOSTS_SHOWN).collect() }
        })
        .collect();
    Plan {
        name: spec.name.clone(),
        package: format!("{} {} ({})", package.name, package.version, package.id),
        targets: hosts.len() as u64,
        selector,
        waves,
        rules: rules(spec),
    }
}

/// The plan of a staged rollout; `hosts[i]` are the first hosts of wave `i + 1`.
pub fn staged(r: &Rollout, package: &Package, selector: String, hosts: &[Vec<String>]) -> Plan {
    Plan {
        name: r.name.clone(),
        package: format!("{} {} ({})", package.name, package.version, package.id),
        targets: r.waves.iter().map(|w| w.size).sum(),
        selector,
        waves: r
            .waves
            .iter()
            .enumerate()
            .map(|(i, w)| PlanWave { number: w.number, size: w.size, hosts: hosts.get(i).cloned().unwrap_or_default() })
            .collect(),
        rules: rules(&r.spec),
    }
}

/// The plan for people.
pub fn render(p: &Plan) -> String {
    let mut s = format!("rollout \"{}\": {} to {} ({})\n", p.name, p.package, servers(p.targets), p.selector);
    for w in &p.waves {
        let more = w.size.saturating_sub(w.hosts.len() as u64);
        let names = if more > 0 { format!("{}, … {more} more", w.hosts.join(", ")) } else { w.hosts.join(", ") };
        let _ = writeln!(s, "  wave {}: {:<12} {names}", w.number, servers(w.size));
    }
    for r in &p.rules {
        let _ = writeln!(s, "  {r}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waves_split_like_the_coordinator() {
        let p = |s: &str| WaveSpec::Percent(s.into());
        let c = WaveSpec::Count;
        // (total, plan, sizes): the coordinator's domain::plan::wave_sizes cases.
        let cases: Vec<(u64, Vec<WaveSpec>, Vec<u64>)> = vec![
            (10, vec![c(1), c(5), p("25%"), p("100%")], vec![1, 5, 4]),
            (3, vec![c(1), c(2)], vec![1, 2]),
            (3, vec![c(1)], vec![1, 2]),
            (6, vec![c(1), c(2), p("100%")], vec![1, 2, 3]),
            (0, vec![c(1)], vec![]),
            (2, vec![c(5), c(5)], vec![2]),
            (4, vec![p("50%"), p("50%"), p("100%")], vec![2, 2]),
            (7, vec![p("10%")], vec![1, 6]),
        ];
        for (total, plan, want) in cases {
            assert_eq!(wave_sizes(total, &plan), want, "{total} {plan:?}");
        }
    }

    #[test]
    fn a_local_plan_names_the_first_hosts_of_each_wave() {
        let spec: RolloutSpec = serde_json::from_value(serde_json::json!({
            "name": "demo", "package_id": "p", "targets": {"labels": {"env": "test"}}, "waves": [1, "100%"],
            "error_threshold": 1, "approval_required": true,
        }))
        .unwrap();
        let package: Package = serde_json::from_value(serde_json::json!({
            "id": "p", "name": "demo", "version": "1.1.0", "sha256": "", "size": 1, "key_id": "k",
            "manifest": {}, "uploaded_by": "t", "uploaded_at": "2026-12-03T00:00:00Z",
        }))
        .unwrap();
        let hosts: Vec<String> = (1..=8).map(|i| format!("web-{i}")).collect();
        let plan = local(&spec, &package, "labels env=test".into(), &hosts);
        assert_eq!(plan.targets, 8);
        assert_eq!(plan.waves[0], PlanWave { number: 1, size: 1, hosts: vec!["web-1".into()] });
        assert_eq!(plan.waves[1].size, 7);
        assert_eq!(plan.waves[1].hosts, vec!["web-2", "web-3", "web-4", "web-5", "web-6"]);
        let text = render(&plan);
        assert!(text.starts_with("rollout \"demo\": demo 1.1.0 (p) to 8 servers (labels env=test)\n"), "{text}");
        assert!(text.contains("  wave 2: 7 servers    web-2, web-3, web-4, web-5, web-6, … 2 more\n"), "{text}");
        assert!(text.contains("pause on 1 failed"), "{text}");
        assert!(text.contains("approval before each wave after the first"), "{text}");
        assert!(text.contains("warnings: ask, files in use: ask, CRL remediation: none"), "{text}");
    }
}

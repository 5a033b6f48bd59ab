//! The stall alarm: how long each phase of a package usually takes, learned from finished
//! jobs, and when a running phase has run far past that. This is the seeds' 40–60 minute
//! CRL stall, caught while it happens instead of found in the log afterwards.

use crate::model::{AgentId, Millis};
use fleetup_proto::PhaseId;
use std::collections::{BTreeMap, HashMap};

/// When a running phase is flagged: past `factor` × its p95 and past `floor_ms` too.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StallRules {
    /// Multiple of the learned p95.
    pub factor: f64,
    /// No phase is flagged before it has run this long, however fast it usually is.
    pub floor_ms: i64,
}

/// Finished installs a host needs of a package before its own history is used.
pub const MIN_HOST_SAMPLES: usize = 3;
/// Finished installs across the fleet needed before the fleet's history is used; with
/// fewer, only the fixed phase timeouts apply.
pub const MIN_FLEET_SAMPLES: usize = 5;

/// Learned durations, sorted, per phase: across the fleet and per host.
#[derive(Debug, Clone, Default)]
pub struct Learned {
    fleet: BTreeMap<PhaseId, Vec<Millis>>,
    host: HashMap<AgentId, BTreeMap<PhaseId, Vec<Millis>>>,
}

/// Why a running phase is flagged.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// Median, ms.
    pub p50_ms: Millis,
    /// 95th percentile, ms.
    pub p95_ms: Millis,
    /// The limit it crossed, ms.
    pub limit_ms: Millis,
    /// Finished installs the figures come from.
    pub samples: usize,
    /// `host` (this server's own history) or `fleet`.
    pub basis: &'static str,
}

/// The nearest-rank percentile of sorted values.
fn percentile(sorted: &[Millis], p: f64) -> Millis {
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

impl Learned {
    /// Learns from finished installs: the server and the engine's own measure of each
    /// phase (the final summary's `phase_ms`) of each.
    pub fn from_history<'a>(jobs: impl IntoIterator<Item = (&'a AgentId, &'a BTreeMap<PhaseId, u64>)>) -> Learned {
        let mut out = Learned::default();
        for (agent, phases) in jobs {
            for (phase, ms) in phases {
                let ms = Millis::try_from(*ms).unwrap_or(Millis::MAX);
                out.fleet.entry(*phase).or_default().push(ms);
                out.host.entry(agent.clone()).or_default().entry(*phase).or_default().push(ms);
            }
        }
        out.fleet.values_mut().for_each(|v| v.sort_unstable());
        out.host.values_mut().flat_map(BTreeMap::values_mut).for_each(|v| v.sort_unstable());
        out
    }

    /// Whether `phase`, running on `agent` for `elapsed_ms`, has stalled: judged on the host's
    /// own history where it has enough, else the fleet's; `None` when it has not, or when
    /// there is too little history to say.
    pub fn judge(&self, rules: StallRules, agent: &AgentId, phase: PhaseId, elapsed_ms: Millis) -> Option<Verdict> {
        let host = self.host.get(agent).and_then(|m| m.get(&phase)).filter(|v| v.len() >= MIN_HOST_SAMPLES);
        let (sorted, basis) = match host {
            Some(v) => (v, "host"),
            None => (self.fleet.get(&phase).filter(|v| v.len() >= MIN_FLEET_SAMPLES)?, "fleet"),
        };
        let p95 = percentile(sorted, 95.0);
        let limit = ((p95 as f64 * rules.factor) as Millis).max(rules.floor_ms);
        (elapsed_ms > limit).then(|| Verdict {
            p50_ms: percentile(sorted, 50.0),
            p95_ms: p95,
            limit_ms: limit,
            samples: sorted.len(),
            basis,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An install whose pre-hooks phase took `ms`.
    fn took(ms: u64) -> BTreeMap<PhaseId, u64> {
        BTreeMap::from([(PhaseId::CheckSystem, 5), (PhaseId::PreHooks, ms)])
    }

    #[test]
    fn judged_on_the_host_history_first_then_the_fleet_and_never_on_too_little() {
        let (a, b): (AgentId, AgentId) = ("agent-a".parse().unwrap(), "agent-b".parse().unwrap());
        let rules = StallRules { factor: 3.0, floor_ms: 2000 };
        let learn =
            |hist: &[(AgentId, BTreeMap<PhaseId, u64>)]| Learned::from_history(hist.iter().map(|(a, m)| (a, m)));
        // Four fleet samples: too few.
        let few: Vec<_> = (0..4).map(|_| (b.clone(), took(1000))).collect();
        assert_eq!(learn(&few).judge(rules, &a, PhaseId::PreHooks, 60_000), None);
        // Five: the fleet's p95 is 1 s, the limit 3 s.
        let five: Vec<_> = (0..5).map(|_| (b.clone(), took(1000))).collect();
        let learned = learn(&five);
        assert_eq!(learned.judge(rules, &a, PhaseId::PreHooks, 2999), None);
        let v = learned.judge(rules, &a, PhaseId::PreHooks, 3001).unwrap();
        assert_eq!((v.p95_ms, v.limit_ms, v.basis, v.samples), (1000, 3000, "fleet", 5));
        assert!(learned.judge(rules, &a, PhaseId::UpdateFiles, 99_000).is_none(), "no history of that phase");
        // A host that is always slow is judged on its own history.
        let mut hist = five.clone();
        hist.extend((0..3).map(|_| (a.clone(), took(20_000))));
        let learned = learn(&hist);
        assert_eq!(learned.judge(rules, &a, PhaseId::PreHooks, 30_000), None, "20 s is normal on this host");
        assert_eq!(learned.judge(rules, &a, PhaseId::PreHooks, 61_000).unwrap().basis, "host");
        // The floor: a phase that usually takes 1 ms is not flagged at 1 s.
        let tiny: Vec<_> = (0..5).map(|_| (b.clone(), took(1))).collect();
        let learned = learn(&tiny);
        assert_eq!(learned.judge(rules, &a, PhaseId::PreHooks, 1000), None);
        assert!(learned.judge(rules, &a, PhaseId::PreHooks, 2001).is_some());
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Millis> = (1..=100).collect();
        assert_eq!((percentile(&v, 50.0), percentile(&v, 95.0)), (50, 95));
        assert_eq!(percentile(&[7], 95.0), 7);
    }
}

//! Staging: a rollout spec is checked and parsed into typed [`Rules`] once, and its targets
//! are planned into waves ([`plan`]). Parse, don't validate: the scheduler works on
//! [`Rules`] (shares as numbers, windows as minutes), never on the spec's strings.
//!
//! The spec itself is stored as the operator gave it (the API shows it back unchanged); a
//! coordinator that reads it again parses it again with [`Rules::parse`], which cannot fail
//! on a spec that was accepted at staging.

use crate::model::{
    Agent, AgentId, ErrorAction, MaintenanceWindow, Millis, Package, RetryPolicy, RolloutSpec, Targets, Threshold,
    WaveSpec,
};
use fleetup_proto::PhaseId;
use std::collections::BTreeMap;

/// A threshold, parsed: a number of jobs or a share of them.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Share {
    /// This many jobs.
    Count(u64),
    /// This percentage (0–100) of the jobs it applies to.
    Percent(f64),
}

impl Share {
    /// Parses a threshold of the spec.
    pub fn parse(t: &Threshold) -> Result<Share, String> {
        match t {
            Threshold::Count(n) => Ok(Share::Count(*n)),
            Threshold::Percent(p) => parse_percent(p).map(Share::Percent),
        }
    }

    /// True when `count` of `total` reaches the threshold (a share of nothing is reached).
    pub fn reached(self, count: u64, total: u64) -> bool {
        match self {
            Share::Count(n) => count >= n,
            Share::Percent(pct) => total == 0 || (count as f64) * 100.0 >= pct * (total as f64) - 1e-9,
        }
    }
}

impl std::fmt::Display for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Share::Count(n) => write!(f, "{n}"),
            Share::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// Parses `"25%"` into 25.0.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    s.strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .filter(|n| (0.0..=100.0).contains(n))
        .ok_or_else(|| format!("'{s}' is not a percentage: write a number from 0 to 100 followed by %, like \"25%\""))
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// One weekly range of a maintenance window, in minutes of the window's local day.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Range {
    /// Days the range starts on, Monday first; all false means every day.
    pub days: [bool; 7],
    /// Start, minutes after local midnight.
    pub start: i64,
    /// Length in minutes (a range ending before it starts ends the next day).
    pub length: i64,
}

/// The clock a maintenance window's ranges are read on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Zone {
    /// A fixed offset from UTC, in minutes.
    Fixed(i64),
    /// An IANA zone, with its daylight-saving changes.
    Iana(chrono_tz::Tz),
}

/// A maintenance window, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// The window's clock.
    pub zone: Zone,
    /// Weekly ranges.
    pub ranges: Vec<Range>,
    /// No job starts in the last this-many minutes of a range.
    pub cutoff_minutes: i64,
}

fn parse_hhmm(s: &str) -> Result<i64, String> {
    let bad = || format!("'{s}' is not a time: write HH:MM");
    let (h, m) = s.split_once(':').ok_or_else(bad)?;
    let (h, m): (i64, i64) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if !(0..=24).contains(&h) || !(0..60).contains(&m) || h * 60 + m > 1440 {
        return Err(format!("'{s}' is not a time of day"));
    }
    Ok(h * 60 + m)
}

impl Window {
    /// Parses a spec's window.
    pub fn parse(w: &MaintenanceWindow) -> Result<Window, String> {
        if w.ranges.is_empty() {
            return Err("a maintenance window needs at least one range".into());
        }
        let mut ranges = Vec::with_capacity(w.ranges.len());
        for r in &w.ranges {
            let (start, end) = (parse_hhmm(&r.start)?, parse_hhmm(&r.end)?);
            let mut days = [false; 7];
            for d in &r.days {
                let i = DAYS
                    .iter()
                    .position(|n| n == d)
                    .ok_or_else(|| format!("'{d}' is not a day: use mon, tue, wed, thu, fri, sat or sun"))?;
                days[i] = true;
            }
            let length = if end > start { end - start } else { end + 1440 - start };
            ranges.push(Range { days, start, length });
        }
        let zone = match &w.time_zone {
            None => Zone::Fixed(i64::from(w.utc_offset_minutes)),
            Some(_) if w.utc_offset_minutes != 0 => {
                return Err("give the window either time_zone or utc_offset_minutes, not both".into());
            }
            Some(name) => Zone::Iana(name.parse().map_err(|_| {
                format!(
                    "'{name}' is not an IANA time zone: write a name like \"Europe/Berlin\" or \"America/New_York\""
                )
            })?),
        };
        Ok(Window { zone, ranges, cutoff_minutes: i64::from(w.cutoff_minutes) })
    }
}

/// A rollout's rules, parsed from its spec once.
#[derive(Debug, Clone, PartialEq)]
pub struct Rules {
    /// Servers of a wave that may run at once (at least 1).
    pub concurrency: u64,
    /// Share of a wave's jobs that must succeed before the next wave opens.
    pub success: Share,
    /// Failures across the rollout that trigger `error_action`.
    pub error: Option<Share>,
    /// What crossing the error threshold does.
    pub error_action: ErrorAction,
    /// Each wave after the first waits for an approval.
    pub approval_required: bool,
    /// When jobs may start; none means any time.
    pub window: Option<Window>,
    /// Per-phase time limits in seconds.
    pub phase_timeouts: BTreeMap<PhaseId, u64>,
    /// Undeliverable jobs count like failures (error threshold, success gate).
    pub undeliverable_is_failure: bool,
    /// No wave opens before this instant.
    pub start_at: Option<Millis>,
    /// Time between a wave passing its gate and the next one opening, in ms.
    pub soak_ms: i64,
    /// How transient failures are tried again; none: they are not.
    pub retries: Option<Retries>,
    /// With late joiners: the label selector agents that come to match it while the rollout
    /// runs are added by (to its last wave).
    pub late_joiners: Option<BTreeMap<String, String>>,
    /// Installing a version older than a server runs is allowed.
    pub allow_downgrade: bool,
}

/// A retry policy, parsed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Retries {
    /// Attempts after the first.
    pub times: u32,
    /// Wait before the first retry, in ms.
    pub backoff_ms: i64,
    /// The longest wait, in ms.
    pub max_backoff_ms: i64,
}

/// The most retries a rollout may ask for.
pub const MAX_RETRIES: u32 = 10;

impl Retries {
    /// Parses a spec's retry policy.
    pub fn parse(r: &RetryPolicy) -> Result<Retries, String> {
        if r.times == 0 || r.times > MAX_RETRIES {
            return Err(format!("retries.times must be from 1 to {MAX_RETRIES} (leave retries out for none)"));
        }
        if r.backoff_secs == 0 || r.max_backoff_secs < r.backoff_secs {
            return Err("retries.backoff_secs must be at least 1 and at most retries.max_backoff_secs".into());
        }
        let ms = |s: u64| i64::try_from(s.min(86_400 * 7)).unwrap_or(0) * 1000;
        Ok(Retries { times: r.times, backoff_ms: ms(r.backoff_secs), max_backoff_ms: ms(r.max_backoff_secs) })
    }

    /// The wait before attempt `next` (2 for the first retry): the backoff, doubled for each
    /// later attempt, at most the maximum.
    pub fn delay_ms(self, next: u32) -> i64 {
        let doublings = next.saturating_sub(2).min(30);
        self.backoff_ms.saturating_mul(1i64 << doublings).min(self.max_backoff_ms)
    }
}

impl Rules {
    /// Checks a spec and parses its rules; the error is a sentence for the operator.
    pub fn parse(spec: &RolloutSpec) -> Result<Rules, String> {
        if spec.name.trim().is_empty() {
            return Err("name must not be empty".into());
        }
        if spec.concurrency == 0 {
            return Err("concurrency must be at least 1".into());
        }
        if spec.delivery_timeout_secs == Some(0) {
            return Err("delivery_timeout_secs must be at least 1 (leave it out for the server's default)".into());
        }
        if spec.late_joiners && spec.targets.labels.is_none() {
            return Err("late_joiners needs targets by label: agents join when they come to match the selector".into());
        }
        if spec.soak_secs > 86_400 * 30 {
            return Err("soak_secs must be at most 2592000 (30 days)".into());
        }
        if spec.waves.is_empty() {
            return Err("waves must list at least one wave, e.g. [1, \"100%\"]".into());
        }
        for w in &spec.waves {
            let empty = match w {
                WaveSpec::Count(n) => *n == 0,
                WaveSpec::Percent(p) => parse_percent(p)? == 0.0,
            };
            if empty {
                return Err(format!(
                    "wave {} adds no server: each wave is a number of servers (at least 1) or a share above 0%, \
                     like [1, \"25%\", \"100%\"]",
                    serde_json::to_string(w).unwrap_or_default()
                ));
            }
        }
        Ok(Rules {
            concurrency: u64::from(spec.concurrency),
            success: Share::parse(&spec.success_threshold)?,
            error: spec.error_threshold.as_ref().map(Share::parse).transpose()?,
            error_action: spec.error_action,
            approval_required: spec.approval_required,
            window: spec.maintenance_window.as_ref().map(Window::parse).transpose()?,
            phase_timeouts: spec.phase_timeouts.clone(),
            undeliverable_is_failure: spec.undeliverable_is_failure,
            start_at: spec.start_at.map(|t| t.timestamp_millis()),
            soak_ms: i64::try_from(spec.soak_secs.min(86_400 * 30)).unwrap_or(0) * 1000,
            retries: spec.retries.as_ref().map(Retries::parse).transpose()?,
            late_joiners: spec.targets.labels.clone().filter(|_| spec.late_joiners),
            allow_downgrade: spec.allow_downgrade,
        })
    }
}

/// Splits `total` servers into waves. A count is that wave's size; a percentage brings the
/// servers covered so far up to that share of `total` (rounded up). Empty waves are dropped;
/// servers the plan does not reach form one last wave.
pub fn wave_sizes(total: u64, plan: &[WaveSpec]) -> Result<Vec<u64>, String> {
    Ok(split(total, plan)?.0)
}

/// [`wave_sizes`], and whether the last wave is the one added for servers the plan's own
/// waves did not reach.
fn split(total: u64, plan: &[WaveSpec]) -> Result<(Vec<u64>, bool), String> {
    let mut sizes = Vec::new();
    let mut covered = 0u64;
    for w in plan {
        let target = match w {
            WaveSpec::Count(n) => covered.saturating_add(*n),
            WaveSpec::Percent(p) => ((parse_percent(p)? * total as f64) / 100.0).ceil() as u64,
        }
        .min(total);
        if target > covered {
            sizes.push(target - covered);
            covered = target;
        }
    }
    let added = covered < total;
    if added {
        sizes.push(total - covered);
    }
    Ok((sizes, added))
}

/// The agents by id.
fn index(agents: &[Agent]) -> std::collections::HashMap<&AgentId, &Agent> {
    agents.iter().map(|a| (&a.id, a)).collect()
}

/// The agents a rollout targets, in `agents`' order (explicit ids in the order given,
/// each once); refused when an id is unknown or revoked, or nothing is selected.
pub fn select_targets(targets: &Targets, agents: &[Agent]) -> Result<Vec<AgentId>, String> {
    let selected: Vec<AgentId> = match (&targets.agents, &targets.labels) {
        (Some(ids), None) => {
            // Indexed, not searched: a list of 10,000 ids against 10,000 agents is 10^8
            // comparisons otherwise.
            let by_id = index(agents);
            let mut seen = std::collections::HashSet::with_capacity(ids.len());
            let mut out: Vec<AgentId> = Vec::new();
            for id in ids {
                match by_id.get(id) {
                    Some(a) if !a.revoked => {
                        if seen.insert(id) {
                            out.push(id.clone());
                        }
                    }
                    Some(_) => return Err(format!("agent {id} is revoked")),
                    None => return Err(format!("agent {id} does not exist")),
                }
            }
            out
        }
        (None, Some(sel)) => agents
            .iter()
            .filter(|a| !a.revoked && sel.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
            .map(|a| a.id.clone())
            .collect(),
        _ => {
            return Err(
                "targets must have exactly one of \"agents\" (a list of agent ids) or \"labels\" (a selector)".into()
            );
        }
    };
    if selected.is_empty() {
        return Err("the targets select no agent".into());
    }
    Ok(selected)
}

/// One server's place in a plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedJob {
    /// The server.
    pub agent: AgentId,
    /// Its wave (1-based).
    pub wave: u32,
    /// It already runs the package's version: the job is `skipped` from the start.
    pub skip: bool,
}

/// A rollout planned into waves.
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The rules, parsed.
    pub rules: Rules,
    /// Sizes of the waves, in order.
    pub wave_sizes: Vec<u64>,
    /// The jobs, in dispatch order.
    pub jobs: Vec<PlannedJob>,
    /// The last wave was added: the plan's waves did not reach every target (e.g. `[1, 5]`
    /// over 20 servers adds a wave of 14). The preview says so.
    pub catch_all: bool,
    /// Servers the selector matched that get no job, each with why (the package's
    /// `[target]` is not for them). The preview lists them.
    pub left_out: Vec<(AgentId, String)>,
}

/// What staging needs of a package: its rollup, its version and what its `[target]` says.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackageFacts {
    /// Rollup name.
    pub name: String,
    /// Version.
    pub version: String,
    /// `[target] os`; empty: any.
    pub os: String,
    /// `[target] device_class`; empty: any.
    pub device_class: String,
}

impl PackageFacts {
    /// The facts of an uploaded package (its manifest as stored).
    pub fn of(p: &Package) -> PackageFacts {
        PackageFacts::from_manifest(p.name.clone(), p.version.clone(), &p.manifest)
    }

    /// The facts of a package's rollup and version and its stored manifest.
    pub fn from_manifest(name: String, version: String, manifest: &serde_json::Value) -> PackageFacts {
        let target = |k: &str| manifest["target"][k].as_str().unwrap_or_default().to_owned();
        PackageFacts { name, version, os: target("os"), device_class: target("device_class") }
    }
}

/// Why a package is not for this agent, if it is not: its `[target] os` against the OS the
/// agent reported at enrollment (an agent that reported none is left to the engine's own
/// check), its `device_class` against the agent's `device-class` label (a package naming a
/// class is not for an agent that declares none). The engine checks the same in
/// check-system.
pub fn not_for(agent: &Agent, pkg: &PackageFacts) -> Option<String> {
    let os = agent.facts.get("os").and_then(|v| v.as_str());
    if let Some(os) = os.filter(|os| !pkg.os.is_empty() && !pkg.os.eq_ignore_ascii_case(os)) {
        return Some(format!("the package is for os '{}', and this server runs {os}", pkg.os));
    }
    if pkg.device_class.is_empty() {
        return None;
    }
    match agent.labels.get("device-class") {
        Some(c) if *c == pkg.device_class => None,
        Some(c) => Some(format!("the package is for device class '{}', and this server is '{c}'", pkg.device_class)),
        None => Some(format!(
            "the package is for device class '{}', and this server declares none (label device-class)",
            pkg.device_class
        )),
    }
}

/// The version of the package's rollup the agent runs, when it is newer than the package's:
/// installing would downgrade it.
pub fn would_downgrade<'a>(agent: &'a Agent, pkg: &PackageFacts) -> Option<&'a str> {
    let newest = agent.installed.iter().rev().find(|i| i.rollup == pkg.name)?;
    fleetup_proto::version::is_downgrade(&pkg.version, &newest.version).then_some(newest.version.as_str())
}

/// "web-1 (why), web-2 (why) and 3 more".
fn some_of(items: &[(String, String)]) -> String {
    let shown: Vec<String> = items.iter().take(3).map(|(h, why)| format!("{h} ({why})")).collect();
    let more = items.len().saturating_sub(3);
    if more > 0 { format!("{} and {more} more", shown.join(", ")) } else { shown.join(", ") }
}

/// True when the newest install of rollup `name` on the agent is `version` (what the
/// coordinator recorded when a job of it succeeded).
pub fn runs(agent: &Agent, name: &str, version: &str) -> bool {
    agent.installed.iter().rev().find(|i| i.rollup == name).is_some_and(|i| i.version == version)
}

/// Checks a spec and plans its waves over the known agents, for the package. Servers the
/// package's `[target]` is not for get no job (named agents: refused; a selector's: left out,
/// with why); a plan that would downgrade a server is refused unless the spec allows it.
/// Servers that already run the version are planned last and skipped, so the first waves
/// (the canaries) are servers that really install.
pub fn plan(spec: &RolloutSpec, agents: &[Agent], package: &PackageFacts) -> Result<Plan, String> {
    let rules = Rules::parse(spec)?;
    let by_id = index(agents);
    let find = |id: &AgentId| by_id.get(id).copied();
    let mut left_out = Vec::new();
    let mut targets = Vec::new();
    for id in select_targets(&spec.targets, agents)? {
        match find(&id).and_then(|a| not_for(a, package)) {
            Some(why) => left_out.push((id, why)),
            None => targets.push(id),
        }
    }
    let named = |list: &[(AgentId, String)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(id, why)| (find(id).map_or_else(|| id.to_string(), |a| a.hostname.clone()), why.clone()))
            .collect()
    };
    if spec.targets.agents.is_some() && !left_out.is_empty() {
        return Err(format!(
            "{} {} is not for {} of the servers named: {}; leave them out of the targets",
            package.name,
            package.version,
            left_out.len(),
            some_of(&named(&left_out))
        ));
    }
    if targets.is_empty() {
        return Err(format!(
            "{} {} is for none of the servers the targets select: {}",
            package.name,
            package.version,
            some_of(&named(&left_out))
        ));
    }
    if !spec.allow_downgrade {
        let down: Vec<(String, String)> = targets
            .iter()
            .filter_map(&find)
            .filter_map(|a| would_downgrade(a, package).map(|v| (a.hostname.clone(), format!("runs {v}"))))
            .collect();
        if !down.is_empty() {
            return Err(format!(
                "installing {} {} would downgrade {} servers: {}; set allow_downgrade to do it on purpose",
                package.name,
                package.version,
                down.len(),
                some_of(&down)
            ));
        }
    }
    let already = |id: &AgentId| find(id).is_some_and(|a| runs(a, &package.name, &package.version));
    let (mut ordered, skipped): (Vec<AgentId>, Vec<AgentId>) = targets.into_iter().partition(|id| !already(id));
    let to_install = ordered.len();
    ordered.extend(skipped);
    let (wave_sizes, catch_all) = split(ordered.len() as u64, &spec.waves)?;
    let mut jobs = Vec::with_capacity(ordered.len());
    let mut it = ordered.into_iter().enumerate();
    for (i, size) in wave_sizes.iter().enumerate() {
        for (n, agent) in it.by_ref().take(*size as usize) {
            jobs.push(PlannedJob { agent, wave: i as u32 + 1, skip: n >= to_install });
        }
    }
    Ok(Plan { rules, wave_sizes, jobs, catch_all, left_out })
}

/// The servers that join a running label-targeted rollout late (`late_joiners`, the rules'
/// selector): agents not yet in it (`outsiders`) that now match the selector, are not
/// revoked, are ones the package is for and would not be downgraded (unless the rollout
/// allows it), each with whether it already runs the version (its job is then `skipped`).
pub fn late_joiners<'a>(rules: &Rules, outsiders: &'a [Agent], package: &PackageFacts) -> Vec<(&'a Agent, bool)> {
    let Some(sel) = rules.late_joiners.as_ref() else { return Vec::new() };
    outsiders
        .iter()
        .filter(|a| !a.revoked && sel.iter().all(|(k, v)| a.labels.get(k) == Some(v)))
        .filter(|a| not_for(a, package).is_none() && (rules.allow_downgrade || would_downgrade(a, package).is_none()))
        .map(|a| (a, runs(a, &package.name, &package.version)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WindowRange;

    fn agent(id: &str, labels: &[(&str, &str)], revoked: bool) -> Agent {
        Agent {
            id: id.parse().unwrap(),
            hostname: format!("host-{id}"),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            facts: BTreeMap::new(),
            version: "0.1.0".into(),
            installed: Vec::new(),
            enrolled_at: chrono::DateTime::default(),
            last_seen: chrono::DateTime::default(),
            online: true,
            revoked,
        }
    }

    fn demo(version: &str) -> PackageFacts {
        PackageFacts { name: "demo".into(), version: version.into(), ..PackageFacts::default() }
    }

    /// A package for another OS or device class gets no job on a server it is not for: a
    /// selector's servers are left out with why, named servers are refused, and a package
    /// for none of them is refused.
    #[test]
    fn the_package_target_decides_who_gets_a_job() {
        let mut agents = vec![agent("a", &[("device-class", "web")], false), agent("b", &[], false)];
        agents[0].facts.insert("os".into(), serde_json::json!("linux"));
        agents[1].facts.insert("os".into(), serde_json::json!("linux"));
        let web = PackageFacts { os: "linux".into(), device_class: "web".into(), ..demo("2.0") };
        let p = plan(&spec(serde_json::json!({})), &agents, &web).unwrap();
        assert_eq!(p.jobs.iter().map(|j| j.agent.as_str()).collect::<Vec<_>>(), ["a"]);
        assert_eq!(p.left_out.len(), 1);
        assert!(p.left_out[0].1.contains("declares none (label device-class)"), "{:?}", p.left_out);
        let named = spec(serde_json::json!({ "targets": { "agents": ["a", "b"] } }));
        let err = plan(&named, &agents, &web).unwrap_err();
        assert!(err.contains("demo 2.0 is not for 1 of the servers named: host-b"), "{err}");
        let windows = PackageFacts { os: "windows".into(), ..demo("2.0") };
        let err = plan(&spec(serde_json::json!({})), &agents, &windows).unwrap_err();
        assert!(err.contains("is for none of the servers") && err.contains("runs linux"), "{err}");
    }

    /// A plan that would take a server back to an older version is refused, naming it,
    /// unless the spec allows the downgrade.
    #[test]
    fn a_downgrade_is_refused_unless_allowed() {
        let mut agents = vec![agent("a", &[], false)];
        agents[0].installed = vec![crate::model::InstalledRollup {
            rollup: "demo".into(),
            version: "2.0.0".into(),
            job_id: "j".parse().unwrap(),
            at: chrono::DateTime::default(),
        }];
        let err = plan(&spec(serde_json::json!({})), &agents, &demo("1.5.0")).unwrap_err();
        assert!(err.contains("would downgrade 1 servers: host-a (runs 2.0.0)"), "{err}");
        assert!(plan(&spec(serde_json::json!({ "allow_downgrade": true })), &agents, &demo("1.5.0")).is_ok());
        assert!(plan(&spec(serde_json::json!({})), &agents, &demo("2.0.1")).is_ok(), "an upgrade");
    }

    fn spec(json: serde_json::Value) -> RolloutSpec {
        let mut base = serde_json::json!({ "name": "r", "package_id": "p", "targets": { "labels": {} } });
        base.as_object_mut().unwrap().extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn late_joiners_match_the_selector_and_only_when_asked() {
        let s = spec(serde_json::json!({ "targets": { "labels": { "role": "web" } }, "late_joiners": true }));
        let outsiders = vec![
            agent("a", &[("role", "web")], false),
            agent("b", &[("role", "db")], false),
            agent("c", &[("role", "web")], true),
        ];
        let rules = Rules::parse(&s).unwrap();
        let got: Vec<&str> =
            late_joiners(&rules, &outsiders, &demo("1.1.0")).iter().map(|(a, _)| a.id.as_str()).collect();
        assert_eq!(got, ["a"], "matching and not revoked");
        let off = Rules::parse(&RolloutSpec { late_joiners: false, ..s.clone() }).unwrap();
        assert!(late_joiners(&off, &outsiders, &demo("1.1.0")).is_empty());
        let by_id = spec(serde_json::json!({ "targets": { "agents": ["a"] }, "late_joiners": true }));
        assert!(Rules::parse(&by_id).unwrap_err().contains("late_joiners needs targets by label"));
    }

    #[test]
    fn waves_mix_counts_and_percentages() {
        let plan = vec![
            WaveSpec::Count(1),
            WaveSpec::Count(5),
            WaveSpec::Percent("25%".into()),
            WaveSpec::Percent("100%".into()),
        ];
        assert_eq!(wave_sizes(100, &plan).unwrap(), vec![1, 5, 19, 75]);
        assert_eq!(wave_sizes(3, &[WaveSpec::Count(1), WaveSpec::Count(2)]).unwrap(), vec![1, 2]);
        assert_eq!(wave_sizes(3, &plan).unwrap(), vec![1, 2]);
        assert_eq!(wave_sizes(5, &[WaveSpec::Count(2)]).unwrap(), vec![2, 3]);
        assert!(wave_sizes(5, &[WaveSpec::Percent("x".into())]).is_err());
    }

    #[test]
    fn shares_are_reached_at_their_bound() {
        let table = [
            (Share::Count(2), 1, 10, false),
            (Share::Count(2), 2, 10, true),
            (Share::Percent(50.0), 4, 9, false),
            (Share::Percent(50.0), 5, 9, true),
            (Share::Percent(100.0), 3, 3, true),
            (Share::Percent(100.0), 0, 0, true),
        ];
        for (share, count, total, want) in table {
            assert_eq!(share.reached(count, total), want, "{share} with {count} of {total}");
        }
    }

    /// Each refusal at staging, with the sentence the operator sees.
    #[test]
    fn bad_specs_are_refused_with_a_reason() {
        let table = [
            (serde_json::json!({ "name": " " }), "name must not be empty"),
            (serde_json::json!({ "concurrency": 0 }), "concurrency must be at least 1"),
            (serde_json::json!({ "waves": [] }), "waves must list at least one wave"),
            (serde_json::json!({ "waves": ["lots"] }), "'lots' is not a percentage"),
            (serde_json::json!({ "waves": [0] }), "wave 0 adds no server"),
            (serde_json::json!({ "waves": [1, "0%"] }), "wave \"0%\" adds no server"),
            (serde_json::json!({ "success_threshold": "120%" }), "'120%' is not a percentage"),
            (
                serde_json::json!({ "maintenance_window": { "ranges": [{ "start": "25:00", "end": "02:00" }] } }),
                "'25:00' is not a time of day",
            ),
            (
                serde_json::json!({ "maintenance_window": { "ranges": [{ "days": ["fri"], "start": "1:00", "end": "x" }] } }),
                "'x' is not a time",
            ),
            (
                serde_json::json!({ "maintenance_window": { "ranges": [{ "days": ["friday"], "start": "1:00", "end": "2:00" }] } }),
                "'friday' is not a day",
            ),
            (serde_json::json!({ "maintenance_window": { "ranges": [] } }), "at least one range"),
        ];
        for (json, want) in table {
            let err = Rules::parse(&spec(json.clone())).expect_err("refused");
            assert!(err.contains(want), "{json}: {err}");
        }
    }

    #[test]
    fn windows_parse_into_minutes() {
        let w = MaintenanceWindow {
            time_zone: None,
            utc_offset_minutes: 60,
            ranges: vec![WindowRange { days: vec!["sat".into()], start: "22:00".into(), end: "02:00".into() }],
            cutoff_minutes: 30,
        };
        let got = Window::parse(&w).unwrap();
        let mut sat = [false; 7];
        sat[5] = true;
        assert_eq!(got.ranges, vec![Range { days: sat, start: 22 * 60, length: 240 }]);
    }

    #[test]
    fn targets_by_id_and_by_label() {
        let agents = [
            agent("a", &[("ring", "canary")], false),
            agent("b", &[("ring", "main")], false),
            agent("c", &[("ring", "main")], true),
        ];
        let by_label = Targets { agents: None, labels: Some([("ring".to_owned(), "main".to_owned())].into()) };
        assert_eq!(select_targets(&by_label, &agents).unwrap(), vec!["b".parse::<AgentId>().unwrap()]);
        let ids = |v: &[&str]| Targets { agents: Some(v.iter().map(|s| s.parse().unwrap()).collect()), labels: None };
        assert_eq!(select_targets(&ids(&["b", "a", "b"]), &agents).unwrap().len(), 2);
        assert_eq!(select_targets(&ids(&["c"]), &agents).unwrap_err(), "agent c is revoked");
        assert_eq!(select_targets(&ids(&["z"]), &agents).unwrap_err(), "agent z does not exist");
        assert!(select_targets(&Targets::default(), &agents).unwrap_err().contains("exactly one"));
        let none = Targets { agents: None, labels: Some([("ring".to_owned(), "x".to_owned())].into()) };
        assert_eq!(select_targets(&none, &agents).unwrap_err(), "the targets select no agent");
    }

    #[test]
    fn plans_put_agents_in_waves_in_order() {
        let agents: Vec<Agent> = (0..5).map(|i| agent(&format!("a{i}"), &[], false)).collect();
        let p = plan(&spec(serde_json::json!({ "waves": [1, "50%"] })), &agents, &demo("1.1")).unwrap();
        assert_eq!(p.wave_sizes, vec![1, 2, 2]);
        let waves: Vec<u32> = p.jobs.iter().map(|j| j.wave).collect();
        assert_eq!(waves, vec![1, 2, 2, 3, 3]);
        assert_eq!(p.jobs[0].agent, "a0");
        assert!(p.jobs.iter().all(|j| !j.skip));
        assert!(p.catch_all, "[1, 50%] of 5 leaves 2 servers for an added wave");
        let exact = plan(&spec(serde_json::json!({ "waves": [1, "100%"] })), &agents, &demo("1.1")).unwrap();
        assert!(!exact.catch_all);
    }

    /// A server already on the version is skipped, and planned after the ones that install,
    /// so that wave 1 is a real canary.
    #[test]
    fn servers_on_the_version_are_skipped_and_planned_last() {
        let mut agents: Vec<Agent> = (0..3).map(|i| agent(&format!("a{i}"), &[], false)).collect();
        let at = chrono::DateTime::default();
        let done = |version: &str| crate::model::InstalledRollup {
            rollup: "demo".into(),
            version: version.into(),
            job_id: "j".parse().unwrap(),
            at,
        };
        agents[0].installed = vec![done("1.0"), done("1.1")];
        agents[2].installed = vec![done("1.1"), done("1.0")];
        assert!(runs(&agents[0], "demo", "1.1") && !runs(&agents[2], "demo", "1.1"));
        let p = plan(&spec(serde_json::json!({ "waves": [1, "100%"] })), &agents, &demo("1.1")).unwrap();
        let got: Vec<(&str, u32, bool)> = p.jobs.iter().map(|j| (j.agent.as_str(), j.wave, j.skip)).collect();
        assert_eq!(got, vec![("a1", 1, false), ("a2", 2, false), ("a0", 2, true)]);
    }
}

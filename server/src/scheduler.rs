//! The rollout scheduler: a background task that opens waves, fills concurrency slots,
//! applies the gates and thresholds, and declares silent jobs lost.
//!
//! The decisions are pure functions here ([`next_step`], [`wave_sizes`], [`window_open`],
//! [`auto_answer`]); the store applies them inside one transaction per pass
//! (`Store::scheduler_tick`), which on Postgres also holds an advisory lock so only one
//! replica schedules at a time. A pass runs every `--scheduler-interval-ms` and at once when
//! something that may open work happens (a job ends, a rollout starts or is approved).

use crate::app::App;
use crate::model::{JobState, MaintenanceWindow, Threshold, WaveSpec, now_ms};
use crate::store::TickSettings;
use chrono::{DateTime, Datelike as _, Duration, Timelike as _, Utc};
use fleetup_proto::agent_api::{FilesInUsePolicy, JobPolicies, WarningPolicy};
use fleetup_proto::{DecisionAnswer, DecisionKind};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Runs scheduler passes until `shutdown`.
pub async fn run(app: Arc<App>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(app.config.scheduler_interval());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = interval.tick() => {}
            () = app.scheduler_kick.notified() => {}
        }
        match app.store.scheduler_tick(TickSettings { now: now_ms() }).await {
            Ok(report) => {
                if report.ran {
                    metrics::counter!("fleetup_scheduler_passes_total").increment(1);
                }
                metrics::counter!("fleetup_jobs_lost_total").increment(report.lost);
                app.wake_agents(&report.wake_agents).await;
            }
            Err(e) => tracing::error!(error = %e, "scheduler pass failed"),
        }
    }
}

/// Parses `"25%"` into 25.0.
pub fn parse_percent(s: &str) -> Result<f64, String> {
    let n = s
        .strip_suffix('%')
        .and_then(|n| n.trim().parse::<f64>().ok())
        .filter(|n| (0.0..=100.0).contains(n))
        .ok_or_else(|| {
            format!("'{s}' is not a percentage: write a number from 0 to 100 followed by %, like \"25%\"")
        })?;
    Ok(n)
}

/// Checks a threshold's syntax.
pub fn check_threshold(t: &Threshold) -> Result<(), String> {
    match t {
        Threshold::Count(_) => Ok(()),
        Threshold::Percent(p) => parse_percent(p).map(|_| ()),
    }
}

/// True when `count` of `total` reaches the threshold.
pub fn threshold_reached(t: &Threshold, count: u64, total: u64) -> bool {
    match t {
        Threshold::Count(n) => count >= *n,
        Threshold::Percent(p) => {
            let pct = parse_percent(p).unwrap_or(100.0);
            total == 0 || (count as f64) * 100.0 >= pct * (total as f64) - 1e-9
        }
    }
}

/// Splits `total` servers into waves. A count is that wave's size; a percentage brings the
/// servers covered so far up to that share of `total` (rounded up). Empty waves are dropped;
/// servers the plan does not reach form one last wave.
pub fn wave_sizes(total: u64, plan: &[WaveSpec]) -> Result<Vec<u64>, String> {
    let mut sizes = Vec::new();
    let mut covered = 0u64;
    for w in plan {
        let target = match w {
            WaveSpec::Count(n) => covered.saturating_add(*n),
            WaveSpec::Percent(p) => {
                let pct = parse_percent(p)?;
                ((pct * total as f64) / 100.0).ceil() as u64
            }
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
    Ok(sizes)
}

fn parse_hhmm(s: &str) -> Result<i64, String> {
    let (h, m) = s.split_once(':').ok_or_else(|| format!("'{s}' is not a time: write HH:MM"))?;
    let (h, m): (i64, i64) = (
        h.parse().map_err(|_| format!("'{s}' is not a time: write HH:MM"))?,
        m.parse().map_err(|_| format!("'{s}' is not a time: write HH:MM"))?,
    );
    if !(0..=24).contains(&h) || !(0..60).contains(&m) || h * 60 + m > 1440 {
        return Err(format!("'{s}' is not a time of day"));
    }
    Ok(h * 60 + m)
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

/// Checks a window's syntax.
pub fn check_window(w: &MaintenanceWindow) -> Result<(), String> {
    if w.ranges.is_empty() {
        return Err("a maintenance window needs at least one range".into());
    }
    for r in &w.ranges {
        parse_hhmm(&r.start)?;
        parse_hhmm(&r.end)?;
        for d in &r.days {
            if !DAYS.contains(&d.as_str()) {
                return Err(format!("'{d}' is not a day: use mon, tue, wed, thu, fri, sat or sun"));
            }
        }
    }
    Ok(())
}

/// True when a job may start at `now`: inside a range and before its cutoff.
pub fn window_open(w: &MaintenanceWindow, now: DateTime<Utc>) -> bool {
    let local = now + Duration::minutes(i64::from(w.utc_offset_minutes));
    let minute_of_day = i64::from(local.hour() * 60 + local.minute());
    let today = local.weekday().num_days_from_monday() as usize;
    for r in &w.ranges {
        let (Ok(start), Ok(end)) = (parse_hhmm(&r.start), parse_hhmm(&r.end)) else { continue };
        let length = if end > start { end - start } else { end + 1440 - start };
        // A range may have started today or (crossing midnight) yesterday.
        for days_ago in 0..2usize {
            let day = (today + 7 - days_ago) % 7;
            if !r.days.is_empty() && !r.days.iter().any(|d| d == DAYS[day]) {
                continue;
            }
            let since_start = minute_of_day + 1440 * days_ago as i64 - start;
            if since_start >= 0 && since_start < length - i64::from(w.cutoff_minutes) {
                return true;
            }
        }
    }
    false
}

/// The answer a policy gives to a decision, or `None` when an operator must answer.
/// `earlier_files_in_use` counts the job's files-in-use decisions before this one.
pub fn auto_answer(policies: &JobPolicies, kind: &DecisionKind, earlier_files_in_use: u32) -> Option<DecisionAnswer> {
    match kind {
        DecisionKind::Warning { .. } => match policies.warning {
            WarningPolicy::Ask => None,
            WarningPolicy::Continue => Some(DecisionAnswer::Continue),
            WarningPolicy::Cancel => Some(DecisionAnswer::Cancel),
        },
        DecisionKind::FilesInUse { .. } => match policies.files_in_use {
            FilesInUsePolicy::Ask => None,
            FilesInUsePolicy::Retry { times } => {
                Some(if earlier_files_in_use < times { DecisionAnswer::Retry } else { DecisionAnswer::Exit })
            }
            FilesInUsePolicy::Ignore => Some(DecisionAnswer::Ignore),
            FilesInUsePolicy::Exit => Some(DecisionAnswer::Exit),
        },
    }
}

/// What the scheduler knows about a running rollout.
#[derive(Debug, Clone, Copy)]
pub struct RolloutView {
    /// The open wave (1-based).
    pub current_wave: u32,
    /// Number of waves.
    pub wave_count: u32,
    /// Highest wave an approval (or the start) allows to open.
    pub approved_wave: u32,
    /// Failures an operator accepted by resuming.
    pub failures_accepted: u64,
    /// Highest wave whose success gate an operator overrode by resuming.
    pub gate_override_wave: u32,
}

/// One step the scheduler takes on a running rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do now.
    Nothing,
    /// Stop opening jobs, with the reason.
    Pause(String),
    /// Cancel what has not finished, with the reason.
    Abort(String),
    /// The last wave is done.
    Finish,
    /// The current wave is done; the next needs approval.
    AwaitApproval,
    /// Open this wave.
    OpenWave(u32),
    /// Queue this many pending jobs of this wave.
    Queue(u32, u64),
    /// Outside the window: put this wave's queued jobs back to pending.
    Unqueue(u32),
}

/// Decides the next step. `counts` is keyed by (wave, state).
pub fn next_step(
    view: &RolloutView,
    spec: &crate::model::RolloutSpec,
    counts: &BTreeMap<(u32, JobState), u64>,
    in_window: bool,
) -> Step {
    let total: u64 = counts.values().sum();
    let failures: u64 = counts.iter().filter(|((_, s), _)| s.is_failure()).map(|(_, n)| n).sum();
    if let Some(th) = &spec.error_threshold
        && failures > view.failures_accepted
        && threshold_reached(th, failures, total)
    {
        let reason = format!("{failures} of {total} jobs failed, crossing the error threshold {}", show_threshold(th));
        return match spec.error_action {
            crate::model::ErrorAction::Pause => Step::Pause(reason),
            crate::model::ErrorAction::Abort => Step::Abort(reason),
        };
    }
    let w = view.current_wave;
    let in_wave = |f: &dyn Fn(JobState) -> bool| -> u64 {
        counts.iter().filter(|((wave, s), _)| *wave == w && f(*s)).map(|(_, n)| n).sum()
    };
    let size = in_wave(&|_| true);
    let done = in_wave(&|s| s.is_terminal());
    if done == size {
        let succeeded = in_wave(&|s| s == JobState::Succeeded);
        if !threshold_reached(&spec.success_threshold, succeeded, size) && view.gate_override_wave < w {
            return Step::Pause(format!(
                "wave {w}: {succeeded} of {size} jobs succeeded, below the success threshold {}; resume to go on anyway",
                show_threshold(&spec.success_threshold)
            ));
        }
        if w >= view.wave_count {
            return Step::Finish;
        }
        if spec.approval_required && view.approved_wave <= w {
            return Step::AwaitApproval;
        }
        return Step::OpenWave(w + 1);
    }
    let queued = in_wave(&|s| s == JobState::Queued);
    if !in_window {
        return if queued > 0 { Step::Unqueue(w) } else { Step::Nothing };
    }
    let active = in_wave(&|s| s.is_active());
    let pending = in_wave(&|s| s == JobState::Pending);
    let free = u64::from(spec.concurrency.max(1)).saturating_sub(active);
    if free > 0 && pending > 0 { Step::Queue(w, free.min(pending)) } else { Step::Nothing }
}

fn show_threshold(t: &Threshold) -> String {
    match t {
        Threshold::Count(n) => n.to_string(),
        Threshold::Percent(p) => p.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::WindowRange;

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
    fn window_handles_midnight_and_cutoff() {
        let w = MaintenanceWindow {
            utc_offset_minutes: 60,
            ranges: vec![WindowRange { days: vec!["sat".into()], start: "22:00".into(), end: "02:00".into() }],
            cutoff_minutes: 30,
        };
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        // 2026-11-21 is a Saturday. 22:30 local = 21:30 UTC.
        assert!(window_open(&w, at("2026-11-21T21:30:00Z")));
        // Sunday 01:00 local, range started Saturday.
        assert!(window_open(&w, at("2026-11-22T00:00:00Z")));
        // Sunday 01:45 local: inside the last 30 minutes.
        assert!(!window_open(&w, at("2026-11-22T00:45:00Z")));
        // Friday 23:00 local.
        assert!(!window_open(&w, at("2026-11-20T22:00:00Z")));
    }

    #[test]
    fn policies_answer_or_ask() {
        let p = JobPolicies { files_in_use: FilesInUsePolicy::Retry { times: 2 }, ..JobPolicies::default() };
        let fiu = DecisionKind::FilesInUse { processes: vec![] };
        assert_eq!(auto_answer(&p, &fiu, 0), Some(DecisionAnswer::Retry));
        assert_eq!(auto_answer(&p, &fiu, 2), Some(DecisionAnswer::Exit));
        assert_eq!(auto_answer(&p, &DecisionKind::Warning { code: "crl".into(), remediation: None }, 0), None);
    }
}

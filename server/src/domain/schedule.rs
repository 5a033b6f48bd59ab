//! The scheduler's decision: given a running rollout's counts, what to do next ([`next_step`]):
//! pause or abort at the error threshold, pause at a failed success gate, finish, wait for
//! an approval, open the next wave, fill the concurrency slots of the open one, or (outside
//! its maintenance window) put queued jobs back. Also when a window is open and when a phase
//! has run past its timeout. The background task in [`crate::scheduler`] reads the facts and
//! has the store apply the step.

use super::plan::{Rules, Window, Zone};
use super::rollout::Effect;
use crate::model::{ErrorAction, JobState, Millis, RolloutState, to_time};
use chrono::{DateTime, Datelike as _, Duration, NaiveDateTime, SecondsFormat, Timelike as _, Utc};
use fleetup_proto::PhaseId;
use std::collections::BTreeMap;

/// `now` on the window's clock.
fn local_time(zone: Zone, now: DateTime<Utc>) -> NaiveDateTime {
    match zone {
        Zone::Fixed(minutes) => (now + Duration::minutes(minutes)).naive_utc(),
        Zone::Iana(tz) => now.with_timezone(&tz).naive_local(),
    }
}

/// True when a job may start at `now`: inside a range and before its cutoff. Ranges are read
/// on the window's clock, so in an IANA zone 02:00 stays 02:00 local across daylight saving.
pub fn window_open(w: &Window, now: DateTime<Utc>) -> bool {
    let local = local_time(w.zone, now);
    let minute_of_day = i64::from(local.hour() * 60 + local.minute());
    let today = local.weekday().num_days_from_monday() as usize;
    w.ranges.iter().any(|r| {
        // A range may have started today or (crossing midnight) yesterday.
        (0..2usize).any(|days_ago| {
            let day = (today + 7 - days_ago) % 7;
            let every_day = !r.days.contains(&true);
            let since_start = minute_of_day + 1440 * days_ago as i64 - r.start;
            (every_day || r.days[day]) && since_start >= 0 && since_start < r.length - w.cutoff_minutes
        })
    })
}

/// The first minute after `now` at which the window is open, looking a week and a day
/// ahead; `None` when it never opens (every range shorter than its cutoff).
pub fn next_window_open(w: &Window, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let start = now.with_second(0).and_then(|t| t.with_nanosecond(0)).unwrap_or(now);
    (1..=8 * 1440).map(|m| start + Duration::minutes(m)).find(|t| window_open(w, *t))
}

/// The time limit a running phase has exceeded, in seconds, if any.
pub fn phase_timed_out(rules: &Rules, phase: PhaseId, started_at_ms: i64, now_ms: i64) -> Option<u64> {
    rules.phase_timeouts.get(&phase).copied().filter(|limit| now_ms - started_at_ms > (*limit as i64) * 1000)
}

/// What the scheduler knows about a running rollout besides its counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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
    /// When the current wave passed its gate (its soak time runs from then).
    pub wave_done_at: Option<Millis>,
}

/// Whether jobs may start now, by the rollout's maintenance window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowState {
    /// No window, or inside one.
    Open,
    /// Outside the window, which next opens then (if ever).
    Closed(Option<Millis>),
}

/// One step the scheduler takes on a running rollout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing to do now.
    Nothing,
    /// A rollout transition: pause (with the reason) or abort.
    Transition(Effect),
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
    /// This wave passed its gate: it is done, and the soak time before the next starts.
    Soak(u32),
    /// Waiting (a scheduled start, a soak time, a closed window): the reason for people and
    /// when the wait ends, if known.
    Wait(String, Option<Millis>),
}

/// Job counts of a rollout, keyed by (wave, state).
pub type Counts = BTreeMap<(u32, JobState), u64>;

fn stamp(ms: Millis) -> String {
    to_time(ms).to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// Decides the next step of a running rollout at `now`.
pub fn next_step(view: &RolloutView, rules: &Rules, counts: &Counts, window: WindowState, now: Millis) -> Step {
    // Superseded attempts and excluded servers are left out of every count.
    let counts: Counts = counts.iter().filter(|((_, s), _)| !s.is_set_aside()).map(|(k, n)| (*k, *n)).collect();
    let total: u64 = counts.values().sum();
    // An undeliverable job is a failure only when the rollout says so; otherwise it is left
    // out of the gate's count too (the gate is taken over the servers that could be reached).
    let failed = |s: JobState| s.is_failure() || (rules.undeliverable_is_failure && s == JobState::Undeliverable);
    let apart = |s: JobState| !rules.undeliverable_is_failure && s == JobState::Undeliverable;
    let failures: u64 = counts.iter().filter(|((_, s), _)| failed(*s)).map(|(_, n)| n).sum();
    if let Some(th) = rules.error
        && failures > view.failures_accepted
        && th.reached(failures, total)
    {
        let reason = format!("{failures} of {total} jobs failed, crossing the error threshold {th}");
        return Step::Transition(match rules.error_action {
            ErrorAction::Pause => Effect::Pause(reason),
            ErrorAction::Abort => Effect::End(RolloutState::Aborted, reason),
        });
    }
    if let Some(at) = rules.start_at
        && now < at
    {
        return Step::Wait(format!("scheduled to start at {}", stamp(at)), Some(at));
    }
    let w = view.current_wave;
    let in_wave = |f: &dyn Fn(JobState) -> bool| -> u64 {
        counts.iter().filter(|((wave, s), _)| *wave == w && f(*s)).map(|(_, n)| n).sum()
    };
    let size = in_wave(&|_| true);
    let done = in_wave(&|s| s.is_terminal());
    if done == size {
        let succeeded = in_wave(&|s| s.is_success());
        let reached = size - in_wave(&|s| apart(s));
        if !rules.success.reached(succeeded, reached) && view.gate_override_wave < w {
            return Step::Transition(Effect::Pause(format!(
                "wave {w}: {succeeded} of {reached} jobs succeeded, below the success threshold {}; resume to go on anyway",
                rules.success
            )));
        }
        if w >= view.wave_count {
            return Step::Finish;
        }
        if rules.soak_ms > 0 {
            let Some(done_at) = view.wave_done_at else { return Step::Soak(w) };
            let until = done_at + rules.soak_ms;
            if now < until {
                return Step::Wait(
                    format!("wave {w} passed its gate; soaking until {} before wave {} opens", stamp(until), w + 1),
                    Some(until),
                );
            }
        }
        if rules.approval_required && view.approved_wave <= w {
            return Step::AwaitApproval;
        }
        return Step::OpenWave(w + 1);
    }
    let queued = in_wave(&|s| s == JobState::Queued);
    let pending = in_wave(&|s| s == JobState::Pending);
    if let WindowState::Closed(opens) = window {
        if queued > 0 {
            return Step::Unqueue(w);
        }
        if pending == 0 {
            return Step::Nothing;
        }
        let when = opens.map_or_else(
            || "it never opens: check its ranges and cutoff".to_owned(),
            |t| format!("it next opens at {}", stamp(t)),
        );
        return Step::Wait(format!("outside its maintenance window: {pending} servers wait; {when}"), opens);
    }
    let active = in_wave(&|s| s.is_active());
    let free = rules.concurrency.max(1).saturating_sub(active);
    if free > 0 && pending > 0 { Step::Queue(w, free.min(pending)) } else { Step::Nothing }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::plan::Share;
    use crate::model::{MaintenanceWindow, WindowRange};
    use JobState as J;

    fn rules() -> Rules {
        Rules {
            concurrency: 2,
            success: Share::Percent(100.0),
            error: None,
            error_action: ErrorAction::Pause,
            approval_required: false,
            window: None,
            phase_timeouts: BTreeMap::new(),
            undeliverable_is_failure: false,
            start_at: None,
            soak_ms: 0,
            retries: None,
            late_joiners: None,
            allow_downgrade: false,
        }
    }

    fn view(current_wave: u32) -> RolloutView {
        RolloutView {
            current_wave,
            wave_count: 2,
            approved_wave: 1,
            failures_accepted: 0,
            gate_override_wave: 0,
            wave_done_at: None,
        }
    }

    /// The table's clock, and an instant an hour later.
    const NOW: Millis = 1_795_251_600_000; // 2026-11-21T09:00:00Z
    const NEXT_OPEN: Millis = NOW + 3_600_000;

    fn counts(rows: &[(u32, JobState, u64)]) -> Counts {
        rows.iter().map(|(w, s, n)| ((*w, *s), *n)).collect()
    }

    /// Every branch of `next_step`, one row each: (what, view, rules, counts, in window, step).
    #[test]
    fn next_step_table() {
        let pause = |m: &str| Step::Transition(Effect::Pause(m.to_owned()));
        let base = rules();
        let threshold = Rules { error: Some(Share::Count(1)), ..rules() };
        let abort = Rules { error_action: ErrorAction::Abort, ..threshold.clone() };
        let approval = Rules { approval_required: true, ..rules() };
        let half = Rules { success: Share::Percent(50.0), ..rules() };
        let strict = Rules { undeliverable_is_failure: true, ..rules() };
        let strict_threshold = Rules { undeliverable_is_failure: true, ..threshold.clone() };
        let accepted = RolloutView { failures_accepted: 1, ..view(1) };
        let overridden = RolloutView { gate_override_wave: 1, ..view(1) };
        let approved = RolloutView { approved_wave: 2, ..view(1) };
        let scheduled = Rules { start_at: Some(NEXT_OPEN), ..rules() };
        let started = Rules { start_at: Some(NOW), ..rules() };
        let soak = Rules { soak_ms: 60_000, ..rules() };
        let soaking = RolloutView { wave_done_at: Some(NEXT_OPEN - 60_000), ..view(1) };
        let soaked = RolloutView { wave_done_at: Some(NOW - 60_000), ..view(1) };
        let fail_gate = "wave 1: 1 of 2 jobs succeeded, below the success threshold 100%; resume to go on anyway";
        let table: Vec<(&str, RolloutView, &Rules, Counts, bool, Step)> = vec![
            ("fills the free slots", view(1), &base, counts(&[(1, J::Pending, 5)]), true, Step::Queue(1, 2)),
            (
                "one slot taken",
                view(1),
                &base,
                counts(&[(1, J::Running, 1), (1, J::Pending, 5)]),
                true,
                Step::Queue(1, 1),
            ),
            ("slots full", view(1), &base, counts(&[(1, J::Running, 2), (1, J::Pending, 5)]), true, Step::Nothing),
            ("outside the window, queued", view(1), &base, counts(&[(1, J::Queued, 2)]), false, Step::Unqueue(1)),
            (
                "outside the window, none queued: waits, saying so",
                view(1),
                &base,
                counts(&[(1, J::Pending, 2)]),
                false,
                Step::Wait(
                    "outside its maintenance window: 2 servers wait; it next opens at 2026-11-21T10:00:00Z".into(),
                    Some(NEXT_OPEN),
                ),
            ),
            (
                "outside the window, only running jobs",
                view(1),
                &base,
                counts(&[(1, J::Running, 2)]),
                false,
                Step::Nothing,
            ),
            (
                "a retried attempt is left out of the gate",
                view(1),
                &base,
                counts(&[(1, J::Succeeded, 2), (1, J::Retried, 1), (2, J::Pending, 3)]),
                true,
                Step::OpenWave(2),
            ),
            (
                "an excluded server is left out of the error threshold",
                view(1),
                &threshold,
                counts(&[(1, J::Excluded, 1), (1, J::Pending, 4)]),
                true,
                Step::Queue(1, 2),
            ),
            (
                "before start_at: waits",
                view(1),
                &scheduled,
                counts(&[(1, J::Pending, 5)]),
                true,
                Step::Wait("scheduled to start at 2026-11-21T10:00:00Z".into(), Some(NEXT_OPEN)),
            ),
            ("at start_at: goes", view(1), &started, counts(&[(1, J::Pending, 5)]), true, Step::Queue(1, 2)),
            (
                "wave done with a soak time: the soak starts",
                view(1),
                &soak,
                counts(&[(1, J::Succeeded, 2), (2, J::Pending, 3)]),
                true,
                Step::Soak(1),
            ),
            (
                "soaking: waits, with the time it ends",
                soaking,
                &soak,
                counts(&[(1, J::Succeeded, 2), (2, J::Pending, 3)]),
                true,
                Step::Wait(
                    "wave 1 passed its gate; soaking until 2026-11-21T10:00:00Z before wave 2 opens".into(),
                    Some(NEXT_OPEN),
                ),
            ),
            (
                "soak over: next opens",
                soaked,
                &soak,
                counts(&[(1, J::Succeeded, 2), (2, J::Pending, 3)]),
                true,
                Step::OpenWave(2),
            ),
            (
                "no soak after the last wave",
                view(2),
                &soak,
                counts(&[(1, J::Succeeded, 2), (2, J::Succeeded, 3)]),
                true,
                Step::Finish,
            ),
            (
                "wave done: next opens",
                view(1),
                &base,
                counts(&[(1, J::Succeeded, 2), (2, J::Pending, 3)]),
                true,
                Step::OpenWave(2),
            ),
            (
                "last wave done",
                view(2),
                &base,
                counts(&[(1, J::Succeeded, 2), (2, J::Succeeded, 3)]),
                true,
                Step::Finish,
            ),
            (
                "wave done, approval needed",
                view(1),
                &approval,
                counts(&[(1, J::Succeeded, 2), (2, J::Pending, 3)]),
                true,
                Step::AwaitApproval,
            ),
            (
                "wave done, approved",
                approved,
                &approval,
                counts(&[(1, J::Succeeded, 2), (2, J::Pending, 3)]),
                true,
                Step::OpenWave(2),
            ),
            (
                "gate failed",
                view(1),
                &base,
                counts(&[(1, J::Succeeded, 1), (1, J::Cancelled, 1), (2, J::Pending, 3)]),
                true,
                pause(fail_gate),
            ),
            (
                "gate overridden by resume",
                overridden,
                &base,
                counts(&[(1, J::Succeeded, 1), (1, J::Cancelled, 1), (2, J::Pending, 3)]),
                true,
                Step::OpenWave(2),
            ),
            (
                "gate at 50%",
                view(1),
                &half,
                counts(&[(1, J::Succeeded, 1), (1, J::Cancelled, 1), (2, J::Pending, 3)]),
                true,
                Step::OpenWave(2),
            ),
            (
                "error threshold pauses",
                view(1),
                &threshold,
                counts(&[(1, J::Failed, 1), (1, J::Pending, 4)]),
                true,
                pause("1 of 5 jobs failed, crossing the error threshold 1"),
            ),
            (
                "error threshold aborts",
                view(1),
                &abort,
                counts(&[(1, J::RolledBack, 1), (1, J::Pending, 4)]),
                true,
                Step::Transition(Effect::End(
                    RolloutState::Aborted,
                    "1 of 5 jobs failed, crossing the error threshold 1".into(),
                )),
            ),
            (
                "skipped servers pass the gate",
                view(1),
                &base,
                counts(&[(1, J::Succeeded, 1), (1, J::Skipped, 1), (2, J::Pending, 3)]),
                true,
                Step::OpenWave(2),
            ),
            (
                "an undeliverable server is left out of the gate",
                view(1),
                &base,
                counts(&[(1, J::Succeeded, 1), (1, J::Undeliverable, 1), (2, J::Pending, 3)]),
                true,
                Step::OpenWave(2),
            ),
            (
                "an undeliverable job frees its slot",
                view(1),
                &base,
                counts(&[(1, J::Undeliverable, 1), (1, J::Running, 1), (1, J::Pending, 3)]),
                true,
                Step::Queue(1, 1),
            ),
            (
                "undeliverable as failure: the gate counts it",
                view(1),
                &strict,
                counts(&[(1, J::Succeeded, 1), (1, J::Undeliverable, 1), (2, J::Pending, 3)]),
                true,
                pause("wave 1: 1 of 2 jobs succeeded, below the success threshold 100%; resume to go on anyway"),
            ),
            (
                "undeliverable as failure: the error threshold counts it",
                view(1),
                &strict_threshold,
                counts(&[(1, J::Undeliverable, 1), (1, J::Pending, 4)]),
                true,
                pause("1 of 5 jobs failed, crossing the error threshold 1"),
            ),
            (
                "undeliverable apart: no error threshold",
                view(1),
                &threshold,
                counts(&[(1, J::Undeliverable, 1), (1, J::Pending, 4)]),
                true,
                Step::Queue(1, 2),
            ),
            (
                "accepted failures do not pause again",
                accepted,
                &threshold,
                counts(&[(1, J::Lost, 1), (1, J::Pending, 4)]),
                true,
                Step::Queue(1, 2),
            ),
        ];
        for (what, view, rules, counts, in_window, want) in table {
            let window = if in_window { WindowState::Open } else { WindowState::Closed(Some(NEXT_OPEN)) };
            assert_eq!(next_step(&view, rules, &counts, window, NOW), want, "{what}");
        }
    }

    #[test]
    fn window_handles_midnight_and_cutoff() {
        let w = Window::parse(&MaintenanceWindow {
            time_zone: None,
            utc_offset_minutes: 60,
            ranges: vec![WindowRange { days: vec!["sat".into()], start: "22:00".into(), end: "02:00".into() }],
            cutoff_minutes: 30,
        })
        .unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        // 2026-11-21 is a Saturday. 22:30 local = 21:30 UTC.
        assert!(window_open(&w, at("2026-11-21T21:30:00Z")));
        // Sunday 01:00 local, range started Saturday.
        assert!(window_open(&w, at("2026-11-22T00:00:00Z")));
        // Sunday 01:45 local: inside the last 30 minutes.
        assert!(!window_open(&w, at("2026-11-22T00:45:00Z")));
        // Friday 23:00 local.
        assert!(!window_open(&w, at("2026-11-20T22:00:00Z")));
        let every_day =
            Window { ranges: vec![super::super::plan::Range { days: [false; 7], ..w.ranges[0].clone() }], ..w };
        assert!(window_open(&every_day, at("2026-11-20T22:00:00Z")));
    }

    /// An IANA zone keeps a range at the same local hour across daylight saving: 02:00–04:00
    /// in Berlin is 01:00 UTC in winter and 00:00 UTC in summer.
    #[test]
    fn window_in_an_iana_zone_follows_daylight_saving() {
        let w = Window::parse(&MaintenanceWindow {
            time_zone: Some("Europe/Berlin".into()),
            utc_offset_minutes: 0,
            ranges: vec![WindowRange { days: vec![], start: "02:00".into(), end: "04:00".into() }],
            cutoff_minutes: 0,
        })
        .unwrap();
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().to_utc();
        assert!(window_open(&w, at("2026-01-15T01:30:00Z")), "winter: 02:30 CET");
        assert!(!window_open(&w, at("2026-01-15T00:30:00Z")), "winter: 01:30 CET");
        assert!(window_open(&w, at("2026-07-15T00:30:00Z")), "summer: 02:30 CEST");
        assert!(!window_open(&w, at("2026-07-15T02:30:00Z")), "summer: 04:30 CEST");
        assert_eq!(next_window_open(&w, at("2026-07-15T10:00:00Z")), Some(at("2026-07-16T00:00:00Z")));
        assert_eq!(next_window_open(&w, at("2026-01-15T10:00:00Z")), Some(at("2026-01-16T01:00:00Z")));
    }

    #[test]
    fn a_window_is_refused_with_a_bad_zone_or_both_clocks() {
        let mut spec = MaintenanceWindow {
            time_zone: Some("Mars/Olympus".into()),
            utc_offset_minutes: 0,
            ranges: vec![WindowRange { days: vec![], start: "02:00".into(), end: "04:00".into() }],
            cutoff_minutes: 0,
        };
        let err = Window::parse(&spec).unwrap_err();
        assert!(err.contains("'Mars/Olympus' is not an IANA time zone"), "{err}");
        spec.time_zone = Some("Europe/Berlin".into());
        spec.utc_offset_minutes = 60;
        assert!(Window::parse(&spec).unwrap_err().contains("not both"));
    }

    #[test]
    fn retry_backoff_doubles_up_to_its_maximum() {
        let r = crate::domain::plan::Retries { times: 5, backoff_ms: 1000, max_backoff_ms: 5000 };
        assert_eq!([2, 3, 4, 5, 6].map(|n| r.delay_ms(n)), [1000, 2000, 4000, 5000, 5000]);
    }

    #[test]
    fn phase_timeouts() {
        let r = Rules { phase_timeouts: [(PhaseId::CheckSystem, 10)].into(), ..rules() };
        assert_eq!(phase_timed_out(&r, PhaseId::CheckSystem, 0, 10_000), None);
        assert_eq!(phase_timed_out(&r, PhaseId::CheckSystem, 0, 10_001), Some(10));
        assert_eq!(phase_timed_out(&r, PhaseId::UpdateFiles, 0, 99_000), None);
    }
}

//! The scheduler's decision: given a running rollout's counts, what to do next ([`next_step`]):
//! pause or abort at the error threshold, pause at a failed success gate, finish, wait for
//! an approval, open the next wave, fill the concurrency slots of the open one, or (outside
//! its maintenance window) put queued jobs back. Also when a window is open and when a phase
//! has run past its timeout. The background task in [`crate::scheduler`] reads the facts and
//! has the store apply the step.

use super::plan::{Rules, Window};
use super::rollout::Effect;
use crate::model::{ErrorAction, JobState, RolloutState};
use chrono::{DateTime, Datelike as _, Duration, Timelike as _, Utc};
use fleetup_proto::PhaseId;
use std::collections::BTreeMap;

/// True when a job may start at `now`: inside a range and before its cutoff.
pub fn window_open(w: &Window, now: DateTime<Utc>) -> bool {
    let local = now + Duration::minutes(w.utc_offset_minutes);
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
}

/// Job counts of a rollout, keyed by (wave, state).
pub type Counts = BTreeMap<(u32, JobState), u64>;

/// Decides the next step of a running rollout.
pub fn next_step(view: &RolloutView, rules: &Rules, counts: &Counts, in_window: bool) -> Step {
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
        if rules.approval_required && view.approved_wave <= w {
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
        }
    }

    fn view(current_wave: u32) -> RolloutView {
        RolloutView { current_wave, wave_count: 2, approved_wave: 1, failures_accepted: 0, gate_override_wave: 0 }
    }

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
            ("outside the window, none queued", view(1), &base, counts(&[(1, J::Pending, 2)]), false, Step::Nothing),
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
            assert_eq!(next_step(&view, rules, &counts, in_window), want, "{what}");
        }
    }

    #[test]
    fn window_handles_midnight_and_cutoff() {
        let w = Window::parse(&MaintenanceWindow {
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

    #[test]
    fn phase_timeouts() {
        let r = Rules { phase_timeouts: [(PhaseId::CheckSystem, 10)].into(), ..rules() };
        assert_eq!(phase_timed_out(&r, PhaseId::CheckSystem, 0, 10_000), None);
        assert_eq!(phase_timed_out(&r, PhaseId::CheckSystem, 0, 10_001), Some(10));
        assert_eq!(phase_timed_out(&r, PhaseId::UpdateFiles, 0, 99_000), None);
    }
}

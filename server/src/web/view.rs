//! What templates need besides the domain types: the page frame ([`Nav`]), and the words
//! and colour classes for states. Every colour class comes with a text label, so nothing
//! is told by colour alone.

use super::assets;
use super::session::User;
use crate::model::{Job, JobState, Rollout, RolloutState};
use chrono::{DateTime, Utc};
use fleetup_proto::{PhaseId, PhaseStatus};

/// The frame every page shares: who is logged in, the CSRF token, which tab is active.
#[derive(Debug, Clone)]
pub struct Nav {
    /// Login name.
    pub user: String,
    /// Role id.
    pub role: &'static str,
    /// The session's CSRF token (hidden field of every form, header of htmx requests).
    pub csrf: String,
    /// May the user act (operator or admin)?
    pub can_operate: bool,
    /// Active tab.
    pub active: &'static str,
    /// Versioned URLs of the static files.
    pub css: &'static str,
    /// htmx.
    pub htmx: &'static str,
    /// htmx SSE extension.
    pub sse: &'static str,
    /// The dashboard's small script.
    pub js: &'static str,
}

impl Nav {
    /// The frame for `user` on tab `active`.
    pub fn new(user: &User, active: &'static str) -> Self {
        Self {
            user: user.session.username.clone(),
            role: user.session.role.as_str(),
            csrf: user.session.csrf_token.clone(),
            can_operate: user.can_operate(),
            active,
            css: assets::url("app.css"),
            htmx: assets::url("htmx-2.0.11.min.js"),
            sse: assets::url("htmx-ext-sse-2.2.4.min.js"),
            js: assets::url("app.js"),
        }
    }
}

/// One grid cell: a CSS class and a short word.
#[derive(Debug, Clone, Copy)]
pub struct Cell {
    /// `st-…` class.
    pub class: &'static str,
    /// Short label shown in the cell.
    pub label: &'static str,
}

/// The cell of a phase status (none: not reached).
pub fn cell(status: Option<PhaseStatus>) -> Cell {
    match status {
        None | Some(PhaseStatus::Pending) => Cell { class: "st-none", label: "·" },
        Some(PhaseStatus::Running) => Cell { class: "st-running", label: "run" },
        Some(PhaseStatus::Succeeded) => Cell { class: "st-ok", label: "ok" },
        Some(PhaseStatus::Warning) => Cell { class: "st-warn", label: "warn" },
        Some(PhaseStatus::Failed) => Cell { class: "st-fail", label: "fail" },
        Some(PhaseStatus::Skipped) => Cell { class: "st-skip", label: "skip" },
        Some(PhaseStatus::Cancelled) => Cell { class: "st-cancel", label: "cxl" },
    }
}

/// The colour class of a job state (the state's name is always shown beside it).
pub fn job_class(s: JobState) -> &'static str {
    match s {
        JobState::Pending | JobState::Queued => "st-none",
        JobState::Dispatched | JobState::Running => "st-running",
        JobState::Waiting | JobState::Undeliverable => "st-warn",
        JobState::Succeeded => "st-ok",
        JobState::Skipped => "st-skip",
        JobState::Failed | JobState::RolledBack | JobState::Lost => "st-fail",
        JobState::Cancelled | JobState::Retried | JobState::Excluded => "st-cancel",
    }
}

/// The colour class of a rollout state.
pub fn rollout_class(s: RolloutState) -> &'static str {
    match s {
        RolloutState::Draft => "st-none",
        RolloutState::Running => "st-running",
        RolloutState::Paused | RolloutState::AwaitingApproval => "st-warn",
        RolloutState::Finished => "st-ok",
        RolloutState::Cancelling | RolloutState::Cancelled => "st-cancel",
        RolloutState::Aborting | RolloutState::Aborted => "st-fail",
    }
}

/// A rollout's state as a badge: its class and its words. `finished` is green only when
/// every server installed or was skipped; with failed, rolled-back or lost servers it
/// says how many, in the failure colour, and with cancelled or undeliverable ones it is
/// amber, so a glance at the list never reads a partial rollout as a clean one.
#[derive(Debug, Clone)]
pub struct Badge {
    /// `st-…` class.
    pub class: &'static str,
    /// What it says.
    pub label: String,
}

impl Badge {
    /// The badge of a rollout.
    pub fn of(r: &Rollout) -> Self {
        let n = |s: JobState| r.counts.get(&s).copied().unwrap_or(0);
        let failed = n(JobState::Failed) + n(JobState::RolledBack) + n(JobState::Lost);
        let unfinished = n(JobState::Cancelled) + n(JobState::Undeliverable);
        let state = r.state.as_str();
        match r.state {
            RolloutState::Finished if failed > 0 => {
                Self { class: "st-fail", label: format!("{state} · {failed} failed") }
            }
            RolloutState::Finished if unfinished > 0 => {
                Self { class: "st-warn", label: format!("{state} · {unfinished} not installed") }
            }
            s => Self { class: rollout_class(s), label: state.to_owned() },
        }
    }
}

/// A grid row: one server's job.
#[derive(Debug, Clone)]
pub struct Row {
    /// Job id.
    pub job_id: String,
    /// Host name.
    pub hostname: String,
    /// Wave.
    pub wave: u32,
    /// Job state id.
    pub state: &'static str,
    /// Its class.
    pub state_class: &'static str,
    /// Twelve cells, in install order.
    pub cells: Vec<Cell>,
    /// Running: since when its current phase runs (unix ms), and the elapsed time.
    pub running_since: Option<(i64, String)>,
    /// Its running phase is flagged stalled.
    pub stalled: bool,
    /// Which attempt at this server it is.
    pub attempt: u32,
}

impl Row {
    /// The row of a job.
    pub fn of(job: &Job) -> Self {
        Self {
            job_id: job.id.to_string(),
            hostname: job.hostname.clone(),
            wave: job.wave,
            state: job.state.as_str(),
            state_class: job_class(job.state),
            cells: PhaseId::INSTALL.iter().map(|p| cell(job.phases.get(p).map(|s| s.status))).collect(),
            running_since: job
                .current_phase
                .and_then(|p| job.phases.get(&p))
                .filter(|s| job.state == JobState::Running && s.status == PhaseStatus::Running)
                .map(|s| (s.at.timestamp_millis(), duration_ms((Utc::now() - s.at).num_milliseconds().max(0)))),
            stalled: job.stalled.is_some(),
            attempt: job.attempt,
        }
    }
}

/// A rollout's headline numbers.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Jobs.
    pub total: u64,
    /// Succeeded.
    pub succeeded: u64,
    /// Failed, rolled back or lost.
    pub failed: u64,
    /// Waiting for a decision.
    pub waiting: u64,
    /// Dispatched or running.
    pub running: u64,
    /// Not started (pending, queued).
    pub pending: u64,
    /// Cancelled.
    pub cancelled: u64,
    /// Skipped (already on the version).
    pub skipped: u64,
    /// Undeliverable (the agent did not collect its job).
    pub undeliverable: u64,
    /// Percent done (ended jobs), 0–100.
    pub done_pct: u64,
    /// Percent succeeded, for the bar.
    pub ok_pct: u64,
    /// Percent failed, for the bar.
    pub fail_pct: u64,
}

impl Summary {
    /// Counts of a rollout.
    pub fn of(r: &Rollout) -> Self {
        let n = |s: JobState| r.counts.get(&s).copied().unwrap_or(0);
        let total: u64 = r.counts.values().sum();
        let succeeded = n(JobState::Succeeded);
        let failed = n(JobState::Failed) + n(JobState::RolledBack) + n(JobState::Lost);
        let cancelled = n(JobState::Cancelled);
        let (skipped, undeliverable) = (n(JobState::Skipped), n(JobState::Undeliverable));
        let pct = |x: u64| (x * 100).checked_div(total).unwrap_or(0);
        Self {
            total,
            succeeded,
            failed,
            waiting: n(JobState::Waiting),
            running: n(JobState::Dispatched) + n(JobState::Running),
            pending: n(JobState::Pending) + n(JobState::Queued),
            cancelled,
            skipped,
            undeliverable,
            done_pct: pct(succeeded + failed + cancelled + skipped + undeliverable),
            ok_pct: pct(succeeded),
            fail_pct: pct(failed),
        }
    }
}

/// `2026-11-03 14:05:09 UTC`.
pub fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// An optional time, or a dash.
pub fn opt_time(t: Option<DateTime<Utc>>) -> String {
    t.map_or_else(|| "—".to_owned(), time)
}

/// `1.234 s`, `2 min 05 s`.
pub fn duration_ms(ms: i64) -> String {
    if ms < 60_000 {
        format!("{:.1} s", ms as f64 / 1000.0)
    } else {
        format!("{} min {:02} s", ms / 60_000, (ms % 60_000) / 1000)
    }
}

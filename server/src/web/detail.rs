//! The rollout page: headline counts, controls, the panels an operator reads first
//! (decisions waiting, failures with their last log lines, warnings with the CRL
//! remediation), and the grid of servers × the twelve phases.
//!
//! The grid is paginated ([`PAGE_SIZE`] servers a page, filterable by job state), so a
//! 10,000-server rollout ships at most `PAGE_SIZE × 12` cells. The grid and the panels are
//! partials: the page's SSE stream (`live.rs`) says "changed" and htmx fetches them again.

use super::WebResult;
use super::session::User;
use super::view::{Nav, Row, Summary, rollout_class};
use crate::app::AppState;
use crate::error::AppError;
use crate::model::{Job, JobState, Rollout, RolloutId, RolloutState};
use crate::store::JobFilter;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, Query, State};
use fleetup_proto::{DecisionRequest, PhaseId, PhaseStatus};

/// Servers per grid page.
pub const PAGE_SIZE: u64 = 100;
/// Jobs listed per panel.
const PANEL_LIMIT: u64 = 10;
/// Log lines shown per failed server.
const LOG_TAIL: u64 = 8;

/// `?page=&state=`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct GridQuery {
    /// 1-based page.
    pub page: Option<u64>,
    /// Only jobs in this state (`failed` also shows rolled-back and lost? no: exactly this state).
    pub state: Option<String>,
}

/// The grid partial.
#[derive(Debug, Template, WebTemplate)]
#[template(path = "_grid.html")]
pub struct Grid {
    rollout_id: String,
    rows: Vec<Row>,
    phases: Vec<(usize, &'static str, &'static str)>,
    state: String,
    states: Vec<(&'static str, u64, bool)>,
    page: u64,
    pages: u64,
    shown_total: u64,
    query: String,
    prev: Option<String>,
    next: Option<String>,
}

/// A warning shown in the warnings panel.
#[derive(Debug)]
pub struct WarningItem {
    /// Job.
    pub job_id: String,
    /// Host.
    pub hostname: String,
    /// Phase id.
    pub phase: String,
    /// `crl-unreachable`, `prerequisite`, …
    pub code: String,
    /// CRL endpoint, when the warning is about one.
    pub endpoint: Option<String>,
    /// What the probe found (or the whole message).
    pub result: String,
    /// Text to copy.
    pub remediation: Option<String>,
    /// The engine already applied the hosts-file workaround.
    pub applied: Option<String>,
}

/// A failed server.
#[derive(Debug)]
pub struct FailureItem {
    /// Job.
    pub job_id: String,
    /// Host.
    pub hostname: String,
    /// Job state.
    pub state: &'static str,
    /// The phase that failed.
    pub phase: String,
    /// Why.
    pub error: String,
    /// Last log lines, `phase: line`.
    pub lines: Vec<String>,
}

/// An open decision.
#[derive(Debug)]
pub struct DecisionItem {
    /// Job.
    pub job_id: String,
    /// Host.
    pub hostname: String,
    /// Decision id.
    pub id: u32,
    /// Phase title.
    pub phase: String,
    /// Question.
    pub message: String,
    /// `warning` or `files-in-use`.
    pub kind: String,
    /// Allowed answers.
    pub options: Vec<&'static str>,
    /// Remediation text (warnings).
    pub remediation: Option<String>,
    /// Holding processes: (pid, name, files).
    pub processes: Vec<(u32, String, String)>,
}

/// The panels partial.
#[derive(Debug, Template, WebTemplate)]
#[template(path = "_panels.html")]
pub struct Panels {
    nav: Nav,
    r: Rollout,
    class: &'static str,
    sum: Summary,
    package: String,
    controls: Vec<(&'static str, &'static str, bool)>,
    decisions: Vec<DecisionItem>,
    waiting_total: u64,
    failures: Vec<FailureItem>,
    failed_total: u64,
    warnings: Vec<WarningItem>,
    warned_total: u64,
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "rollout.html")]
pub struct Page {
    nav: Nav,
    id: String,
    name: String,
    terminal: bool,
    panels_html: String,
    grid_html: String,
}

fn controls(r: &Rollout) -> Vec<(&'static str, &'static str, bool)> {
    // (action, label, dangerous)
    let failed = [JobState::Failed, JobState::RolledBack, JobState::Lost, JobState::Undeliverable]
        .iter()
        .any(|s| r.counts.get(s).copied().unwrap_or(0) > 0);
    let mut out = Vec::new();
    match r.state {
        RolloutState::Draft => out.push(("start", "Start rollout", false)),
        RolloutState::Running => out.push(("pause", "Pause", false)),
        RolloutState::Paused => out.push(("resume", "Resume", false)),
        RolloutState::AwaitingApproval => {
            out.push(("approve", "Approve next wave", false));
            out.push(("pause", "Pause", false));
        }
        _ => {}
    }
    if !r.state.is_terminal() && !r.state.is_ending() {
        out.push(("cancel", "Cancel rollout", true));
    }
    if failed {
        out.push(("retry-failed", "Retry failed servers", false));
    }
    out
}

/// Builds the grid partial.
pub async fn build_grid(state: &AppState, r: &Rollout, q: &GridQuery) -> WebResult<Grid> {
    let filter_state = q.state.clone().filter(|s| !s.is_empty());
    let state_filter = match &filter_state {
        Some(s) => Some(JobState::parse(s).ok_or_else(|| AppError::BadRequest(format!("unknown job state '{s}'")))?),
        None => None,
    };
    let shown_total = match &filter_state {
        Some(s) => JobState::parse(s).and_then(|s| r.counts.get(&s).copied()).unwrap_or(0),
        None => r.counts.values().sum(),
    };
    let pages = shown_total.div_ceil(PAGE_SIZE).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let filter =
        JobFilter { state: state_filter, offset: (page - 1) * PAGE_SIZE, limit: PAGE_SIZE, ..JobFilter::default() };
    let jobs = state.store.list_jobs(&r.id, &filter).await?.items;
    Ok(Grid {
        rollout_id: r.id.to_string(),
        rows: jobs.iter().map(Row::of).collect(),
        phases: PhaseId::INSTALL.iter().enumerate().map(|(i, p)| (i + 1, p.as_str(), p.title())).collect(),
        states: JobState::ALL
            .iter()
            .map(|s| (s.as_str(), r.counts.get(s).copied().unwrap_or(0), filter_state.as_deref() == Some(s.as_str())))
            .collect(),
        query: page_query(page, filter_state.as_deref()),
        prev: (page > 1).then(|| page_query(page - 1, filter_state.as_deref())),
        next: (page < pages).then(|| page_query(page + 1, filter_state.as_deref())),
        state: filter_state.unwrap_or_default(),
        page,
        pages,
        shown_total,
    })
}

/// The query string of a grid page.
fn page_query(page: u64, state: Option<&str>) -> String {
    format!("page={page}&state={}", state.unwrap_or_default())
}

fn failing_phase(job: &Job) -> String {
    PhaseId::ALL
        .iter()
        .find(|p| job.phases.get(p).is_some_and(|s| s.status == PhaseStatus::Failed))
        .or(job.current_phase.as_ref())
        .map_or_else(|| "—".to_owned(), |p| format!("{} ({})", p.title(), p.as_str()))
}

/// The warnings a job reported, as panel items.
pub fn warning_items(job: &Job) -> Vec<WarningItem> {
    job.warnings
        .iter()
        .map(|w| {
            let message = w["message"].as_str().unwrap_or_default().to_owned();
            let data = &w["data"];
            let (code, remediation) = if let Some(d) = data.get("decision") {
                (d["code"].as_str().unwrap_or("warning").to_owned(), d["remediation"].as_str().map(str::to_owned))
            } else if let Some(d) = data.get("warning") {
                (d["code"].as_str().unwrap_or("warning").to_owned(), d["remediation"].as_str().map(str::to_owned))
            } else {
                ("warning".to_owned(), None)
            };
            let applied = data.get("warning").and_then(|d| d["applied"].as_str()).map(str::to_owned);
            // "CRL endpoint URL is unreachable: PROBLEM[; …]"
            let (endpoint, result) =
                match message.strip_prefix("CRL endpoint ").and_then(|m| m.split_once(" is unreachable: ")) {
                    Some((url, rest)) => {
                        (Some(url.to_owned()), format!("unreachable: {}", rest.split("; ").next().unwrap_or(rest)))
                    }
                    None => (None, message.clone()),
                };
            WarningItem {
                job_id: job.id.to_string(),
                hostname: job.hostname.clone(),
                phase: w["phase"].as_str().unwrap_or_default().to_owned(),
                code,
                endpoint,
                result,
                remediation,
                applied,
            }
        })
        .collect()
}

/// Open decisions of a job, as panel items.
pub async fn decision_items(state: &AppState, job: &Job) -> WebResult<Vec<DecisionItem>> {
    let mut out = Vec::new();
    for d in state.store.list_decisions(&job.id).await? {
        if d.answer.is_some() {
            continue;
        }
        let req: Option<DecisionRequest> = serde_json::from_value(d.request.clone()).ok();
        let (remediation, processes) = match req.as_ref().map(|r| &r.kind) {
            Some(fleetup_proto::DecisionKind::Warning { remediation, .. }) => (remediation.clone(), Vec::new()),
            Some(fleetup_proto::DecisionKind::FilesInUse { processes }) => {
                (None, processes.iter().map(|p| (p.pid, p.name.clone(), p.files.join(", "))).collect())
            }
            None => (None, Vec::new()),
        };
        out.push(DecisionItem {
            job_id: job.id.to_string(),
            hostname: job.hostname.clone(),
            id: d.id,
            phase: d.phase.title().to_owned(),
            message: req.as_ref().map_or_else(String::new, |r| r.message.clone()),
            kind: d.kind.clone(),
            options: req.map_or_else(Vec::new, |r| r.options.iter().map(|o| o.as_str()).collect()),
            remediation,
            processes,
        });
    }
    Ok(out)
}

/// Builds the panels partial.
pub async fn build_panels(state: &AppState, user: &User, r: &Rollout) -> WebResult<Panels> {
    let n = |s: JobState| r.counts.get(&s).copied().unwrap_or(0);
    let mut decisions = Vec::new();
    if n(JobState::Waiting) > 0 {
        let filter = JobFilter { state: Some(JobState::Waiting), limit: PANEL_LIMIT, ..JobFilter::default() };
        for job in state.store.list_jobs(&r.id, &filter).await?.items {
            decisions.extend(decision_items(state, &job).await?);
        }
    }
    let mut failures = Vec::new();
    for s in [JobState::Failed, JobState::RolledBack, JobState::Lost] {
        let left = PANEL_LIMIT.saturating_sub(failures.len() as u64);
        if n(s) == 0 || left == 0 {
            continue;
        }
        let filter = JobFilter { state: Some(s), limit: left, ..JobFilter::default() };
        for job in state.store.list_jobs(&r.id, &filter).await?.items {
            let lines = state
                .store
                .tail_logs(&job.id, LOG_TAIL)
                .await?
                .into_iter()
                .map(|l| format!("{}: {}", l.phase, l.line))
                .collect();
            failures.push(FailureItem {
                phase: failing_phase(&job),
                error: job.error.clone().unwrap_or_default(),
                job_id: job.id.to_string(),
                hostname: job.hostname,
                state: job.state.as_str(),
                lines,
            });
        }
    }
    let (warned, warned_total) = state.store.list_warned_jobs(&r.id, PANEL_LIMIT).await?;
    let warnings = warned.iter().flat_map(warning_items).collect();
    let package = state
        .store
        .get_package(&r.package_id)
        .await
        .map_or_else(|_| r.package_id.to_string(), |p| format!("{} {}", p.name, p.version));
    Ok(Panels {
        nav: Nav::new(user, "rollouts"),
        class: rollout_class(r.state),
        sum: Summary::of(r),
        controls: controls(r),
        package,
        r: r.clone(),
        decisions,
        waiting_total: n(JobState::Waiting),
        failures,
        failed_total: n(JobState::Failed) + n(JobState::RolledBack) + n(JobState::Lost),
        warnings,
        warned_total,
    })
}

/// `GET /rollouts/{id}`.
pub async fn page(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<RolloutId>,
    Query(q): Query<GridQuery>,
) -> WebResult<Page> {
    let r = state.store.get_rollout(&id).await?;
    let grid = build_grid(&state, &r, &q).await?;
    let panels = build_panels(&state, &user, &r).await?;
    let render = |e: askama::Error| AppError::Internal(format!("rendering: {e}"));
    Ok(Page {
        nav: Nav::new(&user, "rollouts"),
        terminal: r.state.is_terminal(),
        name: r.name.clone(),
        id: r.id.to_string(),
        panels_html: panels.render().map_err(render)?,
        grid_html: grid.render().map_err(render)?,
    })
}

/// `GET /rollouts/{id}/grid`: the grid partial (htmx).
pub async fn grid(
    State(state): State<AppState>,
    _user: User,
    Path(id): Path<RolloutId>,
    Query(q): Query<GridQuery>,
) -> WebResult<Grid> {
    let r = state.store.get_rollout(&id).await?;
    build_grid(&state, &r, &q).await
}

/// `GET /rollouts/{id}/panels`: headline, controls and panels (htmx).
pub async fn panels(State(state): State<AppState>, user: User, Path(id): Path<RolloutId>) -> WebResult<Panels> {
    let r = state.store.get_rollout(&id).await?;
    build_panels(&state, &user, &r).await
}

//! The rollout page: headline counts, controls, the panels an operator reads first
//! (decisions waiting, failures with their last log lines, warnings with the CRL
//! remediation), and the grid of servers × the twelve phases.
//!
//! The grid is paginated ([`PAGE_SIZE`] servers a page, filterable by job state), so a
//! 10,000-server rollout ships at most `PAGE_SIZE × 12` cells. The grid and the panels are
//! partials: the page's SSE stream (`live.rs`) says "changed" and htmx fetches them again.

use super::groups::{self, Group, Member, Panel, Remediation};
use super::session::User;
use super::view::{Badge, Nav, Row, Summary, duration_ms};
use super::{WebResult, form_pairs};
use crate::app::AppState;
use crate::domain::decide::DecisionFilter;
use crate::error::AppError;
use crate::model::{Job, JobId, JobState, Rollout, RolloutId, RolloutState};
use crate::ops;
use crate::store::{JobFilter, StoredWarning, WarnedJob};
use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Redirect, Response};
use chrono::Utc;
use fleetup_proto::{DecisionAnswer, DecisionRequest, PhaseId};

/// Servers per grid page.
pub const PAGE_SIZE: u64 = 100;
/// Groups shown per panel (the biggest; the rest are counted).
const GROUPS_SHOWN: usize = 10;
/// Servers per page of a group.
const MEMBERS_PAGE: u64 = 20;
/// Log lines shown per failed server.
const LOG_TAIL: u64 = 8;

/// `?page=&state=`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct GridQuery {
    /// 1-based page.
    pub page: Option<u64>,
    /// Only jobs in this state (exactly this state).
    pub state: Option<String>,
    /// Only jobs of this wave (0 or absent: every wave).
    pub wave: Option<u32>,
    /// The job a search jumped to (its row is marked).
    pub found: Option<String>,
    /// A search by host name or labels (the page only).
    pub find: Option<String>,
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
    /// The wave filter (0: none).
    wave: u32,
    /// The job a search jumped to, or empty.
    found: String,
}

/// A warning shown on the server page.
#[derive(Debug)]
pub struct WarningItem {
    /// Phase id.
    pub phase: String,
    /// `crl-unreachable`, `prerequisite`, …
    pub code: String,
    /// What it says.
    pub title: String,
    /// How to fix it.
    pub remediation: Option<Remediation>,
    /// The engine already applied the hosts-file workaround.
    pub applied: Option<String>,
}

/// An open decision of one job (the server page).
#[derive(Debug)]
pub struct DecisionItem {
    /// Job.
    pub job_id: String,
    /// Decision id.
    pub id: u32,
    /// Phase title.
    pub phase: String,
    /// Question.
    pub message: String,
    /// `warning` or `files-in-use`.
    pub kind: String,
    /// Allowed answers: (answer, button label).
    pub options: Vec<(&'static str, &'static str)>,
    /// Remediation (warnings).
    pub remediation: Option<Remediation>,
    /// Holding processes: (pid, name, files).
    pub processes: Vec<(u32, String, String)>,
}

/// A group as a panel shows it: the cause, its count, the first page of its servers.
#[derive(Debug)]
pub struct GroupView {
    /// The group (its members: every server).
    pub g: Group,
    /// The first page of its servers.
    pub members: Members,
    /// A sample server's last log lines (failures).
    pub lines: Vec<String>,
    /// The bulk answers: (answer, button label, confirmation sentence if destructive).
    pub answers: Vec<(&'static str, String, Option<String>)>,
}

/// A page of a group's servers (the partial the group's pager swaps).
#[derive(Debug, Template, WebTemplate)]
#[template(path = "_members.html")]
pub struct Members {
    rollout_id: String,
    panel: &'static str,
    key: String,
    items: Vec<Member>,
    page: u64,
    pages: u64,
    total: u64,
    /// A files-in-use group: each server with the processes holding its files.
    holders: bool,
}

impl Members {
    /// The first server listed.
    pub fn first_host(&self) -> &str {
        self.items.first().map_or("", |m| m.hostname.as_str())
    }
}

/// Builds page `page` (1-based) of a group's servers.
fn members(rollout_id: &RolloutId, g: &Group, page: u64) -> Members {
    let total = g.count();
    let pages = total.div_ceil(MEMBERS_PAGE).max(1);
    let page = page.clamp(1, pages);
    let items =
        g.members.iter().skip(((page - 1) * MEMBERS_PAGE) as usize).take(MEMBERS_PAGE as usize).cloned().collect();
    Members {
        rollout_id: rollout_id.to_string(),
        panel: g.panel.as_str(),
        key: g.key.clone(),
        items,
        page,
        pages,
        total,
        holders: g.is_files_in_use(),
    }
}

/// The bulk answers of a decision group, with what each does ("on all 3334", or the host
/// name when the group is one server).
fn bulk_answers(g: &Group) -> Vec<(&'static str, String, Option<String>)> {
    let n = g.count();
    let (on, of) = match g.members.as_slice() {
        [one] => (format!("on {}", one.hostname), one.hostname.clone()),
        _ => (format!("on all {n}"), format!("all {n} server(s) of this group")),
    };
    g.options
        .iter()
        .map(|o| {
            let (label, confirm) = match o {
                DecisionAnswer::Continue => (format!("Continue {on}"), None),
                DecisionAnswer::Cancel => (
                    format!("Cancel the install {on}"),
                    Some(format!("Cancel the install on {of}? Each ends without installing.")),
                ),
                DecisionAnswer::Retry => (format!("Check again {on}"), None),
                DecisionAnswer::Ignore => (format!("Replace anyway {on} (restart needed)"), None),
                DecisionAnswer::Exit => (
                    format!("End the install {on}"),
                    Some(format!("End the install on {of}? Its services are restarted on the old version.")),
                ),
            };
            (o.as_str(), label, confirm)
        })
        .collect()
}

/// The panels partial.
#[derive(Debug, Template, WebTemplate)]
#[template(path = "_panels.html")]
pub struct Panels {
    nav: Nav,
    r: Rollout,
    badge: Badge,
    sum: Summary,
    package: String,
    controls: Vec<Control>,
    decisions: Vec<GroupView>,
    waiting_total: u64,
    failures: Vec<GroupView>,
    failed_total: u64,
    warnings: Vec<GroupView>,
    warned_total: u64,
    running: Option<RunningNow>,
}

/// The longest-running phase of the running servers.
#[derive(Debug)]
pub struct RunningNow {
    /// Phase title.
    pub phase: &'static str,
    /// Elapsed, as text.
    pub elapsed: String,
    /// When it started (unix ms), for the page's clock.
    pub since_ms: i64,
}

/// A rollout control: a form button, with a confirmation when it cannot be undone.
#[derive(Debug)]
pub struct Control {
    /// Action id.
    pub action: &'static str,
    /// Button label.
    pub label: &'static str,
    /// What it will do, asked before it is done (destructive actions).
    pub confirm: Option<String>,
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "rollout.html")]
pub struct Page {
    nav: Nav,
    id: String,
    name: String,
    terminal: bool,
    /// The live stamp the page was rendered from (the stream compares against it).
    stamp: String,
    /// When it was rendered (unix ms), for "updated N s ago".
    rendered_ms: i64,
    panels_html: String,
    mosaic_html: String,
    grid_html: String,
}

fn controls(r: &Rollout) -> Vec<Control> {
    let n = |s: JobState| r.counts.get(&s).copied().unwrap_or(0);
    let failed = n(JobState::Failed) + n(JobState::RolledBack) + n(JobState::Lost) + n(JobState::Undeliverable) > 0;
    let plain = |action, label| Control { action, label, confirm: None };
    let mut out = Vec::new();
    match r.state {
        RolloutState::Draft => out.push(plain("start", "Start rollout")),
        RolloutState::Running => out.push(plain("pause", "Pause")),
        RolloutState::Paused => out.push(plain("resume", "Resume")),
        RolloutState::AwaitingApproval => {
            out.push(plain("approve", "Approve next wave"));
            out.push(plain("pause", "Pause"));
        }
        _ => {}
    }
    if !r.state.is_terminal() && !r.state.is_ending() {
        out.push(Control { action: "cancel", label: "Cancel rollout", confirm: Some(cancel_question(r)) });
    }
    if failed {
        out.push(plain("retry-failed", "Retry failed servers"));
    }
    out
}

/// What cancelling a rollout does, said before it is done.
pub fn cancel_question(r: &Rollout) -> String {
    let n = |s: JobState| r.counts.get(&s).copied().unwrap_or(0);
    let unstarted = n(JobState::Pending) + n(JobState::Queued);
    let active = n(JobState::Dispatched) + n(JobState::Running) + n(JobState::Waiting);
    format!(
        "Cancel the rollout \u{201c}{}\u{201d}? {unstarted} server(s) not started yet will not be installed; \
         {active} installing now are asked to stop. This cannot be undone.",
        r.name
    )
}

/// Builds the grid partial.
pub async fn build_grid(state: &AppState, r: &Rollout, q: &GridQuery) -> WebResult<Grid> {
    let filter_state = q.state.clone().filter(|s| !s.is_empty());
    let state_filter = match &filter_state {
        Some(s) => Some(JobState::parse(s).ok_or_else(|| AppError::BadRequest(format!("unknown job state '{s}'")))?),
        None => None,
    };
    let wave = q.wave.unwrap_or(0);
    let shown_total = match (&filter_state, wave) {
        (_, w) if w > 0 => {
            let filter = super::mosaic::Filter { state: filter_state.clone(), wave: Some(w) };
            filter.apply(state.store.mosaic(&r.id).await?)?.len() as u64
        }
        (Some(s), _) => JobState::parse(s).and_then(|s| r.counts.get(&s).copied()).unwrap_or(0),
        (None, _) => r.counts.values().sum(),
    };
    let pages = shown_total.div_ceil(PAGE_SIZE).max(1);
    let page = q.page.unwrap_or(1).clamp(1, pages);
    let filter = JobFilter {
        state: state_filter,
        wave: (wave > 0).then_some(wave),
        offset: (page - 1) * PAGE_SIZE,
        limit: PAGE_SIZE,
        ..JobFilter::default()
    };
    let jobs = state.store.list_jobs(&r.id, &filter).await?.items;
    Ok(Grid {
        rollout_id: r.id.to_string(),
        rows: jobs.iter().map(Row::of).collect(),
        phases: PhaseId::INSTALL.iter().enumerate().map(|(i, p)| (i + 1, p.as_str(), p.title())).collect(),
        states: JobState::ALL
            .iter()
            .map(|s| (s.as_str(), r.counts.get(s).copied().unwrap_or(0), filter_state.as_deref() == Some(s.as_str())))
            .collect(),
        query: page_query(page, filter_state.as_deref(), wave),
        prev: (page > 1).then(|| page_query(page - 1, filter_state.as_deref(), wave)),
        next: (page < pages).then(|| page_query(page + 1, filter_state.as_deref(), wave)),
        wave,
        found: q.found.clone().unwrap_or_default(),
        state: filter_state.unwrap_or_default(),
        page,
        pages,
        shown_total,
    })
}

/// The query string of a grid page.
fn page_query(page: u64, state: Option<&str>, wave: u32) -> String {
    format!("page={page}&state={}&wave={wave}", state.unwrap_or_default())
}

/// The warnings a job reported, for its page.
pub fn warning_items(job: &Job) -> Vec<WarningItem> {
    let warned = WarnedJob {
        job_id: job.id.clone(),
        hostname: job.hostname.clone(),
        state: job.state,
        warnings: job.warnings.iter().map(StoredWarning::of).collect(),
    };
    groups::warning_groups(std::slice::from_ref(&warned))
        .into_iter()
        .map(|g| WarningItem {
            phase: g.phase,
            code: g.code,
            title: g.title,
            remediation: g.remediation,
            applied: g.applied,
        })
        .collect()
}

/// Open decisions of a job, for its page.
pub async fn decision_items(state: &AppState, job: &Job) -> WebResult<Vec<DecisionItem>> {
    let mut out = Vec::new();
    for d in state.store.list_decisions(&job.id).await? {
        if d.answer.is_some() {
            continue;
        }
        let req: Option<DecisionRequest> = serde_json::from_value(d.request.clone()).ok();
        let (remediation, processes) = match req.as_ref().map(|r| &r.kind) {
            Some(fleetup_proto::DecisionKind::Warning { remediation, .. }) => {
                (remediation.as_deref().map(Remediation::of), Vec::new())
            }
            Some(fleetup_proto::DecisionKind::FilesInUse { processes }) => {
                (None, processes.iter().map(|p| (p.pid, p.name.clone(), p.files.join(", "))).collect())
            }
            None => (None, Vec::new()),
        };
        out.push(DecisionItem {
            job_id: job.id.to_string(),
            id: d.id,
            phase: d.phase.title().to_owned(),
            message: req.as_ref().map_or_else(String::new, |r| r.message.clone()),
            kind: d.kind.clone(),
            options: req.map_or_else(Vec::new, |r| r.options.iter().map(|o| (o.as_str(), answer_label(*o))).collect()),
            remediation,
            processes,
        });
    }
    Ok(out)
}

/// What a decision's button says on a server's page.
const fn answer_label(a: DecisionAnswer) -> &'static str {
    match a {
        DecisionAnswer::Continue => "Continue",
        DecisionAnswer::Cancel => "Cancel the install",
        DecisionAnswer::Retry => "Check again",
        DecisionAnswer::Ignore => "Replace anyway (restart needed)",
        DecisionAnswer::Exit => "End the install",
    }
}

/// Every group of a panel of the rollout.
async fn panel_groups(state: &AppState, id: &RolloutId, panel: Panel) -> WebResult<Vec<Group>> {
    Ok(match panel {
        Panel::Decisions => groups::decision_groups(&state.store.open_decisions(id).await?),
        Panel::Warnings => groups::warning_groups(&state.store.warned_jobs(id).await?),
        Panel::Failures => groups::failure_groups(&state.store.failed_jobs(id).await?),
    })
}

/// The first [`GROUPS_SHOWN`] groups of a panel, as shown, and how many servers it has.
async fn panel_views(state: &AppState, r: &Rollout, panel: Panel, skip: bool) -> WebResult<(Vec<GroupView>, u64)> {
    if skip {
        return Ok((Vec::new(), 0));
    }
    let all = panel_groups(state, &r.id, panel).await?;
    // A server is in one failure group and may have several decisions or warnings.
    let servers = if panel == Panel::Failures {
        all.iter().map(Group::count).sum()
    } else {
        let mut ids: Vec<&JobId> = all.iter().flat_map(|g| g.members.iter().map(|m| &m.job_id)).collect();
        ids.sort();
        ids.dedup();
        ids.len() as u64
    };
    let mut out = Vec::new();
    for g in all.into_iter().take(GROUPS_SHOWN) {
        let lines = if panel == Panel::Failures {
            state
                .store
                .tail_logs(&g.members[0].job_id, LOG_TAIL)
                .await?
                .into_iter()
                .map(|l| format!("{}: {}", l.phase, l.line))
                .collect()
        } else {
            Vec::new()
        };
        let answers = if panel == Panel::Decisions { bulk_answers(&g) } else { Vec::new() };
        out.push(GroupView { members: members(&r.id, &g, 1), g, lines, answers });
    }
    Ok((out, servers))
}

/// Builds the panels partial.
pub async fn build_panels(state: &AppState, user: &User, r: &Rollout) -> WebResult<Panels> {
    let n = |s: JobState| r.counts.get(&s).copied().unwrap_or(0);
    let no_failures = n(JobState::Failed) + n(JobState::RolledBack) + n(JobState::Lost) == 0;
    let running = async {
        if n(JobState::Running) == 0 {
            return Ok(None);
        }
        Ok::<_, AppError>(state.store.running_phases(&r.id, 1).await?.into_iter().next().map(|p| RunningNow {
            phase: p.phase.title(),
            elapsed: duration_ms((Utc::now() - p.since).num_milliseconds().max(0)),
            since_ms: p.since.timestamp_millis(),
        }))
    };
    let package = async {
        state
            .store
            .get_package(&r.package_id)
            .await
            .map_or_else(|_| r.package_id.to_string(), |p| format!("{} {}", p.name, p.version))
    };
    // Each panel is its own read of up to every server's row: read them side by side (the
    // pool's connections), so the panels cost the slowest read, not the sum of them.
    let ((decisions, _), (failures, failed_total), (warnings, warned_total), running, package) = tokio::try_join!(
        panel_views(state, r, Panel::Decisions, n(JobState::Waiting) == 0),
        panel_views(state, r, Panel::Failures, no_failures),
        panel_views(state, r, Panel::Warnings, false),
        running,
        async { Ok(package.await) },
    )?;
    Ok(Panels {
        nav: Nav::new(user, "rollouts"),
        badge: Badge::of(r),
        sum: Summary::of(r),
        controls: controls(r),
        package,
        r: r.clone(),
        decisions,
        waiting_total: n(JobState::Waiting),
        failures,
        failed_total,
        warnings,
        warned_total,
        running,
    })
}

/// `?page=`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct PageQuery {
    /// 1-based page.
    pub page: Option<u64>,
}

/// `GET /rollouts/{id}/group/{panel}/{key}?page=`: a page of one group's servers.
pub async fn group_members(
    State(state): State<AppState>,
    _user: User,
    Path((id, panel, key)): Path<(RolloutId, String, String)>,
    Query(q): Query<PageQuery>,
) -> WebResult<Members> {
    let panel = Panel::parse(&panel)
        .ok_or_else(|| AppError::NotFound(format!("no panel '{panel}': use decisions, warnings or failures")))?;
    let all = panel_groups(&state, &id, panel).await?;
    let g = all.iter().find(|g| g.key == key).ok_or_else(|| {
        AppError::NotFound(
            "this group has no server left (its servers were answered or moved on); reload the rollout".into(),
        )
    })?;
    Ok(members(&id, g, q.page.unwrap_or(1)))
}

/// `POST /rollouts/{id}/decisions` (`kind`, `code`, `matching`, `answer`, `remember`): answers
/// every open decision of a group at once, through the same use case as the API's bulk
/// answer; with `remember=on` the answer stands for the rest of the rollout.
pub async fn answer_group(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<RolloutId>,
    body: Bytes,
) -> WebResult<Response> {
    let form = form_pairs(&body);
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone()).filter(|v| !v.is_empty());
    let answer = super::jobs::answer_of(&form)?;
    let filter = DecisionFilter {
        kind: get("kind")
            .ok_or_else(|| AppError::BadRequest("the form lacks the decision kind; reload the rollout page".into()))?,
        code: get("code"),
        matching: get("matching"),
        holders: get("holders"),
    };
    if let Some(page) =
        super::confirm::ask(&user, &format!("/rollouts/{id}/decisions"), &format!("/rollouts/{id}"), &form)
    {
        return Ok(page);
    }
    let remember = get("remember").as_deref() == Some("on");
    ops::jobs::answer_all(&state, &user.actor(), &id, &filter, answer, remember).await?;
    Ok(Redirect::to(&format!("/rollouts/{id}")).into_response())
}

/// `GET /rollouts/{id}`.
pub async fn page(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<RolloutId>,
    Query(q): Query<GridQuery>,
) -> WebResult<Response> {
    use super::mosaic::{Filter, Search};
    let mut found = None;
    if let Some(query) = q.find.as_deref().filter(|f| !f.trim().is_empty()) {
        match super::mosaic::find(&state, &id, query).await? {
            // One server: its page of the unfiltered grid, its row marked and scrolled to.
            Search::Jump(job, index) => {
                let page = index as u64 / PAGE_SIZE + 1;
                return Ok(Redirect::to(&format!("/rollouts/{id}?page={page}&found={job}#job-{job}")).into_response());
            }
            Search::List(f) => found = Some(f),
        }
    }
    // The stamp first: a change after it is read shows up in the stream, which starts from it.
    let stamp = super::live::stamp(&state, &id).await?;
    let r = state.store.get_rollout(&id).await?;
    let filter = Filter { state: q.state.clone(), wave: q.wave };
    // Three independent reads of the same rollout: side by side.
    let (grid, mosaic, panels) = tokio::try_join!(
        build_grid(&state, &r, &q),
        super::mosaic::build(&state, &r, &filter, found),
        build_panels(&state, &user, &r),
    )?;
    let render = |e: askama::Error| AppError::Internal(format!("rendering: {e}"));
    Ok(Page {
        nav: Nav::new(&user, "rollouts"),
        terminal: r.state.is_terminal(),
        stamp,
        rendered_ms: Utc::now().timestamp_millis(),
        name: r.name.clone(),
        id: r.id.to_string(),
        panels_html: panels.render().map_err(render)?,
        mosaic_html: mosaic.render().map_err(render)?,
        grid_html: grid.render().map_err(render)?,
    }
    .into_response())
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

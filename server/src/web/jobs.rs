//! The server page (one job): a timeline of the phases with their durations and the outage
//! highlighted, warnings, open decisions with their buttons, the phase logs, and the
//! server's previous installs. Answering a decision and cancelling the job go through the
//! same store methods as the API.

use super::detail::{DecisionItem, WarningItem, decision_items, warning_items};
use super::session::User;
use super::view::{Cell, Nav, cell, duration_ms, job_class, opt_time};
use super::{WebResult, confirm, form_pairs};
use crate::app::AppState;
use crate::error::AppError;
use crate::model::{InstalledRollup, Job, JobId, RolloutId};
use crate::ops;
use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};
use fleetup_proto::{DecisionAnswer, PhaseId};

/// One phase on the timeline.
#[derive(Debug)]
pub struct Step {
    /// 1-based position (0 for rollback).
    pub number: usize,
    /// Id.
    pub id: &'static str,
    /// Title.
    pub title: &'static str,
    /// Status cell.
    pub cell: Cell,
    /// Status word.
    pub status: String,
    /// When it started.
    pub started: String,
    /// How long it took.
    pub duration: String,
    /// Inside the outage (services stopped).
    pub outage: bool,
    /// Latest message.
    pub message: String,
}

/// Log lines of one phase.
#[derive(Debug)]
pub struct PhaseLog {
    /// Phase id.
    pub phase: String,
    /// Lines (`HH:MM:SS line`).
    pub lines: Vec<String>,
}

/// Another job of this server.
#[derive(Debug)]
pub struct OtherJob {
    /// Job id.
    pub id: JobId,
    /// Rollout id.
    pub rollout_id: RolloutId,
    /// State.
    pub state: &'static str,
    /// Its class.
    pub class: &'static str,
    /// Ended.
    pub finished: String,
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "job.html")]
pub struct JobPage {
    nav: Nav,
    job: Job,
    state_class: &'static str,
    rollout_name: String,
    steps: Vec<Step>,
    outage: String,
    dispatched: String,
    finished: String,
    warnings: Vec<WarningItem>,
    decisions: Vec<DecisionItem>,
    logs: Vec<PhaseLog>,
    installed: Vec<InstalledRollup>,
    others: Vec<OtherJob>,
    can_cancel: bool,
    /// The guided-failure answers this job allows now: (action, button, confirmation).
    guided: Vec<(&'static str, String, Option<String>)>,
}

/// The guided-failure buttons of a job in a rollout in `rollout` (none for a viewer).
fn guided_buttons(
    job: &Job,
    rollout: crate::model::RolloutState,
    user: &User,
) -> Vec<(&'static str, String, Option<String>)> {
    use crate::domain::job::{JobAction, guided_refused};
    if !user.can_operate() {
        return Vec::new();
    }
    let host = &job.hostname;
    JobAction::ALL
        .into_iter()
        .filter(|a| guided_refused(*a, job.state, rollout).is_none())
        .map(|a| match a {
            JobAction::Retry => ("retry", format!("Retry {host} now"), None),
            JobAction::Skip => (
                "skip",
                format!("Skip {host}'s failure"),
                Some(format!("Count {host} as done? Its failure no longer counts toward the gate or the error threshold; it stays on the version it has.")),
            ),
            JobAction::Exclude => (
                "exclude",
                format!("Exclude {host} from this rollout"),
                Some(format!("Take {host} out of this rollout? It gets nothing more from it and counts nowhere.")),
            ),
        })
        .collect()
}

/// `GET /jobs/{id}`.
pub async fn page(State(state): State<AppState>, user: User, Path(id): Path<JobId>) -> WebResult<JobPage> {
    let job = state.store.get_job(&id).await?;
    let rollout = state.store.get_rollout(&job.rollout_id).await?;
    let rollout_state = rollout.state;
    let events = state.store.list_events(&id, 0, 5000).await?;
    let outage_phases = [
        PhaseId::StopServices,
        PhaseId::ValidateFiles,
        PhaseId::UpdateFiles,
        PhaseId::PostPrecompile,
        PhaseId::StartServices,
    ];
    let mut steps = Vec::new();
    let phases = PhaseId::INSTALL.iter().copied().chain(std::iter::once(PhaseId::Rollback));
    for (i, p) in phases.enumerate() {
        let mine: Vec<_> = events.iter().filter(|e| e.phase == p).collect();
        if p == PhaseId::Rollback && mine.is_empty() {
            continue;
        }
        let status = job.phases.get(&p).map(|s| s.status);
        let (started, duration) = match (mine.first(), mine.last()) {
            (Some(a), Some(b)) => {
                (a.at.format("%H:%M:%S").to_string(), duration_ms((b.at - a.at).num_milliseconds().max(0)))
            }
            _ => (String::new(), String::new()),
        };
        steps.push(Step {
            number: if p == PhaseId::Rollback { 0 } else { i + 1 },
            id: p.as_str(),
            title: p.title(),
            cell: cell(status),
            status: status.map_or_else(|| "not reached".to_owned(), |s| s.as_str().to_owned()),
            started,
            duration,
            outage: outage_phases.contains(&p),
            message: mine.last().map(|e| e.message.clone()).unwrap_or_default(),
        });
    }
    let mut logs: Vec<PhaseLog> = Vec::new();
    for l in state.store.list_logs(&id, 0, 5000).await? {
        let line = format!("{} {}", l.at.format("%H:%M:%S"), l.line);
        match logs.last_mut() {
            Some(last) if last.phase == l.phase.as_str() => last.lines.push(line),
            _ => logs.push(PhaseLog { phase: l.phase.as_str().to_owned(), lines: vec![line] }),
        }
    }
    let agent = state.store.get_agent(&job.agent_id).await?;
    let others = state
        .store
        .list_agent_jobs(&job.agent_id, 20)
        .await?
        .into_iter()
        .filter(|j| j.id != job.id)
        .map(|j| OtherJob {
            class: job_class(j.state),
            state: j.state.as_str(),
            finished: opt_time(j.finished_at),
            id: j.id,
            rollout_id: j.rollout_id,
        })
        .collect();
    Ok(JobPage {
        nav: Nav::new(&user, "rollouts"),
        state_class: job_class(job.state),
        rollout_name: rollout.name,
        steps,
        outage: job.outage_secs.map_or_else(|| "not measured yet".to_owned(), |s| format!("{s:.1} s")),
        dispatched: opt_time(job.dispatched_at),
        finished: opt_time(job.finished_at),
        warnings: warning_items(&job),
        decisions: decision_items(&state, &job).await?,
        logs,
        installed: agent.installed.into_iter().rev().collect(),
        others,
        can_cancel: !job.state.is_terminal() && user.can_operate(),
        guided: guided_buttons(&job, rollout_state, &user),
        job,
    })
}

/// `POST /jobs/{id}/decision` with `answer` (and `decision_id`, `back`).
pub async fn decide(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<JobId>,
    body: Bytes,
) -> WebResult<Response> {
    let form = form_pairs(&body);
    let get = |k: &str| form.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
    let answer = answer_of(&form)?;
    let decision_id = get("decision_id").and_then(|d| d.parse::<u32>().ok());
    if let Some(page) = confirm::ask(&user, &format!("/jobs/{id}/decision"), &format!("/jobs/{id}"), &form) {
        return Ok(page);
    }
    let job = ops::jobs::answer_decision(&state, &user.actor(), &id, decision_id, answer).await?;
    Ok(Redirect::to(&back(get("back"), &format!("/rollouts/{}", job.rollout_id))).into_response())
}

/// `POST /jobs/{id}/cancel` (confirmed: see `confirm.rs`).
pub async fn cancel(
    State(state): State<AppState>,
    user: User,
    Path(id): Path<JobId>,
    body: Bytes,
) -> WebResult<Response> {
    let form = form_pairs(&body);
    let back = format!("/jobs/{id}");
    if let Some(page) = confirm::ask(&user, &format!("/jobs/{id}/cancel"), &back, &form) {
        return Ok(page);
    }
    ops::jobs::cancel(&state, &user.actor(), &id).await?;
    Ok(Redirect::to(&back).into_response())
}

/// `POST /jobs/{id}/guide/{action}` (retry, skip, exclude): the guided-failure answer, after
/// a confirmation where the button asks one; shows the job afterwards (a retry: the new
/// attempt).
pub async fn guide(
    State(state): State<AppState>,
    user: User,
    Path((id, action)): Path<(JobId, String)>,
    body: Bytes,
) -> WebResult<Response> {
    let action = crate::domain::job::JobAction::parse(&action)
        .ok_or_else(|| AppError::NotFound(format!("no job action '{action}': use retry, skip or exclude")))?;
    let form = form_pairs(&body);
    let back = format!("/jobs/{id}");
    if let Some(page) = confirm::ask(&user, &format!("/jobs/{id}/guide/{}", action.as_str()), &back, &form) {
        return Ok(page);
    }
    let job = ops::jobs::guide(&state, &user.actor(), &id, action).await?;
    Ok(Redirect::to(&format!("/jobs/{}", job.id)).into_response())
}

/// The form's `answer`, or an error saying to choose one.
pub fn answer_of(form: &[(String, String)]) -> Result<DecisionAnswer, AppError> {
    form.iter()
        .find(|(n, _)| n == "answer")
        .map(|(_, v)| v.clone())
        .ok_or_else(|| AppError::BadRequest("choose an answer".into()))?
        .parse()
        .map_err(AppError::BadRequest)
}

/// A local path to go back to, or `default`.
fn back(back: Option<String>, default: &str) -> String {
    match back {
        Some(b) if b.starts_with('/') && !b.starts_with("//") => b,
        _ => default.to_owned(),
    }
}

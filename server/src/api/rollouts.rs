//! Rollouts: stage (`POST /rollouts`), read, and drive (`start`, `pause`, `resume`,
//! `cancel`, `approve`, `retry-failed`). Planning (targets → waves → jobs) happens here at
//! creation, so an operator sees which server falls in which wave before starting.

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::model::{Job, JobState, Rollout, RolloutSpec};
use crate::scheduler;
use crate::store::{JobFilter, NewAudit, NewRollout, RolloutAction, StoreError};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rollouts", get(list).post(create))
        .route("/rollouts/{id}", get(show))
        .route("/rollouts/{id}/jobs", get(jobs))
        .route("/rollouts/{id}/start", post(start))
        .route("/rollouts/{id}/pause", post(pause))
        .route("/rollouts/{id}/resume", post(resume))
        .route("/rollouts/{id}/cancel", post(cancel))
        .route("/rollouts/{id}/approve", post(approve))
        .route("/rollouts/{id}/retry-failed", post(retry_failed))
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<Rollout>>> {
    Ok(Json(state.store.list_rollouts().await?))
}

async fn show(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Rollout>> {
    Ok(Json(state.store.get_rollout(&id).await?))
}

async fn jobs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(page): ApiQuery<super::Page>,
) -> ApiResult<Json<Vec<Job>>> {
    if let Some(s) = &page.state
        && JobState::parse(s).is_none()
    {
        return Err(ApiError::BadRequest(format!("unknown job state '{s}'")));
    }
    let filter = JobFilter { state: page.state.clone(), wave: page.wave, offset: page.offset, limit: page.limit() };
    Ok(Json(state.store.list_jobs(&id, &filter).await?))
}

fn invalid(m: impl Into<String>) -> ApiError {
    ApiError::Unprocessable(m.into())
}

/// Checks a plan and turns it into waves and jobs.
/// A checked rollout spec, planned into waves.
#[derive(Debug)]
pub(crate) struct Plan {
    /// Sizes of the waves.
    pub wave_sizes: Vec<u64>,
    /// (agent id, wave) in dispatch order.
    pub jobs: Vec<(String, u32)>,
    /// Every agent (the dashboard's preview names them).
    pub agents: Vec<crate::model::Agent>,
}

/// Checks a spec and plans its waves: targets in agent order, wave sizes from
/// `scheduler::wave_sizes`. `POST /rollouts` and the dashboard's staging form (and its
/// preview) both plan through here.
pub(crate) async fn plan(state: &AppState, spec: &RolloutSpec) -> ApiResult<Plan> {
    if spec.name.trim().is_empty() {
        return Err(invalid("name must not be empty"));
    }
    if spec.concurrency == 0 {
        return Err(invalid("concurrency must be at least 1"));
    }
    if spec.waves.is_empty() {
        return Err(invalid("waves must list at least one wave, e.g. [1, \"100%\"]"));
    }
    scheduler::check_threshold(&spec.success_threshold).map_err(invalid)?;
    if let Some(t) = &spec.error_threshold {
        scheduler::check_threshold(t).map_err(invalid)?;
    }
    if let Some(w) = &spec.maintenance_window {
        scheduler::check_window(w).map_err(invalid)?;
    }
    match state.store.get_package(&spec.package_id).await {
        Ok(_) => {}
        Err(StoreError::NotFound(_)) => {
            return Err(invalid(format!(
                "package {} does not exist; upload it first (POST /api/v1/packages)",
                spec.package_id
            )));
        }
        Err(e) => return Err(e.into()),
    }
    let agents = state.store.list_agents().await?;
    let targets: Vec<String> = match (&spec.targets.agents, &spec.targets.labels) {
        (Some(ids), None) => {
            let mut out = Vec::new();
            for id in ids {
                match agents.iter().find(|a| &a.id == id) {
                    Some(a) if !a.revoked => {
                        if !out.contains(id) {
                            out.push(id.clone());
                        }
                    }
                    Some(_) => return Err(invalid(format!("agent {id} is revoked"))),
                    None => return Err(invalid(format!("agent {id} does not exist"))),
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
            return Err(invalid(
                "targets must have exactly one of \"agents\" (a list of agent ids) or \"labels\" (a selector)",
            ));
        }
    };
    if targets.is_empty() {
        return Err(invalid("the targets select no agent"));
    }
    let wave_sizes = scheduler::wave_sizes(targets.len() as u64, &spec.waves).map_err(invalid)?;
    let mut jobs = Vec::with_capacity(targets.len());
    let mut it = targets.into_iter();
    for (i, size) in wave_sizes.iter().enumerate() {
        for agent in it.by_ref().take(*size as usize) {
            jobs.push((agent, i as u32 + 1));
        }
    }
    Ok(Plan { wave_sizes, jobs, agents })
}

async fn create_from(
    state: &AppState,
    caller: &Caller,
    spec: RolloutSpec,
    retry_of: Option<String>,
) -> ApiResult<(StatusCode, Json<Rollout>)> {
    let Plan { wave_sizes, jobs, .. } = plan(state, &spec).await?;
    let id = crate::store::sql::new_id();
    let lease_secs = spec.lease_secs.unwrap_or(state.config.lease_secs).max(1);
    let audit = NewAudit::new(
        &caller.actor,
        if retry_of.is_some() { "rollout.retry-failed" } else { "rollout.create" },
        "rollout",
        &id,
        serde_json::json!({ "spec": spec, "retry_of": retry_of }),
    );
    let new = NewRollout {
        id,
        spec,
        wave_sizes,
        jobs,
        lease_ms: i64::try_from(lease_secs).unwrap_or(60) * 1000,
        retry_of,
        created_by: caller.actor.clone(),
    };
    Ok((StatusCode::CREATED, Json(state.store.create_rollout(&new, &audit).await?)))
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(spec): ApiJson<RolloutSpec>,
) -> ApiResult<(StatusCode, Json<Rollout>)> {
    create_from(&state, &caller, spec, None).await
}

async fn act(state: &AppState, caller: &Caller, id: &str, action: RolloutAction) -> ApiResult<Json<Rollout>> {
    let audit =
        NewAudit::new(&caller.actor, &format!("rollout.{}", action.as_str()), "rollout", id, serde_json::json!({}));
    let (rollout, wake) = state.store.rollout_action(id, action, &audit).await?;
    state.wake_agents(&wake).await;
    state.scheduler_kick.notify_one();
    Ok(Json(rollout))
}

async fn start(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Rollout>> {
    act(&state, &caller, &id, RolloutAction::Start).await
}
async fn pause(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Rollout>> {
    act(&state, &caller, &id, RolloutAction::Pause).await
}
async fn resume(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Rollout>> {
    act(&state, &caller, &id, RolloutAction::Resume).await
}
async fn cancel(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Rollout>> {
    act(&state, &caller, &id, RolloutAction::Cancel).await
}
async fn approve(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<Json<Rollout>> {
    act(&state, &caller, &id, RolloutAction::Approve).await
}

async fn retry_failed(
    State(state): State<AppState>,
    caller: Caller,
    ApiPath(id): ApiPath<String>,
) -> ApiResult<(StatusCode, Json<Rollout>)> {
    let old = state.store.get_rollout(&id).await?;
    let mut agents = Vec::new();
    for s in [JobState::Failed, JobState::RolledBack, JobState::Lost] {
        let filter = JobFilter { state: Some(s.as_str().into()), wave: None, offset: 0, limit: u64::MAX >> 1 };
        agents.extend(state.store.list_jobs(&id, &filter).await?.into_iter().map(|j| j.agent_id));
    }
    if agents.is_empty() {
        return Err(ApiError::Conflict(format!("rollout {id} has no failed, rolled-back or lost job to retry")));
    }
    let mut spec = old.spec.clone();
    spec.name = format!("{} (retry of failed)", old.spec.name);
    spec.targets = crate::model::Targets { agents: Some(agents), labels: None };
    create_from(&state, &caller, spec, Some(id)).await
}

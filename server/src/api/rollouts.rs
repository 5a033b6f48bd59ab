//! Rollouts: stage (`POST /rollouts`), read, and drive (`start`, `pause`, `resume`,
//! `cancel`, `approve`, `retry-failed`). Planning (targets → waves → jobs) happens here at
//! creation, so an operator sees which server falls in which wave before starting.

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::model::{JobState, Rollout, RolloutSpec};
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

/// `GET /rollouts/{id}/jobs` query: filters, page size, the cursor, the view.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobsQuery {
    /// Only this state.
    pub state: Option<String>,
    /// Only this wave.
    pub wave: Option<u32>,
    /// Page size (default 500, at most 5000).
    pub limit: Option<u64>,
    /// The `next` of the previous page.
    pub cursor: Option<String>,
    /// `full` (default) or `summary`.
    pub view: Option<String>,
    /// Refused: listings page by cursor (read here only to say so).
    pub offset: Option<String>,
}

/// A page of jobs and the cursor of the next page (`None` on the last).
#[derive(Debug, serde::Serialize)]
pub struct JobsPage<T> {
    /// The jobs, in (wave, position) order.
    pub jobs: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next: Option<String>,
}

async fn jobs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<JobsQuery>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    if q.offset.is_some() {
        return Err(ApiError::BadRequest(
            "offset paging is not supported: this listing pages by cursor; pass the \"next\" value of the previous \
             page as ?cursor= (omit it for the first page)"
                .into(),
        ));
    }
    if let Some(s) = &q.state
        && JobState::parse(s).is_none()
    {
        return Err(ApiError::BadRequest(format!("unknown job state '{s}'")));
    }
    let after = q.cursor.as_deref().map(|c| cursor::decode(&id, c)).transpose()?;
    let filter = JobFilter {
        state: q.state.clone(),
        wave: q.wave,
        after,
        offset: 0,
        limit: q.limit.unwrap_or(500).clamp(1, 5000),
    };
    let next = |k: Option<crate::store::JobKey>| k.map(|k| cursor::encode(&id, k));
    Ok(match q.view.as_deref().unwrap_or("full") {
        "full" => {
            let page = state.store.list_jobs(&id, &filter).await?;
            Json(JobsPage { jobs: page.items, next: next(page.next) }).into_response()
        }
        "summary" => {
            let page = state.store.list_job_summaries(&id, &filter).await?;
            Json(JobsPage { jobs: page.items, next: next(page.next) }).into_response()
        }
        other => {
            return Err(ApiError::BadRequest(format!("unknown view '{other}': use \"full\" or \"summary\"")));
        }
    })
}

/// The opaque page cursor: the (wave, position) of the last job of the previous page, bound
/// to the rollout by a checksum. Not a secret (a forged cursor only picks where a listing
/// the caller may read anyway starts); the checksum makes an altered, truncated or
/// other-rollout cursor a clear 400 instead of a silently wrong page.
pub(crate) mod cursor {
    use crate::error::ApiError;
    use crate::store::JobKey;
    use sha2::{Digest as _, Sha256};

    fn check(rollout: &str, body: &str) -> String {
        let digest = Sha256::digest(format!("fleetup jobs cursor|{rollout}|{body}").as_bytes());
        hex::encode(&digest[..8])
    }

    /// The cursor of the page after `key`.
    pub fn encode(rollout: &str, key: JobKey) -> String {
        let body = format!("{}.{}", key.wave, key.position);
        hex::encode(format!("{body}.{}", check(rollout, &body)))
    }

    /// The key a cursor starts after; 400 with a sentence when it is not one of ours.
    pub fn decode(rollout: &str, cursor: &str) -> Result<JobKey, ApiError> {
        let bad = || {
            ApiError::BadRequest(format!(
                "invalid cursor '{cursor}': pass the \"next\" value of the previous page of this rollout's \
                 jobs unchanged, or omit cursor to start from the first page"
            ))
        };
        let text = hex::decode(cursor).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad)?;
        let mut parts = text.split('.');
        let (Some(wave), Some(position), Some(sum), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(bad());
        };
        if sum != check(rollout, &format!("{wave}.{position}")) {
            return Err(bad());
        }
        Ok(JobKey { wave: wave.parse().map_err(|_| bad())?, position: position.parse().map_err(|_| bad())? })
    }
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
    let agents = failed_agents(&state, &id).await?;
    if agents.is_empty() {
        return Err(ApiError::Conflict(format!("rollout {id} has no failed, rolled-back or lost job to retry")));
    }
    let mut spec = old.spec.clone();
    spec.name = format!("{} (retry of failed)", old.spec.name);
    spec.targets = crate::model::Targets { agents: Some(agents), labels: None };
    create_from(&state, &caller, spec, Some(id)).await
}

/// The agents of a rollout's failed, rolled-back and lost jobs, in listing order (what
/// `retry-failed` targets, here and on the dashboard).
pub(crate) async fn failed_agents(state: &AppState, id: &str) -> Result<Vec<String>, StoreError> {
    let mut agents = Vec::new();
    for s in [JobState::Failed, JobState::RolledBack, JobState::Lost] {
        let filter = JobFilter { state: Some(s.as_str().into()), limit: u64::MAX >> 1, ..JobFilter::default() };
        agents.extend(state.store.list_job_summaries(id, &filter).await?.items.into_iter().map(|j| j.agent_id));
    }
    Ok(agents)
}

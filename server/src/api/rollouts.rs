//! Rollouts: stage (`POST /rollouts`), read, and drive (`start`, `pause`, `resume`,
//! `cancel`, `approve`, `retry-failed`). Planning (targets → waves → jobs) happens at
//! staging ([`crate::ops::rollouts::stage`]), so an operator sees which server falls in
//! which wave before starting.

use crate::app::AppState;
use crate::domain::rollout::RolloutAction;
use crate::error::{ApiJson, ApiPath, ApiQuery, ApiResult, AppError};
use crate::model::{JobState, Rollout, RolloutId, RolloutSpec};
use crate::ops::{self, Actor};
use crate::store::JobFilter;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/rollouts", get(list).post(create))
        .route("/rollouts/{id}", get(show))
        .route("/rollouts/{id}/jobs", get(jobs))
        .route("/rollouts/{id}/retry-failed", post(retry_failed))
        .route("/rollouts/{id}/decisions", post(decide_all))
        .route("/rollouts/{id}/{action}", post(act))
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<Rollout>>> {
    Ok(Json(state.store.list_rollouts().await?))
}

async fn show(State(state): State<AppState>, ApiPath(id): ApiPath<RolloutId>) -> ApiResult<Json<Rollout>> {
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
    ApiPath(id): ApiPath<RolloutId>,
    ApiQuery(q): ApiQuery<JobsQuery>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse as _;
    if q.offset.is_some() {
        return Err(AppError::BadRequest(
            "offset paging is not supported: this listing pages by cursor; pass the \"next\" value of the previous \
             page as ?cursor= (omit it for the first page)"
                .into(),
        ));
    }
    let state_filter = match &q.state {
        Some(s) => Some(JobState::parse(s).ok_or_else(|| AppError::BadRequest(format!("unknown job state '{s}'")))?),
        None => None,
    };
    let after = q.cursor.as_deref().map(|c| cursor::decode(id.as_str(), c)).transpose()?;
    let filter =
        JobFilter { state: state_filter, wave: q.wave, after, offset: 0, limit: q.limit.unwrap_or(500).clamp(1, 5000) };
    let next = |k: Option<crate::store::JobKey>| k.map(|k| cursor::encode(id.as_str(), k));
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
            return Err(AppError::BadRequest(format!("unknown view '{other}': use \"full\" or \"summary\"")));
        }
    })
}

/// The opaque page cursor: the (wave, position) of the last job of the previous page, bound
/// to the rollout by a checksum. Not a secret (a forged cursor only picks where a listing
/// the caller may read anyway starts); the checksum makes an altered, truncated or
/// other-rollout cursor a clear 400 instead of a silently wrong page.
pub(crate) mod cursor {
    use crate::error::AppError;
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
    pub fn decode(rollout: &str, cursor: &str) -> Result<JobKey, AppError> {
        let bad = || {
            AppError::BadRequest(format!(
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

async fn create(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(spec): ApiJson<RolloutSpec>,
) -> ApiResult<(StatusCode, Json<Rollout>)> {
    Ok((StatusCode::CREATED, Json(ops::rollouts::stage(&state, &actor, spec, None).await?)))
}

/// `POST /rollouts/{id}/{start|pause|resume|cancel|approve}`.
async fn act(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath((id, action)): ApiPath<(RolloutId, String)>,
) -> ApiResult<Json<Rollout>> {
    let action = RolloutAction::parse(&action).ok_or_else(|| {
        AppError::NotFound(format!(
            "no rollout action '{action}': use start, pause, resume, approve, cancel or retry-failed"
        ))
    })?;
    Ok(Json(ops::rollouts::act(&state, &actor, &id, action).await?))
}

async fn retry_failed(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(id): ApiPath<RolloutId>,
) -> ApiResult<(StatusCode, Json<Rollout>)> {
    Ok((StatusCode::CREATED, Json(ops::rollouts::retry_failed(&state, &actor, &id).await?)))
}

/// Body of `POST /rollouts/{id}/decisions`: the filter and the answer.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct DecideAll {
    /// `warning` or `files-in-use`.
    kind: String,
    /// Only warnings with this code.
    #[serde(default)]
    code: Option<String>,
    /// Only questions whose text names this (an endpoint, a prerequisite).
    #[serde(default)]
    matching: Option<String>,
    /// Only files-in-use questions with exactly these holders, pids aside
    /// (`tail: etc/demo.conf; java: lib/a.jar`).
    #[serde(default)]
    holders: Option<String>,
    /// The answer for every one of them.
    answer: fleetup_proto::DecisionAnswer,
    /// Keep the answer standing: every such decision asked later in the rollout gets it too.
    #[serde(default)]
    remember: bool,
}

/// `POST /rollouts/{id}/decisions`: answers every open decision the filter covers.
async fn decide_all(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(id): ApiPath<RolloutId>,
    ApiJson(body): ApiJson<DecideAll>,
) -> ApiResult<Json<serde_json::Value>> {
    let filter = crate::domain::decide::DecisionFilter {
        kind: body.kind,
        code: body.code,
        matching: body.matching,
        holders: body.holders,
    };
    let answered = ops::jobs::answer_all(&state, &actor, &id, &filter, body.answer, body.remember).await?;
    Ok(Json(serde_json::json!({ "answered": answered })))
}

//! Rollouts: stage (`POST /rollouts`), read, and drive (`start`, `pause`, `resume`,
//! `cancel`, `approve`, `retry-failed`). Planning (targets → waves → jobs) happens at
//! staging ([`crate::ops::rollouts::stage`]), so an operator sees which server falls in
//! which wave before starting.

use super::paging;
use crate::app::AppState;
use crate::domain::rollout::RolloutAction;
use crate::error::{ApiJson, ApiPath, ApiQuery, ApiResult, AppError};
use crate::model::{JobState, Role, Rollout, RolloutId, RolloutSpec, RolloutState};
use crate::ops::{self, Actor};
use crate::routes::{Access, Routes};
use crate::store::{JobFilter, JobKey, RolloutFilter};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

pub fn routes() -> Routes {
    let (read, operate) = (Access::Token(Role::Viewer), Access::Token(Role::Operator));
    Routes::new()
        .get("/rollouts", read, list)
        .post("/rollouts", operate, create)
        .get("/rollouts/{id}", read, show)
        .get("/rollouts/{id}/jobs", read, jobs)
        .post("/rollouts/{id}/retry-failed", operate, retry_failed)
        .post("/rollouts/{id}/decisions", operate, decide_all)
        .post("/rollouts/{id}/{action}", operate, act)
}

/// `GET /rollouts` query: filters, page size, cursor.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct RolloutsQuery {
    /// Only this state.
    state: Option<String>,
    /// `key=value, …`: only rollouts whose target labels carry every pair.
    label: Option<String>,
    /// Created at or after (RFC 3339).
    created_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Created before (RFC 3339).
    created_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Page size, 1 to 5000 (default 100).
    limit: Option<u64>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Refused (400): listings page by cursor.
    offset: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/rollouts", operation_id = "listRollouts", tag = "rollouts", params(RolloutsQuery),
    responses((status = 200, description = "A page of rollouts, newest first", body = fleetup_proto::api::Page<Rollout>)))]
/// `GET /rollouts`: newest first, paged by cursor.
async fn list(
    State(state): State<AppState>,
    ApiQuery(q): ApiQuery<RolloutsQuery>,
) -> ApiResult<Json<fleetup_proto::api::Page<Rollout>>> {
    let rollout_state = match q.state.as_deref() {
        Some(s) => Some(
            RolloutState::parse(s)
                .ok_or_else(|| AppError::BadRequest(format!("unknown rollout state '{s}': use one of {}", states())))?,
        ),
        None => None,
    };
    let labels =
        crate::domain::labels::parse_selector(q.label.as_deref().unwrap_or("")).map_err(AppError::BadRequest)?;
    let limit = super::page_limit(q.limit, 100)?;
    let ms = |t: Option<chrono::DateTime<chrono::Utc>>| t.map(|t| t.timestamp_millis());
    let scope = format!("{:?}|{labels:?}|{:?}|{:?}", q.state, ms(q.created_after), ms(q.created_before));
    let after = paging::after(&paging::ROLLOUTS, &scope, q.cursor.as_deref(), q.offset.as_deref())?
        .map(|key| paging::pair(&key))
        .transpose()?;
    let filter = RolloutFilter {
        state: rollout_state,
        labels,
        created_after: ms(q.created_after),
        created_before: ms(q.created_before),
        after,
    };
    let items = state.store.rollouts_page(&filter, limit).await?;
    Ok(Json(paging::page(items, limit, &paging::ROLLOUTS, &scope, |r| {
        vec![r.created_at.timestamp_millis().to_string(), r.id.to_string()]
    })))
}

/// Every rollout state, for a refusal's sentence.
fn states() -> String {
    RolloutState::ALL.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
}

/// A rollout: state, waves, counts per job state; with its `ETag`.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}", operation_id = "getRollout", tag = "rollouts", params(("id" = RolloutId, Path)),
    responses((status = 200, description = "The rollout", body = Rollout, headers(("ETag" = String, description = "The rollout's version, for If-Match")))))]
async fn show(State(state): State<AppState>, ApiPath(id): ApiPath<RolloutId>) -> ApiResult<axum::response::Response> {
    Ok(tagged(state.store.get_rollout(&id).await?))
}

/// A rollout answered with its entity tag as `ETag`.
fn tagged(r: Rollout) -> axum::response::Response {
    use axum::response::IntoResponse as _;
    let etag = axum::http::HeaderValue::from_str(&r.etag).ok();
    let mut resp = Json(r).into_response();
    if let Some(etag) = etag {
        resp.headers_mut().insert(axum::http::header::ETAG, etag);
    }
    resp
}

/// `GET /rollouts/{id}/jobs` query: filters, page size, the cursor, the view.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
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
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct JobsPage<T> {
    /// The jobs, in (wave, position) order.
    pub jobs: Vec<T>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next: Option<String>,
}

/// A page of a rollout's jobs in (wave, position) order.
#[utoipa::path(get, path = "/api/v1/rollouts/{id}/jobs", operation_id = "listRolloutJobs", tag = "rollouts", params(("id" = RolloutId, Path), JobsQuery),
    responses((status = 200, description = "A page of jobs: `view=full` gives Job items, `view=summary` JobSummary items", body = JobsOrSummaries)))]
async fn jobs(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<RolloutId>,
    ApiQuery(q): ApiQuery<JobsQuery>,
) -> ApiResult<Json<JobsOrSummaries>> {
    let state_filter = match &q.state {
        Some(s) => Some(JobState::parse(s).ok_or_else(|| AppError::BadRequest(format!("unknown job state '{s}'")))?),
        None => None,
    };
    let after = paging::after(&paging::JOBS, id.as_str(), q.cursor.as_deref(), q.offset.as_deref())?
        .map(|key| paging::pair(&key).map(|(wave, position)| JobKey { wave, position }))
        .transpose()?;
    let filter =
        JobFilter { state: state_filter, wave: q.wave, after, offset: 0, limit: super::page_limit(q.limit, 500)? };
    let next = |k: Option<JobKey>| {
        k.map(|k| paging::encode(&paging::JOBS, id.as_str(), &[k.wave.to_string(), k.position.to_string()]))
    };
    Ok(match q.view.as_deref().unwrap_or("full") {
        "full" => {
            let page = state.store.list_jobs(&id, &filter).await?;
            Json(JobsOrSummaries::Full(JobsPage { jobs: page.items, next: next(page.next) }))
        }
        "summary" => {
            let page = state.store.list_job_summaries(&id, &filter).await?;
            Json(JobsOrSummaries::Summary(JobsPage { jobs: page.items, next: next(page.next) }))
        }
        other => {
            return Err(AppError::BadRequest(format!("unknown view '{other}': use \"full\" or \"summary\"")));
        }
    })
}

#[utoipa::path(post, path = "/api/v1/rollouts", operation_id = "createRollout", tag = "rollouts",
    params(("Idempotency-Key" = Option<String>, Header, description = "At most once per key: a retry with the same key and body gets the first answer")),
    request_body = RolloutSpec, responses((status = 201, description = "Staged as a draft, with its plan", body = Rollout),
        (status = 422, description = "The spec cannot be planned (no targets, a downgrade, …)", body = fleetup_proto::problem::Problem, content_type = "application/problem+json")))]
/// `POST /rollouts`: stages a draft; with `Idempotency-Key`, at most once per key.
async fn create(
    State(state): State<AppState>,
    actor: Actor,
    headers: axum::http::HeaderMap,
    ApiJson(spec): ApiJson<RolloutSpec>,
) -> ApiResult<axum::response::Response> {
    let stage = async { Ok((StatusCode::CREATED, ops::rollouts::stage(&state, &actor, spec.clone(), None).await?)) };
    super::idempotency::once(&state, &actor, &headers, "POST /rollouts", &spec, stage).await
}

#[utoipa::path(post, path = "/api/v1/rollouts/{id}/{action}", operation_id = "actOnRollout", tag = "rollouts",
    params(("id" = RolloutId, Path), ("action" = String, Path, description = "start, pause, resume, cancel or approve", pattern = "^(start|pause|resume|cancel|approve)$"),
        ("If-Match" = Option<String>, Header, description = "Only if the rollout is still this version (its ETag)")),
    responses((status = 200, description = "The rollout after the action", body = Rollout, headers(("ETag" = String, description = "The rollout's version, for If-Match"))),
        (status = 409, description = "Not possible in the rollout's state", body = fleetup_proto::problem::Problem, content_type = "application/problem+json"),
        (status = 412, description = "If-Match is not the rollout's current ETag", body = fleetup_proto::problem::Problem, content_type = "application/problem+json")))]
/// `POST /rollouts/{id}/{start|pause|resume|cancel|approve}`.
/// With `If-Match: ETAG`, only if the rollout is still that version (else 412).
async fn act(
    State(state): State<AppState>,
    actor: Actor,
    headers: axum::http::HeaderMap,
    ApiPath((id, action)): ApiPath<(RolloutId, String)>,
) -> ApiResult<axum::response::Response> {
    let action = RolloutAction::parse(&action).ok_or_else(|| {
        AppError::NotFound(format!(
            "no rollout action '{action}': use start, pause, resume, approve, cancel or retry-failed"
        ))
    })?;
    let if_match = match headers.get(axum::http::header::IF_MATCH) {
        Some(v) => Some(v.to_str().map_err(|_| {
            AppError::BadRequest("If-Match must be the ETag of GET /rollouts/{id}, as sent (ASCII)".into())
        })?),
        None => None,
    };
    Ok(tagged(ops::rollouts::act(&state, &actor, &id, action, if_match).await?))
}

#[utoipa::path(post, path = "/api/v1/rollouts/{id}/retry-failed", operation_id = "retryFailed", tag = "rollouts",
    params(("id" = RolloutId, Path), ("Idempotency-Key" = Option<String>, Header, description = "At most once per key")),
    responses((status = 201, description = "A new draft rollout of the failed, rolled-back, lost and undeliverable servers", body = Rollout)))]
/// `POST /rollouts/{id}/retry-failed`: a new rollout of the failed servers; with
/// `Idempotency-Key`, at most once per key.
async fn retry_failed(
    State(state): State<AppState>,
    actor: Actor,
    headers: axum::http::HeaderMap,
    ApiPath(id): ApiPath<RolloutId>,
) -> ApiResult<axum::response::Response> {
    let retry = async { Ok((StatusCode::CREATED, ops::rollouts::retry_failed(&state, &actor, &id).await?)) };
    let route = format!("POST /rollouts/{id}/retry-failed");
    super::idempotency::once(&state, &actor, &headers, &route, &serde_json::Value::Null, retry).await
}

/// Body of `POST /rollouts/{id}/decisions`: the filter and the answer.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
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

#[utoipa::path(post, path = "/api/v1/rollouts/{id}/decisions", operation_id = "answerAllDecisions", tag = "rollouts", params(("id" = RolloutId, Path)),
    request_body = DecideAll, responses((status = 200, description = "How many decisions were answered", body = Answered)))]
/// `POST /rollouts/{id}/decisions`: answers every open decision the filter covers.
async fn decide_all(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(id): ApiPath<RolloutId>,
    ApiJson(body): ApiJson<DecideAll>,
) -> ApiResult<Json<Answered>> {
    let filter = crate::domain::decide::DecisionFilter {
        kind: body.kind,
        code: body.code,
        matching: body.matching,
        holders: body.holders,
    };
    let answered = ops::jobs::answer_all(&state, &actor, &id, &filter, body.answer, body.remember).await?;
    Ok(Json(Answered { answered }))
}

/// The answer of `POST /rollouts/{id}/decisions`.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct Answered {
    /// Open decisions answered.
    answered: u64,
}

/// The items of a page of `GET /rollouts/{id}/jobs`: jobs, or their summaries.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
#[serde(untagged)]
enum JobsOrSummaries {
    /// `view=full`.
    Full(JobsPage<fleetup_proto::api::Job>),
    /// `view=summary`.
    Summary(JobsPage<fleetup_proto::api::JobSummary>),
}

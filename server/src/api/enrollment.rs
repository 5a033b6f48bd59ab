//! `POST /enrollment-tokens` (admin): a token agents enroll with, with labels, an expiry
//! and a number of uses. `GET /enrollment-tokens` lists them (never the secrets).

use crate::app::AppState;
use crate::auth::{Caller, hash_secret, new_secret};
use crate::error::{ApiError, ApiJson, ApiResult};
use crate::model::{EnrollmentToken, Role, now_ms};
use crate::store::{NewAudit, NewEnrollmentToken};
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use std::collections::BTreeMap;

pub fn router() -> Router<AppState> {
    Router::new().route("/enrollment-tokens", get(list).post(create))
}

/// Body of `POST /enrollment-tokens`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateToken {
    /// A name for people.
    #[serde(default)]
    name: Option<String>,
    /// Labels given to every agent enrolled with the token.
    #[serde(default)]
    labels: BTreeMap<String, String>,
    /// Lifetime in seconds (default 24 h).
    #[serde(default)]
    expires_in_secs: Option<u64>,
    /// How many agents may use it (default unlimited).
    #[serde(default)]
    max_uses: Option<u64>,
}

#[derive(Debug, serde::Serialize)]
struct Created {
    #[serde(flatten)]
    token: EnrollmentToken,
    /// The secret, shown once.
    secret: String,
}

async fn create(
    State(state): State<AppState>,
    caller: Caller,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    caller.require(Role::Admin)?;
    if body.max_uses == Some(0) {
        return Err(ApiError::Unprocessable("max_uses must be at least 1 (leave it out for unlimited)".into()));
    }
    let secret = new_secret("fle");
    let id = crate::store::sql::new_id();
    let expires = now_ms()
        + i64::try_from(body.expires_in_secs.unwrap_or(86_400).min(10 * 365 * 86_400)).unwrap_or(i64::MAX / 2) * 1000;
    let new = NewEnrollmentToken {
        id: id.clone(),
        name: body.name.unwrap_or_else(|| format!("enroll-{}", &id[id.len() - 6..])),
        token_hash: hash_secret(&secret),
        labels: body.labels,
        expires_at: Some(expires),
        max_uses: body.max_uses,
    };
    let audit = NewAudit::new(
        &caller.actor,
        "enrollment-token.create",
        "enrollment-token",
        &id,
        serde_json::json!({ "name": new.name, "labels": new.labels, "max_uses": new.max_uses, "expires_at": expires }),
    );
    let token = state.store.create_enrollment_token(&new, &audit).await?;
    Ok((StatusCode::CREATED, Json(Created { token, secret })))
}

async fn list(State(state): State<AppState>, caller: Caller) -> ApiResult<Json<Vec<EnrollmentToken>>> {
    caller.require(Role::Admin)?;
    Ok(Json(state.store.list_enrollment_tokens().await?))
}

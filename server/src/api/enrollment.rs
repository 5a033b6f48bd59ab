//! `POST /enrollment-tokens` (admin): a token agents enroll with, with labels, an expiry
//! and a number of uses. `GET /enrollment-tokens` lists them (never the secrets).

use crate::app::AppState;
use crate::error::{ApiJson, ApiResult};
use crate::model::{EnrollmentToken, Role};
use crate::ops::access::EnrollmentOptions;
use crate::ops::{self, Actor};
use crate::routes::{Access, Routes};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use std::collections::BTreeMap;

pub fn routes() -> Routes {
    Routes::new().get("/enrollment-tokens", Access::Token(Role::Admin), list).post(
        "/enrollment-tokens",
        Access::Token(Role::Admin),
        create,
    )
}

/// Body of `POST /enrollment-tokens`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
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

/// A new enrollment token and its secret.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
struct Created {
    #[serde(flatten)]
    token: EnrollmentToken,
    /// The secret, shown once.
    secret: String,
}

/// Creates an enrollment token; the secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/enrollment-tokens", operation_id = "createEnrollmentToken", tag = "enrollment",
    request_body = CreateToken, responses((status = 201, description = "Created", body = Created)))]
async fn create(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(body): ApiJson<CreateToken>,
) -> ApiResult<(StatusCode, Json<Created>)> {
    let options = EnrollmentOptions {
        name: body.name,
        labels: body.labels,
        expires_in_secs: body.expires_in_secs,
        max_uses: body.max_uses,
    };
    let (token, secret) = ops::access::create_enrollment_token(&state, &actor, options).await?;
    Ok((StatusCode::CREATED, Json(Created { token, secret })))
}

/// Lists enrollment tokens (never the secrets).
#[utoipa::path(get, path = "/api/v1/enrollment-tokens", operation_id = "listEnrollmentTokens", tag = "enrollment",
    responses((status = 200, description = "Every enrollment token", body = Vec<EnrollmentToken>)))]
async fn list(State(state): State<AppState>, actor: Actor) -> ApiResult<Json<Vec<EnrollmentToken>>> {
    actor.require(Role::Admin)?;
    Ok(Json(state.store.list_enrollment_tokens().await?))
}

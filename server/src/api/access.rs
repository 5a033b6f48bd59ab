//! The token lifecycle over HTTP (issue 16, item 4), admin only: `GET/POST /tokens`,
//! `DELETE /tokens/{id}` (revoke), `DELETE /enrollment-tokens/{id}` (revoke), `GET /users`,
//! `POST /users/{name}/disable|enable|password`. The use cases ([`crate::ops::access`]) check
//! the role again and write the audit record.

use super::paging;
use crate::app::AppState;
use crate::error::{ApiJson, ApiPath, ApiQuery, ApiResult};
use crate::model::{ApiToken, CreatedApiToken, NewApiToken, NewPassword, Page, Role, TokenId, User};
use crate::ops::{self, Actor};
use crate::routes::{Access, Routes};
use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;

pub fn routes() -> Routes {
    let admin = Access::Token(Role::Admin);
    Routes::new()
        .get("/tokens", admin, list_tokens)
        .post("/tokens", admin, create_token)
        .delete("/tokens/{id}", admin, revoke_token)
        .delete("/enrollment-tokens/{id}", admin, revoke_enrollment_token)
        .get("/users", admin, list_users)
        .post("/users/{name}/disable", admin, disable_user)
        .post("/users/{name}/enable", admin, enable_user)
        .post("/users/{name}/password", admin, reset_password)
}

/// Paging of `GET /tokens` and `GET /users`.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PageQuery {
    /// Page size, 1 to 5000 (default 500).
    limit: Option<u64>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Refused (400): listings page by cursor.
    offset: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/tokens", operation_id = "listApiTokens", tag = "access", params(PageQuery),
    responses((status = 200, description = "A page of API tokens, newest first, never their secrets", body = Page<ApiToken>)))]
/// `GET /tokens`: every API token, revoked and expired ones included, newest first.
async fn list_tokens(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<ApiToken>>> {
    actor.require(Role::Admin)?;
    let limit = super::page_limit(q.limit, 500)?;
    let before = paging::after(&paging::TOKENS, "", q.cursor.as_deref(), q.offset.as_deref())?
        .map(|key| paging::pair(&key))
        .transpose()?;
    let items = state.store.api_tokens_page(before, limit + 1).await?;
    Ok(Json(paging::page(items, limit, &paging::TOKENS, "", |t| {
        vec![t.created_at.timestamp_millis().to_string(), t.id.to_string()]
    })))
}

/// Creates an API token; the secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/tokens", operation_id = "createApiToken", tag = "access",
    request_body = NewApiToken, responses((status = 201, description = "Created, with its secret", body = CreatedApiToken)))]
async fn create_token(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(body): ApiJson<NewApiToken>,
) -> ApiResult<(StatusCode, Json<CreatedApiToken>)> {
    let created = ops::access::issue_api_token(&state.store, &actor, &body).await?;
    Ok((StatusCode::CREATED, Json(created)))
}

/// Revokes an API token: it is refused (`token-revoked`) from the next request on.
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", operation_id = "revokeApiToken", tag = "access",
    params(("id" = TokenId, Path, description = "The token's id (from GET /tokens)")),
    responses((status = 204, description = "Revoked")))]
async fn revoke_token(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(id): ApiPath<TokenId>,
) -> ApiResult<StatusCode> {
    ops::access::revoke_api_token(&state.store, &actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Revokes an enrollment token: agents cannot enroll with it any more (those enrolled keep
/// working).
#[utoipa::path(delete, path = "/api/v1/enrollment-tokens/{id}", operation_id = "revokeEnrollmentToken", tag = "enrollment",
    params(("id" = TokenId, Path, description = "The enrollment token's id")),
    responses((status = 204, description = "Revoked")))]
async fn revoke_enrollment_token(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(id): ApiPath<TokenId>,
) -> ApiResult<StatusCode> {
    ops::access::revoke_enrollment_token(&state.store, &actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/api/v1/users", operation_id = "listUsers", tag = "access", params(PageQuery),
    responses((status = 200, description = "A page of dashboard users, by name", body = Page<User>)))]
/// `GET /users`: the dashboard's users, disabled ones included, by login name.
async fn list_users(
    State(state): State<AppState>,
    actor: Actor,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> ApiResult<Json<Page<User>>> {
    actor.require(Role::Admin)?;
    let limit = super::page_limit(q.limit, 500)?;
    let after = paging::after(&paging::USERS, "", q.cursor.as_deref(), q.offset.as_deref())?
        .and_then(|key| key.into_iter().next());
    let items = state.store.users_page(after, limit + 1).await?;
    Ok(Json(paging::page(items, limit, &paging::USERS, "", |u| vec![u.username.clone()])))
}

/// Disables a user: they cannot log in, and their sessions end at once.
#[utoipa::path(post, path = "/api/v1/users/{name}/disable", operation_id = "disableUser", tag = "access",
    params(("name" = String, Path, description = "The user's login name")),
    responses((status = 200, description = "The user, disabled", body = User)))]
async fn disable_user(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(ops::access::set_user_disabled(&state.store, &actor, &name, true).await?))
}

/// Enables a disabled user again.
#[utoipa::path(post, path = "/api/v1/users/{name}/enable", operation_id = "enableUser", tag = "access",
    params(("name" = String, Path, description = "The user's login name")),
    responses((status = 200, description = "The user, enabled", body = User)))]
async fn enable_user(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(name): ApiPath<String>,
) -> ApiResult<Json<User>> {
    Ok(Json(ops::access::set_user_disabled(&state.store, &actor, &name, false).await?))
}

/// Sets a user's password: the old one stops working and the user's sessions end.
#[utoipa::path(post, path = "/api/v1/users/{name}/password", operation_id = "resetUserPassword", tag = "access",
    params(("name" = String, Path, description = "The user's login name")),
    request_body = NewPassword, responses((status = 204, description = "Set; the user's sessions ended")))]
async fn reset_password(
    State(state): State<AppState>,
    actor: Actor,
    ApiPath(name): ApiPath<String>,
    ApiJson(body): ApiJson<NewPassword>,
) -> ApiResult<StatusCode> {
    ops::access::reset_password(&state.store, &actor, &name, &body.password).await?;
    Ok(StatusCode::NO_CONTENT)
}

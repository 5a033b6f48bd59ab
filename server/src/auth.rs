//! Bearer tokens: API tokens with roles for people and automation, secret tokens for agents.
//!
//! Deny by default: [`crate::routes::guard`] runs before every handler and authenticates
//! the caller its route's rule names ([`api_caller`] with the rule's minimum role,
//! [`agent_caller`]); the use cases check their role again ([`Actor::require`]). Tokens
//! are stored as sha256 hashes (they are long random secrets, so a fast hash is enough;
//! passwords are another matter).

use crate::app::AppState;
use crate::error::AppError;
use crate::model::{AgentId, Role};
use crate::ops::Actor;
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest as _, Sha256};

/// A new random secret with a readable prefix.
pub fn new_secret(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    format!("{prefix}_{}", hex::encode(bytes))
}

/// The stored form of a secret.
pub fn hash_secret(secret: &str) -> String {
    hex::encode(Sha256::digest(secret.as_bytes()))
}

fn bearer(parts: &Parts) -> Result<&str, AppError> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| AppError::Unauthorized("missing Authorization: Bearer TOKEN header".into()))?;
    // The scheme is case-insensitive (RFC 9110 §11.1): `bearer`, `BEARER` are `Bearer`.
    value
        .to_str()
        .ok()
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| AppError::Unauthorized("the Authorization header must be 'Bearer TOKEN'".into()))
}

/// `last_used_at` of an API token is rewritten at most this often (a request is not a write).
const TOUCH_EVERY_MS: i64 = 60_000;

/// The caller of an operator API route: its API token, holding at least `needed`
/// ([`crate::routes::guard`] asks, with the role of the route's rule). A revoked token is
/// refused with `token-revoked`, an expired one with `token-expired` (both 401, saying what
/// to do); a live one has its last use recorded, at most once a minute.
pub async fn api_caller(state: &AppState, parts: &Parts, needed: Role) -> Result<Actor, AppError> {
    let token = bearer(parts)?;
    let info = state
        .store
        .api_token_by_hash(&hash_secret(token))
        .await?
        .ok_or_else(|| AppError::Unauthorized("unknown API token: check that it was copied whole".into()))?;
    if let Some(at) = info.revoked_at {
        return Err(AppError::TokenRevoked(format!(
            "the API token '{}' was revoked at {}; ask an admin for a new one (POST /api/v1/tokens)",
            info.name,
            crate::model::to_time(at).to_rfc3339()
        )));
    }
    let now = crate::model::now_ms();
    if let Some(at) = info.expires_at.filter(|at| *at <= now) {
        return Err(AppError::TokenExpired(format!(
            "the API token '{}' expired at {}; ask an admin for a new one (POST /api/v1/tokens)",
            info.name,
            crate::model::to_time(at).to_rfc3339()
        )));
    }
    let caller = Actor::new(format!("token:{}", info.name), info.role);
    caller.require(needed)?;
    if info.last_used_at.is_none_or(|at| now - at >= TOUCH_EVERY_MS)
        && let Err(e) = state.store.touch_api_token(&info.id, now).await
    {
        // Recording the use is bookkeeping: a failure of it never refuses the caller.
        tracing::warn!(error = %e, token = %info.name, "could not record the API token's last use");
    }
    Ok(caller)
}

/// The caller of an agent protocol route: an enrolled agent's secret.
pub async fn agent_caller(state: &AppState, parts: &Parts) -> Result<AgentCaller, AppError> {
    let token = bearer(parts)?;
    let (id, hostname) = state
        .store
        .agent_by_secret_hash(&hash_secret(token))
        .await?
        .ok_or_else(|| AppError::Unauthorized("unknown or revoked agent token; enroll again".into()))?;
    Ok(AgentCaller { id: crate::store::stored_id(&id)?, hostname })
}

/// The authenticated caller of the operator API (set by [`crate::routes::guard`]).
impl<S: Send + Sync> FromRequestParts<S> for Actor {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        parts.extensions.get::<Actor>().cloned().ok_or_else(|| AppError::Unauthorized("not authenticated".into()))
    }
}

/// The authenticated agent of the agent protocol.
#[derive(Debug, Clone)]
pub struct AgentCaller {
    /// Agent id.
    pub id: AgentId,
    /// Host name.
    pub hostname: String,
}

/// The authenticated agent (set by [`crate::routes::guard`] on agent routes).
impl<S: Send + Sync> FromRequestParts<S> for AgentCaller {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, AppError> {
        parts.extensions.get::<AgentCaller>().cloned().ok_or_else(|| AppError::Unauthorized("not an agent".into()))
    }
}

//! Bearer tokens: API tokens with roles for people and automation, secret tokens for agents.
//!
//! Deny by default: the operator API router runs [`require_token`] before any handler, and
//! it demands the viewer role for reads and the operator role for every other method; the
//! use cases check what they need more ([`Actor::require`]). Tokens are stored as sha256 hashes
//! (they are long random secrets, so a fast hash is enough; passwords are another matter).

use crate::app::AppState;
use crate::error::AppError;
use crate::model::{AgentId, Role};
use crate::ops::Actor;
use axum::extract::{FromRequestParts, Request, State};
use axum::http::Method;
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;
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

/// Middleware: authenticates the API token and applies the method's minimum role.
pub async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Result<Response, AppError> {
    let (mut parts, body) = req.into_parts();
    let token = bearer(&parts)?;
    let info = state
        .store
        .api_token_by_hash(&hash_secret(token))
        .await?
        .ok_or_else(|| AppError::Unauthorized("unknown or revoked API token".into()))?;
    let caller = Actor::new(format!("token:{}", info.name), info.role);
    let needed = if matches!(parts.method, Method::GET | Method::HEAD) { Role::Viewer } else { Role::Operator };
    caller.require(needed)?;
    parts.extensions.insert(caller);
    req = Request::from_parts(parts, body);
    Ok(next.run(req).await)
}

/// The authenticated caller of the operator API (set by [`require_token`]).
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

impl FromRequestParts<AppState> for AgentCaller {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, AppError> {
        let token = bearer(parts)?;
        let (id, hostname) = state
            .store
            .agent_by_secret_hash(&hash_secret(token))
            .await?
            .ok_or_else(|| AppError::Unauthorized("unknown or revoked agent token; enroll again".into()))?;
        Ok(AgentCaller { id: crate::store::stored_id(&id)?, hostname })
    }
}

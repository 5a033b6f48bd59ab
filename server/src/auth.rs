//! Bearer tokens: API tokens with roles for people and automation, secret tokens for agents.
//!
//! Deny by default: the operator API router runs [`require_token`] before any handler, and
//! it demands the viewer role for reads and the operator role for every other method;
//! handlers that need more call [`Caller::require`]. Tokens are stored as sha256 hashes
//! (they are long random secrets, so a fast hash is enough; passwords are another matter).

use crate::app::AppState;
use crate::error::ApiError;
use crate::model::Role;
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

fn bearer(parts: &Parts) -> Result<&str, ApiError> {
    let value = parts
        .headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiError::Unauthorized("missing Authorization: Bearer TOKEN header".into()))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .ok_or_else(|| ApiError::Unauthorized("the Authorization header must be 'Bearer TOKEN'".into()))
}

/// The authenticated caller of the operator API.
#[derive(Debug, Clone)]
pub struct Caller {
    /// `token:NAME`, recorded in the audit log.
    pub actor: String,
    /// Its role.
    pub role: Role,
}

impl Caller {
    /// Refuses unless the caller has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), ApiError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(ApiError::Forbidden(format!(
                "this needs the {} role; {} has the {} role",
                role.as_str(),
                self.actor,
                self.role.as_str()
            )))
        }
    }
}

/// Middleware: authenticates the API token and applies the method's minimum role.
pub async fn require_token(State(state): State<AppState>, mut req: Request, next: Next) -> Result<Response, ApiError> {
    let (mut parts, body) = req.into_parts();
    let token = bearer(&parts)?;
    let info = state
        .store
        .api_token_by_hash(&hash_secret(token))
        .await?
        .ok_or_else(|| ApiError::Unauthorized("unknown or revoked API token".into()))?;
    let caller = Caller { actor: format!("token:{}", info.name), role: info.role };
    let needed = if matches!(parts.method, Method::GET | Method::HEAD) { Role::Viewer } else { Role::Operator };
    caller.require(needed)?;
    parts.extensions.insert(caller);
    req = Request::from_parts(parts, body);
    Ok(next.run(req).await)
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        parts.extensions.get::<Caller>().cloned().ok_or_else(|| ApiError::Unauthorized("not authenticated".into()))
    }
}

/// The authenticated agent of the agent protocol.
#[derive(Debug, Clone)]
pub struct AgentCaller {
    /// Agent id.
    pub id: String,
    /// Host name.
    pub hostname: String,
}

impl FromRequestParts<AppState> for AgentCaller {
    type Rejection = ApiError;
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = bearer(parts)?;
        let (id, hostname) = state
            .store
            .agent_by_secret_hash(&hash_secret(token))
            .await?
            .ok_or_else(|| ApiError::Unauthorized("unknown or revoked agent token; enroll again".into()))?;
        Ok(AgentCaller { id, hostname })
    }
}

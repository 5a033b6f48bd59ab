//! Credentials: API tokens, enrollment tokens and dashboard users. Secrets are shown once
//! and stored as hashes (sha256 for long random tokens, argon2id for passwords).

use super::Actor;
use crate::app::App;
use crate::auth::{hash_secret, new_secret};
use crate::error::AppError;
use crate::model::{CreatedApiToken, EnrollmentToken, NewApiToken, Role, TokenId, User, UserId, now_ms};
use crate::store::{NewAudit, NewEnrollmentToken, NewUser, Store};
use argon2::PasswordHasher as _;
use std::collections::BTreeMap;

/// Creates an API token that never expires and returns its secret.
pub async fn create_api_token(store: &Store, actor: &Actor, role: Role, name: &str) -> Result<String, AppError> {
    let new = NewApiToken { name: name.to_owned(), role, expires_in_secs: None };
    Ok(issue_api_token(store, actor, &new).await?.secret)
}

/// The longest lifetime a token may be given: ten years.
const MAX_LIFETIME_SECS: u64 = 10 * 365 * 86_400;

/// Creates an API token with an optional lifetime; its secret is in the answer only.
pub async fn issue_api_token(store: &Store, actor: &Actor, new: &NewApiToken) -> Result<CreatedApiToken, AppError> {
    actor.require(Role::Admin)?;
    let name = new.name.trim();
    if name.is_empty() || name.chars().count() > 64 || name.chars().any(char::is_whitespace) {
        return Err(AppError::Unprocessable("the token name must be 1 to 64 characters without spaces".into()));
    }
    let expires_at = match new.expires_in_secs {
        None => None,
        Some(0) => {
            return Err(AppError::Unprocessable(
                "expires_in_secs must be at least 1 (leave it out for a token that never expires)".into(),
            ));
        }
        Some(s) if s > MAX_LIFETIME_SECS => {
            return Err(AppError::Unprocessable(format!(
                "expires_in_secs={s} is over the longest lifetime, ten years ({MAX_LIFETIME_SECS} s)"
            )));
        }
        Some(s) => Some(now_ms() + i64::try_from(s).unwrap_or(i64::MAX / 2_000) * 1000),
    };
    let secret = new_secret("flt");
    let id = TokenId::new();
    let detail = serde_json::json!({ "name": name, "role": new.role.as_str(), "expires_at": expires_at });
    let audit = NewAudit::new(&actor.name, "api-token.create", "api-token", id.as_str(), detail);
    let token = store.create_api_token(&id, name, new.role, &hash_secret(&secret), expires_at, &audit).await?;
    Ok(CreatedApiToken { token, secret })
}

/// Revokes an API token (admin): it is refused with `token-revoked` from the next request.
pub async fn revoke_api_token(store: &Store, actor: &Actor, id: &TokenId) -> Result<(), AppError> {
    actor.require(Role::Admin)?;
    let token = store.api_token(id).await?;
    let detail = serde_json::json!({ "name": token.name, "role": token.role.as_str() });
    let audit = NewAudit::new(&actor.name, "api-token.revoke", "api-token", id.as_str(), detail);
    store.revoke_api_token(id, &audit).await.map_err(AppError::from)
}

/// Revokes an enrollment token (admin): no agent enrolls with it any more; agents that
/// enrolled with it keep their own secrets.
pub async fn revoke_enrollment_token(store: &Store, actor: &Actor, id: &TokenId) -> Result<(), AppError> {
    actor.require(Role::Admin)?;
    let audit =
        NewAudit::new(&actor.name, "enrollment-token.revoke", "enrollment-token", id.as_str(), serde_json::json!({}));
    store.revoke_enrollment_token(id, &audit).await.map_err(AppError::from)
}

/// Disables a dashboard user (admin): they cannot log in and their sessions end at once;
/// or enables them again. Returns the user as it is now.
pub async fn set_user_disabled(store: &Store, actor: &Actor, username: &str, disabled: bool) -> Result<User, AppError> {
    actor.require(Role::Admin)?;
    let user = store.user(username).await?;
    let action = if disabled { "user.disable" } else { "user.enable" };
    let audit =
        NewAudit::new(&actor.name, action, "user", user.id.as_str(), serde_json::json!({ "username": username }));
    store.set_user_disabled(&user.id, disabled, &audit).await?;
    Ok(store.user(username).await?)
}

/// Gives a dashboard user a new password (admin); the old one stops working and the user's
/// sessions end. The password is never audited or logged.
pub async fn reset_password(store: &Store, actor: &Actor, username: &str, password: &str) -> Result<(), AppError> {
    actor.require(Role::Admin)?;
    check_password(password)?;
    let user = store.user(username).await?;
    // argon2 is deliberately slow: keep it off the async workers (this runs per request).
    let owned = password.to_owned();
    let password_hash = tokio::task::spawn_blocking(move || hash_password(&owned))
        .await
        .map_err(|e| AppError::Internal(format!("hashing the password: {e}")))??;
    let audit = NewAudit::new(
        &actor.name,
        "user.password-reset",
        "user",
        user.id.as_str(),
        serde_json::json!({ "username": username }),
    );
    store.set_user_password(&user.id, &password_hash, &audit).await.map_err(AppError::from)
}

fn check_password(password: &str) -> Result<(), AppError> {
    if password.chars().count() < 8 {
        return Err(AppError::Unprocessable("the password must be at least 8 characters".into()));
    }
    Ok(())
}

/// What an enrollment token is for.
#[derive(Debug, Clone, Default)]
pub struct EnrollmentOptions {
    /// A name for people (default: derived from the id).
    pub name: Option<String>,
    /// Labels given to every agent enrolled with it.
    pub labels: BTreeMap<String, String>,
    /// Lifetime in seconds (default 24 h, at most ten years).
    pub expires_in_secs: Option<u64>,
    /// How many agents may use it (default unlimited).
    pub max_uses: Option<u64>,
}

/// Creates an enrollment token (admin); returns it and its secret.
pub async fn create_enrollment_token(
    app: &App,
    actor: &Actor,
    o: EnrollmentOptions,
) -> Result<(EnrollmentToken, String), AppError> {
    actor.require(Role::Admin)?;
    if o.max_uses == Some(0) {
        return Err(AppError::Unprocessable("max_uses must be at least 1 (leave it out for unlimited)".into()));
    }
    let secret = new_secret("fle");
    let id = TokenId::new();
    let lifetime = o.expires_in_secs.unwrap_or(86_400).min(10 * 365 * 86_400);
    let expires = now_ms() + i64::try_from(lifetime).unwrap_or(i64::MAX / 2) * 1000;
    let new = NewEnrollmentToken {
        name: o.name.unwrap_or_else(|| format!("enroll-{}", &id.as_str()[id.as_str().len() - 6..])),
        id,
        token_hash: hash_secret(&secret),
        labels: o.labels,
        expires_at: Some(expires),
        max_uses: o.max_uses,
    };
    let detail =
        serde_json::json!({ "name": new.name, "labels": new.labels, "max_uses": new.max_uses, "expires_at": expires });
    let audit = NewAudit::new(&actor.name, "enrollment-token.create", "enrollment-token", new.id.as_str(), detail);
    Ok((app.store.create_enrollment_token(&new, &audit).await?, secret))
}

/// Creates a dashboard user with an argon2id hash of `password`.
pub async fn create_user(
    store: &Store,
    actor: &Actor,
    username: &str,
    password: &str,
    role: Role,
) -> Result<(), AppError> {
    actor.require(Role::Admin)?;
    let username = username.trim();
    if username.is_empty() || username.len() > 64 || username.chars().any(char::is_whitespace) {
        return Err(AppError::Unprocessable("the user name must be 1 to 64 characters without spaces".into()));
    }
    check_password(password)?;
    let password_hash = hash_password(password)?;
    let id = UserId::new();
    let detail = serde_json::json!({ "username": username, "role": role.as_str() });
    let audit = NewAudit::new(&actor.name, "user.create", "user", id.as_str(), detail);
    store.create_user(&NewUser { id, username: username.to_owned(), password_hash, role }, &audit).await?;
    Ok(())
}

/// The argon2id (default parameters: 19 MiB, 2 passes) PHC string of a password.
pub fn hash_password(password: &str) -> Result<String, AppError> {
    argon2::Argon2::default()
        .hash_password(password.as_bytes())
        .map(|h| h.to_string())
        .map_err(|e| AppError::Internal(format!("hashing the password: {e}")))
}

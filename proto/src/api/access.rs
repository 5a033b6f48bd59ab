//! Wire types of the token lifecycle (issue 16, item 4): API tokens as listed (never their
//! secret), a new token's request and its one-time secret, and dashboard users as an admin
//! manages them (`/api/v1/tokens`, `/api/v1/users`).

use super::Role;
use crate::id::{TokenId, UserId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// An API token, as `GET /tokens` lists it: never its secret, only its hash is stored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ApiToken {
    /// Id (what `DELETE /tokens/{id}` takes).
    pub id: TokenId,
    /// Name; the audit log records its actions as `token:NAME`.
    pub name: String,
    /// What it may do.
    pub role: Role,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working (none: never).
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was last used, to the minute (none: never used). Rewritten at most once a
    /// minute, so it may lag a minute behind.
    pub last_used_at: Option<DateTime<Utc>>,
    /// When it was revoked (none: live, unless expired).
    pub revoked_at: Option<DateTime<Utc>>,
}

impl ApiToken {
    /// `revoked`, `expired` (at `now`) or `live`: what a listing for people says of it.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "live"
        }
    }
}

/// Body of `POST /tokens`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewApiToken {
    /// A name for people, 1 to 64 characters (the audit log's `token:NAME`).
    pub name: String,
    /// What the token may do.
    pub role: Role,
    /// Lifetime in seconds, at most ten years (left out: it never expires).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_secs: Option<u64>,
}

/// A created API token and its secret, shown in this answer only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedApiToken {
    /// The token as `GET /tokens` lists it.
    #[serde(flatten)]
    pub token: ApiToken,
    /// The bearer secret (`Authorization: Bearer …`), shown once.
    pub secret: String,
}

/// A dashboard user, as `GET /users` lists it (never the password hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct User {
    /// Id.
    pub id: UserId,
    /// Login name.
    pub username: String,
    /// What the user may do.
    pub role: Role,
    /// When the user was made.
    pub created_at: DateTime<Utc>,
    /// When the user was disabled (none: the user may log in).
    pub disabled_at: Option<DateTime<Utc>>,
}

/// Body of `POST /users/{name}/password`.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NewPassword {
    /// The new password, at least 8 characters.
    pub password: String,
}

impl std::fmt::Debug for NewPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // A password never reaches a log.
        f.debug_struct("NewPassword").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_revoked_before_expired_and_live_until_then() {
        let now = Utc::now();
        let mut t = ApiToken {
            id: "t_1".parse().unwrap(),
            name: "ci".into(),
            role: Role::Viewer,
            created_at: now,
            expires_at: Some(now + chrono::Duration::hours(1)),
            last_used_at: None,
            revoked_at: None,
        };
        assert_eq!(t.state(now), "live");
        assert_eq!(t.state(now + chrono::Duration::hours(2)), "expired");
        t.revoked_at = Some(now);
        assert_eq!(t.state(now + chrono::Duration::hours(2)), "revoked");
    }
}

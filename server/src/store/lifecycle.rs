//! The token lifecycle (issue 16, item 4): API tokens listed and revoked, enrollment tokens
//! revoked, dashboard users listed, disabled, enabled and given a new password. Each change
//! is one transaction with its audit record; disabling a user or setting a new password ends
//! the user's sessions in the same transaction.

use super::{NewAudit, Store, StoreError, StoreResult, stored_id};
use crate::model::{ApiToken, Millis, Role, TokenId, User, UserId, now_ms, to_time};

/// An `api_tokens` row as the listing reads it.
type TokenRow = (String, String, String, i64, Option<i64>, Option<i64>, Option<i64>);

const TOKEN_SELECT: &str = "select id, name, role, created_at, expires_at, last_used_at, revoked_at from api_tokens";

fn role(s: &str) -> StoreResult<Role> {
    Role::parse(s).ok_or_else(|| StoreError::Corrupt(format!("role '{s}'")))
}

fn to_token(
    (id, name, role_text, created_at, expires_at, last_used_at, revoked_at): TokenRow,
) -> StoreResult<ApiToken> {
    Ok(ApiToken {
        id: stored_id(&id)?,
        name,
        role: role(&role_text)?,
        created_at: to_time(created_at),
        expires_at: expires_at.map(to_time),
        last_used_at: last_used_at.map(to_time),
        revoked_at: revoked_at.map(to_time),
    })
}

/// A `users` row as the listing reads it.
type UserRow = (String, String, String, i64, Option<i64>);

const USER_SELECT: &str = "select id, username, role, created_at, disabled_at from users";

fn to_user((id, username, role_text, created_at, disabled_at): UserRow) -> StoreResult<User> {
    Ok(User {
        id: stored_id(&id)?,
        username,
        role: role(&role_text)?,
        created_at: to_time(created_at),
        disabled_at: disabled_at.map(to_time),
    })
}

fn limit(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

impl Store {
    /// Up to `limit` API tokens, newest first, after the one whose (created, id) is
    /// `before` (a keyset page).
    #[tracing::instrument(skip_all)]
    pub async fn api_tokens_page(&self, before: Option<(Millis, String)>, n: u64) -> StoreResult<Vec<ApiToken>> {
        let (at, id) = before.unwrap_or((Millis::MAX, String::new()));
        let rows: Vec<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{TOKEN_SELECT} where created_at < $1 or (created_at = $1 and ($2 = '' or id < $2)) \
             order by created_at desc, id desc limit $3"
        )))
        .bind(at)
        .bind(id)
        .bind(limit(n))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(to_token).collect()
    }

    /// One API token.
    #[tracing::instrument(skip_all)]
    pub async fn api_token(&self, id: &TokenId) -> StoreResult<ApiToken> {
        let row: Option<TokenRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{TOKEN_SELECT} where id = $1")))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.map(to_token).transpose()?.ok_or_else(|| StoreError::NotFound(format!("no API token {id}")))
    }

    /// Revokes an API token: it is refused from now on (`token-revoked`).
    /// [`StoreError::Conflict`] when it already was.
    #[tracing::instrument(skip_all)]
    pub async fn revoke_api_token(&self, id: &TokenId, audit: &NewAudit) -> StoreResult<()> {
        self.revoke_in("api_tokens", "API token", id, audit).await
    }

    /// Revokes an enrollment token: no agent can enroll with it from now on.
    /// [`StoreError::Conflict`] when it already was.
    #[tracing::instrument(skip_all)]
    pub async fn revoke_enrollment_token(&self, id: &TokenId, audit: &NewAudit) -> StoreResult<()> {
        self.revoke_in("enrollment_tokens", "enrollment token", id, audit).await
    }

    async fn revoke_in(&self, table: &str, what: &str, id: &TokenId, audit: &NewAudit) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let row: Option<(Option<i64>,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select revoked_at from {table} where id = $1{}",
            self.dialect.for_update()
        )))
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            None => return Err(StoreError::NotFound(format!("no {what} {id}"))),
            Some((Some(_),)) => return Err(StoreError::Conflict(format!("the {what} {id} is already revoked"))),
            Some((None,)) => {}
        }
        sqlx::query(sqlx::AssertSqlSafe(format!("update {table} set revoked_at = $2 where id = $1")))
            .bind(id.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        super::audit::commit_audited(tx, audit, now).await
    }

    /// Up to `n` dashboard users by name, after the name `after`.
    #[tracing::instrument(skip_all)]
    pub async fn users_page(&self, after: Option<String>, n: u64) -> StoreResult<Vec<User>> {
        let rows: Vec<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "{USER_SELECT} where username > $1 order by username limit $2"
        )))
        .bind(after.unwrap_or_default())
        .bind(limit(n))
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter().map(to_user).collect()
    }

    /// One dashboard user by login name.
    #[tracing::instrument(skip_all)]
    pub async fn user(&self, username: &str) -> StoreResult<User> {
        let row: Option<UserRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!("{USER_SELECT} where username = $1")))
            .bind(username)
            .fetch_optional(&self.pool)
            .await?;
        row.map(to_user).transpose()?.ok_or_else(|| StoreError::NotFound(format!("no user '{username}'")))
    }

    /// Disables a user (their sessions end, they cannot log in) or enables them again.
    /// [`StoreError::Conflict`] when the user already is so.
    #[tracing::instrument(skip_all)]
    pub async fn set_user_disabled(&self, id: &UserId, disabled: bool, audit: &NewAudit) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let row: Option<(String, Option<i64>)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select username, disabled_at from users where id = $1{}",
            self.dialect.for_update()
        )))
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        let Some((name, disabled_at)) = row else {
            return Err(StoreError::NotFound(format!("no user {id}")));
        };
        if disabled_at.is_some() == disabled {
            let state = if disabled { "disabled" } else { "enabled" };
            return Err(StoreError::Conflict(format!("the user '{name}' is already {state}")));
        }
        sqlx::query("update users set disabled_at = $2 where id = $1")
            .bind(id.as_str())
            .bind(disabled.then_some(now))
            .execute(&mut *tx)
            .await?;
        if disabled {
            end_sessions(&mut tx, id).await?;
        }
        super::audit::commit_audited(tx, audit, now).await
    }

    /// Sets a user's password (its argon2id hash) and ends the user's sessions.
    #[tracing::instrument(skip_all)]
    pub async fn set_user_password(&self, id: &UserId, password_hash: &str, audit: &NewAudit) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let done = sqlx::query("update users set password_hash = $2 where id = $1")
            .bind(id.as_str())
            .bind(password_hash)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("no user {id}")));
        }
        end_sessions(&mut tx, id).await?;
        super::audit::commit_audited(tx, audit, now).await
    }
}

/// Deletes every session of a user.
async fn end_sessions(tx: &mut super::Tx, id: &UserId) -> StoreResult<()> {
    sqlx::query("delete from sessions where user_id = $1").bind(id.as_str()).execute(&mut **tx).await?;
    Ok(())
}

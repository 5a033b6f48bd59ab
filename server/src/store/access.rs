//! Credentials: API tokens, enrollment tokens, dashboard users and their sessions. Secrets
//! are stored only as hashes.

use super::rows::EnrollmentRow;
use super::{
    ApiTokenInfo, NewAudit, NewEnrollmentToken, NewSession, NewUser, SessionInfo, Store, StoreError, StoreResult,
    UserRecord, stored_id, to_json,
};
use crate::model::{ApiToken, EnrollmentToken, Millis, Role, TokenId, now_ms, to_time};

impl Store {
    /// Creates an API token (its hash), expiring at `expires_at` (none: never).
    #[tracing::instrument(skip_all)]
    pub async fn create_api_token(
        &self,
        id: &TokenId,
        name: &str,
        role: Role,
        token_hash: &str,
        expires_at: Option<Millis>,
        audit: &NewAudit,
    ) -> StoreResult<ApiToken> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        sqlx::query("insert into api_tokens (id, name, role, token_hash, created_at, expires_at) values ($1, $2, $3, $4, $5, $6)")
            .bind(id.as_str())
            .bind(name)
            .bind(role.as_str())
            .bind(token_hash)
            .bind(now)
            .bind(expires_at)
            .execute(&mut *tx)
            .await?;
        super::audit::commit_audited(tx, audit, now).await?;
        Ok(ApiToken {
            id: id.clone(),
            name: name.to_owned(),
            role,
            created_at: to_time(now),
            expires_at: expires_at.map(to_time),
            last_used_at: None,
            revoked_at: None,
        })
    }

    /// The token with this hash, revoked or expired ones included (the caller says which
    /// it is: [`crate::auth::api_caller`]).
    #[tracing::instrument(skip_all)]
    pub async fn api_token_by_hash(&self, token_hash: &str) -> StoreResult<Option<ApiTokenInfo>> {
        type Row = (String, String, String, Option<i64>, Option<i64>, Option<i64>);
        let row: Option<Row> = sqlx::query_as(
            "select id, name, role, expires_at, last_used_at, revoked_at from api_tokens where token_hash = $1",
        )
        .bind(token_hash)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(id, name, role, expires_at, last_used_at, revoked_at)| {
            let role = Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role '{role}'")))?;
            Ok(ApiTokenInfo { id: stored_id(&id)?, name, role, expires_at, last_used_at, revoked_at })
        })
        .transpose()
    }

    /// Marks an API token used at `now` (never moves it back). Not audited: a use is not a
    /// change; [`crate::auth::api_caller`] calls it at most once a minute per token.
    #[tracing::instrument(skip_all)]
    pub async fn touch_api_token(&self, id: &TokenId, now: Millis) -> StoreResult<()> {
        self.write_one(
            sqlx::query("update api_tokens set last_used_at = $1 where id = $2 and coalesce(last_used_at, 0) < $1")
                .bind(now)
                .bind(id.as_str()),
        )
        .await?;
        Ok(())
    }

    /// Creates an enrollment token.
    #[tracing::instrument(skip_all)]
    pub async fn create_enrollment_token(
        &self,
        t: &NewEnrollmentToken,
        audit: &NewAudit,
    ) -> StoreResult<EnrollmentToken> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        sqlx::query("insert into enrollment_tokens (id, name, token_hash, labels, expires_at, max_uses, uses, created_by, created_at) values ($1, $2, $3, $4, $5, $6, 0, $7, $8)")
            .bind(t.id.as_str())
            .bind(&t.name)
            .bind(&t.token_hash)
            .bind(to_json(&t.labels))
            .bind(t.expires_at)
            .bind(t.max_uses.map(|n| n as i64))
            .bind(&audit.actor)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        super::audit::commit_audited(tx, audit, now).await?;
        Ok(EnrollmentToken {
            id: t.id.clone(),
            name: t.name.clone(),
            labels: t.labels.clone(),
            expires_at: t.expires_at.map(to_time),
            max_uses: t.max_uses,
            uses: 0,
            revoked_at: None,
        })
    }

    /// Lists enrollment tokens.
    #[tracing::instrument(skip_all)]
    pub async fn list_enrollment_tokens(&self) -> StoreResult<Vec<EnrollmentToken>> {
        let rows: Vec<EnrollmentRow> =
            sqlx::query_as(concat!(enrollment_select!(), " order by created_at desc")).fetch_all(&self.pool).await?;
        rows.iter().map(EnrollmentRow::to_token).collect()
    }

    /// Creates a dashboard user; [`StoreError::Conflict`] when the name is taken.
    #[tracing::instrument(skip_all)]
    pub async fn create_user(&self, u: &NewUser, audit: &NewAudit) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let (taken,): (i64,) = sqlx::query_as("select count(*) from users where username = $1")
            .bind(&u.username)
            .fetch_one(&mut *tx)
            .await?;
        if taken > 0 {
            return Err(StoreError::Conflict(format!("user '{}' already exists", u.username)));
        }
        sqlx::query("insert into users (id, username, password_hash, role, created_at) values ($1, $2, $3, $4, $5)")
            .bind(u.id.as_str())
            .bind(&u.username)
            .bind(&u.password_hash)
            .bind(u.role.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        super::audit::commit_audited(tx, audit, now).await?;
        Ok(())
    }

    /// The user with this login name, disabled or not.
    #[tracing::instrument(skip_all)]
    pub async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let row: Option<(String, String, String, String, Option<i64>)> =
            sqlx::query_as("select id, username, password_hash, role, disabled_at from users where username = $1")
                .bind(username)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|(id, username, password_hash, role, disabled_at)| {
            let role = Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role '{role}'")))?;
            Ok(UserRecord { id: stored_id(&id)?, username, password_hash, role, disabled: disabled_at.is_some() })
        })
        .transpose()
    }

    /// Records a new session (login), audited.
    #[tracing::instrument(skip_all)]
    pub async fn create_session(&self, sess: &NewSession, audit: &NewAudit) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        sqlx::query("insert into sessions (id, user_id, token_hash, csrf_token, created_at, expires_at, last_used_at) values ($1, $2, $3, $4, $5, $6, $5)")
            .bind(&sess.id)
            .bind(sess.user_id.as_str())
            .bind(&sess.token_hash)
            .bind(&sess.csrf_token)
            .bind(now)
            .bind(sess.expires_at)
            .execute(&mut *tx)
            .await?;
        super::audit::commit_audited(tx, audit, now).await?;
        Ok(())
    }

    /// The session with this cookie hash if it is neither expired (`expires_at` after `now`)
    /// nor idle (used after `idle_since`), and its user is not disabled.
    #[tracing::instrument(skip_all)]
    pub async fn session_by_hash(
        &self,
        token_hash: &str,
        now: i64,
        idle_since: i64,
    ) -> StoreResult<Option<SessionInfo>> {
        let row: Option<(String, String, String, String, String, i64)> = sqlx::query_as(
            "select s.id, u.id, u.username, u.role, s.csrf_token, coalesce(s.last_used_at, s.created_at) \
             from sessions s join users u on u.id = s.user_id \
             where s.token_hash = $1 and s.expires_at > $2 and coalesce(s.last_used_at, s.created_at) > $3 \
             and u.disabled_at is null",
        )
        .bind(token_hash)
        .bind(now)
        .bind(idle_since)
        .fetch_optional(&self.pool)
        .await?;
        row.map(|(id, user_id, username, role, csrf_token, last_used_at)| {
            let role = Role::parse(&role).ok_or_else(|| StoreError::Corrupt(format!("role '{role}'")))?;
            Ok(SessionInfo { id, user_id: stored_id(&user_id)?, username, role, csrf_token, last_used_at })
        })
        .transpose()
    }

    /// Marks a session used at `now` (the idle timeout counts from here).
    #[tracing::instrument(skip_all)]
    pub async fn touch_session(&self, id: &str, now: i64) -> StoreResult<()> {
        self.write_one(
            sqlx::query("update sessions set last_used_at = $1 where id = $2 and coalesce(last_used_at, 0) < $1")
                .bind(now)
                .bind(id),
        )
        .await?;
        Ok(())
    }

    /// Ends a session (logout), audited, and drops expired and idle ones.
    #[tracing::instrument(skip_all)]
    pub async fn delete_session(
        &self,
        token_hash: &str,
        now: i64,
        idle_since: i64,
        audit: &NewAudit,
    ) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "delete from sessions where token_hash = $1 or expires_at <= $2 or coalesce(last_used_at, created_at) <= $3",
        )
        .bind(token_hash)
        .bind(now)
        .bind(idle_since)
        .execute(&mut *tx)
        .await?;
        super::audit::commit_audited(tx, audit, now).await?;
        Ok(())
    }
}

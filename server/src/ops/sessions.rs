//! Dashboard logins and sessions as use cases: log in (limits, argon2, audit), find the
//! session of a request (absolute and idle timeouts), log out (audited).
//!
//! The order inside [`login`] is the point: the attempt slot is reserved in the limiter
//! BEFORE the user is looked up and the hash runs, so the check, the hash and the failure
//! count are one step (docs/security.md). Every outcome is audited: `session.login`,
//! `session.login-failed`, `session.lockout`, `session.logout`, with the actor `user:NAME`
//! or, for a name that does not exist, `anonymous` and the attempted name in the detail.
//! A password never reaches a log or a record.

use crate::app::App;
use crate::auth::hash_secret;
use crate::error::AppError;
use crate::limits::Refusal;
use crate::model::{Millis, now_ms};
use crate::store::{NewAudit, NewSession, SessionInfo, UserRecord};
use argon2::PasswordVerifier as _;
use std::net::IpAddr;
use std::time::Duration;

/// How long a session lasts at most, used or not.
pub const SESSION_TTL: Duration = Duration::from_hours(12);
/// `last_used_at` is rewritten at most this often (a page load is not a write).
const TOUCH_EVERY: Duration = Duration::from_mins(1);

/// What a login form sent, and from where.
#[derive(Debug)]
pub struct Credentials<'a> {
    /// The user name typed.
    pub username: &'a str,
    /// The password typed (never logged, never audited).
    pub password: &'a str,
    /// The peer address of the connection.
    pub address: IpAddr,
}

/// A successful login.
#[derive(Debug)]
pub struct LoggedIn {
    /// The session cookie's secret (only its sha256 is stored).
    pub secret: String,
}

/// Why a login did not work.
#[derive(Debug)]
pub enum LoginError {
    /// Wrong name or password (which one is not said).
    Wrong,
    /// Too many failures for this name from this address, or from this address.
    Limited(Duration),
    /// Too many password checks running at once.
    Busy,
    /// Anything else (the database).
    Failed(AppError),
}

impl From<crate::store::StoreError> for LoginError {
    fn from(e: crate::store::StoreError) -> Self {
        Self::Failed(e.into())
    }
}

fn verify_password(password: &str, phc: &str) -> bool {
    argon2::Argon2::default().verify_password(password.as_bytes(), phc).is_ok()
}

/// A hash that never matches, verified when the user does not exist so that a wrong name
/// costs as much time as a wrong password (no user enumeration by timing).
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| super::access::hash_password("not a real password, never matches").unwrap_or_default())
}

/// 256 random bits as hex: session secrets and CSRF tokens.
pub fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

/// The audit actor and object of an attempt: the user if the name exists, else `anonymous`
/// with the attempted name in the detail.
fn attempt_audit(action: &str, c: &Credentials<'_>, user: Option<&UserRecord>, extra: serde_json::Value) -> NewAudit {
    let mut detail = serde_json::json!({ "address": c.address.to_string() });
    if let (Some(d), serde_json::Value::Object(more)) = (detail.as_object_mut(), extra) {
        d.extend(more);
    }
    if let Some(u) = user {
        NewAudit::new(&format!("user:{}", u.username), action, "user", u.id.as_str(), detail)
    } else {
        detail["username"] = c.username.into();
        NewAudit::new("anonymous", action, "user", "", detail)
    }
}

/// Checks a login and opens a session. Refused attempts (limits) never run the hash.
pub async fn login(app: &App, c: Credentials<'_>) -> Result<LoggedIn, LoginError> {
    let attempt = match app.logins.reserve(c.username, c.address) {
        Ok(a) => a,
        Err(Refusal::Limited(wait)) => {
            tracing::warn!(username = %c.username, address = %c.address, "login rate limited");
            return Err(LoginError::Limited(wait));
        }
        Err(Refusal::Busy) => return Err(LoginError::Busy),
    };
    let user = match app.store.user_by_name(c.username).await {
        Ok(u) => u,
        Err(e) => {
            attempt.abandon();
            return Err(e.into());
        }
    };
    let hash = user.as_ref().map_or_else(|| dummy_hash().to_owned(), |u| u.password_hash.clone());
    let password = c.password.to_owned();
    // argon2 is deliberately slow: keep it off the async workers.
    let ok = tokio::task::spawn_blocking(move || verify_password(&password, &hash)).await.unwrap_or(false);
    let user = match user {
        Some(u) if ok && !u.disabled => u,
        user => {
            let failure = attempt.failed();
            let reason = match &user {
                None => "unknown user",
                Some(u) if u.disabled => "user disabled",
                Some(_) => "wrong password",
            };
            let mut records =
                vec![attempt_audit("session.login-failed", &c, user.as_ref(), serde_json::json!({ "reason": reason }))];
            if failure.locked_out {
                let minutes = crate::limits::LOGIN_WINDOW.as_secs() / 60;
                records.push(attempt_audit(
                    "session.lockout",
                    &c,
                    user.as_ref(),
                    serde_json::json!({ "minutes": minutes }),
                ));
            }
            for r in &records {
                if let Err(e) = app.store.record_audit(r).await {
                    tracing::error!(error = %e, action = %r.action, "could not audit a failed login");
                }
            }
            tokio::time::sleep(failure.delay).await;
            return Err(LoginError::Wrong);
        }
    };
    attempt.succeeded();
    let secret = random_hex();
    let session = NewSession {
        id: fleetup_proto::id::new_id(),
        user_id: user.id.clone(),
        token_hash: hash_secret(&secret),
        csrf_token: random_hex(),
        expires_at: now_ms() + millis(SESSION_TTL),
    };
    let audit = attempt_audit("session.login", &c, Some(&user), serde_json::json!({}));
    app.store.create_session(&session, &audit).await?;
    Ok(LoggedIn { secret })
}

fn millis(d: Duration) -> Millis {
    Millis::try_from(d.as_millis()).unwrap_or(Millis::MAX / 2)
}

/// The oldest last use a live session may have now.
fn idle_since(app: &App, now: Millis) -> Millis {
    now - millis(app.config.session_idle)
}

/// The live session of a cookie secret: not past its absolute lifetime, not idle for longer
/// than `--session-idle-mins`, its user not disabled. `activity`: the request is the
/// operator's doing (a page, a form), so it renews the idle timeout; background refreshes
/// (htmx polling, the live stream) are checked but do not keep a forgotten tab logged in.
pub async fn authenticate(app: &App, secret: &str, activity: bool) -> Result<Option<SessionInfo>, AppError> {
    let now = now_ms();
    let Some(session) = app.store.session_by_hash(&hash_secret(secret), now, idle_since(app, now)).await? else {
        return Ok(None);
    };
    // Rewrite the last use only when it is a noticeable part of the idle timeout old.
    let every = millis(TOUCH_EVERY.min(app.config.session_idle / 10));
    if activity && now - session.last_used_at >= every {
        app.store.touch_session(&session.id, now).await?;
    }
    Ok(Some(session))
}

/// Ends the session of this cookie secret, audited as its user.
pub async fn logout(app: &App, secret: &str, session: &SessionInfo) -> Result<(), AppError> {
    let now = now_ms();
    let audit = NewAudit::new(
        &format!("user:{}", session.username),
        "session.logout",
        "user",
        session.user_id.as_str(),
        serde_json::json!({}),
    );
    app.store.delete_session(&hash_secret(secret), now, idle_since(app, now), &audit).await?;
    Ok(())
}

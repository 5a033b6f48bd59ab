//! Logins and sessions: argon2id passwords, a random session secret in an HttpOnly cookie
//! (only its sha256 is stored, like API tokens), a per-session CSRF token, and a login rate
//! limit.
//!
//! [`require_session`] guards every dashboard route but the login page and the static
//! files: no session, no page (deny by default). For anything but GET/HEAD it also demands
//! the operator role and the session's CSRF token (form field `csrf` or header
//! `X-CSRF-Token`), so a viewer's POST is refused even if it reaches the server by hand.

use super::{assets, form_pairs};
use crate::app::AppState;
use crate::error::AppError;
use crate::model::{Millis, Role, now_ms};
use crate::store::{NewAudit, NewSession, SessionInfo};
use argon2::PasswordVerifier as _;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Query, Request, State};
use axum::http::header::{CONTENT_TYPE, COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::HashMap;
use std::time::Duration;

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "fleetup_session";
/// Name of the cookie that binds the login form's CSRF token (before there is a session).
pub const LOGIN_COOKIE: &str = "fleetup_login";
/// How long a session lasts.
pub const SESSION_TTL: Duration = Duration::from_hours(12);

/// The logged-in user of a dashboard request.
#[derive(Debug, Clone)]
pub struct User {
    /// The session and its user.
    pub session: SessionInfo,
}

impl User {
    /// The user as the use cases see it: `user:NAME` and the role.
    pub fn actor(&self) -> crate::ops::Actor {
        crate::ops::Actor::new(format!("user:{}", self.session.username), self.session.role)
    }

    /// Refuses unless the user has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), AppError> {
        if self.session.role >= role {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "this needs the {} role; {} has the {} role",
                role.as_str(),
                self.session.username,
                self.session.role.as_str()
            )))
        }
    }

    /// May stage and drive rollouts, answer decisions, upload packages.
    pub fn can_operate(&self) -> bool {
        self.session.role >= Role::Operator
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for User {
    type Rejection = AppError;
    async fn from_request_parts(parts: &mut axum::http::request::Parts, _: &S) -> Result<Self, AppError> {
        parts.extensions.get::<User>().cloned().ok_or_else(|| AppError::Unauthorized("log in first".into()))
    }
}

fn verify_password(password: &str, phc: &str) -> bool {
    argon2::Argon2::default().verify_password(password.as_bytes(), phc).is_ok()
}

/// A hash that never matches, verified when the user does not exist so that a wrong name
/// costs as much time as a wrong password (no user enumeration by timing).
fn dummy_hash() -> &'static str {
    static H: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    H.get_or_init(|| crate::ops::access::hash_password("not a real password, never matches").unwrap_or_default())
}

/// The value of a cookie in the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Served over TLS (directly, or by a proxy that says so): cookies get `Secure`.
fn over_tls(headers: &HeaderMap) -> bool {
    headers.get("x-forwarded-proto").and_then(|v| v.to_str().ok()).is_some_and(|v| v.eq_ignore_ascii_case("https"))
}

fn set_cookie(name: &str, value: &str, max_age: Option<u64>, secure: bool) -> HeaderValue {
    let age = max_age.map_or(String::new(), |s| format!("; Max-Age={s}"));
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!("{name}={value}; Path=/; HttpOnly; SameSite=Strict{age}{secure}"))
        .expect("cookie values are hex")
}

fn random_hex() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the OS random source works");
    hex::encode(bytes)
}

/// Constant-time comparison of two tokens.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The login page.
#[derive(Debug, Template, WebTemplate)]
#[template(path = "login.html")]
pub struct LoginPage {
    css: &'static str,
    csrf: String,
    next: String,
    error: Option<String>,
    username: String,
}

/// `?next=` after login: only a local path.
#[derive(Debug, serde::Deserialize)]
pub struct NextQuery {
    next: Option<String>,
}

fn safe_next(next: Option<&str>) -> String {
    match next {
        Some(n) if n.starts_with('/') && !n.starts_with("//") && !n.contains('\\') => n.to_owned(),
        _ => "/".to_owned(),
    }
}

/// `GET /login`: the form, with a fresh login CSRF token bound to a cookie.
pub async fn login_form(Query(q): Query<NextQuery>, headers: HeaderMap) -> Response {
    login_page(&headers, safe_next(q.next.as_deref()), None, String::new(), StatusCode::OK)
}

fn login_page(
    headers: &HeaderMap,
    next: String,
    error: Option<String>,
    username: String,
    status: StatusCode,
) -> Response {
    let csrf = random_hex();
    let page = LoginPage { css: assets::url("app.css"), csrf: csrf.clone(), next, error, username };
    let mut resp = (status, page).into_response();
    resp.headers_mut().append(SET_COOKIE, set_cookie(LOGIN_COOKIE, &csrf, Some(600), over_tls(headers)));
    resp
}

/// `POST /login`: checks the login CSRF token, the rate limit, then the password.
pub async fn login(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let form: HashMap<String, String> = form_pairs(&body).into_iter().collect();
    let username = form.get("username").map(|s| s.trim().to_owned()).unwrap_or_default();
    let password = form.get("password").cloned().unwrap_or_default();
    let next = safe_next(form.get("next").map(String::as_str));
    let token_ok = match (cookie(&headers, LOGIN_COOKIE), form.get("csrf")) {
        (Some(c), Some(f)) => same_token(c, f),
        _ => false,
    };
    if !token_ok {
        return login_page(
            &headers,
            next,
            Some("The login form expired or was not sent by this site; please try again.".into()),
            username,
            StatusCode::FORBIDDEN,
        );
    }
    let limiter = &state.logins;
    if let Some(wait) = limiter.blocked(&username) {
        tracing::warn!(username = %username, "login rate limited");
        return login_page(
            &headers,
            next,
            Some(format!("Too many failed logins. Try again in {} seconds.", wait.as_secs().max(1))),
            username,
            StatusCode::TOO_MANY_REQUESTS,
        );
    }
    let user = match state.store.user_by_name(&username).await {
        Ok(u) => u,
        Err(e) => return AppError::from(e).into_response(),
    };
    let pw = password.clone();
    let hash = user.as_ref().map_or_else(|| dummy_hash().to_owned(), |u| u.password_hash.clone());
    // argon2 is deliberately slow: keep it off the async workers.
    let ok = tokio::task::spawn_blocking(move || verify_password(&pw, &hash)).await.unwrap_or(false);
    let user = match user {
        Some(u) if ok && !u.disabled => u,
        _ => {
            limiter.failed(&username);
            return login_page(
                &headers,
                next,
                Some("Wrong user name or password.".into()),
                username,
                StatusCode::UNAUTHORIZED,
            );
        }
    };
    limiter.succeeded(&username);
    let secret = random_hex();
    let now = now_ms();
    let session = NewSession {
        id: fleetup_proto::id::new_id(),
        user_id: user.id.clone(),
        token_hash: crate::auth::hash_secret(&secret),
        csrf_token: random_hex(),
        expires_at: now + SESSION_TTL.as_millis() as Millis,
    };
    let audit = NewAudit::new(
        &format!("user:{}", user.username),
        "session.login",
        "user",
        user.id.as_str(),
        serde_json::json!({}),
    );
    if let Err(e) = state.store.create_session(&session, &audit).await {
        return AppError::from(e).into_response();
    }
    let mut resp = Redirect::to(&next).into_response();
    let secure = over_tls(&headers);
    resp.headers_mut().append(SET_COOKIE, set_cookie(SESSION_COOKIE, &secret, Some(SESSION_TTL.as_secs()), secure));
    resp.headers_mut().append(SET_COOKIE, set_cookie(LOGIN_COOKIE, "", Some(0), secure));
    resp
}

/// `POST /logout` (CSRF-checked by the middleware): ends the session.
pub async fn logout(State(state): State<AppState>, headers: HeaderMap) -> Result<Response, AppError> {
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        state.store.delete_session(&crate::auth::hash_secret(secret), now_ms()).await?;
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().append(SET_COOKIE, set_cookie(SESSION_COOKIE, "", Some(0), over_tls(&headers)));
    Ok(resp)
}

/// Middleware: a live session for every request; operator role and the CSRF token for
/// every request that is not GET/HEAD.
pub async fn require_session(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let session = match cookie(&parts.headers, SESSION_COOKIE) {
        Some(secret) => state.store.session_by_hash(&crate::auth::hash_secret(secret), now_ms()).await,
        None => Ok(None),
    };
    let session = match session {
        Ok(Some(s)) => s,
        Ok(None) => {
            if parts.method == Method::GET {
                let target = parts.uri.path_and_query().map_or("/", axum::http::uri::PathAndQuery::as_str);
                let enc: String = form_urlencode(target);
                return Redirect::to(&format!("/login?next={enc}")).into_response();
            }
            return AppError::Unauthorized("your session has ended; log in again".into()).into_response();
        }
        Err(e) => return AppError::from(e).into_response(),
    };
    let user = User { session };
    let mut body = body;
    if !matches!(parts.method, Method::GET | Method::HEAD) {
        if let Err(e) = user.require(Role::Operator) {
            return e.into_response();
        }
        let header_token = parts.headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).map(str::to_owned);
        let is_form = parts
            .headers
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("application/x-www-form-urlencoded"));
        let mut token = header_token;
        if token.is_none() && is_form {
            let Ok(bytes) = axum::body::to_bytes(body, 1 << 20).await else {
                return AppError::BadRequest("the form is too large".into()).into_response();
            };
            token = form_pairs(&bytes).into_iter().find(|(k, _)| k == "csrf").map(|(_, v)| v);
            body = axum::body::Body::from(bytes);
        }
        if !token.is_some_and(|t| same_token(&t, &user.session.csrf_token)) {
            tracing::warn!(user = %user.session.username, path = %parts.uri.path(), "request without a valid CSRF token refused");
            return AppError::Forbidden(
                "this form was not sent by this dashboard (missing or wrong CSRF token); reload the page and try again"
                    .into(),
            )
            .into_response();
        }
    }
    parts.extensions.insert(user);
    next.run(Request::from_parts(parts, body)).await
}

/// Percent-encodes a string for a query parameter value.
pub fn form_urlencode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push_str(&hex::encode_upper([b]));
        }
    }
    out
}

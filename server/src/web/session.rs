//! The dashboard's edge of logins and sessions: the login form, cookies, the Origin check
//! and the session middleware. What a login *is* (limits before the hash, argon2, audit,
//! idle and absolute timeouts) lives in [`crate::ops::sessions`]; this file parses and
//! renders (docs/security.md).
//!
//! [`require_session`] guards every dashboard route but the login page and the static
//! files: no session, no page (deny by default). It demands the role of the route's rule
//! ([`crate::web::routes`]: a viewer's for pages and logout, an operator's for every other
//! POST) and, for anything but GET/HEAD, the session's CSRF token (form field `csrf` or
//! header `X-CSRF-Token`), so a viewer's POST is refused even if it reaches the server by hand.
//! [`same_origin`] refuses every state-changing request a foreign page made the browser
//! send, the login included (a SameSite cookie does not protect a form without a session).

use super::{assets, form_pairs};
use crate::app::AppState;
use crate::error::AppError;
use crate::model::Role;
use crate::ops::sessions::{Credentials, LoginError, random_hex};
use crate::store::SessionInfo;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{ConnectInfo, Query, Request, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE, COOKIE, HOST, ORIGIN, REFERER, RETRY_AFTER, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr, SocketAddr};

/// Name of the session cookie.
pub const SESSION_COOKIE: &str = "fleetup_session";
/// Name of the cookie that binds the login form's CSRF token (before there is a session).
pub const LOGIN_COOKIE: &str = "fleetup_login";
pub use crate::ops::sessions::SESSION_TTL;

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

/// The `next` target after login: only a path on this site. Refused (→ `/`): anything not
/// starting with one `/`, and anything with `//`, a backslash, whitespace or a control
/// character, since browsers drop tabs and newlines (`/\t/evil.example` is `//evil.example`,
/// another host) and read `\` as `/`.
pub fn safe_next(next: Option<&str>) -> String {
    let local = |n: &str| {
        n.starts_with('/') && !n.contains("//") && !n.chars().any(|c| c == '\\' || c.is_control() || c.is_whitespace())
    };
    match next {
        Some(n) if local(n) => n.to_owned(),
        _ => "/".to_owned(),
    }
}

/// The address the login limits key on: the connection's peer (never `X-Forwarded-For`,
/// which any client can write; docs/decisions.md). IPv6 peers count per /64, the block one
/// host usually holds. Without connection info (a router driven by `oneshot`): unspecified.
pub fn peer_address(parts: &axum::http::request::Parts) -> IpAddr {
    match parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip().to_canonical()) {
        Some(IpAddr::V6(v6)) => IpAddr::V6(Ipv6Addr::from(v6.to_bits() & !u128::from(u64::MAX))),
        Some(v4) => v4,
        None => IpAddr::from([0, 0, 0, 0]),
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

/// `POST /login`: checks the login CSRF token, then logs in through
/// [`crate::ops::sessions::login`] (limits before the hash, audited).
pub async fn login(State(state): State<AppState>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let headers = &parts.headers;
    let Ok(body) = axum::body::to_bytes(body, 64 << 10).await else {
        return AppError::BadRequest("the login form is too large".into()).into_response();
    };
    let form: HashMap<String, String> = form_pairs(&body).into_iter().collect();
    let username = form.get("username").map(|s| s.trim().to_owned()).unwrap_or_default();
    let next = safe_next(form.get("next").map(String::as_str));
    let token_ok = match (cookie(headers, LOGIN_COOKIE), form.get("csrf")) {
        (Some(c), Some(f)) => same_token(c, f),
        _ => false,
    };
    let refuse = |status: StatusCode, message: String| {
        login_page(headers, next.clone(), Some(message), username.clone(), status)
    };
    if !token_ok {
        let sentence = "The login form expired or was not sent by this site; please try again.";
        return refuse(StatusCode::FORBIDDEN, sentence.into());
    }
    let credentials = Credentials {
        username: &username,
        password: form.get("password").map_or("", String::as_str),
        address: peer_address(&parts),
    };
    let (wait, sentence) = match crate::ops::sessions::login(&state, credentials).await {
        Ok(done) => {
            let mut resp = Redirect::to(&next).into_response();
            let secure = over_tls(headers);
            let max_age = Some(SESSION_TTL.as_secs());
            resp.headers_mut().append(SET_COOKIE, set_cookie(SESSION_COOKIE, &done.secret, max_age, secure));
            resp.headers_mut().append(SET_COOKIE, set_cookie(LOGIN_COOKIE, "", Some(0), secure));
            return resp;
        }
        Err(LoginError::Wrong) => return refuse(StatusCode::UNAUTHORIZED, "Wrong user name or password.".into()),
        Err(LoginError::Failed(e)) => return e.into_response(),
        Err(LoginError::Limited(wait)) => {
            let secs = wait.as_secs().max(1);
            (secs, format!("Too many failed logins from this address. Try again in {secs} seconds."))
        }
        Err(LoginError::Busy) => (1, "The server is checking many logins right now. Try again in a second.".into()),
    };
    let mut resp = refuse(StatusCode::TOO_MANY_REQUESTS, sentence);
    resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(wait));
    resp
}

/// `POST /logout` (Origin- and CSRF-checked by the middleware): ends the session, audited.
pub async fn logout(State(state): State<AppState>, user: User, headers: HeaderMap) -> Result<Response, AppError> {
    if let Some(secret) = cookie(&headers, SESSION_COOKIE) {
        crate::ops::sessions::logout(&state, secret, &user.session).await?;
    }
    let mut resp = Redirect::to("/login").into_response();
    resp.headers_mut().append(SET_COOKIE, set_cookie(SESSION_COOKIE, "", Some(0), over_tls(&headers)));
    Ok(resp)
}

/// A request the operator made (a page, a form), as opposed to a background refresh
/// (htmx polling with `HX-Request`, the live event stream): only those renew the idle timeout.
fn is_activity(parts: &axum::http::request::Parts) -> bool {
    let background = parts.headers.contains_key("hx-request")
        || parts.headers.get(ACCEPT).and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("text/event-stream"));
    parts.method != Method::GET || !background
}

/// The dashboard's check, run by [`crate::routes::guard`] for a route whose rule asks for a
/// session: a live session of at least `role` for every request, and the CSRF token for
/// every request that is not GET/HEAD.
pub async fn require_session(state: &AppState, role: Role, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    let session = match cookie(&parts.headers, SESSION_COOKIE) {
        Some(secret) => crate::ops::sessions::authenticate(state, secret, is_activity(&parts)).await,
        None => Ok(None),
    };
    let session = match session {
        Ok(Some(s)) => s,
        Ok(None) => {
            if parts.method == Method::GET {
                let target = parts.uri.path_and_query().map_or("/", axum::http::uri::PathAndQuery::as_str);
                let login = format!("/login?next={}", form_urlencode(target));
                if parts.headers.contains_key("hx-request") {
                    // A fragment request: have htmx load the login page, not swap it in.
                    let value = HeaderValue::from_str(&login).unwrap_or(HeaderValue::from_static("/login"));
                    return ([("hx-redirect", value)], StatusCode::OK).into_response();
                }
                return Redirect::to(&login).into_response();
            }
            return AppError::Unauthorized("your session has ended; log in again".into()).into_response();
        }
        Err(e) => return e.into_response(),
    };
    let user = User { session };
    if let Err(e) = user.require(role) {
        return e.into_response();
    }
    let mut body = body;
    if !matches!(parts.method, Method::GET | Method::HEAD) {
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

/// The origin (`scheme://host[:port]`, lowercase) of a URL or an `Origin` value.
fn origin_of(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let scheme = scheme.to_ascii_lowercase();
    let authority = authority.to_ascii_lowercase();
    let default_port = if scheme == "https" { ":443" } else { ":80" };
    let authority = authority.strip_suffix(default_port).unwrap_or(&authority);
    (!authority.is_empty()).then(|| format!("{scheme}://{authority}"))
}

/// Which site made the browser send this request: its `Origin`, or when a browser sent
/// none, the origin of its `Referer`. `None` when neither is there (not a browser, or one
/// that sends neither; the CSRF token still guards the request).
fn sender_origin(headers: &HeaderMap) -> Option<Result<String, String>> {
    let value = headers.get(ORIGIN).or_else(|| headers.get(REFERER))?;
    let text = value.to_str().unwrap_or("?");
    Some(origin_of(text).ok_or_else(|| text.to_owned()))
}

/// Middleware on every dashboard route: a state-changing request (anything but GET, HEAD,
/// OPTIONS) whose `Origin` (or `Referer`) names another site than the one it was sent to
/// (`Host`, and the scheme `X-Forwarded-Proto` says) is refused with 403 before any handler
/// runs, the login included.
pub async fn same_origin(req: Request, next: Next) -> Response {
    if matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS) {
        return next.run(req).await;
    }
    let headers = req.headers();
    let host = headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(axum::http::uri::Authority::as_str));
    let scheme = if over_tls(headers) { "https" } else { "http" };
    let ours = host.and_then(|h| origin_of(&format!("{scheme}://{h}")));
    match sender_origin(headers) {
        None => next.run(req).await,
        Some(Ok(theirs)) if ours.as_deref() == Some(theirs.as_str()) => next.run(req).await,
        Some(theirs) => {
            let theirs = theirs.unwrap_or_else(|raw| raw);
            tracing::warn!(origin = %theirs, ours = ?ours, path = %req.uri().path(), "cross-origin request refused");
            AppError::Forbidden(format!(
                "this request was sent from another site ({theirs}), not from this dashboard ({}); \
                 open the dashboard itself and try again (behind a proxy, pass the Host header and \
                 X-Forwarded-Proto through)",
                ours.as_deref().unwrap_or("unknown host")
            ))
            .into_response()
        }
    }
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

#[cfg(test)]
mod tests {
    use super::{origin_of, safe_next};

    #[test]
    fn next_is_a_local_path_or_home() {
        for ok in ["/", "/rollouts/abc?page=2", "/jobs/x#logs", "/a:b"] {
            assert_eq!(safe_next(Some(ok)), ok);
        }
        let bad = [
            "//evil.example",
            "/\t/evil.example",
            "/\n/evil.example",
            "/\r//evil.example",
            "/\\evil.example",
            "\\\\evil.example",
            "https://evil.example/",
            "javascript:alert(1)",
            "evil.example",
            "/ /evil.example",
            "/x//evil",
            "/\u{7f}/evil",
            "",
        ];
        for b in bad {
            assert_eq!(safe_next(Some(b)), "/", "{b:?}");
        }
        assert_eq!(safe_next(None), "/");
    }

    #[test]
    fn origins_compare_scheme_host_and_port() {
        assert_eq!(origin_of("http://127.0.0.1:8080").as_deref(), Some("http://127.0.0.1:8080"));
        assert_eq!(origin_of("https://Fleet.Example:443/rollouts?x").as_deref(), Some("https://fleet.example"));
        assert_eq!(origin_of("http://fleet.example:80").as_deref(), Some("http://fleet.example"));
        assert_eq!(origin_of("null"), None);
        assert_eq!(origin_of("http://"), None);
    }
}

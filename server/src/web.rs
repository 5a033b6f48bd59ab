//! The dashboard: server-rendered pages (askama templates in `web/templates`), htmx for
//! partial updates, server-sent events for live rollout pages. No single-page-app build
//! step; every page reads fine without JavaScript.
//!
//! Security: every route except `/login` and `/static/*` runs behind
//! [`session::require_session`] (deny by default). Mutations go through the same store
//! methods as the REST API, so each one writes its audit record in the same transaction,
//! with the actor `user:NAME`.

mod agents;
mod assets;
mod audit;
mod detail;
mod jobs;
mod live;
mod packages;
mod rollouts;
pub mod session;
mod stage;
mod view;

use crate::app::AppState;
use crate::store::StoreError;
use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

pub use session::create_user;

/// The dashboard's in-memory state, kept in [`crate::app::App`].
#[derive(Debug, Default)]
pub struct Dashboard {
    /// Failed logins, for the rate limit.
    pub logins: session::LoginLimiter,
}

fn limiter(state: &AppState) -> &session::LoginLimiter {
    &state.dashboard.logins
}

/// The dashboard's routes (no fallback: the API's JSON 404 answers unknown paths).
pub fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/", get(rollouts::list))
        .route("/rollouts", get(rollouts::list).post(stage::create))
        .route("/rollouts/rows", get(rollouts::rows))
        .route("/rollouts/new", get(stage::form))
        .route("/rollouts/preview", post(stage::preview))
        .route("/rollouts/{id}", get(detail::page))
        .route("/rollouts/{id}/grid", get(detail::grid))
        .route("/rollouts/{id}/panels", get(detail::panels))
        .route("/rollouts/{id}/live", get(live::rollout_events))
        .route("/rollouts/{id}/action/{action}", post(rollouts::action))
        .route("/jobs/{id}", get(jobs::page))
        .route("/jobs/{id}/decision", post(jobs::decide))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/agents", get(agents::page))
        .route("/packages", get(packages::page).post(packages::upload))
        .route("/audit", get(audit::page))
        .route("/logout", post(session::logout))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), session::require_session));
    Router::new()
        .merge(protected)
        .route("/login", get(session::login_form).post(session::login))
        .route("/static/{file}", get(assets::serve))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers on every dashboard response: no framing (clickjacking), no MIME sniffing, and a
/// content security policy that allows only this origin's scripts and styles.
async fn security_headers(mut resp: Response) -> Response {
    use axum::http::HeaderValue;
    let h = resp.headers_mut();
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert("x-content-type-options", HeaderValue::from_static("nosniff"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.entry("content-security-policy").or_insert(HeaderValue::from_static(
        "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
    ));
    resp
}

/// Parses `application/x-www-form-urlencoded` into pairs (repeated keys kept, in order).
pub fn form_pairs(body: &[u8]) -> Vec<(String, String)> {
    fn decode(s: &str) -> String {
        let bytes = s.as_bytes();
        let mut out = Vec::with_capacity(bytes.len());
        let mut i = 0;
        while i < bytes.len() {
            match bytes[i] {
                b'+' => out.push(b' '),
                b'%' if i + 2 < bytes.len() => {
                    match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                        Ok(b) => {
                            out.push(b);
                            i += 2;
                        }
                        Err(_) => out.push(b'%'),
                    }
                }
                b => out.push(b),
            }
            i += 1;
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            (decode(k), decode(v))
        })
        .collect()
}

/// What a dashboard handler can fail with; shown as a plain page with the reason.
#[derive(Debug, thiserror::Error)]
pub enum WebError {
    /// Malformed input.
    #[error("{0}")]
    BadRequest(String),
    /// Not logged in.
    #[error("{0}")]
    Unauthorized(String),
    /// Logged in, not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// The object's state does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// Well-formed but refused (an invalid plan, a bad package).
    #[error("{0}")]
    Unprocessable(String),
    /// A bug or an outage; detail logged only.
    #[error("internal error")]
    Internal(String),
}

/// The same failure, as the dashboard shows it.
impl From<crate::error::ApiError> for WebError {
    fn from(e: crate::error::ApiError) -> Self {
        use crate::error::ApiError as A;
        match e {
            A::BadRequest(m) => WebError::BadRequest(m),
            A::Unauthorized(m) => WebError::Unauthorized(m),
            A::Forbidden(m) => WebError::Forbidden(m),
            A::NotFound(m) => WebError::NotFound(m),
            A::Conflict(m) | A::StaleLease(m) => WebError::Conflict(m),
            A::Unprocessable(m) | A::TooLarge(m) => WebError::Unprocessable(m),
            A::Internal(m) => WebError::Internal(m),
        }
    }
}

impl From<StoreError> for WebError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => WebError::NotFound(m),
            StoreError::Conflict(m) => WebError::Conflict(m),
            StoreError::Refused(m) => WebError::Unprocessable(m),
            StoreError::Forbidden(m) => WebError::Forbidden(m),
            other => WebError::Internal(other.to_string()),
        }
    }
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "error.html")]
pub struct ErrorPage {
    css: &'static str,
    status: u16,
    title: &'static str,
    message: String,
}

impl IntoResponse for WebError {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            WebError::BadRequest(_) => (StatusCode::BAD_REQUEST, "Bad request"),
            WebError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "Not logged in"),
            WebError::Forbidden(_) => (StatusCode::FORBIDDEN, "Not allowed"),
            WebError::NotFound(_) => (StatusCode::NOT_FOUND, "Not found"),
            WebError::Conflict(_) => (StatusCode::CONFLICT, "Not possible now"),
            WebError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "Refused"),
            WebError::Internal(detail) => {
                tracing::error!(error = %detail, "dashboard request failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong")
            }
        };
        let message = match self {
            WebError::Internal(_) => "The server could not complete this request; the details are in its log.".into(),
            other => other.to_string(),
        };
        let page = ErrorPage { css: assets::url("app.css"), status: status.as_u16(), title, message };
        (status, page).into_response()
    }
}

/// Result of dashboard handlers.
pub type WebResult<T> = Result<T, WebError>;

#[cfg(test)]
mod tests {
    #[test]
    fn form_pairs_decode_and_keep_repeats() {
        let p = super::form_pairs(b"a=1&agent=x%2Fy&agent=z&name=demo+1.1&empty=&pct=100%25");
        assert_eq!(
            p,
            vec![
                ("a".into(), "1".into()),
                ("agent".into(), "x/y".into()),
                ("agent".into(), "z".into()),
                ("name".into(), "demo 1.1".into()),
                ("empty".into(), String::new()),
                ("pct".into(), "100%".into()),
            ]
        );
    }
}

//! The dashboard: server-rendered pages (askama templates in `web/templates`), htmx for
//! partial updates, server-sent events for live rollout pages. No single-page-app build
//! step; every page reads fine without JavaScript.
//!
//! Security: every route except `/login` and `/static/*` runs behind
//! [`session::require_session`] (deny by default); every route behind
//! [`session::same_origin`] (no state change sent by another site). Mutations go through the same use cases
//! ([`crate::ops`]) as the REST API, with the actor `user:NAME`; errors are the same
//! [`AppError`], shown as a page.

mod agents;
mod assets;
mod audit;
mod confirm;
mod detail;
mod groups;
mod jobs;
mod live;
mod mosaic;
mod packages;
mod rollouts;
pub mod session;
mod stage;
mod view;

use crate::app::AppState;
use crate::error::{AppError, ErrorInfo};
use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};

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
        .route("/rollouts/{id}/mosaic", get(mosaic::fragment))
        .route("/rollouts/{id}/mosaic.png", get(mosaic::image))
        .route("/rollouts/{id}/mosaic/open/{state}/{wave}", get(mosaic::open))
        .route("/rollouts/{id}/live", get(live::rollout_events))
        .route("/rollouts/{id}/action/{action}", post(rollouts::action))
        .route("/rollouts/{id}/decisions", post(detail::answer_group))
        .route("/rollouts/{id}/group/{panel}/{key}", get(detail::group_members))
        .route("/jobs/{id}", get(jobs::page))
        .route("/jobs/{id}/decision", post(jobs::decide))
        .route("/jobs/{id}/cancel", post(jobs::cancel))
        .route("/jobs/{id}/guide/{action}", post(jobs::guide))
        .route("/agents", get(agents::page))
        .route("/packages", get(packages::page).post(packages::upload))
        .route("/audit", get(audit::page))
        .route("/logout", post(session::logout))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), session::require_session));
    Router::new()
        .merge(protected)
        .route("/login", get(session::login_form).post(session::login))
        .route("/static/{file}", get(assets::serve))
        .layer(axum::middleware::from_fn(session::same_origin))
        .layer(axum::middleware::map_response(error_pages))
        .layer(axum::middleware::map_response(security_headers))
        .with_state(state)
}

/// Headers on every dashboard response: no framing (clickjacking), no MIME sniffing, a
/// content security policy that allows only this origin's scripts and styles, and
/// `Cache-Control: no-store` on every HTML page, so that after logout neither Back nor a
/// shared machine's cache shows a page of the session (static files keep their long cache).
async fn security_headers(mut resp: Response) -> Response {
    use axum::http::HeaderValue;
    use axum::http::header::{CACHE_CONTROL, CONTENT_TYPE};
    let h = resp.headers_mut();
    if h.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).is_some_and(|v| v.starts_with("text/html")) {
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
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

#[derive(Debug, Template, WebTemplate)]
#[template(path = "error.html")]
pub struct ErrorPage {
    css: &'static str,
    status: u16,
    title: &'static str,
    message: String,
}

/// Middleware: a response that carries an [`ErrorInfo`] (an [`AppError`] rendered as JSON
/// by its `IntoResponse`) is shown as the dashboard's error page instead, with the same
/// status and sentence.
async fn error_pages(resp: Response) -> Response {
    let Some(info) = resp.extensions().get::<ErrorInfo>().cloned() else { return resp };
    let title = match info.status {
        StatusCode::BAD_REQUEST => "Bad request",
        StatusCode::UNAUTHORIZED => "Not logged in",
        StatusCode::FORBIDDEN => "Not allowed",
        StatusCode::NOT_FOUND => "Not found",
        StatusCode::CONFLICT => "Not possible now",
        StatusCode::INTERNAL_SERVER_ERROR => "Something went wrong",
        _ => "Refused",
    };
    let message = if info.status == StatusCode::INTERNAL_SERVER_ERROR {
        "The server could not complete this request; the details are in its log.".to_owned()
    } else {
        info.message
    };
    let page = ErrorPage { css: assets::url("app.css"), status: info.status.as_u16(), title, message };
    let mut out = (info.status, page).into_response();
    out.headers_mut().extend(
        resp.headers()
            .iter()
            .filter(|(k, _)| k.as_str().starts_with("set-cookie"))
            .map(|(k, v)| (k.clone(), v.clone())),
    );
    out
}

/// Result of dashboard handlers.
pub type WebResult<T> = Result<T, AppError>;

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

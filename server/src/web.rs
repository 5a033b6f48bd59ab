//! The dashboard: server-rendered pages (askama templates in `web/templates`), htmx for
//! partial updates, server-sent events for live rollout pages. No single-page-app build
//! step; every page reads fine without JavaScript.
//!
//! Security: every route has an access rule ([`routes`]); every route except `/login` and
//! `/static/*` needs a session, checked by [`session::require_session`] (deny by default);
//! every route runs behind [`session::same_origin`] (no state change sent by another site). Mutations go through the same use cases
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
mod webhooks;

use crate::app::AppState;
use crate::error::{AppError, ErrorInfo};
use crate::model::Role;
use crate::routes::{Access, Routes};
use askama::Template;
use askama_web::WebTemplate;
use axum::Router;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Every dashboard route with its access rule (the rules: [`crate::routes`]). A page
/// needs a viewer's session, a change an operator's (and, every POST, the CSRF token);
/// logging out is every viewer's.
pub fn routes() -> Routes {
    let (view, operate) = (Access::Session(Role::Viewer), Access::Session(Role::Operator));
    Routes::new()
        .get("/", view, rollouts::list)
        .get("/rollouts", view, rollouts::list)
        .post("/rollouts", operate, stage::create)
        .get("/rollouts/rows", view, rollouts::rows)
        .get("/rollouts/new", operate, stage::form)
        .post("/rollouts/preview", operate, stage::preview)
        .get("/rollouts/{id}", view, detail::page)
        .get("/rollouts/{id}/grid", view, detail::grid)
        .get("/rollouts/{id}/panels", view, detail::panels)
        .get("/rollouts/{id}/mosaic", view, mosaic::fragment)
        .get("/rollouts/{id}/mosaic.png", view, mosaic::image)
        .get("/rollouts/{id}/mosaic/open/{state}/{wave}", view, mosaic::open)
        .get("/rollouts/{id}/live", view, live::rollout_events)
        .post("/rollouts/{id}/action/{action}", operate, rollouts::action)
        .post("/rollouts/{id}/decisions", operate, detail::answer_group)
        .get("/rollouts/{id}/group/{panel}/{key}", view, detail::group_members)
        .get("/jobs/{id}", view, jobs::page)
        .post("/jobs/{id}/decision", operate, jobs::decide)
        .post("/jobs/{id}/cancel", operate, jobs::cancel)
        .post("/jobs/{id}/guide/{action}", operate, jobs::guide)
        .get("/agents", view, agents::page)
        .get("/packages", view, packages::page)
        .post("/packages", operate, packages::upload)
        .get("/audit", view, audit::page)
        .post("/logout", view, session::logout)
        .get("/login", Access::Public, session::login_form)
        .post("/login", Access::Public, session::login)
        .get("/static/{file}", Access::Public, assets::serve)
        .get("/webhooks", view, webhooks::page)
}

/// The dashboard's router (no fallback: the API's JSON 404 answers unknown paths).
pub fn router(state: AppState) -> Router {
    serve(routes(), state)
}

/// `routes`, guarded before anything else runs, with the dashboard's layers.
pub(crate) fn serve(routes: Routes, state: AppState) -> Router {
    routes
        .guarded(state.clone())
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

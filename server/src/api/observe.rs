//! An observer of every answer of the HTTP API: how the test suite checks the API's
//! contract (`server/tests/api/contract.rs` validates each answer against the schema the
//! OpenAPI document declares for its operation and status).
//!
//! Off unless [`crate::config::Config::observer`] is set (never from the command line). It
//! sees the method, the route's path as registered (`/api/v1/jobs/{id}`), the status, the
//! content type and the body; an answer it refuses becomes a 500 `contract-violation`
//! problem naming why, so a test that got it fails. Streams (server-sent events, package
//! downloads) and pages are passed through unread.

use crate::app::AppState;
use crate::error::AppError;
use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse as _, Response};
use std::sync::Arc;

/// One answer as the observer sees it.
#[derive(Debug)]
pub struct Seen<'a> {
    /// The request's method.
    pub method: &'a str,
    /// The route's path as registered, when a route matched.
    pub route: Option<&'a str>,
    /// The path asked for.
    pub path: &'a str,
    /// The answer's status.
    pub status: u16,
    /// The answer's content type (without parameters), empty when none.
    pub content_type: &'a str,
    /// The answer's body.
    pub body: &'a [u8],
}

/// The check: `Err(why)` refuses the answer.
type Check = dyn Fn(&Seen<'_>) -> Result<(), String> + Send + Sync;

/// A shareable observer.
#[derive(Clone)]
pub struct Observer(pub Arc<Check>);

impl std::fmt::Debug for Observer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Observer")
    }
}

/// Content types passed through unread: streams and binary files.
const UNREAD: &[&str] = &["text/event-stream", "application/octet-stream", "text/html"];

/// The largest body the observer reads.
const MAX_SEEN: usize = 64 << 20;

/// The middleware: shows each answer to the observer, if there is one.
pub async fn observe(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let Some(observer) = state.config.observer.clone() else {
        return next.run(req).await;
    };
    let method = req.method().as_str().to_owned();
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let content_type = resp
        .headers()
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_owned())
        .unwrap_or_default();
    if UNREAD.contains(&content_type.as_str()) {
        return resp;
    }
    let (parts, body) = resp.into_parts();
    let Ok(bytes) = axum::body::to_bytes(body, MAX_SEEN).await else {
        return AppError::Internal("the observer could not read an answer's body".into()).into_response();
    };
    let seen = Seen {
        method: &method,
        route: route.as_deref(),
        path: &path,
        status: parts.status.as_u16(),
        content_type: &content_type,
        body: &bytes,
    };
    match (observer.0)(&seen) {
        Ok(()) => Response::from_parts(parts, Body::from(bytes)),
        Err(why) => {
            tracing::error!(%method, %path, status = parts.status.as_u16(), %why, "answer breaks the API contract");
            AppError::ContractViolation(format!("{method} {path} answered {}: {why}", parts.status.as_u16()))
                .into_response()
        }
    }
}

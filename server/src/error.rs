//! The coordinator's one error kind, [`AppError`], and its status and code, mapped here
//! and nowhere else. The REST API renders it as an RFC 9457 problem document
//! ([`fleetup_proto::problem`]); the dashboard renders the same error as a page (`web::error_pages`
//! re-renders any response that carries an [`ErrorInfo`]). Internal detail is logged,
//! never sent to the client.

use crate::store::StoreError;
use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

/// Everything a handler can fail with.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// Malformed request (bad JSON, bad parameter).
    #[error("{0}")]
    BadRequest(String),
    /// No or unknown credentials.
    #[error("{0}")]
    Unauthorized(String),
    /// An API token that was revoked (`token-revoked`, 401).
    #[error("{0}")]
    TokenRevoked(String),
    /// An API token past its expiry (`token-expired`, 401).
    #[error("{0}")]
    TokenExpired(String),
    /// Known caller, not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Unknown object.
    #[error("{0}")]
    NotFound(String),
    /// State does not allow it.
    #[error("{0}")]
    Conflict(String),
    /// `If-Match` names another version than the object's.
    #[error("{0}")]
    PreconditionFailed(String),
    /// Stale fencing token.
    #[error("{0}")]
    StaleLease(String),
    /// Well-formed but refused (invalid plan, bad package, wrong answer).
    #[error("{0}")]
    Unprocessable(String),
    /// Body too large.
    #[error("{0}")]
    TooLarge(String),
    /// Over a rate cap: try again after `retry_after` seconds (sent as `Retry-After`).
    #[error("{message}")]
    TooManyRequests {
        /// What was capped, and when to come back.
        message: String,
        /// Seconds to wait.
        retry_after: u64,
    },
    /// A bug or an outage; detail logged only.
    #[error("internal error: {0}")]
    Internal(String),
    /// An answer that disagrees with the OpenAPI document (seen only with an observer set:
    /// the test suite's contract check, [`crate::api::observe`]).
    #[error("{0}")]
    ContractViolation(String),
}

impl AppError {
    /// The status and the stable code.
    pub fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            AppError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::TokenRevoked(_) => (StatusCode::UNAUTHORIZED, "token-revoked"),
            AppError::TokenExpired(_) => (StatusCode::UNAUTHORIZED, "token-expired"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::StaleLease(_) => (StatusCode::CONFLICT, fleetup_proto::agent_api::STALE_LEASE_CODE),
            AppError::PreconditionFailed(_) => (StatusCode::PRECONDITION_FAILED, "precondition-failed"),
            AppError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            AppError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            AppError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too-many-requests"),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
            AppError::ContractViolation(_) => (StatusCode::INTERNAL_SERVER_ERROR, "contract-violation"),
        }
    }
}

impl From<StoreError> for AppError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(m) => AppError::NotFound(m),
            StoreError::Conflict(m) => AppError::Conflict(m),
            StoreError::Refused(m) => AppError::Unprocessable(m),
            StoreError::Forbidden(m) => AppError::Forbidden(m),
            StoreError::StaleLease(m) => AppError::StaleLease(m),
            StoreError::PreconditionFailed(m) => AppError::PreconditionFailed(m),
            other => AppError::Internal(other.to_string()),
        }
    }
}

impl From<axum::extract::rejection::JsonRejection> for AppError {
    fn from(r: axum::extract::rejection::JsonRejection) -> Self {
        use axum::extract::rejection::JsonRejection as J;
        match r {
            J::MissingJsonContentType(_) => {
                AppError::BadRequest("send the body as JSON with the header Content-Type: application/json".into())
            }
            other if other.status() == StatusCode::PAYLOAD_TOO_LARGE => AppError::TooLarge(
                "the JSON body is over this route's size limit (2 MiB unless the route says otherwise): send less, \
                 or split it"
                    .into(),
            ),
            other => AppError::BadRequest(format!("invalid JSON body: {}", other.body_text())),
        }
    }
}

impl From<axum::extract::rejection::QueryRejection> for AppError {
    fn from(r: axum::extract::rejection::QueryRejection) -> Self {
        AppError::BadRequest(format!("invalid query string: {}", r.body_text()))
    }
}

impl From<axum::extract::rejection::PathRejection> for AppError {
    fn from(r: axum::extract::rejection::PathRejection) -> Self {
        AppError::BadRequest(format!("invalid path: {}", r.body_text()))
    }
}

impl AppError {
    /// The sentence the client is shown (internal detail is logged instead).
    pub fn public_message(&self) -> String {
        match self {
            AppError::Internal(detail) => {
                tracing::error!(%detail, "internal error");
                "internal error; the server log has the detail".to_owned()
            }
            other => other.to_string(),
        }
    }
}

/// What a rendered error said, kept in the response's extensions so that the dashboard can
/// show the same error as a page.
#[derive(Debug, Clone)]
pub struct ErrorInfo {
    /// The status.
    pub status: StatusCode,
    /// The sentence shown to the client.
    pub message: String,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let (status, code) = self.parts();
        let message = self.public_message();
        let mut resp = problem_response(status, code, message.clone());
        if let AppError::TooManyRequests { retry_after, .. } = &self {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, (*retry_after).into());
        }
        resp.extensions_mut().insert(ErrorInfo { status, message });
        resp
    }
}

/// An RFC 9457 problem document (`application/problem+json`; see [`fleetup_proto::problem`]).
pub fn problem_response(status: StatusCode, code: &str, detail: String) -> Response {
    let title = status.canonical_reason().unwrap_or("Error");
    let problem = fleetup_proto::problem::Problem::new(status.as_u16(), title, code, detail);
    let mut resp = (status, Json(problem)).into_response();
    resp.headers_mut().insert(
        axum::http::header::CONTENT_TYPE,
        axum::http::HeaderValue::from_static(fleetup_proto::problem::CONTENT_TYPE),
    );
    resp
}

/// The sentence of a 404 for a path no API route has.
pub fn no_route(path: &str) -> String {
    format!("no route {path}; see /api/v1/openapi.json")
}

/// Middleware of the HTTP API: an error answer that is not already a problem document (the
/// framework's own 404, 405 and 413, a layer's plain-text refusal) becomes one, its headers
/// (`Allow`, `Retry-After`) kept. So every error a client of `/api` sees has one shape.
pub async fn problems_everywhere(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let resp = next.run(req).await;
    let status = resp.status();
    if !(status.is_client_error() || status.is_server_error()) || resp.extensions().get::<ErrorInfo>().is_some() {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    // What the framework said (a short text at most), for the detail.
    let said = axum::body::to_bytes(body, 4096).await.ok().and_then(|b| String::from_utf8(b.to_vec()).ok());
    let said = said.map(|s| s.trim().to_owned()).filter(|s| !s.is_empty() && !s.starts_with('{'));
    let (code, detail) = match status {
        StatusCode::NOT_FOUND => ("not-found", no_route(&path)),
        StatusCode::METHOD_NOT_ALLOWED => {
            let allowed = parts.headers.get(axum::http::header::ALLOW).and_then(|v| v.to_str().ok()).unwrap_or("");
            ("method-not-allowed", format!("{method} is not allowed on {path}; allowed: {allowed}"))
        }
        StatusCode::PAYLOAD_TOO_LARGE => (
            "too-large",
            format!(
                "the request body is over this route's limit{}",
                said.map(|s| format!(" ({s})")).unwrap_or_default()
            ),
        ),
        _ => ("http-error", said.unwrap_or_else(|| status.canonical_reason().unwrap_or("error").to_owned())),
    };
    let problem = problem_response(status, code, detail.clone());
    let (problem_parts, problem_body) = problem.into_parts();
    parts
        .headers
        .insert(axum::http::header::CONTENT_TYPE, problem_parts.headers[axum::http::header::CONTENT_TYPE].clone());
    parts.headers.remove(axum::http::header::CONTENT_LENGTH);
    parts.extensions.insert(ErrorInfo { status, message: detail });
    Response::from_parts(parts, problem_body)
}

/// `Json` whose rejections are [`AppError`]s.
#[derive(Debug, axum::extract::FromRequest)]
#[from_request(via(axum::Json), rejection(AppError))]
pub struct ApiJson<T>(pub T);

/// `Query` whose rejections are [`AppError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Query), rejection(AppError))]
pub struct ApiQuery<T>(pub T);

/// `Path` whose rejections are [`AppError`]s.
#[derive(Debug, axum::extract::FromRequestParts)]
#[from_request(via(axum::extract::Path), rejection(AppError))]
pub struct ApiPath<T>(pub T);

/// Handler result.
pub type ApiResult<T> = Result<T, AppError>;

impl From<fleetup_proto::id::IdError> for AppError {
    fn from(e: fleetup_proto::id::IdError) -> Self {
        AppError::NotFound(format!("no {} '{}': {e}", e.kind, e.shown))
    }
}

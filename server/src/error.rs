//! The coordinator's one error kind, [`AppError`], and its status and code, mapped here
//! and nowhere else. The REST API renders it as a JSON body `{ "error": { "code",
//! "message" } }`; the dashboard renders the same error as a page (`web::error_pages`
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
    /// Known caller, not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Unknown object.
    #[error("{0}")]
    NotFound(String),
    /// State does not allow it.
    #[error("{0}")]
    Conflict(String),
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
}

impl AppError {
    /// The status and the stable code.
    pub fn parts(&self) -> (StatusCode, &'static str) {
        match self {
            AppError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request"),
            AppError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, "unauthorized"),
            AppError::Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden"),
            AppError::NotFound(_) => (StatusCode::NOT_FOUND, "not-found"),
            AppError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AppError::StaleLease(_) => (StatusCode::CONFLICT, fleetup_proto::agent_api::STALE_LEASE_CODE),
            AppError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            AppError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too-large"),
            AppError::TooManyRequests { .. } => (StatusCode::TOO_MANY_REQUESTS, "too-many-requests"),
            AppError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "internal"),
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
        let mut resp =
            (status, Json(serde_json::json!({ "error": { "code": code, "message": message } }))).into_response();
        if let AppError::TooManyRequests { retry_after, .. } = &self {
            resp.headers_mut().insert(axum::http::header::RETRY_AFTER, (*retry_after).into());
        }
        resp.extensions_mut().insert(ErrorInfo { status, message });
        resp
    }
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

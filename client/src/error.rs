//! The client's one error type. A caller that only reports gets a sentence naming the
//! request and what went wrong; a caller that reacts (a test expecting a 409, a script
//! retrying a transport failure) matches on [`Error::status`] and [`Error::code`] instead of
//! parsing that sentence.

use reqwest::StatusCode;
use std::path::PathBuf;
use std::time::Duration;

/// What an API error said: the `code` and `detail` of its problem document
/// ([`fleetup_proto::problem`]), or the `{"error": {"code", "message"}}` of older coordinators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct ErrorBody {
    /// Stable machine-readable code (`not-found`, `conflict`, `stale-lease`, …).
    pub code: String,
    /// A sentence for people.
    pub message: String,
}

/// Everything a call of [`crate::Client`] can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator answered with a status other than 2xx.
    #[error("{call}: {status}: {}", .api.as_ref().map_or_else(|| .body.clone(), |a| format!("{} ({})", a.message, a.code)))]
    Status {
        /// The request, e.g. `POST /api/v1/rollouts`.
        call: String,
        /// The HTTP status.
        status: StatusCode,
        /// The API's error body, when the answer had one.
        api: Option<ErrorBody>,
        /// The raw body (cut to a readable length), for answers that are not the API's.
        body: String,
    },
    /// No answer: connection refused, reset, timed out, or the HTTP client could not be built.
    #[error("{call}: {source}")]
    Transport {
        /// The request.
        call: String,
        /// What reqwest said.
        #[source]
        source: reqwest::Error,
    },
    /// A 2xx answer that is not the JSON this call expects: the server and this client
    /// disagree on the wire format.
    #[error("{call}: unexpected answer ({source}): {body}")]
    Decode {
        /// The request.
        call: String,
        /// Why it did not parse.
        #[source]
        source: serde_json::Error,
        /// The body (cut to a readable length).
        body: String,
    },
    /// A local file (a package to upload) could not be read.
    #[error("reading {}: {source}", .path.display())]
    File {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A wait helper's condition did not hold before its deadline.
    #[error("timed out after {after:?} waiting for {what}{}", .last.as_ref().map_or_else(String::new, |l| format!("; last seen: {l}")))]
    Deadline {
        /// What was waited for.
        what: String,
        /// The time allowed.
        after: Duration,
        /// The last state seen (or the last error), for the reader of a failed run.
        last: Option<String>,
    },
}

impl Error {
    /// The HTTP status of an answer that was not 2xx.
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            Error::Status { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The API's error code (`conflict`, `stale-lease`, …) of an answer that had one.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Status { api: Some(a), .. } => Some(&a.code),
            _ => None,
        }
    }

    /// The API's error message of an answer that had one.
    pub fn message(&self) -> Option<&str> {
        match self {
            Error::Status { api: Some(a), .. } => Some(&a.message),
            _ => None,
        }
    }
}

/// A body cut to a length that fits in an error message.
pub(crate) fn shown(body: &str) -> String {
    const MAX: usize = 2000;
    if body.len() <= MAX {
        return body.to_owned();
    }
    let mut end = MAX;
    while !body.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &body[..end], body.len())
}

/// The error of a non-2xx answer, with the API's error body when it parses as one.
pub(crate) fn status_error(call: String, status: StatusCode, body: &str) -> Error {
    let api = fleetup_proto::problem::Problem::parse(body).map(|p| ErrorBody { code: p.code, message: p.detail });
    Error::Status { call, status, api, body: shown(body) }
}

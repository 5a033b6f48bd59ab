//! The one error shape of the HTTP API: RFC 9457 problem details
//! (`Content-Type: application/problem+json`).
//!
//! ```json
//! { "type": "urn:fleetup:problem:conflict", "title": "Conflict", "status": 409,
//!   "detail": "rollout 'r_…' is already ending", "code": "conflict",
//!   "error": { "code": "conflict", "message": "rollout 'r_…' is already ending" } }
//! ```
//!
//! `code` is the stable machine-readable code (`not-found`, `stale-lease`, …); `type` is
//! `urn:fleetup:problem:` followed by it (a name, not a page to fetch); `title` says what
//! kind of problem it is, `detail` what went wrong this time and what to do. `error` repeats
//! code and detail in the shape coordinators before 0.2 sent, for the agents and scripts
//! written against it; it is deprecated and will go in a later release.

use serde::{Deserialize, Serialize};

/// The media type of a problem document.
pub const CONTENT_TYPE: &str = "application/problem+json";

/// The prefix of every problem `type`.
pub const TYPE_PREFIX: &str = "urn:fleetup:problem:";

/// An RFC 9457 problem document as fleetup sends it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Problem {
    /// `urn:fleetup:problem:CODE`.
    #[serde(rename = "type")]
    pub kind: String,
    /// The kind of problem, the same for every occurrence of `code` (the status's reason).
    pub title: String,
    /// The HTTP status, repeated.
    pub status: u16,
    /// What went wrong this time, and what to do about it.
    pub detail: String,
    /// The stable machine-readable code.
    pub code: String,
    /// Deprecated: `{code, message}` as sent before problem documents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<LegacyError>,
}

/// The error body of coordinators before 0.2 (`{"error": {"code", "message"}}`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LegacyError {
    /// The code.
    pub code: String,
    /// The sentence.
    pub message: String,
}

impl Problem {
    /// A problem of `status` with `code` and `detail`, carrying the legacy member too.
    pub fn new(status: u16, title: &str, code: &str, detail: String) -> Self {
        Problem {
            kind: format!("{TYPE_PREFIX}{code}"),
            title: title.to_owned(),
            status,
            error: Some(LegacyError { code: code.to_owned(), message: detail.clone() }),
            detail,
            code: code.to_owned(),
        }
    }

    /// Reads an error body: a problem document, or the legacy shape of older coordinators.
    pub fn parse(body: &str) -> Option<Problem> {
        if let Ok(p) = serde_json::from_str::<Problem>(body) {
            return Some(p);
        }
        #[derive(Deserialize)]
        struct Legacy {
            error: LegacyError,
        }
        let legacy = serde_json::from_str::<Legacy>(body).ok()?.error;
        Some(Problem {
            kind: format!("{TYPE_PREFIX}{}", legacy.code),
            title: String::new(),
            status: 0,
            detail: legacy.message.clone(),
            code: legacy.code.clone(),
            error: Some(legacy),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_problem_round_trips_and_the_legacy_shape_still_parses() {
        let p = Problem::new(409, "Conflict", "conflict", "already ending".into());
        let text = serde_json::to_string(&p).unwrap();
        assert!(text.contains(r#""type":"urn:fleetup:problem:conflict""#), "{text}");
        assert_eq!(Problem::parse(&text), Some(p));
        let old = Problem::parse(r#"{"error":{"code":"stale-lease","message":"lease lost"}}"#).unwrap();
        assert_eq!((old.code.as_str(), old.detail.as_str()), ("stale-lease", "lease lost"));
        assert_eq!(Problem::parse("<html>bad gateway</html>"), None);
    }
}

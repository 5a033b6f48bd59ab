//! The CLI's one failure type: a sentence for the operator and the exit code a script
//! branches on. Every code is documented in `docs/api.md` ("fleetupctl exit codes") and
//! in `fleetupctl --help`; the API's own errors map onto them by status, so a script
//! can tell "the coordinator said no" (3) from "could not reach it" (1).

use fleetup_client::{Error, StatusCode};

/// Exit codes, stable.
pub mod code {
    /// Done.
    pub const OK: u8 = 0;
    /// The coordinator could not be reached, answered something unexpected, or a local
    /// file could not be read or written.
    pub const ERROR: u8 = 1;
    /// The command line or the spec file is wrong (clap's own usage errors are 2 too).
    pub const USAGE: u8 = 2;
    /// The coordinator refused (404, 409, 412, 422), or `rollout apply` found the name
    /// staged with another spec.
    pub const REFUSED: u8 = 3;
    /// No usable context or token, or the token was refused (401, 403).
    pub const AUTH: u8 = 4;
    /// `watch`: the rollout ended cancelled or aborted, or finished with failed servers.
    pub const ROLLOUT_FAILED: u8 = 5;
    /// `watch`: the rollout is paused (an operator must act), or `--timeout` passed.
    pub const ROLLOUT_STOPPED: u8 = 6;
}

/// A failed command: what to tell the operator, and the exit code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// The exit code (see [`code`]).
    pub exit: u8,
    /// What went wrong and, where there is one, what to do.
    pub message: String,
    /// The API's error code, when the coordinator gave one (shown in `--output json`).
    pub api_code: Option<String>,
}

impl Failure {
    /// A failure with `exit` and `message`.
    pub fn new(exit: u8, message: impl Into<String>) -> Self {
        Self { exit, message: message.into(), api_code: None }
    }

    /// Exit 1.
    pub fn error(message: impl Into<String>) -> Self {
        Self::new(code::ERROR, message)
    }

    /// Exit 2.
    pub fn usage(message: impl Into<String>) -> Self {
        Self::new(code::USAGE, message)
    }

    /// Exit 3.
    pub fn refused(message: impl Into<String>) -> Self {
        Self::new(code::REFUSED, message)
    }

    /// Exit 4.
    pub fn auth(message: impl Into<String>) -> Self {
        Self::new(code::AUTH, message)
    }

    /// The same failure with `context` before its message (`staging "x": …`).
    #[must_use]
    pub fn context(mut self, context: &str) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let exit = match e.status() {
            Some(StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN) => code::AUTH,
            Some(
                StatusCode::NOT_FOUND
                | StatusCode::CONFLICT
                | StatusCode::PRECONDITION_FAILED
                | StatusCode::UNPROCESSABLE_ENTITY,
            ) => code::REFUSED,
            Some(StatusCode::BAD_REQUEST) => code::USAGE,
            _ => code::ERROR,
        };
        // The API's own sentence (what was wrong, what to do) reads better than the
        // client's "POST /api/v1/...: 409 Conflict: ..." for an operator; the call stays
        // for transport errors, where it says what could not be reached.
        let message = match (e.message(), e.status()) {
            (Some(m), Some(s)) => format!("{m} ({}, {})", s.as_u16(), e.code().unwrap_or("error")),
            _ => chain(&e),
        };
        let hint = if exit == code::AUTH { "; check the token (fleetupctl login) and its role" } else { "" };
        Self { exit, message: format!("{message}{hint}"), api_code: e.code().map(str::to_owned) }
    }
}

/// An error with its causes (`error sending request: … invalid peer certificate: UnknownIssuer`):
/// reqwest's own sentence hides why a connection failed.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !s.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        cause = c.source();
    }
    s
}

/// A command's result.
pub type Outcome<T = ()> = Result<T, Failure>;

//! The coordinator's view of the operator API's wire types (defined once in
//! [`fleetup_proto::api`], shared with every client) and the time helpers of the store.
//!
//! Times are kept as unix milliseconds in the database (same column type on SQLite and
//! Postgres) and appear as RFC 3339 in JSON.

use chrono::{DateTime, TimeZone as _, Utc};
pub use fleetup_proto::api::*;
pub use fleetup_proto::id::{AgentId, JobId, PackageId, RolloutId, TokenId, UserId};

/// Unix milliseconds.
pub type Millis = i64;

/// Now, in unix milliseconds.
pub fn now_ms() -> Millis {
    Utc::now().timestamp_millis()
}

/// Unix milliseconds to a UTC time.
pub fn to_time(ms: Millis) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

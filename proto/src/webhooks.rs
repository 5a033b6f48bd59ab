//! Events, webhooks and their deliveries (issue 16, item 5): what automation receives
//! instead of polling. One [`EventRecord`] shape is both a webhook's request body and an
//! SSE event's `data:`.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// A rollout changed state (`data.state`, `data.reason`).
pub const ROLLOUT_STATE_CHANGED: &str = "rollout.state-changed";
/// A wave opened (`data.wave`).
pub const WAVE_OPENED: &str = "wave.opened";
/// A job failed (`data.error`).
pub const JOB_FAILED: &str = "job.failed";
/// A job's changes were rolled back.
pub const JOB_ROLLED_BACK: &str = "job.rolled-back";
/// A job's agent did not collect it within the delivery timeout.
pub const JOB_UNDELIVERABLE: &str = "job.undeliverable";
/// A job's phase runs far longer than learned.
pub const JOB_STALLED: &str = "job.stalled";
/// A job's agent stopped reporting past its lease.
pub const JOB_LOST: &str = "job.lost";
/// A decision is asked that no policy answers: an operator must (`data.decision_id`).
pub const DECISION_NEEDED: &str = "decision.needed";

/// Every event type, in the order the documentation lists them.
pub const EVENT_TYPES: &[&str] = &[
    ROLLOUT_STATE_CHANGED,
    WAVE_OPENED,
    JOB_FAILED,
    JOB_ROLLED_BACK,
    JOB_UNDELIVERABLE,
    JOB_STALLED,
    JOB_LOST,
    DECISION_NEEDED,
];

/// One event of the coordinator's event log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EventRecord {
    /// Monotonic id: the SSE `id:` (resume with `Last-Event-ID`) and `Fleetup-Event-Id`.
    pub id: u64,
    /// The event type (`rollout.state-changed`, `wave.opened`, `job.failed`, `job.rolled-back`,
    /// `job.undeliverable`, `job.stalled`, `job.lost`, `decision.needed`).
    #[serde(rename = "type")]
    pub event_type: String,
    /// Kind of object (`rollout`, `job`).
    pub object_type: String,
    /// Its id.
    pub object_id: String,
    /// When the change was committed.
    pub at: DateTime<Utc>,
    /// What changed (per type; always has `rollout_id`).
    pub data: serde_json::Value,
}

/// A webhook endpoint (never its secret).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Webhook {
    /// Id.
    pub id: String,
    /// Where deliveries are POSTed.
    pub url: String,
    /// The event types it receives (empty: every type).
    pub events: Vec<String>,
    /// A note for people.
    pub description: String,
    /// Whether it receives deliveries.
    pub enabled: bool,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
}

/// `POST /webhooks`: the endpoint and its signing secret, shown in this answer only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct CreatedWebhook {
    /// The endpoint.
    #[serde(flatten)]
    pub webhook: Webhook,
    /// The HMAC-SHA256 key of `Fleetup-Signature`; shown once.
    pub secret: String,
}

/// Where a delivery stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryState {
    /// Not delivered yet: due at `next_attempt_at`.
    Pending,
    /// The endpoint answered 2xx.
    Delivered,
    /// Every attempt failed; given up.
    Failed,
}

/// One attempt of a delivery.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryAttempt {
    /// 1 for the first.
    pub attempt: u32,
    /// When it was sent.
    pub at: DateTime<Utc>,
    /// The HTTP status the endpoint answered, if it answered.
    pub status: Option<u16>,
    /// Why it failed (no answer in time, refused address, non-2xx status).
    pub error: Option<String>,
    /// How long it took, in milliseconds.
    pub duration_ms: u64,
}

/// One event's delivery to one endpoint, with its attempt log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct WebhookDelivery {
    /// Id (`Fleetup-Delivery`).
    pub id: String,
    /// The event (`Fleetup-Event-Id`).
    pub event_id: u64,
    /// Its type (`Fleetup-Event`).
    pub event_type: String,
    /// Where it stands.
    pub state: DeliveryState,
    /// Attempts made.
    pub attempt_count: u32,
    /// When the next attempt is due (pending only).
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// The last attempt's HTTP status, if it got one.
    pub last_status: Option<u16>,
    /// The last attempt's error, if it failed.
    pub last_error: Option<String>,
    /// When the event was queued for this endpoint.
    pub created_at: DateTime<Utc>,
    /// When the endpoint accepted it.
    pub delivered_at: Option<DateTime<Utc>>,
    /// Every attempt, oldest first.
    pub attempts: Vec<DeliveryAttempt>,
}

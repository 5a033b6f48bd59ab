//! The webhooks page: every endpoint with the event types it receives and its recent
//! deliveries (state, attempts, the last status or error), so whoever runs a receiver sees
//! why it is not getting events without reading the coordinator's log. Endpoints are made
//! and removed through the API (`POST /api/v1/webhooks`): the secret is shown once, to the
//! program that will verify it, not on a page.

use super::WebResult;
use super::session::User;
use super::view::{Nav, time};
use crate::app::AppState;
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::State;
use fleetup_proto::webhooks::DeliveryState;

/// Deliveries shown per endpoint.
const RECENT: u64 = 10;

/// One delivery as shown.
#[derive(Debug)]
pub struct DeliveryLine {
    /// The event type.
    pub event_type: String,
    /// The event id.
    pub event_id: u64,
    /// `delivered`, `retrying`, `failed`.
    pub state: &'static str,
    /// Colour class (with the word beside it).
    pub class: &'static str,
    /// Attempts made.
    pub attempts: u32,
    /// The last HTTP status, if any.
    pub status: String,
    /// The last error, if any.
    pub error: String,
    /// When it was queued.
    pub at: String,
    /// When the next attempt is due (retrying only).
    pub next: String,
}

/// One endpoint as shown.
#[derive(Debug)]
pub struct HookView {
    /// Id.
    pub id: String,
    /// URL.
    pub url: String,
    /// Its event types, or "every event".
    pub events: String,
    /// Its note.
    pub description: String,
    /// Enabled?
    pub enabled: bool,
    /// Created by, and when.
    pub created: String,
    /// Recent deliveries, newest first.
    pub deliveries: Vec<DeliveryLine>,
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "webhooks.html")]
pub struct WebhooksPage {
    nav: Nav,
    hooks: Vec<HookView>,
}

/// `GET /webhooks`.
pub async fn page(State(state): State<AppState>, user: User) -> WebResult<WebhooksPage> {
    let mut hooks = Vec::new();
    for w in state.store.webhooks().await? {
        let deliveries = state
            .store
            .webhook_deliveries(&w.id, None, RECENT)
            .await?
            .into_iter()
            .map(|d| {
                let (state, class) = match (d.state, d.attempt_count) {
                    (DeliveryState::Delivered, _) => ("delivered", "st-ok"),
                    (DeliveryState::Failed, _) => ("failed", "st-fail"),
                    (DeliveryState::Pending, 0) => ("queued", "st-none"),
                    (DeliveryState::Pending, _) => ("retrying", "st-warn"),
                };
                DeliveryLine {
                    event_type: d.event_type,
                    event_id: d.event_id,
                    state,
                    class,
                    attempts: d.attempt_count,
                    status: d.last_status.map(|s| s.to_string()).unwrap_or_default(),
                    error: d.last_error.unwrap_or_default(),
                    at: time(d.created_at),
                    next: d.next_attempt_at.map(time).unwrap_or_default(),
                }
            })
            .collect();
        hooks.push(HookView {
            events: if w.events.is_empty() { "every event".into() } else { w.events.join(", ") },
            created: format!("{} · {}", w.created_by, time(w.created_at)),
            id: w.id,
            url: w.url,
            description: w.description,
            enabled: w.enabled,
            deliveries,
        });
    }
    Ok(WebhooksPage { nav: Nav::new(&user, "webhooks"), hooks })
}

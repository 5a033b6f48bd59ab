//! `GET/POST /webhooks`, `GET/DELETE /webhooks/{id}`, `GET /webhooks/{id}/deliveries`
//! (operators change, viewers read; the secret only in the answer of `POST`), and `GET
//! /events`: the event stream (SSE) for bearer tokens, resumable with `Last-Event-ID`.

use super::paging;
use crate::app::AppState;
use crate::error::{ApiJson, ApiPath, ApiQuery, ApiResult, AppError};
use crate::model::{Page, Role};
use crate::ops::webhooks::WebhookOptions;
use crate::ops::{self, Actor};
use crate::routes::{Access, Routes};
use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use fleetup_proto::webhooks::{CreatedWebhook, EventRecord, Webhook, WebhookDelivery};
use futures_util::Stream;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::broadcast;

pub fn routes() -> Routes {
    Routes::new()
        .get("/webhooks", Access::Token(Role::Viewer), list)
        .post("/webhooks", Access::Token(Role::Operator), create)
        .get("/webhooks/{id}", Access::Token(Role::Viewer), show)
        .delete("/webhooks/{id}", Access::Token(Role::Operator), delete)
        .get("/webhooks/{id}/deliveries", Access::Token(Role::Viewer), deliveries)
        .get("/events", Access::Token(Role::Viewer), events)
}

/// Body of `POST /webhooks`.
#[derive(Debug, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateWebhook {
    /// Where deliveries are POSTed: `https://…` (or `http://`); public addresses only unless
    /// the coordinator runs with `--webhook-allow-private`.
    url: String,
    /// The event types to receive (`rollout.state-changed`, `wave.opened`, `job.failed`,
    /// `job.rolled-back`, `job.undeliverable`, `job.stalled`, `job.lost`,
    /// `decision.needed`); empty or absent: every type.
    #[serde(default)]
    events: Vec<String>,
    /// A note for people.
    #[serde(default)]
    description: Option<String>,
    /// Whether it receives deliveries (default true).
    #[serde(default)]
    enabled: Option<bool>,
}

/// Creates a webhook endpoint; the signing secret is in this answer only.
#[utoipa::path(post, path = "/api/v1/webhooks", operation_id = "createWebhook", tag = "webhooks",
    request_body = CreateWebhook, responses((status = 201, description = "Created, with its secret", body = CreatedWebhook)))]
async fn create(
    State(state): State<AppState>,
    actor: Actor,
    ApiJson(body): ApiJson<CreateWebhook>,
) -> ApiResult<(StatusCode, Json<CreatedWebhook>)> {
    let options =
        WebhookOptions { url: body.url, events: body.events, description: body.description, enabled: body.enabled };
    Ok((StatusCode::CREATED, Json(ops::webhooks::create(&state, &actor, options).await?)))
}

/// Every webhook endpoint (never the secrets).
#[utoipa::path(get, path = "/api/v1/webhooks", operation_id = "listWebhooks", tag = "webhooks",
    responses((status = 200, description = "Every endpoint, oldest first", body = Vec<Webhook>)))]
async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<Webhook>>> {
    Ok(Json(state.store.webhooks().await?))
}

/// One endpoint.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}", operation_id = "getWebhook", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id")),
    responses((status = 200, description = "The endpoint", body = Webhook)))]
async fn show(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Webhook>> {
    Ok(Json(state.store.webhook(&id).await?))
}

/// Deletes an endpoint and its delivery log; nothing more is sent to it.
#[utoipa::path(delete, path = "/api/v1/webhooks/{id}", operation_id = "deleteWebhook", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id")),
    responses((status = 204, description = "Deleted")))]
async fn delete(State(state): State<AppState>, actor: Actor, ApiPath(id): ApiPath<String>) -> ApiResult<StatusCode> {
    ops::webhooks::delete(&state, &actor, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /webhooks/{id}/deliveries` query.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct DeliveriesQuery {
    /// Page size, 1 to 5000 (default 100).
    limit: Option<u64>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Refused (400): listings page by cursor.
    offset: Option<String>,
}

/// The endpoint's deliveries, newest first, each with its attempt log.
#[utoipa::path(get, path = "/api/v1/webhooks/{id}/deliveries", operation_id = "listWebhookDeliveries", tag = "webhooks",
    params(("id" = String, Path, description = "The webhook's id"), DeliveriesQuery),
    responses((status = 200, description = "A page of deliveries, newest first", body = Page<WebhookDelivery>)))]
async fn deliveries(
    State(state): State<AppState>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(q): ApiQuery<DeliveriesQuery>,
) -> ApiResult<Json<Page<WebhookDelivery>>> {
    state.store.webhook(&id).await?;
    let limit = super::page_limit(q.limit, 100)?;
    let before = paging::after(&paging::DELIVERIES, &id, q.cursor.as_deref(), q.offset.as_deref())?
        .map(|key| paging::pair(&key))
        .transpose()?;
    let items = state.store.webhook_deliveries(&id, before, limit + 1).await?;
    Ok(Json(paging::page(items, limit, &paging::DELIVERIES, &id, |d| {
        vec![d.created_at.timestamp_millis().to_string(), d.id.clone()]
    })))
}

/// `GET /events` query.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct EventsQuery {
    /// Comma-separated event types to receive (default: every type).
    types: Option<String>,
    /// Start after this event id (as `Last-Event-ID` does; the header wins). `0`: from the
    /// oldest kept. Without either, the stream starts with the next event.
    after: Option<u64>,
}

/// The event stream: `text/event-stream`, one SSE event per event-log entry (`id:` its id,
/// `event:` its type, `data:` the event as JSON), live, with keep-alive comments. Reconnect
/// with `Last-Event-ID` to get exactly the events missed. A client that falls more than
/// 1024 events behind is disconnected (it resumes from its last id).
#[utoipa::path(get, path = "/api/v1/events", operation_id = "streamEvents", tag = "webhooks",
    params(EventsQuery, ("Last-Event-ID" = Option<u64>, Header, description = "Resume after this event id")),
    responses((status = 200, description = "Server-sent events", content_type = "text/event-stream", body = String)))]
async fn events(
    State(state): State<AppState>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let types: Vec<String> = q
        .types
        .as_deref()
        .unwrap_or("")
        .split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_owned)
        .collect();
    ops::webhooks::check_types(&types).map_err(|e| AppError::BadRequest(e.to_string()))?;
    let resume =
        match headers.get("last-event-id") {
            Some(v) => Some(v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
                AppError::BadRequest("Last-Event-ID must be the id of an event (a whole number)".into())
            })?),
            None => q.after,
        };
    // Subscribe before reading the log: nothing committed meanwhile falls in between.
    let live = state.events.subscribe();
    let (cursor, replaying) = match resume {
        Some(id) => (id, true),
        None => (state.store.last_event_id().await?, false),
    };
    let feed = Feed { state, live, cursor, replaying, types, queued: VecDeque::new() };
    let stream = futures_util::stream::unfold(feed, |mut feed| async move {
        let next = feed.next().await?;
        let event = Event::default()
            .id(next.id.to_string())
            .event(next.event_type.clone())
            .data(serde_json::to_string(&*next).unwrap_or_default());
        Some((Ok::<Event, Infallible>(event), feed))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)).text("keep-alive")))
}

/// One client's position in the event log: replaying what it missed, then following the
/// live tail.
struct Feed {
    state: AppState,
    live: broadcast::Receiver<Arc<EventRecord>>,
    /// The last event id sent (or skipped as before the start).
    cursor: u64,
    replaying: bool,
    types: Vec<String>,
    queued: VecDeque<Arc<EventRecord>>,
}

impl Feed {
    /// The next event to send; `None` ends the stream (shutdown, a client too far behind,
    /// a database failure: the client reconnects with its last id).
    async fn next(&mut self) -> Option<Arc<EventRecord>> {
        loop {
            if let Some(e) = self.queued.pop_front() {
                return Some(e);
            }
            if self.replaying {
                let batch = match self.state.store.events_after(self.cursor, &self.types, 500).await {
                    Ok(b) => b,
                    Err(e) => {
                        tracing::warn!(error = %e, "event stream: cannot read the event log; ending the stream");
                        return None;
                    }
                };
                match batch.last() {
                    Some(last) => self.cursor = last.id,
                    None => self.replaying = false,
                }
                self.queued.extend(batch.into_iter().map(Arc::new));
                continue;
            }
            let received = tokio::select! {
                () = self.state.shutdown.cancelled() => return None,
                r = self.live.recv() => r,
            };
            match received {
                Ok(e) => {
                    if e.id <= self.cursor {
                        continue;
                    }
                    // Skipped types move the cursor too: the log below it has been seen.
                    self.cursor = e.id;
                    if self.types.is_empty() || self.types.contains(&e.event_type) {
                        return Some(e);
                    }
                }
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::info!(missed = n, "event stream: a client fell too far behind; disconnecting it");
                    return None;
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

//! Webhooks and the live event stream: what automation gets instead of polling.
//!
//! Events are written to the event log in the transaction of the change they report
//! ([`crate::store::events`]). Two tasks read it, started with the scheduler:
//! - [`tail`] follows the log and broadcasts each new event to the SSE streams
//!   (`GET /api/v1/events`) on a bounded channel: a stream that falls behind is ended, not
//!   buffered without limit, and its client resumes from the log with `Last-Event-ID`.
//! - [`deliver`] fans new events out to the endpoints subscribed to their type (one
//!   delivery row each), then POSTs due deliveries, signed with the endpoint's secret:
//!   `Fleetup-Signature: v1=<hex hmac-sha256(secret, "{timestamp}.{body}")>` over the
//!   `Fleetup-Timestamp` (unix seconds; a receiver refuses old ones, so a captured request
//!   cannot be replayed later). A 2xx answer delivers it; anything else (another status, no
//!   answer within the deadline, a refused address) is retried with exponential backoff and
//!   jitter up to [`MAX_ATTEMPTS`], then given up. Every attempt is logged on the delivery.
//!   Once an hour it deletes what is older than [`RETENTION`] and settled.

pub mod guard;

use crate::app::App;
use crate::model::now_ms;
use crate::store::{AttemptOutcome, DueDelivery, NextStep};
use fleetup_proto::webhooks::{DeliveryAttempt, EventRecord};
use futures_util::StreamExt as _;
use hmac::{KeyInit as _, Mac as _};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// Attempts of one delivery before it is given up.
pub const MAX_ATTEMPTS: u32 = 10;
/// The longest wait between two attempts.
pub const MAX_BACKOFF: Duration = Duration::from_hours(1);
/// Each request's deadline (connect, send, answer).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A claimed delivery is due again after this, should this coordinator stop mid-request.
const CLAIM_LEASE_MS: i64 = 60_000;
/// Deliveries sent at once.
const PARALLEL: usize = 8;
/// How long events and settled deliveries are kept.
pub const RETENTION: Duration = Duration::from_hours(24 * 30);
/// How often old ones are deleted.
const PRUNE_EVERY: Duration = Duration::from_hours(1);
/// How often the log is read when nothing wakes the tasks.
const TICK: Duration = Duration::from_millis(200);
/// Events an SSE stream may fall behind the live tail before it is ended.
pub const STREAM_BUFFER: usize = 1024;

/// The live events of this coordinator, for the SSE streams.
#[derive(Debug)]
pub struct EventBus {
    sender: broadcast::Sender<Arc<EventRecord>>,
}

impl Default for EventBus {
    fn default() -> Self {
        Self { sender: broadcast::channel(STREAM_BUFFER).0 }
    }
}

impl EventBus {
    /// A receiver of the events broadcast from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<EventRecord>> {
        self.sender.subscribe()
    }
}

/// The signature header's value for `body` sent at `timestamp` (unix seconds).
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The wait before attempt `attempt + 1` after attempt `attempt` failed: `base · 2^(attempt-1)`
/// capped at [`MAX_BACKOFF`], less up to a fifth at random (so endpoints that failed
/// together are not retried in lockstep).
pub fn backoff(base_ms: u64, attempt: u32, random: u64) -> Duration {
    let exp = base_ms.saturating_mul(1u64 << attempt.saturating_sub(1).min(30));
    let capped = exp.min(u64::try_from(MAX_BACKOFF.as_millis()).unwrap_or(u64::MAX));
    let jitter = if capped >= 5 { random % (capped / 5) } else { 0 };
    Duration::from_millis(capped - jitter)
}

/// What follows attempt `attempt` that got `status` (`None`: no answer) at `now`: a 2xx
/// delivers; anything else is retried after [`backoff`], until [`MAX_ATTEMPTS`].
pub fn next_step(status: Option<u16>, attempt: u32, base_ms: u64, random: u64, now: i64) -> NextStep {
    if status.is_some_and(|s| (200..300).contains(&s)) {
        NextStep::Delivered
    } else if attempt >= MAX_ATTEMPTS {
        NextStep::GiveUp
    } else {
        let wait = backoff(base_ms, attempt, random);
        NextStep::RetryAt(now + i64::try_from(wait.as_millis()).unwrap_or(i64::MAX / 2))
    }
}

/// Follows the event log and broadcasts new events until `shutdown`.
pub async fn tail(app: Arc<App>, shutdown: CancellationToken) {
    let mut last = loop {
        match app.store.last_event_id().await {
            Ok(id) => break id,
            Err(e) => tracing::warn!(error = %e, "event tail: cannot read the event log; trying again"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    };
    loop {
        match app.store.events_after(last, &[], 500).await {
            Ok(events) => {
                let full = events.len() == 500;
                for e in events {
                    last = e.id;
                    // No subscriber is not an error.
                    let _ = app.events.sender.send(Arc::new(e));
                }
                if full {
                    continue;
                }
            }
            Err(e) => tracing::warn!(error = %e, "event tail: cannot read the event log"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// The HTTP client of deliveries: a deadline on every request, no redirects, the SSRF
/// guard's resolver, TLS through ring with the system's roots.
fn client(allow_private: bool) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
    if added == 0 {
        tracing::warn!("no system CA certificates: https webhooks will fail certificate checks");
    }
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
    let mut builder = reqwest::Client::builder()
        .timeout(REQUEST_TIMEOUT)
        .connect_timeout(Duration::from_secs(5))
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("fleetup-webhooks/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(guard::resolver(allow_private));
    match tls {
        Ok(tls) => builder = builder.tls_backend_preconfigured(tls),
        Err(e) => tracing::error!(error = %e, "webhook TLS configuration failed"),
    }
    builder.build().unwrap_or_else(|e| {
        tracing::error!(error = %e, "webhook client failed to build; deliveries will fail");
        reqwest::Client::new()
    })
}

/// Fans events out and sends due deliveries until `shutdown`.
pub async fn deliver(app: Arc<App>, shutdown: CancellationToken) {
    let client = client(app.config.webhook_allow_private);
    let mut pruned: Option<Instant> = None;
    while !shutdown.is_cancelled() {
        let now = now_ms();
        if pruned.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
            pruned = Some(Instant::now());
            let before = now - i64::try_from(RETENTION.as_millis()).unwrap_or(i64::MAX / 2);
            match app.store.prune_events(before).await {
                Ok((0, 0)) => {}
                Ok((events, deliveries)) => tracing::info!(events, deliveries, "pruned the event log"),
                Err(e) => tracing::warn!(error = %e, "webhooks: cannot prune the event log"),
            }
        }
        loop {
            match app.store.fan_out_events(now, 500).await {
                Ok(500) => {}
                Ok(_) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "webhooks: cannot queue new events");
                    break;
                }
            }
        }
        match app.store.claim_deliveries(now, CLAIM_LEASE_MS, 32).await {
            Ok(due) if !due.is_empty() => {
                let batch =
                    futures_util::stream::iter(due).for_each_concurrent(PARALLEL, |d| attempt(&app, &client, d));
                // Stopping mid-request leaves the delivery claimed: due again after its lease.
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = batch => {}
                }
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "webhooks: cannot claim deliveries"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(TICK) => {}
        }
    }
}

/// One attempt of one delivery, recorded.
async fn attempt(app: &App, client: &reqwest::Client, d: DueDelivery) {
    let started = Instant::now();
    let at = now_ms();
    let (status, error) = send(app, client, &d).await;
    let random = u64::from(uuid::Uuid::new_v4().as_fields().0);
    let next = next_step(status, d.attempt, app.config.webhook_retry_base_ms, random, now_ms());
    let delivered = next == NextStep::Delivered;
    let result = match next {
        NextStep::Delivered => "delivered",
        NextStep::RetryAt(_) => "failed",
        NextStep::GiveUp => "gave-up",
    };
    metrics::counter!("fleetup_webhook_deliveries_total", "result" => result).increment(1);
    if !delivered {
        tracing::info!(delivery = %d.id, attempt = d.attempt, url = %d.url, ?status, ?error, result, "webhook attempt failed");
    }
    let log = DeliveryAttempt {
        attempt: d.attempt,
        at: crate::model::to_time(at),
        status,
        error,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    };
    if let Err(e) = app.store.record_attempt(&d.id, &AttemptOutcome { log, next }, now_ms()).await {
        // Not recorded: the claim's lease runs out and the delivery is tried again.
        tracing::warn!(error = %e, delivery = %d.id, "webhooks: cannot record an attempt");
    }
}

/// POSTs the event; the status it got, or why it got none, or why a non-2xx failed.
async fn send(app: &App, client: &reqwest::Client, d: &DueDelivery) -> (Option<u16>, Option<String>) {
    let url = match reqwest::Url::parse(&d.url) {
        Ok(u) => u,
        Err(e) => return (None, Some(format!("bad URL: {e}"))),
    };
    if !guard::literal_allowed(&url, app.config.webhook_allow_private) {
        return (None, Some("refused: the URL's address is not public (--webhook-allow-private is off)".into()));
    }
    let body = serde_json::to_vec(&d.event).unwrap_or_default();
    let timestamp = chrono::Utc::now().timestamp();
    let request = client
        .post(url)
        .header("content-type", "application/json")
        .header("fleetup-event", &d.event.event_type)
        .header("fleetup-event-id", d.event.id.to_string())
        .header("fleetup-delivery", &d.id)
        .header("fleetup-attempt", d.attempt.to_string())
        .header("fleetup-timestamp", timestamp.to_string())
        .header("fleetup-signature", sign(&d.secret, timestamp, &body))
        .body(body);
    match request.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            if (200..300).contains(&status) {
                (Some(status), None)
            } else {
                // A short excerpt of the answer helps whoever runs the receiver.
                let text = resp.text().await.unwrap_or_default();
                let excerpt: String = text.chars().take(200).collect();
                (
                    Some(status),
                    Some(format!("the endpoint answered {status}: {excerpt}").trim_end_matches(": ").to_owned()),
                )
            }
        }
        Err(e) => (None, Some(describe(&e))),
    }
}

/// A request error with its causes (reqwest's own message omits them).
fn describe(e: &reqwest::Error) -> String {
    let mut text =
        if e.is_timeout() { format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()) } else { e.to_string() };
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_over_timestamp_dot_body() {
        let sig = sign("whsec_test", 1_700_000_000, b"{}");
        assert!(sig.starts_with("v1="));
        assert_eq!(sig.len(), 3 + 64);
        assert_eq!(sig, sign("whsec_test", 1_700_000_000, b"{}"), "deterministic");
        assert_ne!(sig, sign("whsec_test", 1_700_000_001, b"{}"), "the timestamp is signed");
        assert_ne!(sig, sign("whsec_other", 1_700_000_000, b"{}"), "the key matters");
        // Known answer (`printf '1700000000.{}' | openssl dgst -sha256 -hmac whsec_test`).
        assert_eq!(sig, format!("v1={KNOWN}"));
    }

    const KNOWN: &str = "35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91";

    #[test]
    fn a_2xx_delivers_anything_else_retries_until_the_last_attempt() {
        let now = 1_000_000;
        for ok in [200, 201, 204, 299] {
            assert_eq!(next_step(Some(ok), 1, 1000, 0, now), NextStep::Delivered, "{ok}");
        }
        for failed in [Some(301), Some(404), Some(500), Some(503), None] {
            assert_eq!(next_step(failed, 1, 1000, 0, now), NextStep::RetryAt(now + 1000), "{failed:?}");
            assert_eq!(next_step(failed, 3, 1000, 0, now), NextStep::RetryAt(now + 4000), "{failed:?}");
            assert_eq!(next_step(failed, MAX_ATTEMPTS - 1, 1000, 0, now), NextStep::RetryAt(now + 256_000));
            assert_eq!(next_step(failed, MAX_ATTEMPTS, 1000, 0, now), NextStep::GiveUp, "{failed:?}");
        }
        assert_eq!(next_step(Some(200), MAX_ATTEMPTS, 1000, 0, now), NextStep::Delivered, "the last may still work");
    }

    #[test]
    fn backoff_doubles_with_jitter_up_to_the_cap() {
        assert_eq!(backoff(1000, 1, 0), Duration::from_secs(1));
        assert_eq!(backoff(1000, 2, 0), Duration::from_secs(2));
        assert_eq!(backoff(1000, 4, 0), Duration::from_secs(8));
        assert_eq!(backoff(1000, 40, 0), MAX_BACKOFF);
        for r in [1, 77, 199, 10_000] {
            let b = backoff(1000, 1, r);
            assert!(b > Duration::from_millis(800) && b <= Duration::from_secs(1), "{b:?}");
        }
    }
}

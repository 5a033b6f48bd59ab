//! Live rollout pages: a server-sent-events stream per open rollout page.
//!
//! The stream polls [`crate::store::Store::rollout_stamp`] (one small indexed query) every
//! [`POLL`] and sends an event `changed` when the stamp moves; htmx then fetches the grid
//! page and the panels the browser is looking at. Polling the store rather than an
//! in-process broadcast is deliberate: job events arrive on whichever coordinator the
//! agent talks to (several may share one Postgres), and the store is the one place that
//! sees them all. The event carries no data the browser renders, so the partials it
//! fetches apply the viewer's page, filter and role, and the stream can never leak more
//! than the page does. Cost: one query per open page per second.
//!
//! The baseline is the stamp the page was rendered from (`?since=`, see [`stamp`]), not the
//! stamp when the stream opens: a change between the render and the stream's first poll
//! (the page loading its scripts, a reconnect after the coordinator was away) is sent at
//! once instead of being missed until the next one. Every [`ALIVE`] without a change the
//! stream sends `alive`, so the page can say how fresh it is and notice a silent stream.

use super::WebResult;
use super::session::User;
use crate::app::AppState;
use crate::model::RolloutId;
use axum::extract::{Path, Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use sha2::Digest as _;
use std::convert::Infallible;
use std::time::Duration;

/// How often a stream looks for changes.
pub const POLL: Duration = Duration::from_secs(1);
/// How often a stream without changes says it is still there.
pub const ALIVE: Duration = Duration::from_secs(5);

/// The rollout's change stamp as the page carries it: a short hash (the stamp itself holds
/// the state reason, free text that has no place in a URL).
pub async fn stamp(state: &AppState, id: &RolloutId) -> WebResult<String> {
    let raw = state.store.rollout_stamp(id).await?;
    Ok(hex::encode(&sha2::Sha256::digest(raw.as_bytes())[..8]))
}

/// `?since=STAMP`.
#[derive(Debug, Default, serde::Deserialize)]
pub struct LiveQuery {
    /// The stamp the page was rendered from; without it, the stamp when the stream opens.
    pub since: Option<String>,
}

/// `GET /rollouts/{id}/live?since=`.
pub async fn rollout_events(
    State(state): State<AppState>,
    _user: User,
    Path(id): Path<RolloutId>,
    Query(q): Query<LiveQuery>,
) -> WebResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let first = match q.since.filter(|s| !s.is_empty()) {
        Some(s) => s,
        None => stamp(&state, &id).await?,
    };
    let shutdown = state.shutdown.clone();
    let polls_per_alive = (ALIVE.as_millis() / POLL.as_millis()).max(1) as u32;
    let stream = futures_util::stream::unfold((state, id, first, true), move |(state, id, last, first_poll)| {
        let shutdown = shutdown.clone();
        async move {
            let mut interval = tokio::time::interval(POLL);
            // The first poll at once (the page's stamp may be old already), then every POLL.
            if !first_poll {
                interval.tick().await;
            }
            let mut quiet = 0u32;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    _ = interval.tick() => {}
                }
                match stamp(&state, &id).await {
                    Ok(now) if now != last => {
                        let ev = Event::default().event("changed").data("changed");
                        return Some((Ok(ev), (state, id, now, false)));
                    }
                    Ok(_) => {
                        quiet += 1;
                        if quiet >= polls_per_alive {
                            let ev = Event::default().event("alive").data("alive");
                            return Some((Ok(ev), (state, id, last, false)));
                        }
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, rollout = %id, "live updates: cannot read the rollout; closing the stream");
                        return None;
                    }
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

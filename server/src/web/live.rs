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

use super::WebResult;
use super::session::User;
use crate::app::AppState;
use axum::extract::{Path, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use std::convert::Infallible;
use std::time::Duration;

/// How often a stream looks for changes.
pub const POLL: Duration = Duration::from_secs(1);

/// `GET /rollouts/{id}/live`.
pub async fn rollout_events(
    State(state): State<AppState>,
    _user: User,
    Path(id): Path<crate::model::RolloutId>,
) -> WebResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let first = state.store.rollout_stamp(&id).await?;
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold((state, id, first), move |(state, id, last)| {
        let shutdown = shutdown.clone();
        async move {
            let mut interval = tokio::time::interval(POLL);
            interval.tick().await;
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => return None,
                    _ = interval.tick() => {}
                }
                match state.store.rollout_stamp(&id).await {
                    Ok(stamp) if stamp != last => {
                        let ev = Event::default().event("changed").data("changed");
                        return Some((Ok(ev), (state, id, stamp)));
                    }
                    Ok(_) => {}
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

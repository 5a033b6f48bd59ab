//! The application state shared by handlers and background tasks.

use crate::config::Config;
use crate::model::AgentId;
use crate::model::Millis;
use crate::store::Store;
use fleetup_proto::PublicKey;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

/// Handler state: a cheap clone of the one [`App`].
#[derive(Debug, Clone)]
pub struct AppState(pub Arc<App>);

impl std::ops::Deref for AppState {
    type Target = App;
    fn deref(&self) -> &App {
        &self.0
    }
}

/// Everything the coordinator holds in memory.
#[derive(Debug)]
pub struct App {
    /// Configuration.
    pub config: Config,
    /// Storage.
    pub store: Store,
    /// Trusted package-signing keys.
    pub trusted: Vec<PublicKey>,
    /// Per-agent wake-ups for long-polls (poll and event reports with `wait`), the job
    /// polls held and the assignments pushed to them.
    pub polls: crate::mailbox::Mailboxes<crate::store::ClaimedJob>,
    /// Last-seen times not yet written (flushed in batches: an idle poll writes nothing).
    pub last_seen: Mutex<HashMap<AgentId, Millis>>,
    /// Last-seen times already flushed, to show online/offline without a read-modify-write.
    pub seen_cache: Mutex<HashMap<AgentId, Millis>>,
    /// Runs a scheduler pass now.
    pub scheduler_kick: Notify,
    /// Cancelled at shutdown: long-polls return at once.
    pub shutdown: CancellationToken,
    /// Prometheus exposition.
    pub metrics: metrics_exporter_prometheus::PrometheusHandle,
    /// Failed dashboard logins, for the rate limit.
    pub logins: crate::limits::LoginLimiter,
    /// Per-job caps on agents' events and log lines (429 beyond).
    pub agent_limits: crate::agent_limits::AgentLimits,
    /// New events of the event log, broadcast to the SSE streams ([`crate::hooks`]).
    pub events: crate::hooks::EventBus,
}

impl App {
    /// The wake-up of one agent.
    pub fn waker(&self, agent_id: &AgentId) -> Arc<Notify> {
        self.polls.waker(agent_id)
    }

    /// Wakes these agents' long-polls here, and on other replicas (Postgres NOTIFY).
    pub async fn wake_agents(&self, ids: &[AgentId]) {
        if ids.is_empty() {
            return;
        }
        self.wake_local(ids);
        if let Err(e) = self.store.publish_wakeups(ids).await {
            tracing::warn!(error = %e, "could not notify other replicas");
        }
    }

    /// Wakes long-polls held by this process.
    pub fn wake_local(&self, ids: &[AgentId]) {
        self.polls.wake(ids);
    }

    /// Records that an agent was seen (in memory).
    pub fn seen(&self, agent_id: &AgentId, at: Millis) {
        self.last_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(agent_id.clone(), at);
    }

    /// The freshest known last-seen time of an agent.
    pub fn last_seen_of(&self, agent_id: &AgentId) -> Option<Millis> {
        let pending = self.last_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(agent_id).copied();
        let flushed = self.seen_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(agent_id).copied();
        pending.max(flushed)
    }

    /// Writes the collected last-seen times in one transaction.
    pub async fn flush_last_seen(&self) {
        let batch: Vec<(AgentId, Millis)> = {
            let mut map = self.last_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            map.drain().collect()
        };
        if batch.is_empty() {
            return;
        }
        match self.store.touch_agents(&batch).await {
            Ok(()) => {
                let mut cache = self.seen_cache.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for (id, at) in batch {
                    let e = cache.entry(id).or_default();
                    *e = (*e).max(at);
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "could not write last-seen times; will retry");
                let mut map = self.last_seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                for (id, at) in batch {
                    let e = map.entry(id).or_default();
                    *e = (*e).max(at);
                }
            }
        }
    }
}

/// Flushes last-seen times every `heartbeat_flush_ms`, and once more at shutdown.
pub async fn heartbeat_flusher(app: Arc<App>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(std::time::Duration::from_millis(app.config.heartbeat_flush_ms.max(10)));
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = interval.tick() => app.flush_last_seen().await,
        }
    }
    app.flush_last_seen().await;
}

/// Forwards other replicas' wake-ups to local long-polls.
pub async fn wakeup_forwarder(app: Arc<App>, shutdown: CancellationToken) {
    use futures_util::StreamExt as _;
    let mut stream = match app.store.wakeup_listener().await {
        Ok(Some(s)) => s,
        Ok(None) => return,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for wake-ups from other replicas");
            return;
        }
    };
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            next = stream.next() => match next {
                Some(id) => app.wake_local(&[id]),
                None => break,
            },
        }
    }
}

//! Wake-ups across replicas: `NOTIFY fleetup_wake` carries the ids of agents with news, so
//! the coordinator holding an agent's long-poll wakes it at once. SQLite has one
//! coordinator: nothing to send, nothing to hear.

use super::{Dialect, Store, StoreResult};
use crate::model::AgentId;
use futures_util::StreamExt as _;
use sqlx::postgres::PgListener;

/// The NOTIFY channel.
const WAKE_CHANNEL: &str = "fleetup_wake";

impl Store {
    /// Tells other replicas that these agents have news (Postgres NOTIFY; no-op on SQLite).
    pub async fn publish_wakeups(&self, agent_ids: &[AgentId]) -> StoreResult<()> {
        if self.dialect != Dialect::Postgres {
            return Ok(());
        }
        // A NOTIFY payload is limited to 8000 bytes: send ids in chunks.
        for chunk in agent_ids.chunks(100) {
            let ids: Vec<&str> = chunk.iter().map(AgentId::as_str).collect();
            sqlx::query("select pg_notify($1, $2)").bind(WAKE_CHANNEL).bind(ids.join(",")).execute(&self.pool).await?;
        }
        Ok(())
    }

    /// A stream of agent ids woken by other replicas (Postgres LISTEN), if the backend has one.
    pub async fn wakeup_listener(&self) -> StoreResult<Option<futures_util::stream::BoxStream<'static, AgentId>>> {
        if self.dialect != Dialect::Postgres {
            return Ok(None);
        }
        let mut listener = PgListener::connect(&self.url).await?;
        listener.listen(WAKE_CHANNEL).await?;
        let stream = listener
            .into_stream()
            .filter_map(|n| async move { n.ok().map(|n| n.payload().to_owned()) })
            .flat_map(|payload| {
                futures_util::stream::iter(
                    payload.split(',').filter_map(|id| id.parse().ok()).collect::<Vec<AgentId>>(),
                )
            });
        Ok(Some(stream.boxed()))
    }
}

//! The Postgres store: several coordinators may share it.
//!
//! Claims are one statement with `FOR UPDATE SKIP LOCKED`, so two replicas never hand out
//! the same job; the scheduler pass holds a transaction-scoped advisory lock, so one replica
//! schedules at a time (the others skip the pass); `NOTIFY fleetup_wake` carries the ids of
//! agents with news so the replica holding an agent's long-poll wakes it at once.

use crate::store::StoreResult;
use futures_util::StreamExt as _;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use std::collections::BTreeMap;

/// Advisory lock key of the scheduler ("fleetup" in ASCII).
const SCHEDULER_LOCK: i64 = 0x0066_6c65_6574_7570;
/// The NOTIFY channel.
const WAKE_CHANNEL: &str = "fleetup_wake";

/// The Postgres implementation of [`crate::store::Store`].
#[derive(Debug, Clone)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    const BACKEND: &'static str = "postgres";

    /// Connects and migrates (sqlx serialises concurrent migrators with a lock).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let pool = PgPoolOptions::new().max_connections(16).connect(url).await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(Self { pool })
    }

    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        self.pool.begin().await
    }

    async fn scheduler_tx(&self) -> StoreResult<Option<sqlx::Transaction<'static, sqlx::Postgres>>> {
        let mut tx = self.pool.begin().await?;
        let (got,): (bool,) =
            sqlx::query_as("select pg_try_advisory_xact_lock($1)").bind(SCHEDULER_LOCK).fetch_one(&mut *tx).await?;
        if got {
            Ok(Some(tx))
        } else {
            tx.rollback().await?;
            Ok(None)
        }
    }

    async fn claim_job_impl(&self, agent_id: &str, now: i64) -> StoreResult<Option<String>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "update jobs set state = 'dispatched', fencing_token = fencing_token + 1, lease_expires_at = $2 + lease_ms, \
             dispatched_at = $2, updated_at = $2 \
             where id = (select j.id from jobs j join rollouts r on r.id = j.rollout_id \
                 where j.agent_id = $1 and j.state = 'queued' and r.state = 'running' \
                 and not exists (select 1 from jobs b where b.agent_id = $1 and b.state in ('dispatched', 'running', 'waiting')) \
                 order by j.created_at, j.position limit 1 for update of j skip locked) \
             and state = 'queued' returning id",
        )
        .bind(agent_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().next().map(|(id,)| id))
    }

    async fn publish_wakeups_impl(&self, agent_ids: &[String]) -> StoreResult<()> {
        // A NOTIFY payload is limited to 8000 bytes: send ids in chunks.
        for chunk in agent_ids.chunks(100) {
            sqlx::query("select pg_notify($1, $2)")
                .bind(WAKE_CHANNEL)
                .bind(chunk.join(","))
                .execute(&self.pool)
                .await?;
        }
        Ok(())
    }

    async fn wakeup_listener_impl(&self) -> StoreResult<Option<futures_util::stream::BoxStream<'static, String>>> {
        let mut listener = PgListener::connect_with(&self.pool).await?;
        listener.listen(WAKE_CHANNEL).await?;
        let stream = listener
            .into_stream()
            .filter_map(|n| async move { n.ok().map(|n| n.payload().to_owned()) })
            .flat_map(|payload| futures_util::stream::iter(payload.split(',').map(str::to_owned).collect::<Vec<_>>()));
        Ok(Some(stream.boxed()))
    }
}

store_impl!(PgStore, sqlx::Postgres, fu_job = " for update of j", fu = " for update");

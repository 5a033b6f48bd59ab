//! The Postgres store: several coordinators may share it.
//!
//! A claim is one statement with `FOR UPDATE SKIP LOCKED` (many of them per group-commit
//! transaction), so two replicas never hand out the same job; the scheduler pass holds a
//! transaction-scoped advisory lock, so one replica schedules at a time (the others skip the
//! pass); `NOTIFY fleetup_wake` carries the ids of agents with news so the replica holding an
//! agent's long-poll wakes it at once.

use crate::store::StoreResult;
use futures_util::StreamExt as _;
use sqlx::postgres::{PgListener, PgPool, PgPoolOptions};
use std::collections::BTreeMap;

/// Advisory lock key of the scheduler ("fleetup" in ASCII).
const SCHEDULER_LOCK: i64 = 0x0066_6c65_6574_7570;
/// The NOTIFY channel.
const WAKE_CHANNEL: &str = "fleetup_wake";

/// The Postgres implementation of [`crate::store::Store`].
#[derive(Debug)]
pub struct PgStore {
    pool: PgPool,
    claims: crate::store::group_commit::GroupCommit<crate::store::ClaimRequest, Option<crate::store::ClaimedJob>>,
    reports: crate::store::group_commit::GroupCommit<crate::store::ReportRequest, crate::store::ReportOutcome>,
}

impl PgStore {
    const BACKEND: &'static str = "postgres";
    /// Writer tasks per kind of grouped write: each batch runs its statements one round trip
    /// at a time, so several batches in parallel keep Postgres busy; eight of the pool's 16
    /// connections at most, the other eight for reads.
    const WRITERS: usize = 4;

    /// Connects and migrates (sqlx serialises concurrent migrators with a lock).
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let pool = PgPoolOptions::new().max_connections(16).connect(url).await?;
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        Ok(Self::with_writers(pool))
    }

    async fn begin_write(pool: &PgPool) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
        pool.begin().await
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

store_impl!(
    PgStore,
    sqlx::Postgres,
    fu_job = " for update of j",
    fu = " for update",
    skip_locked = " for update of j skip locked"
);

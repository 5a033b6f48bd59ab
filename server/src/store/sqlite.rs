//! The SQLite store: one file, no setup, one coordinator.
//!
//! WAL mode so readers (long-polls, the dashboard) never wait for the writer, and
//! `synchronous=FULL`: a commit is fsynced before it is acknowledged, so every acknowledged
//! write survives a power cut, not only a process crash (NORMAL could lose the last
//! transactions). FULL costs write throughput (about 1k commits/s here), which the design
//! avoids needing: idle polls write nothing, last-seen times are flushed in batches and an
//! event batch is one transaction. Transactions that read then write begin with
//! `BEGIN IMMEDIATE`, taking the write lock up front instead of failing to upgrade later.

use crate::store::StoreResult;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::time::Duration;

/// The SQLite implementation of [`crate::store::Store`].
#[derive(Debug, Clone)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    const BACKEND: &'static str = "sqlite";

    /// Opens (creating if missing) the database file and migrates it.
    pub async fn connect(url: &str) -> StoreResult<Self> {
        let opts = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new().max_connections(8).connect_with(opts).await?;
        sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
        Ok(Self { pool })
    }

    async fn write_tx(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        self.pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn scheduler_tx(&self) -> StoreResult<Option<sqlx::Transaction<'static, sqlx::Sqlite>>> {
        Ok(Some(self.write_tx().await?))
    }

    /// One statement; SQLite has one writer, so no row locking is needed.
    async fn claim_job_impl(&self, agent_id: &str, now: i64) -> StoreResult<Option<String>> {
        let ids: Vec<(String,)> = sqlx::query_as(
            "update jobs set state = 'dispatched', fencing_token = fencing_token + 1, lease_expires_at = $2 + lease_ms, \
             dispatched_at = $2, updated_at = $2 \
             where id = (select j.id from jobs j join rollouts r on r.id = j.rollout_id \
                 where j.agent_id = $1 and j.state = 'queued' and r.state = 'running' \
                 and not exists (select 1 from jobs b where b.agent_id = $1 and b.state in ('dispatched', 'running', 'waiting')) \
                 order by j.created_at, j.position limit 1) \
             and state = 'queued' returning id",
        )
        .bind(agent_id)
        .bind(now)
        .fetch_all(&self.pool)
        .await?;
        Ok(ids.into_iter().next().map(|(id,)| id))
    }

    #[allow(clippy::unused_async)]
    async fn publish_wakeups_impl(&self, _agent_ids: &[String]) -> StoreResult<()> {
        Ok(())
    }

    #[allow(clippy::unused_async)]
    async fn wakeup_listener_impl(&self) -> StoreResult<Option<futures_util::stream::BoxStream<'static, String>>> {
        Ok(None)
    }
}

store_impl!(SqliteStore, sqlx::Sqlite, fu_job = "", fu = "");

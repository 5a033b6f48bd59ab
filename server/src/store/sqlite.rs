//! The SQLite store: one file, no setup, one coordinator.
//!
//! WAL mode so readers (long-polls, the dashboard) never wait for the writer, and
//! `synchronous=FULL`: a commit is fsynced before it is acknowledged, so every acknowledged
//! write survives a power cut, not only a process crash (NORMAL could lose the last
//! transactions). FULL costs write throughput (about 1k commits/s here), which the design
//! avoids needing: idle polls write nothing, last-seen times are flushed in batches, and
//! claims and event reports are group-committed (many requests per transaction, one writer
//! task per kind). Transactions that read then write begin with `BEGIN IMMEDIATE`, taking
//! the write lock up front instead of failing to upgrade later.

use crate::store::StoreResult;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous};
use std::collections::BTreeMap;
use std::str::FromStr as _;
use std::time::Duration;

/// The SQLite implementation of [`crate::store::Store`].
#[derive(Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    claims: crate::store::group_commit::GroupCommit<crate::store::ClaimRequest, Option<crate::store::ClaimedJob>>,
    reports: crate::store::group_commit::GroupCommit<crate::store::ReportRequest, crate::store::ReportOutcome>,
}

impl SqliteStore {
    const BACKEND: &'static str = "sqlite";
    /// One writer task per kind of grouped write: SQLite has one write lock, and a second
    /// writer would only wait for it (in SQLite's sleeping busy handler).
    const WRITERS: usize = 1;

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
        Ok(Self::with_writers(pool))
    }

    async fn begin_write(pool: &SqlitePool) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    async fn scheduler_tx(&self) -> StoreResult<Option<sqlx::Transaction<'static, sqlx::Sqlite>>> {
        Ok(Some(self.write_tx().await?))
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

store_impl!(SqliteStore, sqlx::Sqlite, fu_job = "", fu = "", skip_locked = "");

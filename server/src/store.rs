//! Storage: one [`Store`] over `sqlx::Any`, on SQLite or Postgres, its SQL in plain
//! functions, one file per aggregate.
//!
//! Both backends share one schema shape (times as unix milliseconds, structured values as
//! JSON text, every column bigint, text or boolean), so nearly every query is one text run
//! on either database through sqlx's `Any` driver. What differs lives in [`Dialect`]: how a
//! read-then-write transaction begins (SQLite `BEGIN IMMEDIATE`, so a read never upgrades a
//! lock and deadlocks), the row-locking clauses (`for update …` on Postgres, nothing on
//! SQLite, whose write transaction already excludes other writers), the JSON functions of
//! the compact job view, the scheduler's advisory lock and LISTEN/NOTIFY. Why `Any` and not
//! generics over `sqlx::Database` or a macro: docs/decisions.md, "One SQL text".
//!
//! The store reads and applies; the rules live in [`crate::domain`]. A store function never
//! decides what a rollout or a job does next: it is told (a [`crate::domain::rollout::Effect`],
//! a [`crate::domain::schedule::Step`], a [`crate::domain::report::Fold`]).
//!
//! Claims and event reports are written by group commit ([`group_commit`]): one queue per
//! kind, many requests per durable transaction.

// First: its select-list macros serve the files below.
#[macro_use]
pub(crate) mod rows;
#[macro_use]
pub(crate) mod group_commit;
pub(crate) mod access;
pub(crate) mod agent_protocol;
pub(crate) mod agents;
pub(crate) mod audit;
pub(crate) mod control;
pub(crate) mod events;
pub(crate) mod gauges;
pub(crate) mod idempotency;
pub(crate) mod ingest;
pub(crate) mod jobs;
pub(crate) mod lifecycle;
pub(crate) mod packages;
pub(crate) mod rollouts;
pub(crate) mod scheduler;
mod types;
pub(crate) mod views;
mod wakeups;
pub(crate) mod webhooks;

pub use agent_protocol::claim_statement;
pub use audit::AuditFilter;
pub use control::Failure;
pub use gauges::Gauges;
pub use rollouts::RolloutFilter;
pub use scheduler::{SchedulerPass, dispatch_statement};
pub use types::*;
pub use views::{FailedJob, MosaicCell, OpenDecision, RunningPhase, StoredWarning, WarnedJob, WarningDetail};
pub use webhooks::{AttemptOutcome, DueDelivery, NewWebhook, NextStep};

use group_commit::GroupCommit;
use serde::Serialize;
use serde::de::DeserializeOwned;
use sqlx::AnyPool;
use sqlx::any::AnyPoolOptions;
use std::sync::Arc;

/// Why a store call failed. The user-facing variants carry a sentence a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// The object is in a state that does not allow this.
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but refused (expired token, bad answer, …).
    #[error("{0}")]
    Refused(String),
    /// The caller may not touch this object.
    #[error("{0}")]
    Forbidden(String),
    /// The object changed since the version the caller named (`If-Match`).
    #[error("{0}")]
    PreconditionFailed(String),
    /// A report carries a fencing token that is not the job's current one.
    #[error("{0}")]
    StaleLease(String),
    /// Stored data could not be read back (a bug or a hand-edited database).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The shared transaction this request was written in failed; nothing of it was written.
    #[error("the database did not commit this write: {0}")]
    Batch(String),
}

impl StoreError {
    /// A refusal of the request as asked (not found, conflict, refused, forbidden, stale
    /// lease), as opposed to a failure of the database or of stored data.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::NotFound(_)
                | StoreError::Conflict(_)
                | StoreError::Refused(_)
                | StoreError::Forbidden(_)
                | StoreError::StaleLease(_)
        )
    }
}

/// Result of store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// A write transaction on either backend; on SQLite it also holds the process's write gate
/// ([`Writes`]) until it commits, rolls back or is dropped. Derefs to the connection, so
/// `&mut *tx` is an executor as with a plain `sqlx::Transaction`.
#[derive(Debug)]
pub(crate) struct Tx {
    // Declared first, dropped first: a transaction dropped unfinished queues its rollback
    // before the gate opens.
    inner: sqlx::Transaction<'static, sqlx::Any>,
    _gate: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl Tx {
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.inner.commit().await
    }

    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        self.inner.rollback().await
    }
}

impl std::ops::Deref for Tx {
    type Target = sqlx::AnyConnection;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

/// Longest a writer waits for SQLite's write gate (sqlx's default wait for a pool connection).
const GATE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Where write transactions begin: the pool and, on SQLite, the process's write gate.
///
/// SQLite has one write lock per database. Writers that find it taken wait in SQLite's busy
/// handler, which sleeps and retries (1, 2, 5 … 100 ms): not in turn, and the lock stays
/// idle until a sleeper wakes. Under the report flood of a wave the report writer, which
/// begins its next batch the instant it commits, took the lock again and again while a claim
/// slept, so agents that polled between two reports waited seconds for their job. The gate
/// is a FIFO async mutex taken before `BEGIN IMMEDIATE`: writers of this process take the
/// lock in the order they asked, and the next one is handed it at once
/// (docs/decisions.md, "SQLite writers take turns"). Postgres locks rows and needs none.
#[derive(Clone)]
pub(crate) struct Writes {
    pool: AnyPool,
    dialect: Dialect,
    gate: Option<Arc<tokio::sync::Mutex<()>>>,
}

impl Writes {
    fn new(pool: AnyPool, dialect: Dialect) -> Self {
        let gate = (dialect == Dialect::Sqlite).then(Arc::default);
        Self { pool, dialect, gate }
    }

    /// A transaction that may write: SQLite begins it `IMMEDIATE`, taking the write lock up
    /// front instead of failing to upgrade a read lock later.
    pub(crate) async fn begin(&self) -> Result<Tx, sqlx::Error> {
        let gate = match &self.gate {
            // A deadline as for a pool connection: the busy handler's 10 s bounded this wait
            // before the gate; a writer of this process holding it that long is a fault.
            Some(gate) => Some(
                tokio::time::timeout(GATE_WAIT, gate.clone().lock_owned())
                    .await
                    .map_err(|_| sqlx::Error::PoolTimedOut)?,
            ),
            None => None,
        };
        let inner = match self.dialect {
            Dialect::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Dialect::Postgres => self.pool.begin().await?,
        };
        Ok(Tx { inner, _gate: gate })
    }

    pub(crate) fn dialect(&self) -> Dialect {
        self.dialect
    }
}

/// What differs between the two databases.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    /// One file, one coordinator.
    Sqlite,
    /// Several coordinators may share it.
    Postgres,
}

impl Dialect {
    /// `sqlite` or `postgres`.
    pub const fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgres",
        }
    }

    /// Appended to a query that reads rows the transaction will change: Postgres locks
    /// them; SQLite's write transaction already excludes every other writer.
    pub(crate) const fn for_update(self) -> &'static str {
        match self {
            Dialect::Sqlite => "",
            Dialect::Postgres => " for update",
        }
    }

    /// Most bind parameters one statement may carry: Postgres counts them in 16 bits;
    /// SQLite's `SQLITE_MAX_VARIABLE_NUMBER` is 32,766 by default since 3.32.
    pub(crate) const fn max_binds(self) -> usize {
        match self {
            Dialect::Sqlite => 32_766,
            Dialect::Postgres => 65_535,
        }
    }

    /// Writer tasks per kind of grouped write. SQLite has one write lock (a second writer
    /// would only wait in its busy handler); on Postgres each batch runs its statements one
    /// round trip at a time, so several batches in parallel keep it busy: four per kind,
    /// eight of the pool's 16 connections at most, the other eight for reads.
    const fn writers(self) -> usize {
        match self {
            Dialect::Sqlite => 1,
            Dialect::Postgres => 4,
        }
    }
}

/// The coordinator's storage. Every mutation an operator makes writes its audit record in
/// the same transaction.
pub struct Store {
    pool: AnyPool,
    dialect: Dialect,
    /// The database URL (Postgres LISTEN opens its own connection).
    url: String,
    writes: Writes,
    claims: GroupCommit<ClaimRequest, Option<ClaimedJob>>,
    reports: GroupCommit<ReportRequest, ReportOutcome>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("dialect", &self.dialect).finish_non_exhaustive()
    }
}

/// Opens the store the URL names (`sqlite:…` or `postgres://…`) and applies migrations.
pub async fn connect(url: &str) -> StoreResult<Store> {
    sqlx::any::install_default_drivers();
    let (dialect, pool) = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        let pool = AnyPoolOptions::new().max_connections(16).connect(url).await?;
        // sqlx serialises concurrent migrators with a lock.
        sqlx::migrate!("../migrations/postgres").run(&pool).await?;
        (Dialect::Postgres, pool)
    } else if url.starts_with("sqlite:") {
        (Dialect::Sqlite, open_sqlite(url).await?)
    } else {
        return Err(StoreError::Refused(format!(
            "unsupported database URL scheme in '{}': use sqlite:PATH or postgres://…",
            url.split(':').next().unwrap_or_default()
        )));
    };
    Ok(Store::with_writers(pool, dialect, url))
}

/// The SQLite pool: one file, created if missing, in WAL mode so readers (long-polls, the
/// dashboard) never wait for the writer, with `synchronous=FULL`: a commit is fsynced
/// before it is acknowledged, so every acknowledged write survives a power cut, not only a
/// process crash. FULL costs write throughput (about 1k commits/s here), which the design
/// avoids needing: idle polls write nothing, last-seen times are flushed in batches, and
/// claims and event reports are group-committed.
async fn open_sqlite(url: &str) -> StoreResult<AnyPool> {
    let url = if url.contains("mode=") || url.contains(":memory:") {
        url.to_owned()
    } else {
        format!("{url}{}mode=rwc", if url.contains('?') { '&' } else { '?' })
    };
    let pool = AnyPoolOptions::new()
        .max_connections(8)
        .after_connect(|conn, _| {
            Box::pin(async move {
                use sqlx::Executor as _;
                conn.execute(
                    "pragma journal_mode = wal; pragma synchronous = full; pragma busy_timeout = 10000; \
                     pragma foreign_keys = on; pragma mmap_size = 1073741824",
                )
                .await?;
                Ok(())
            })
        })
        .connect(&url)
        .await?;
    sqlx::migrate!("../migrations/sqlite").run(&pool).await?;
    Ok(pool)
}

impl Store {
    /// The store over `pool`, with the group commits of claims and reports started.
    fn with_writers(pool: AnyPool, dialect: Dialect, url: &str) -> Self {
        let writes = Writes::new(pool.clone(), dialect);
        let (claim_writes, report_writes) = (writes.clone(), writes.clone());
        let writers = dialect.writers();
        Self {
            claims: GroupCommit::spawn("claim", group_commit::MAX_BATCH, writers, move |reqs| {
                agent_protocol::claim_batch(claim_writes.clone(), reqs)
            }),
            reports: GroupCommit::spawn("report", group_commit::MAX_BATCH, writers, move |reqs| {
                ingest::report_batch(report_writes.clone(), reqs)
            }),
            writes,
            pool,
            dialect,
            url: url.to_owned(),
        }
    }

    /// `sqlite` or `postgres`.
    pub fn backend(&self) -> &'static str {
        self.dialect.name()
    }

    /// A transaction that may write (see [`Writes::begin`]).
    async fn write_tx(&self) -> Result<Tx, sqlx::Error> {
        self.writes.begin().await
    }

    /// Runs one writing statement in a write transaction of its own, so that it takes its
    /// turn at SQLite's write gate like every other writer; the rows it affected.
    async fn write_one(&self, query: sqlx::query::Query<'_, sqlx::Any, sqlx::any::AnyArguments>) -> StoreResult<u64> {
        let mut tx = self.write_tx().await?;
        let affected = query.execute(&mut *tx).await?.rows_affected();
        tx.commit().await?;
        Ok(affected)
    }

    /// A cheap query that fails when the database is unreachable (`/healthz`).
    pub async fn ping(&self) -> StoreResult<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }
}

/// `$from, $from+1, …`: `n` numbered placeholders, for an `in (…)` list.
pub(crate) fn numbered(from: usize, n: usize) -> String {
    (from..from + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// `($1, $2, …), ($n+1, …)`: `rows` tuples of `columns` numbered placeholders. Written out
/// rather than built by `QueryBuilder`, whose `Any` placeholders are `?`, which Postgres
/// does not accept.
pub(crate) fn values_placeholders(rows: usize, columns: usize) -> String {
    let tuple = |r: usize| {
        let cols: Vec<String> = (1..=columns).map(|c| format!("${}", r * columns + c)).collect();
        format!("({})", cols.join(", "))
    };
    (0..rows).map(tuple).collect::<Vec<_>>().join(", ")
}

pub(crate) fn to_json<T: Serialize + ?Sized>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_else(|_| "null".into())
}

pub(crate) fn from_json<T: DeserializeOwned>(s: &str, what: &str) -> StoreResult<T> {
    serde_json::from_str(s).map_err(|e| StoreError::Corrupt(format!("{what}: {e}")))
}

/// A stored value that no longer parses.
pub(crate) fn corrupt(e: impl std::fmt::Display) -> StoreError {
    StoreError::Corrupt(e.to_string())
}

/// A stored id, typed.
pub(crate) fn stored_id<T: TryFrom<String, Error = fleetup_proto::id::IdError>>(s: &str) -> StoreResult<T> {
    T::try_from(s.to_owned()).map_err(corrupt)
}

#[cfg(test)]
mod tests {
    #[test]
    fn placeholders_are_numbered_across_rows() {
        assert_eq!(super::values_placeholders(2, 3), "($1, $2, $3), ($4, $5, $6)");
    }

    /// A writer waiting for SQLite's write lock gets it when the holder commits, before the
    /// holder's next transaction: writers take turns instead of racing from the busy handler
    /// (where a writer that begins again at once, as the report writer under a flood does,
    /// kept the lock from a sleeping claim).
    #[tokio::test(flavor = "current_thread")]
    async fn sqlite_writers_take_the_lock_in_turn() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(
            super::connect(&format!("sqlite:{}", dir.path().join("t.db").display())).await.unwrap(),
        );
        let order = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let held = store.write_tx().await.unwrap();
        let waiter = tokio::spawn({
            let (store, order) = (store.clone(), order.clone());
            async move {
                let tx = store.write_tx().await.unwrap();
                order.lock().unwrap().push("waiter");
                tx.commit().await.unwrap();
            }
        });
        // One turn of this thread's runtime: the waiter asks for the lock and waits.
        tokio::task::yield_now().await;
        held.commit().await.unwrap();
        for _ in 0..20 {
            let tx = store.write_tx().await.unwrap();
            order.lock().unwrap().push("holder");
            tx.commit().await.unwrap();
        }
        waiter.await.unwrap();
        let order = order.lock().unwrap();
        assert_eq!(
            order.first(),
            Some(&"waiter"),
            "the lock went to the waiter first, then the holder again: {order:?}"
        );
    }
}

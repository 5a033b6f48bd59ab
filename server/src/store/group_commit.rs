//! Group commit: many callers' writes share one durable transaction.
//!
//! A durable commit costs an fsync (SQLite `synchronous=FULL`, Postgres `fsync=on`), about a
//! millisecond here, so one transaction per request caps a store at about 1,000 requests a
//! second however little each writes. A [`GroupCommit`] puts requests of one kind on a queue;
//! its writer tasks each take every request waiting (up to `max_batch`), hand them to the
//! batch function, which writes them all in one transaction and commits once, then answer
//! every caller with its own result. Nothing waits to fill a batch: a lone request is
//! written at once, and requests arriving during a commit form the next batch, so batches
//! grow exactly when the store is the bottleneck.
//!
//! The batch function decides per request (see [`batch_tx!`]): a request that
//! fails (stale fencing token, unknown job) is answered with its own error and has written
//! nothing, the others commit. If
//! the batch itself fails (the database is down, the commit fails) every request of it gets
//! [`StoreError::Batch`] and none was written. Durability is unchanged: a caller is answered
//! only after the commit that holds its write returned.
//!
//! Writers also bound the store connections a kind of write can hold: at most `writers`
//! at a time, whatever the number of callers, so a burst of requests queues here (cheaply,
//! and visible in `fleetup_group_commit_batch_size`) instead of in the connection pool.

use crate::store::{StoreError, StoreResult};
use std::future::Future;
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

/// A request waiting for its batch, with where to send its answer.
struct Pending<Req, Resp> {
    request: Req,
    reply: oneshot::Sender<StoreResult<Resp>>,
}

/// The queue of one kind of write and its writer tasks. Dropping it stops the writers once
/// the queue is empty.
pub struct GroupCommit<Req, Resp> {
    kind: &'static str,
    queue: mpsc::Sender<Pending<Req, Resp>>,
}

impl<Req, Resp> std::fmt::Debug for GroupCommit<Req, Resp> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GroupCommit").field("kind", &self.kind).finish_non_exhaustive()
    }
}

impl<Req: Send + 'static, Resp: Send + 'static> GroupCommit<Req, Resp> {
    /// Starts `writers` tasks that write batches of up to `max_batch` requests with `write`,
    /// which returns one result per request, in order. Must be called inside a Tokio runtime.
    pub fn spawn<F, Fut>(kind: &'static str, max_batch: usize, writers: usize, write: F) -> Self
    where
        F: Fn(Vec<Req>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = StoreResult<Vec<StoreResult<Resp>>>> + Send + 'static,
    {
        let max_batch = max_batch.max(1);
        let (queue, rx) = mpsc::channel(max_batch * writers.max(1) * 4);
        let rx = Arc::new(Mutex::new(rx));
        let write = Arc::new(write);
        for _ in 0..writers.max(1) {
            tokio::spawn(writer(kind, max_batch, rx.clone(), write.clone()));
        }
        Self { kind, queue }
    }

    /// Queues one request and waits until the transaction holding it has committed (or failed).
    pub async fn submit(&self, request: Req) -> StoreResult<Resp> {
        let (reply, answer) = oneshot::channel();
        let stopped = || StoreError::Batch(format!("the {} writer has stopped", self.kind));
        self.queue.send(Pending { request, reply }).await.map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }
}

/// One writer: takes what is queued, writes it as one batch, answers, repeats.
async fn writer<Req, Resp, F, Fut>(
    kind: &'static str,
    max_batch: usize,
    queue: Arc<Mutex<mpsc::Receiver<Pending<Req, Resp>>>>,
    write: Arc<F>,
) where
    F: Fn(Vec<Req>) -> Fut,
    Fut: Future<Output = StoreResult<Vec<StoreResult<Resp>>>>,
{
    let size = metrics::histogram!("fleetup_group_commit_batch_size", "kind" => kind);
    let mut batch = Vec::with_capacity(max_batch);
    loop {
        // The lock is held only while waiting for work: another writer can commit meanwhile.
        if queue.lock().await.recv_many(&mut batch, max_batch).await == 0 {
            return;
        }
        size.record(batch.len() as f64);
        let (requests, replies): (Vec<Req>, Vec<_>) = batch.drain(..).map(|p| (p.request, p.reply)).unzip();
        match write(requests).await {
            Ok(results) if results.len() == replies.len() => {
                for (reply, result) in replies.into_iter().zip(results) {
                    // The caller may have gone (client disconnected); its write stands.
                    let _ = reply.send(result);
                }
            }
            Ok(results) => {
                let why = format!("{} results for {} requests (a bug)", results.len(), replies.len());
                tracing::error!(kind, %why, "group commit");
                answer_all(replies, &why);
            }
            Err(e) => {
                tracing::warn!(kind, error = %e, "group commit failed; nothing of the batch was written");
                answer_all(replies, &e.to_string());
            }
        }
    }
}

fn answer_all<Resp>(replies: Vec<oneshot::Sender<StoreResult<Resp>>>, why: &str) {
    for reply in replies {
        let _ = reply.send(Err(StoreError::Batch(why.to_owned())));
    }
}

/// Most requests a group-commit transaction holds. A batch of claims or reports costs a few
/// statements per request plus one commit, so larger batches add latency without adding
/// much throughput once the commit is amortised.
pub(crate) const MAX_BATCH: usize = 256;

/// The body of a group-commit batch function: the requests written in one transaction
/// begun with `$begin`, in the order of `$key` (concurrent batches on Postgres lock rows in
/// the same order, so they cannot deadlock each other), then `$then` (optional: writes that
/// follow from all the results, before the commit), then one commit. Evaluates to the
/// results in the requests' order.
///
/// A request refused by validation (stale token, unknown job: [`StoreError::is_refusal`])
/// has written nothing, by the contract of the request functions, and is answered with its
/// refusal while the others go on. Any other error may have left part of the request written
/// (and on Postgres aborts the transaction): the transaction is rolled back, that request
/// is answered with its error, and the others are written again in a new transaction. No
/// savepoints: they cost two round trips per request, and on Postgres more than 64 in one
/// transaction overflow the subtransaction cache and slow every session.
macro_rules! batch_tx {
    ($begin:expr, $reqs:ident, key = |$k:ident| $key:expr, |$tx:ident, $r:ident| $body:expr) => {
        batch_tx!(
            $begin,
            $reqs,
            key = |$k| $key,
            |$tx, $r| $body,
            then = |_results| Ok::<(), $crate::store::StoreError>(())
        )
    };
    ($begin:expr, $reqs:ident, key = |$k:ident| $key:expr, |$tx:ident, $r:ident| $body:expr, then = |$results:ident| $then:expr) => {{
        let mut order: Vec<usize> = (0..$reqs.len()).collect();
        order.sort_by_key(|i| {
            let $k = &$reqs[*i];
            $key
        });
        let mut failed: Vec<Option<$crate::store::StoreError>> = Vec::new();
        failed.resize_with($reqs.len(), || None);
        'attempt: loop {
            let mut $tx = $begin.await?;
            let mut results = Vec::new();
            results.resize_with($reqs.len(), || None);
            for &i in &order {
                if failed[i].is_some() {
                    continue;
                }
                let $r = &$reqs[i];
                match $body {
                    Err(e) if !e.is_refusal() => {
                        $tx.rollback().await?;
                        failed[i] = Some(e);
                        continue 'attempt;
                    }
                    result => results[i] = Some(result),
                }
            }
            {
                let $results = &results;
                $then?;
            }
            $tx.commit().await?;
            break 'attempt Ok(results
                .into_iter()
                .zip(failed)
                .filter_map(|(result, error)| error.map(Err).or(result))
                .collect());
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::GroupCommit;
    use crate::store::StoreError;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Requests queued while a batch is being written are written together, each caller gets
    /// its own answer, and a failing request fails alone.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_share_batches_and_get_their_own_answers() {
        let batches = Arc::new(AtomicUsize::new(0));
        let first = Arc::new(AtomicUsize::new(0));
        let (gate_tx, gate_rx) = tokio::sync::watch::channel(false);
        let (counted, first_seen) = (batches.clone(), first.clone());
        let gc = Arc::new(GroupCommit::spawn("test", 64, 1, move |reqs: Vec<u32>| {
            let (counted, first_seen) = (counted.clone(), first_seen.clone());
            let mut gate = gate_rx.clone();
            async move {
                // The first batch waits for the gate so the others queue up behind it.
                let _ = first_seen.compare_exchange(0, reqs.len(), Ordering::SeqCst, Ordering::SeqCst);
                let _ = gate.wait_for(|open| *open).await;
                counted.fetch_add(1, Ordering::SeqCst);
                Ok(reqs
                    .into_iter()
                    .map(|r| if r % 10 == 3 { Err(StoreError::StaleLease(format!("{r} is stale"))) } else { Ok(r * 2) })
                    .collect())
            }
        }));
        let callers: Vec<_> = (0..40u32)
            .map(|r| {
                let gc = gc.clone();
                tokio::spawn(async move { (r, gc.submit(r).await) })
            })
            .collect();
        // Let every caller queue behind the first batch, then open the gate.
        let all_queued = async {
            loop {
                let queued = gc.queue.max_capacity() - gc.queue.capacity();
                let taken = first.load(Ordering::SeqCst);
                if taken > 0 && taken + queued == 40 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(10), all_queued).await.expect("callers queue");
        gate_tx.send(true).unwrap();
        for c in callers {
            let (r, result) = c.await.unwrap();
            match result {
                Ok(v) => assert_eq!(v, r * 2),
                Err(StoreError::StaleLease(m)) => assert_eq!((r % 10, m), (3, format!("{r} is stale"))),
                Err(e) => panic!("{r}: {e}"),
            }
        }
        let n = batches.load(Ordering::SeqCst);
        assert!(n <= 2, "40 requests queued behind one batch took {n} transactions");
    }

    /// A failed batch answers every caller with an error.
    #[tokio::test]
    async fn a_failed_batch_fails_each_of_its_requests() {
        let gc = GroupCommit::spawn("test", 8, 1, |_reqs: Vec<u32>| async {
            Err::<Vec<crate::store::StoreResult<u32>>, _>(StoreError::Corrupt("disk on fire".into()))
        });
        let err = gc.submit(1).await.unwrap_err();
        assert!(matches!(&err, StoreError::Batch(m) if m.contains("disk on fire")), "{err}");
    }
}

#[cfg(test)]
mod batch_tests {
    use crate::store::{StoreError, StoreResult};

    /// Writes `v`; 2 fails after writing (a database-like failure), 3 is refused before writing.
    async fn write(tx: &mut sqlx::Transaction<'static, sqlx::Sqlite>, v: i64) -> StoreResult<i64> {
        if v == 3 {
            return Err(StoreError::StaleLease("3 is stale".into()));
        }
        sqlx::query("insert into t (v) values ($1)").bind(v).execute(&mut **tx).await?;
        if v == 2 {
            return Err(StoreError::Corrupt("2 broke after writing".into()));
        }
        Ok(v * 10)
    }

    async fn batch(pool: &sqlx::SqlitePool, reqs: &[i64]) -> StoreResult<Vec<StoreResult<i64>>> {
        batch_tx!(pool.begin(), reqs, key = |r| *r, |tx, r| write(&mut tx, *r).await)
    }

    /// A request that fails after writing leaves nothing behind and fails alone; a refusal
    /// fails alone; the others are committed, and each answer is in its request's place.
    #[tokio::test]
    async fn a_failing_request_is_rolled_back_alone() {
        let pool = sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect("sqlite::memory:").await.unwrap();
        sqlx::query("create table t (v integer primary key)").execute(&pool).await.unwrap();
        let results = batch(&pool, &[4, 3, 2, 1]).await.unwrap();
        let shown: Vec<String> = results
            .iter()
            .map(|r| match r {
                Ok(v) => v.to_string(),
                Err(e) => e.to_string(),
            })
            .collect();
        assert_eq!(shown, ["40", "3 is stale", "corrupt stored data: 2 broke after writing", "10"]);
        let stored: Vec<(i64,)> = sqlx::query_as("select v from t order by v").fetch_all(&pool).await.unwrap();
        assert_eq!(stored, [(1,), (4,)]);
    }
}

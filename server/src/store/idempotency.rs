//! Idempotency keys of creating POSTs: claimed before the request runs (so two retries
//! racing each other cannot both run it), answered with the kept response afterwards.

use super::{Store, StoreResult};
use crate::model::Millis;

/// How long a key is remembered.
pub const KEEP_MS: Millis = 24 * 3600 * 1000;

/// What a key says about a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// New: run the request, then [`Store::finish_idempotency_key`] or release it.
    Run,
    /// Done before: answer this again.
    Replay {
        /// The status it answered.
        status: u16,
        /// The JSON body it answered.
        body: String,
    },
    /// The first request with this key has not answered yet (since this time).
    InProgress(Millis),
    /// The key was used for another route or body.
    Mismatch,
}

impl Store {
    /// Claims `key` of `actor` for a request to `route` with body hash `hash`.
    pub async fn claim_idempotency_key(
        &self,
        actor: &str,
        key: &str,
        route: &str,
        hash: &str,
        now: Millis,
    ) -> StoreResult<Claim> {
        let mut tx = self.write_tx().await?;
        sqlx::query("delete from idempotency_keys where created_at < $1").bind(now - KEEP_MS).execute(&mut *tx).await?;
        let inserted = sqlx::query(
            "insert into idempotency_keys (actor, key, route, request_hash, status, created_at) \
             values ($1, $2, $3, $4, 0, $5) on conflict (actor, key) do nothing",
        )
        .bind(actor)
        .bind(key)
        .bind(route)
        .bind(hash)
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        if inserted == 1 {
            return Ok(Claim::Run);
        }
        let row: Option<(String, String, i64, Option<String>, i64)> = sqlx::query_as(
            "select route, request_hash, status, body, created_at from idempotency_keys where actor = $1 and key = $2",
        )
        .bind(actor)
        .bind(key)
        .fetch_optional(&self.pool)
        .await?;
        Ok(match row {
            // Purged between the insert and the read: a request long ago; run this one.
            None => Box::pin(self.claim_idempotency_key(actor, key, route, hash, now)).await?,
            Some((r, h, _, _, _)) if r != route || h != hash => Claim::Mismatch,
            Some((_, _, 0, _, at)) => Claim::InProgress(at),
            Some((_, _, status, body, _)) => {
                Claim::Replay { status: u16::try_from(status).unwrap_or(500), body: body.unwrap_or_default() }
            }
        })
    }

    /// Keeps the answer of the request that claimed `key`.
    pub async fn finish_idempotency_key(&self, actor: &str, key: &str, status: u16, body: &str) -> StoreResult<()> {
        self.write_one(
            sqlx::query("update idempotency_keys set status = $3, body = $4 where actor = $1 and key = $2")
                .bind(actor)
                .bind(key)
                .bind(i64::from(status))
                .bind(body),
        )
        .await?;
        Ok(())
    }

    /// Forgets `key` (its request failed: a retry may run it again).
    pub async fn release_idempotency_key(&self, actor: &str, key: &str) -> StoreResult<()> {
        self.write_one(
            sqlx::query("delete from idempotency_keys where actor = $1 and key = $2 and status = 0")
                .bind(actor)
                .bind(key),
        )
        .await?;
        Ok(())
    }
}

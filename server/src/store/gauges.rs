//! What `/metrics` reads from the database at scrape time: counts that are true of the
//! database whatever this process did before (a restarted coordinator, or one of two on
//! one Postgres, reports the same numbers).

use super::{Store, StoreResult};
use crate::model::Millis;

/// Counts by state, and the fleet's size.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gauges {
    /// Jobs per stored state (only states that have jobs).
    pub jobs: Vec<(String, u64)>,
    /// Rollouts per stored state (only states that have rollouts).
    pub rollouts: Vec<(String, u64)>,
    /// Enrolled, not revoked.
    pub agents_enrolled: u64,
    /// Of those, seen at or after the horizon (by the stored last-seen time).
    pub agents_online: u64,
    /// Running or waiting jobs flagged stalled.
    pub jobs_stalled: u64,
}

impl Store {
    /// The scrape-time gauges; `online_since` is the oldest last-seen time that counts as
    /// online.
    pub async fn gauges(&self, online_since: Millis) -> StoreResult<Gauges> {
        let jobs: Vec<(String, i64)> =
            sqlx::query_as("select state, count(*) from jobs group by state").fetch_all(&self.pool).await?;
        let rollouts: Vec<(String, i64)> =
            sqlx::query_as("select state, count(*) from rollouts group by state").fetch_all(&self.pool).await?;
        let (enrolled, online): (i64, i64) = sqlx::query_as(
            "select count(*), coalesce(sum(case when last_seen >= $1 then 1 else 0 end), 0) from agents \
             where revoked_at is null",
        )
        .bind(online_since)
        .fetch_one(&self.pool)
        .await?;
        let count = |v: Vec<(String, i64)>| v.into_iter().map(|(s, n)| (s, n.max(0) as u64)).collect();
        Ok(Gauges {
            jobs: count(jobs),
            rollouts: count(rollouts),
            agents_enrolled: enrolled.max(0) as u64,
            agents_online: online.max(0) as u64,
            jobs_stalled: self.stalled_jobs().await?,
        })
    }
}

//! The event log: an outbox written in the transaction of the change it reports, read in id
//! order by the SSE stream and the webhook fan-out.
//!
//! Ids are monotonic, but on Postgres a transaction may commit after another that took a
//! higher id: a reader that only remembered "the last id seen" would skip the late one
//! for good. So every row keeps its writing transaction (`tx_id`), and readers take only
//! rows below the oldest transaction still running (`pg_snapshot_xmin`): whatever they see
//! has nothing left to arrive below it. (An event is written after its change's first
//! write, so its transaction's id is already assigned when its row id is drawn.) SQLite has
//! one writer: ids commit in order.

use super::{Dialect, Store, StoreResult, Tx, from_json, to_json};
use crate::model::to_time;
use fleetup_proto::webhooks::EventRecord;

/// Writes one event inside `tx` (the transaction of the change it reports).
pub(crate) async fn emit(
    tx: &mut Tx,
    event_type: &str,
    object_type: &str,
    object_id: &str,
    data: &serde_json::Value,
    now: i64,
) -> StoreResult<()> {
    sqlx::query("insert into event_log (type, object_type, object_id, payload, at) values ($1, $2, $3, $4, $5)")
        .bind(event_type)
        .bind(object_type)
        .bind(object_id)
        .bind(to_json(data))
        .bind(now)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A job event, with the job's rollout and server in its data.
pub(crate) async fn emit_job(
    tx: &mut Tx,
    event_type: &str,
    job_id: &str,
    mut data: serde_json::Value,
    now: i64,
) -> StoreResult<()> {
    let row: Option<(String, String, i64)> =
        sqlx::query_as("select rollout_id, agent_id, wave from jobs where id = $1")
            .bind(job_id)
            .fetch_optional(&mut **tx)
            .await?;
    if let (Some((rollout, agent, wave)), Some(map)) = (row, data.as_object_mut()) {
        map.entry("rollout_id").or_insert(rollout.into());
        map.entry("agent_id").or_insert(agent.into());
        map.entry("wave").or_insert(wave.into());
    }
    emit(tx, event_type, "job", job_id, &data, now).await
}

/// `rollout.state-changed` with the rollout's state and reason as the transaction left them.
pub(crate) async fn emit_rollout_state(tx: &mut Tx, rollout_id: &str, now: i64) -> StoreResult<()> {
    let row: Option<(String, Option<String>, i64)> =
        sqlx::query_as("select state, state_reason, current_wave from rollouts where id = $1")
            .bind(rollout_id)
            .fetch_optional(&mut **tx)
            .await?;
    let Some((state, reason, wave)) = row else { return Ok(()) };
    let data = serde_json::json!({ "rollout_id": rollout_id, "state": state, "reason": reason, "current_wave": wave });
    emit(tx, fleetup_proto::webhooks::ROLLOUT_STATE_CHANGED, "rollout", rollout_id, &data, now).await
}

/// `wave.opened`.
pub(crate) async fn emit_wave_opened(tx: &mut Tx, rollout_id: &str, wave: i64, now: i64) -> StoreResult<()> {
    let (size,): (i64,) =
        sqlx::query_as("select coalesce(max(size), 0) from waves where rollout_id = $1 and number = $2")
            .bind(rollout_id)
            .bind(wave)
            .fetch_one(&mut **tx)
            .await?;
    let data = serde_json::json!({ "rollout_id": rollout_id, "wave": wave, "size": size });
    emit(tx, fleetup_proto::webhooks::WAVE_OPENED, "rollout", rollout_id, &data, now).await
}

/// Rows readers may take: on Postgres only those below the oldest running transaction.
pub(crate) const fn settled_clause(dialect: Dialect) -> &'static str {
    match dialect {
        Dialect::Sqlite => "",
        Dialect::Postgres => " and tx_id < pg_snapshot_xmin(pg_current_snapshot())",
    }
}

/// An event row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct EventRow {
    pub id: i64,
    #[sqlx(rename = "type")]
    pub event_type: String,
    pub object_type: String,
    pub object_id: String,
    pub payload: String,
    pub at: i64,
}

impl EventRow {
    pub(crate) fn to_record(&self) -> StoreResult<EventRecord> {
        Ok(EventRecord {
            id: self.id as u64,
            event_type: self.event_type.clone(),
            object_type: self.object_type.clone(),
            object_id: self.object_id.clone(),
            at: to_time(self.at),
            data: from_json(&self.payload, "event payload")?,
        })
    }
}

impl Store {
    /// Up to `limit` settled events after `after`, in id order, of these types (empty: any).
    #[tracing::instrument(skip_all)]
    pub async fn events_after(&self, after: u64, types: &[String], limit: u64) -> StoreResult<Vec<EventRecord>> {
        let sql = format!(
            "select id, type, object_type, object_id, payload, at from event_log where id > $1{} \
             and ($2 = '' or (',' || $2 || ',') like ('%,' || type || ',%')) order by id limit $3",
            settled_clause(self.dialect)
        );
        let rows: Vec<EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(i64::try_from(after).unwrap_or(i64::MAX))
            .bind(types.join(","))
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(EventRow::to_record).collect()
    }

    /// The id of the newest settled event (0 when there is none).
    pub async fn last_event_id(&self) -> StoreResult<u64> {
        let sql = format!("select coalesce(max(id), 0) from event_log where 1 = 1{}", settled_clause(self.dialect));
        let (id,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_one(&self.pool).await?;
        Ok(id as u64)
    }
}

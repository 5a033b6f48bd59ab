//! The audit log: written in the transaction of the mutation it records (a failed audit
//! write fails the mutation), read newest first.

use super::rows::AuditRow;
use super::{NewAudit, Store, StoreResult, Tx, to_json};
use crate::model::AuditEntry;

/// Writes one audit record inside `tx`.
pub(crate) async fn record(tx: &mut Tx, a: &NewAudit, now: i64) -> StoreResult<()> {
    sqlx::query(
        "insert into audit_log (id, at, actor, action, object_type, object_id, detail) values ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(fleetup_proto::id::new_id())
    .bind(now)
    .bind(&a.actor)
    .bind(&a.action)
    .bind(&a.object_type)
    .bind(&a.object_id)
    .bind(to_json(&a.detail))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Audit records, newest first, optionally of one object.
    #[tracing::instrument(skip_all)]
    pub async fn list_audit(&self, limit: u64, object_id: Option<&str>) -> StoreResult<Vec<AuditEntry>> {
        let rows: Vec<AuditRow> = sqlx::query_as(
            "select id, at, actor, action, object_type, object_id, detail from audit_log \
             where ($1 = '' or object_id = $1) order by at desc, id desc limit $2",
        )
        .bind(object_id.unwrap_or_default())
        .bind(limit as i64)
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(AuditRow::to_entry).collect()
    }
}

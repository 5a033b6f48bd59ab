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

/// Which audit records to list: every field is optional (empty matches all).
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// Exactly this actor (`user:ada`, `token:ci`, `anonymous`, …).
    pub actor: String,
    /// Exactly this action (`rollout.start`, `session.login-failed`, …).
    pub action: String,
    /// This object id, or every object of this type (`rollout`, `user`, …).
    pub object: String,
    /// Only records older than this one (the keyset cursor: its time and id).
    pub before: Option<(i64, String)>,
    /// Only records at or after this time.
    pub since: Option<i64>,
    /// Only records before this time.
    pub until: Option<i64>,
}

/// Writes the audit record of a mutation and commits the mutation with it: the one way a
/// store call that changes something on an operator's behalf ends.
pub(crate) async fn commit_audited(mut tx: Tx, a: &NewAudit, now: i64) -> StoreResult<()> {
    record(&mut tx, a, now).await?;
    tx.commit().await?;
    Ok(())
}

impl Store {
    /// Up to `limit` audit records matching `f`, newest first. Pages are keyset pages
    /// (`before` = the last record shown), so page 100 costs what page 1 does.
    #[tracing::instrument(skip_all)]
    pub async fn audit_page(&self, f: &AuditFilter, limit: u64) -> StoreResult<Vec<AuditEntry>> {
        let (before_at, before_id) = f.before.clone().unwrap_or((i64::MAX, String::new()));
        let rows: Vec<AuditRow> = sqlx::query_as(
            "select id, at, actor, action, object_type, object_id, detail from audit_log \
             where ($1 = '' or actor = $1) and ($2 = '' or action = $2) \
             and ($3 = '' or object_id = $3 or object_type = $3) \
             and (at < $4 or (at = $4 and ($5 = '' or id < $5))) and at >= $7 and at < $8 \
             order by at desc, id desc limit $6",
        )
        .bind(&f.actor)
        .bind(&f.action)
        .bind(&f.object)
        .bind(before_at)
        .bind(before_id)
        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
        .bind(f.since.unwrap_or(i64::MIN))
        .bind(f.until.unwrap_or(i64::MAX))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(AuditRow::to_entry).collect()
    }

    /// Writes one audit record on its own: for events that change nothing else (a failed
    /// login, a lockout).
    #[tracing::instrument(skip_all)]
    pub async fn record_audit(&self, a: &NewAudit) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        record(&mut tx, a, crate::model::now_ms()).await?;
        tx.commit().await?;
        Ok(())
    }
}

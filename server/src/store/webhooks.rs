//! Webhook endpoints and their deliveries: created and deleted by operators (audited), fed
//! from the event log by the fan-out, claimed and recorded by the delivery worker
//! ([`crate::hooks`]).
//!
//! A delivery is one row per (endpoint, event). Claiming it moves its `next_attempt_at` a
//! lease ahead, so a coordinator that dies mid-request leaves it due again: delivery is at
//! least once, never lost. On Postgres the claim skips rows another replica holds.

use super::events::{EventRow, settled_clause};
use super::{Dialect, NewAudit, Store, StoreError, StoreResult, from_json, to_json};
use crate::model::to_time;
use fleetup_proto::webhooks::{DeliveryAttempt, DeliveryState, EventRecord, Webhook, WebhookDelivery};

/// A webhook row.
#[derive(Debug, sqlx::FromRow)]
struct WebhookRow {
    id: String,
    url: String,
    events: String,
    description: String,
    /// 0 or 1 (the `Any` driver reads no SQLite booleans).
    enabled: i64,
    created_by: String,
    created_at: i64,
}

impl WebhookRow {
    fn to_webhook(&self) -> StoreResult<Webhook> {
        Ok(Webhook {
            id: self.id.clone(),
            url: self.url.clone(),
            events: from_json(&self.events, "webhook events")?,
            description: self.description.clone(),
            enabled: self.enabled != 0,
            created_by: self.created_by.clone(),
            created_at: to_time(self.created_at),
        })
    }
}

/// A delivery row.
#[derive(Debug, sqlx::FromRow)]
struct DeliveryRow {
    id: String,
    event_id: i64,
    event_type: String,
    state: String,
    attempt_count: i64,
    next_attempt_at: Option<i64>,
    last_status: Option<i64>,
    last_error: Option<String>,
    attempts: String,
    created_at: i64,
    delivered_at: Option<i64>,
}

impl DeliveryRow {
    fn to_delivery(&self) -> StoreResult<WebhookDelivery> {
        let state = match self.state.as_str() {
            "pending" => DeliveryState::Pending,
            "delivered" => DeliveryState::Delivered,
            "failed" => DeliveryState::Failed,
            other => return Err(StoreError::Corrupt(format!("delivery state '{other}'"))),
        };
        Ok(WebhookDelivery {
            id: self.id.clone(),
            event_id: self.event_id as u64,
            event_type: self.event_type.clone(),
            state,
            attempt_count: self.attempt_count as u32,
            next_attempt_at: (state == DeliveryState::Pending).then(|| self.next_attempt_at.map(to_time)).flatten(),
            last_status: self.last_status.map(|s| s as u16),
            last_error: self.last_error.clone(),
            created_at: to_time(self.created_at),
            delivered_at: self.delivered_at.map(to_time),
            attempts: from_json(&self.attempts, "delivery attempts")?,
        })
    }
}

/// A new endpoint, validated by the use case.
#[derive(Debug, Clone)]
pub struct NewWebhook {
    /// Id.
    pub id: String,
    /// Where to POST.
    pub url: String,
    /// Event types (empty: all).
    pub events: Vec<String>,
    /// The signing secret.
    pub secret: String,
    /// A note.
    pub description: String,
    /// Whether it receives deliveries.
    pub enabled: bool,
    /// Who creates it.
    pub created_by: String,
}

/// A claimed delivery: what the worker sends.
#[derive(Debug, Clone)]
pub struct DueDelivery {
    /// The delivery.
    pub id: String,
    /// Its endpoint's URL.
    pub url: String,
    /// Its endpoint's secret.
    pub secret: String,
    /// This attempt's number (1 for the first).
    pub attempt: u32,
    /// The event.
    pub event: EventRecord,
}

/// How one attempt ended, as the worker decided.
#[derive(Debug, Clone)]
pub struct AttemptOutcome {
    /// The attempt's log entry.
    pub log: DeliveryAttempt,
    /// Delivered (2xx), retry at this time, or given up.
    pub next: NextStep,
}

/// What follows an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// The endpoint accepted it.
    Delivered,
    /// Try again at this time (unix ms).
    RetryAt(i64),
    /// No more attempts.
    GiveUp,
}

const WEBHOOK_COLUMNS: &str =
    "id, url, events, description, (case when enabled then 1 else 0 end) as enabled, created_by, created_at";
const DELIVERY_COLUMNS: &str = "id, event_id, event_type, state, attempt_count, next_attempt_at, last_status, \
                                last_error, attempts, created_at, delivered_at";

impl Store {
    /// Creates an endpoint (audited).
    #[tracing::instrument(skip_all)]
    pub async fn create_webhook(&self, w: &NewWebhook, now: i64, audit: &NewAudit) -> StoreResult<Webhook> {
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "insert into webhooks (id, url, events, secret, description, enabled, created_by, created_at) \
             values ($1, $2, $3, $4, $5, $6, $7, $8)",
        )
        .bind(&w.id)
        .bind(&w.url)
        .bind(to_json(&w.events))
        .bind(&w.secret)
        .bind(&w.description)
        .bind(w.enabled)
        .bind(&w.created_by)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        super::audit::commit_audited(tx, audit, now).await?;
        self.webhook(&w.id).await
    }

    /// Every endpoint, oldest first.
    #[tracing::instrument(skip_all)]
    pub async fn webhooks(&self) -> StoreResult<Vec<Webhook>> {
        let sql = format!("select {WEBHOOK_COLUMNS} from webhooks order by created_at, id");
        let rows: Vec<WebhookRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql)).fetch_all(&self.pool).await?;
        rows.iter().map(WebhookRow::to_webhook).collect()
    }

    /// One endpoint.
    #[tracing::instrument(skip_all)]
    pub async fn webhook(&self, id: &str) -> StoreResult<Webhook> {
        let sql = format!("select {WEBHOOK_COLUMNS} from webhooks where id = $1");
        let row: Option<WebhookRow> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(id).fetch_optional(&self.pool).await?;
        row.ok_or_else(|| StoreError::NotFound(format!("webhook {id} not found")))?.to_webhook()
    }

    /// Deletes an endpoint and its deliveries (audited).
    #[tracing::instrument(skip_all)]
    pub async fn delete_webhook(&self, id: &str, now: i64, audit: &NewAudit) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        sqlx::query("delete from webhook_deliveries where webhook_id = $1").bind(id).execute(&mut *tx).await?;
        let done = sqlx::query("delete from webhooks where id = $1").bind(id).execute(&mut *tx).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound(format!("webhook {id} not found")));
        }
        super::audit::commit_audited(tx, audit, now).await
    }

    /// Up to `limit` deliveries of an endpoint, newest first, before the cursor
    /// `(created_at, id)`.
    #[tracing::instrument(skip_all)]
    pub async fn webhook_deliveries(
        &self,
        webhook_id: &str,
        before: Option<(i64, String)>,
        limit: u64,
    ) -> StoreResult<Vec<WebhookDelivery>> {
        let (before_at, before_id) = before.unwrap_or((i64::MAX, String::new()));
        let sql = format!(
            "select {DELIVERY_COLUMNS} from webhook_deliveries where webhook_id = $1 \
             and (created_at < $2 or (created_at = $2 and ($3 = '' or id < $3))) \
             order by created_at desc, id desc limit $4"
        );
        let rows: Vec<DeliveryRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(webhook_id)
            .bind(before_at)
            .bind(before_id)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(DeliveryRow::to_delivery).collect()
    }

    /// Queues the settled events the fan-out has not read yet (up to `limit`) for every
    /// enabled endpoint that subscribes to their type and existed when they happened;
    /// returns how many events it read.
    #[tracing::instrument(skip_all)]
    pub async fn fan_out_events(&self, now: i64, limit: u64) -> StoreResult<u64> {
        // A read first: an idle coordinator takes no write lock (SQLite has one).
        let (last,): (i64,) =
            sqlx::query_as("select last_event from webhook_cursor where name = 'fanout'").fetch_one(&self.pool).await?;
        let newer = format!("select count(*) from event_log where id > $1{}", settled_clause(self.dialect));
        let (newer,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(newer)).bind(last).fetch_one(&self.pool).await?;
        if newer == 0 {
            return Ok(0);
        }
        let mut tx = self.write_tx().await?;
        let cursor =
            format!("select last_event from webhook_cursor where name = 'fanout'{}", self.dialect.for_update());
        let (last,): (i64,) = sqlx::query_as(sqlx::AssertSqlSafe(cursor)).fetch_one(&mut *tx).await?;
        let sql = format!(
            "select id, type, object_type, object_id, payload, at from event_log where id > $1{} order by id limit $2",
            settled_clause(self.dialect)
        );
        let events: Vec<EventRow> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(last)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        let Some(newest) = events.last().map(|e| e.id) else {
            tx.rollback().await?;
            return Ok(0);
        };
        let hooks: Vec<(String, String, i64)> =
            sqlx::query_as("select id, events, created_at from webhooks where enabled = true")
                .fetch_all(&mut *tx)
                .await?;
        let hooks: Vec<(String, Vec<String>, i64)> = hooks
            .into_iter()
            .map(|(id, events, at)| Ok((id, from_json::<Vec<String>>(&events, "webhook events")?, at)))
            .collect::<StoreResult<_>>()?;
        for e in &events {
            for (hook, types, created) in &hooks {
                if e.at < *created || !(types.is_empty() || types.contains(&e.event_type)) {
                    continue;
                }
                sqlx::query(
                    "insert into webhook_deliveries (id, webhook_id, event_id, event_type, state, next_attempt_at, \
                     created_at, updated_at) values ($1, $2, $3, $4, 'pending', $5, $5, $5) \
                     on conflict (webhook_id, event_id) do nothing",
                )
                .bind(fleetup_proto::id::new_id())
                .bind(hook)
                .bind(e.id)
                .bind(&e.event_type)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
        }
        sqlx::query("update webhook_cursor set last_event = $1 where name = 'fanout'")
            .bind(newest)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(events.len() as u64)
    }

    /// Claims up to `limit` due deliveries for `lease_ms` (due again after it, should this
    /// coordinator stop before recording the attempt).
    #[tracing::instrument(skip_all)]
    pub async fn claim_deliveries(&self, now: i64, lease_ms: i64, limit: u64) -> StoreResult<Vec<DueDelivery>> {
        let due: Option<(i64,)> = sqlx::query_as(
            "select 1 from webhook_deliveries where state = 'pending' and next_attempt_at <= $1 limit 1",
        )
        .bind(now)
        .fetch_optional(&self.pool)
        .await?;
        if due.is_none() {
            return Ok(Vec::new());
        }
        let mut tx = self.write_tx().await?;
        let sql = format!(
            "update webhook_deliveries set next_attempt_at = $2, attempt_count = attempt_count + 1, updated_at = $1 \
             where id in (select id from webhook_deliveries where state = 'pending' and next_attempt_at <= $1 \
             order by next_attempt_at limit $3{}) \
             returning id, webhook_id, event_id, attempt_count",
            if self.dialect == Dialect::Postgres { " for update skip locked" } else { "" }
        );
        let claimed: Vec<(String, String, i64, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
            .bind(now)
            .bind(now + lease_ms)
            .bind(i64::try_from(limit).unwrap_or(i64::MAX))
            .fetch_all(&mut *tx)
            .await?;
        let mut out = Vec::with_capacity(claimed.len());
        for (id, hook, event_id, attempt) in claimed {
            let (url, secret): (String, String) = sqlx::query_as("select url, secret from webhooks where id = $1")
                .bind(&hook)
                .fetch_one(&mut *tx)
                .await?;
            let row: EventRow =
                sqlx::query_as("select id, type, object_type, object_id, payload, at from event_log where id = $1")
                    .bind(event_id)
                    .fetch_one(&mut *tx)
                    .await?;
            out.push(DueDelivery { id, url, secret, attempt: attempt as u32, event: row.to_record()? });
        }
        tx.commit().await?;
        Ok(out)
    }

    /// Records one attempt's outcome and what follows it.
    #[tracing::instrument(skip_all)]
    pub async fn record_attempt(&self, delivery_id: &str, outcome: &AttemptOutcome, now: i64) -> StoreResult<()> {
        let mut tx = self.write_tx().await?;
        let sql = format!("select attempts from webhook_deliveries where id = $1{}", self.dialect.for_update());
        let row: Option<(String,)> =
            sqlx::query_as(sqlx::AssertSqlSafe(sql)).bind(delivery_id).fetch_optional(&mut *tx).await?;
        // Deleted with its endpoint meanwhile: nothing to record.
        let Some((text,)) = row else { return Ok(()) };
        let mut log: Vec<DeliveryAttempt> = from_json(&text, "delivery attempts")?;
        log.push(outcome.log.clone());
        let (state, next, delivered) = match outcome.next {
            NextStep::Delivered => ("delivered", None, Some(now)),
            NextStep::RetryAt(at) => ("pending", Some(at), None),
            NextStep::GiveUp => ("failed", None, None),
        };
        sqlx::query(
            "update webhook_deliveries set state = $2, next_attempt_at = $3, last_status = $4, last_error = $5, \
             attempts = $6, delivered_at = $7, updated_at = $8 where id = $1",
        )
        .bind(delivery_id)
        .bind(state)
        .bind(next)
        .bind(outcome.log.status.map(i64::from))
        .bind(outcome.log.error.as_deref())
        .bind(to_json(&log))
        .bind(delivered)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Deletes events older than `before` that the fan-out has passed, and settled
    /// deliveries older than it (the retention of the log); returns (events, deliveries).
    #[tracing::instrument(skip_all)]
    pub async fn prune_events(&self, before: i64) -> StoreResult<(u64, u64)> {
        let mut tx = self.write_tx().await?;
        let deliveries =
            sqlx::query("delete from webhook_deliveries where state in ('delivered', 'failed') and created_at < $1")
                .bind(before)
                .execute(&mut *tx)
                .await?
                .rows_affected();
        // A pending delivery keeps its event: it is read when the delivery is sent.
        let events = sqlx::query(
            "delete from event_log where at < $1 \
             and id <= (select last_event from webhook_cursor where name = 'fanout') \
             and id not in (select event_id from webhook_deliveries)",
        )
        .bind(before)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok((events, deliveries))
    }
}

//! Agents: enrollment with a one-time token, authentication by secret hash, labels,
//! revocation, and the last-seen times flushed in batches.

use super::rows::{AgentRow, EnrollmentRow};
use super::{
    Dialect, NewAgent, NewAudit, Store, StoreError, StoreResult, Tx, from_json, numbered, to_json, values_placeholders,
};
use crate::model::{Agent, AgentId, Millis, now_ms};
use std::collections::BTreeMap;

/// Agents per statement of [`Store::touch_agents`] (2 parameters each).
const TOUCH_CHUNK: usize = 1000;

impl Store {
    /// Uses an enrollment token to create an agent.
    #[tracing::instrument(skip_all)]
    pub async fn enroll_agent(&self, token_hash: &str, agent: &NewAgent, now: i64) -> StoreResult<Agent> {
        let mut tx = self.write_tx().await?;
        let tok: Option<EnrollmentRow> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            concat!(enrollment_select!(), " where token_hash = $1{}"),
            self.dialect.for_update()
        )))
        .bind(token_hash)
        .fetch_optional(&mut *tx)
        .await?;
        let refused = |m: &str| Err(StoreError::Refused(m.to_owned()));
        let Some(tok) = tok else {
            return refused(
                "the enrollment token is not valid; ask an admin for a new one (POST /api/v1/enrollment-tokens)",
            );
        };
        if tok.revoked_at.is_some() {
            return refused("the enrollment token was revoked; ask an admin for a new one");
        }
        if tok.expires_at.is_some_and(|e| e <= now) {
            return refused("the enrollment token has expired; ask an admin for a new one");
        }
        if tok.max_uses.is_some_and(|m| tok.uses >= m) {
            return refused(
                "the enrollment token has been used as many times as it allows; ask an admin for a new one",
            );
        }
        sqlx::query("update enrollment_tokens set uses = uses + 1 where id = $1")
            .bind(&tok.id)
            .execute(&mut *tx)
            .await?;
        let mut labels = agent.labels.clone();
        labels.extend(from_json::<BTreeMap<String, String>>(&tok.labels, "token labels")?);
        sqlx::query("insert into agents (id, hostname, secret_hash, labels, facts, version, installed, enrolled_at, last_seen) values ($1, $2, $3, $4, $5, $6, '[]', $7, $7)")
            .bind(agent.id.as_str())
            .bind(&agent.hostname)
            .bind(&agent.secret_hash)
            .bind(to_json(&labels))
            .bind(to_json(&agent.facts))
            .bind(&agent.version)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let audit = NewAudit::new(
            &format!("enrollment-token:{}", tok.name),
            "agent.enroll",
            "agent",
            agent.id.as_str(),
            serde_json::json!({ "hostname": agent.hostname, "labels": labels, "version": agent.version }),
        );
        super::audit::commit_audited(tx, &audit, now).await?;
        self.get_agent(&agent.id).await
    }

    /// The live agent with this secret hash: (id, hostname).
    #[tracing::instrument(skip_all)]
    pub async fn agent_by_secret_hash(&self, secret_hash: &str) -> StoreResult<Option<(String, String)>> {
        Ok(sqlx::query_as("select id, hostname from agents where secret_hash = $1 and revoked_at is null")
            .bind(secret_hash)
            .fetch_optional(&self.pool)
            .await?)
    }

    /// All agents (revoked ones too), `online` left false.
    #[tracing::instrument(skip_all)]
    pub async fn list_agents(&self) -> StoreResult<Vec<Agent>> {
        let rows: Vec<AgentRow> =
            sqlx::query_as(concat!(agent_select!(), " order by hostname, id")).fetch_all(&self.pool).await?;
        rows.iter().map(AgentRow::to_agent).collect()
    }

    /// One agent.
    #[tracing::instrument(skip_all)]
    pub async fn get_agent(&self, id: &AgentId) -> StoreResult<Agent> {
        let row: Option<AgentRow> = sqlx::query_as(concat!(agent_select!(), " where id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?;
        row.ok_or_else(|| StoreError::NotFound(format!("agent {id} not found")))?.to_agent()
    }

    /// Replaces an agent's labels.
    #[tracing::instrument(skip_all)]
    pub async fn set_agent_labels(
        &self,
        id: &AgentId,
        labels: &BTreeMap<String, String>,
        audit: &NewAudit,
    ) -> StoreResult<Agent> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let n = sqlx::query("update agents set labels = $2 where id = $1")
            .bind(id.as_str())
            .bind(to_json(labels))
            .execute(&mut *tx)
            .await?
            .rows_affected();
        if n == 0 {
            return Err(StoreError::NotFound(format!("agent {id} not found")));
        }
        super::audit::commit_audited(tx, audit, now).await?;
        self.get_agent(id).await
    }

    /// Revokes an agent; its unstarted jobs are cancelled.
    #[tracing::instrument(skip_all)]
    pub async fn revoke_agent(&self, id: &AgentId, audit: &NewAudit) -> StoreResult<()> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let row: Option<(Option<i64>,)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "select revoked_at from agents where id = $1{}",
            self.dialect.for_update()
        )))
        .bind(id.as_str())
        .fetch_optional(&mut *tx)
        .await?;
        match row {
            None => return Err(StoreError::NotFound(format!("agent {id} not found"))),
            Some((Some(_),)) => return Err(StoreError::Conflict(format!("agent {id} is already revoked"))),
            Some((None,)) => {}
        }
        sqlx::query("update agents set revoked_at = $2 where id = $1")
            .bind(id.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        sqlx::query("update jobs set state = 'cancelled', error = 'agent revoked', finished_at = $2, updated_at = $2 where agent_id = $1 and state in ('pending', 'queued')")
            .bind(id.as_str())
            .bind(now)
            .execute(&mut *tx)
            .await?;
        super::audit::commit_audited(tx, audit, now).await?;
        Ok(())
    }

    /// Writes last-seen times collected in memory, in one transaction, one statement per
    /// [`TOUCH_CHUNK`] agents. One statement per agent was, on Postgres, a round trip each
    /// while the transaction held the rows already updated: after a 10,000-server wave's
    /// polls, seconds during which the dispatch pass and the reports ending a job (which
    /// lock their agent's row) waited (docs/benchmarks.md, issue 17 run 3).
    #[tracing::instrument(skip_all)]
    pub async fn touch_agents(&self, seen: &[(AgentId, Millis)]) -> StoreResult<()> {
        if seen.is_empty() {
            return Ok(());
        }
        // In id order, like report batches (see `report_batch`) and the dispatch pass: no
        // lock-order deadlock. On Postgres the rows are locked first, in that order: a
        // multi-row update locks in the order its plan reads them.
        let mut seen: Vec<&(AgentId, Millis)> = seen.iter().collect();
        seen.sort_unstable();
        let mut tx = self.write_tx().await?;
        for chunk in seen.chunks(TOUCH_CHUNK) {
            let ids: Vec<&str> = chunk.iter().map(|(id, _)| id.as_str()).collect();
            lock_agents(&mut tx, self.dialect, &ids).await?;
            let sql = format!(
                "with v (id, t) as (values {}) update agents set last_seen = v.t from v \
                 where agents.id = v.id and agents.last_seen < v.t",
                values_placeholders(chunk.len(), 2)
            );
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for (id, at) in chunk {
                q = q.bind(id.as_str()).bind(*at);
            }
            q.execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

/// Locks these agents' rows on Postgres, in the order given (callers pass them in id
/// order, so that two writers locking sets of agents never wait on each other in a
/// circle); a no-op on SQLite, whose write transaction already has the database to itself.
pub(super) async fn lock_agents(tx: &mut Tx, dialect: Dialect, ids: &[&str]) -> StoreResult<()> {
    if dialect != Dialect::Postgres || ids.is_empty() {
        return Ok(());
    }
    let lock = format!("select id from agents where id in ({}) order by id for update", numbered(1, ids.len()));
    let mut q = sqlx::query(sqlx::AssertSqlSafe(lock));
    for id in ids {
        q = q.bind(*id);
    }
    q.fetch_all(&mut **tx).await?;
    Ok(())
}

//! Packages: the record of each verified upload (the file itself is kept by sha256 in the
//! data dir), and who may download one.

use super::rows::PackageRow;
use super::{NewAudit, NewPackage, Store, StoreError, StoreResult, to_json};
use crate::model::{AgentId, Package, PackageId, now_ms};

/// One package, read on `conn` (inside a transaction or not).
pub(crate) async fn package_on(conn: &mut sqlx::AnyConnection, id: &PackageId) -> StoreResult<Package> {
    let row: Option<PackageRow> = sqlx::query_as("select id, name, version, sha256, size, key_id, manifest, uploaded_by, uploaded_at from packages where id = $1")
        .bind(id.as_str())
        .fetch_optional(&mut *conn)
        .await?;
    row.ok_or_else(|| StoreError::NotFound(format!("package {id} not found")))?.to_package()
}

impl Store {
    /// Records an uploaded package.
    #[tracing::instrument(skip_all)]
    pub async fn insert_package(&self, p: &NewPackage, audit: &NewAudit) -> StoreResult<Package> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        let existing: Option<(String,)> = sqlx::query_as("select id from packages where sha256 = $1")
            .bind(&p.sha256)
            .fetch_optional(&mut *tx)
            .await?;
        if let Some((id,)) = existing {
            return Err(StoreError::Conflict(format!("this package file was already uploaded as package {id}")));
        }
        sqlx::query("insert into packages (id, name, version, sha256, size, key_id, manifest, uploaded_by, uploaded_at) values ($1, $2, $3, $4, $5, $6, $7, $8, $9)")
            .bind(p.id.as_str())
            .bind(&p.name)
            .bind(&p.version)
            .bind(&p.sha256)
            .bind(p.size as i64)
            .bind(&p.key_id)
            .bind(to_json(&p.manifest))
            .bind(&p.uploaded_by)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        super::audit::commit_audited(tx, audit, now).await?;
        self.get_package(&p.id).await
    }

    /// All packages, newest first.
    #[tracing::instrument(skip_all)]
    pub async fn list_packages(&self) -> StoreResult<Vec<Package>> {
        let rows: Vec<PackageRow> = sqlx::query_as("select id, name, version, sha256, size, key_id, manifest, uploaded_by, uploaded_at from packages order by uploaded_at desc, id desc")
            .fetch_all(&self.pool)
            .await?;
        rows.iter().map(PackageRow::to_package).collect()
    }

    /// One package.
    #[tracing::instrument(skip_all)]
    pub async fn get_package(&self, id: &PackageId) -> StoreResult<Package> {
        package_on(&mut *self.pool.acquire().await?, id).await
    }

    /// May this agent download this package (it has a job installing it)?
    #[tracing::instrument(skip_all)]
    pub async fn agent_may_download(&self, agent_id: &AgentId, package_id: &PackageId) -> StoreResult<bool> {
        let (n,): (i64,) = sqlx::query_as("select count(*) from jobs j join rollouts r on r.id = j.rollout_id where j.agent_id = $1 and r.package_id = $2")
            .bind(agent_id.as_str())
            .bind(package_id.as_str())
            .fetch_one(&self.pool)
            .await?;
        Ok(n > 0)
    }
}

//! Package upload: streamed to a temporary file in the data dir (capped at
//! `--max-package-bytes`), verified against the server's trusted keys (signature, index,
//! every entry), then renamed to `packages/<sha256>.fleetup` and recorded. A package that
//! fails any check is refused with the reason, and nothing is kept.

use super::Actor;
use crate::app::App;
use crate::error::AppError;
use crate::model::{Package, PackageId, Role};
use crate::store::{NewAudit, NewPackage};
use axum::body::Body;
use futures_util::StreamExt as _;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt as _;

/// Where a package file is kept.
pub fn package_path(app: &App, sha256: &str) -> PathBuf {
    app.config.data_dir.join("packages").join(format!("{sha256}.fleetup"))
}

/// Receives an uploaded package: streams it to a temporary file beside the store (capped
/// at `--max-package-bytes`), verifies it against the server's trusted keys, keeps it by
/// its sha256 and records it, audited as `actor`; when the record (or its audit) fails, the
/// file goes too. The API and the dashboard both upload through here.
pub async fn ingest(app: &App, actor: &Actor, body: Body) -> Result<Package, AppError> {
    actor.require(Role::Operator)?;
    if app.trusted.is_empty() {
        return Err(AppError::Unprocessable(
            "no package-signing key is trusted by this server: start it with --trust KEY.pub".into(),
        ));
    }
    let dir = app.config.data_dir.join("packages");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| AppError::Internal(format!("creating {}: {e}", dir.display())))?;
    let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| AppError::Internal(format!("temporary file: {e}")))?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(|e| AppError::Internal(e.to_string()))?);
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| AppError::BadRequest(format!("reading the upload: {e}")))?;
        size += chunk.len() as u64;
        if size > app.config.max_package_bytes {
            return Err(AppError::TooLarge(format!(
                "the package exceeds the server's limit of {} bytes",
                app.config.max_package_bytes
            )));
        }
        file.write_all(&chunk).await.map_err(|e| AppError::Internal(format!("writing the upload: {e}")))?;
    }
    file.sync_all().await.map_err(|e| AppError::Internal(e.to_string()))?;
    drop(file);
    if size == 0 {
        return Err(AppError::BadRequest("the body is empty: send the package file as the request body".into()));
    }
    let trusted = app.trusted.clone();
    let path = tmp.path().to_path_buf();
    let verified = tokio::task::spawn_blocking(move || {
        let v = fleetup_proto::package::verify_file(&path, &trusted, &fleetup_proto::package::Limits::default())?;
        let (sha, size) = fleetup_proto::package::file_sha256(&path)?;
        Ok::<_, fleetup_proto::package::PackageError>((v, sha, size))
    })
    .await
    .map_err(|e| AppError::Internal(e.to_string()))?;
    let (v, sha256, size) = verified.map_err(|e| AppError::Unprocessable(format!("package refused: {e}")))?;
    let dest = package_path(app, &sha256);
    // Kept by an earlier upload of these bytes (then the record below refuses a second one).
    let existed = dest.exists();
    tmp.persist(&dest).map_err(|e| AppError::Internal(format!("storing the package: {e}")))?;
    let id = PackageId::new();
    let new = NewPackage {
        id: id.clone(),
        name: v.manifest.rollup.name.clone(),
        version: v.manifest.rollup.version.clone(),
        sha256: sha256.clone(),
        size,
        key_id: v.key_id.clone(),
        manifest: serde_json::to_value(&v.manifest).unwrap_or_default(),
        uploaded_by: actor.name.clone(),
    };
    let audit = NewAudit::new(
        &actor.name,
        "package.upload",
        "package",
        id.as_str(),
        serde_json::json!({ "name": new.name, "version": new.version, "sha256": sha256, "key_id": new.key_id }),
    );
    match app.store.insert_package(&new, &audit).await {
        Ok(package) => Ok(package),
        Err(e) => {
            // Not recorded (nor audited): keep no file of it either.
            if !existed && let Err(rm) = tokio::fs::remove_file(&dest).await {
                tracing::warn!(error = %rm, path = %dest.display(), "could not remove an unrecorded package file");
            }
            Err(e.into())
        }
    }
}

//! `POST /packages` (the body is the package file), `GET /packages`, `GET /packages/{id}`.
//!
//! An upload is streamed to a temporary file in the data dir, verified against the server's
//! trusted keys (signature, index, every entry), then renamed to `packages/<sha256>.fleetup`
//! and recorded. A package that fails any check is refused with 422 and the reason.

use crate::app::AppState;
use crate::auth::Caller;
use crate::error::{ApiError, ApiPath, ApiResult};
use crate::model::Package;
use crate::store::{NewAudit, NewPackage};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use futures_util::StreamExt as _;
use std::path::PathBuf;
use tokio::io::AsyncWriteExt as _;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/packages", get(list).post(upload).layer(DefaultBodyLimit::disable()))
        .route("/packages/{id}", get(show))
}

/// Where a package file is kept.
pub fn package_path(state: &AppState, sha256: &str) -> PathBuf {
    state.config.data_dir.join("packages").join(format!("{sha256}.fleetup"))
}

async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<Package>>> {
    Ok(Json(state.store.list_packages().await?))
}

async fn show(State(state): State<AppState>, ApiPath(id): ApiPath<String>) -> ApiResult<Json<Package>> {
    Ok(Json(state.store.get_package(&id).await?))
}

async fn upload(State(state): State<AppState>, caller: Caller, body: Body) -> ApiResult<(StatusCode, Json<Package>)> {
    caller.require(crate::model::Role::Operator)?;
    let package = ingest(&state, body, &caller.actor).await?;
    Ok((StatusCode::CREATED, Json(package)))
}

/// Receives an uploaded package: streams it to a temporary file beside the store (capped
/// at `--max-package-bytes`), verifies it against the server's trusted keys, keeps it by
/// its sha256 and records it, audited as `actor`. The API and the dashboard both upload
/// through here.
pub(crate) async fn ingest(state: &AppState, body: Body, actor: &str) -> ApiResult<Package> {
    if state.trusted.is_empty() {
        return Err(ApiError::Unprocessable(
            "no package-signing key is trusted by this server: start it with --trust KEY.pub".into(),
        ));
    }
    let dir = state.config.data_dir.join("packages");
    tokio::fs::create_dir_all(&dir)
        .await
        .map_err(|e| ApiError::Internal(format!("creating {}: {e}", dir.display())))?;
    let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| ApiError::Internal(format!("temporary file: {e}")))?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(|e| ApiError::Internal(e.to_string()))?);
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| ApiError::BadRequest(format!("reading the upload: {e}")))?;
        size += chunk.len() as u64;
        if size > state.config.max_package_bytes {
            return Err(ApiError::TooLarge(format!(
                "the package exceeds the server's limit of {} bytes",
                state.config.max_package_bytes
            )));
        }
        file.write_all(&chunk).await.map_err(|e| ApiError::Internal(format!("writing the upload: {e}")))?;
    }
    file.sync_all().await.map_err(|e| ApiError::Internal(e.to_string()))?;
    drop(file);
    if size == 0 {
        return Err(ApiError::BadRequest("the body is empty: send the package file as the request body".into()));
    }
    let trusted = state.trusted.clone();
    let path = tmp.path().to_path_buf();
    let verified = tokio::task::spawn_blocking(move || {
        let v = fleetup_proto::package::verify_file(&path, &trusted, &fleetup_proto::package::Limits::default())?;
        let (sha, size) = fleetup_proto::package::file_sha256(&path)?;
        Ok::<_, fleetup_proto::package::PackageError>((v, sha, size))
    })
    .await
    .map_err(|e| ApiError::Internal(e.to_string()))?;
    let (v, sha256, size) = verified.map_err(|e| ApiError::Unprocessable(format!("package refused: {e}")))?;
    let dest = package_path(state, &sha256);
    tmp.persist(&dest).map_err(|e| ApiError::Internal(format!("storing the package: {e}")))?;
    let id = crate::store::sql::new_id();
    let new = NewPackage {
        id: id.clone(),
        name: v.manifest.rollup.name.clone(),
        version: v.manifest.rollup.version.clone(),
        sha256: sha256.clone(),
        size,
        key_id: v.key_id.clone(),
        manifest: serde_json::to_value(&v.manifest).unwrap_or_default(),
        uploaded_by: actor.to_owned(),
    };
    let audit = NewAudit::new(
        actor,
        "package.upload",
        "package",
        &id,
        serde_json::json!({ "name": new.name, "version": new.version, "sha256": sha256, "key_id": new.key_id }),
    );
    Ok(state.store.insert_package(&new, &audit).await?)
}

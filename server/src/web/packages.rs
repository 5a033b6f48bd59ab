//! The packages page: uploaded rollups with their signer and a summary of the manifest,
//! and an upload (the page's script sends the file as the request body, as the API does;
//! verification is the API's: every byte against the server's trusted keys).

use super::session::User;
use super::view::{Nav, time};
use super::{WebError, WebResult};
use crate::app::AppState;
use crate::model::Role;
use crate::store::{NewAudit, NewPackage};
use askama::Template;
use askama_web::WebTemplate;
use axum::body::Body;
use axum::extract::State;
use axum::response::Redirect;
use futures_util::StreamExt as _;
use tokio::io::AsyncWriteExt as _;

/// One package.
#[derive(Debug)]
pub struct PackageLine {
    /// Id.
    pub id: String,
    /// `name version`.
    pub title: String,
    /// Description from the manifest.
    pub description: String,
    /// Signer key id.
    pub key_id: String,
    /// sha256 (hex).
    pub sha256: String,
    /// Size in KiB.
    pub size_kib: u64,
    /// Manifest summary lines.
    pub summary: Vec<String>,
    /// Who uploaded it, when.
    pub uploaded: String,
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "packages.html")]
pub struct PackagesPage {
    nav: Nav,
    packages: Vec<PackageLine>,
    trusted: Vec<String>,
}

fn summary(m: &serde_json::Value) -> Vec<String> {
    let count = |k: &str| m[k].as_array().map_or(0, Vec::len);
    let mut out = vec![format!(
        "{} file change(s), {} config patch(es), {} prerequisite(s)",
        count("files"),
        count("config_patches"),
        count("prerequisites")
    )];
    let services: Vec<&str> =
        m["services"].as_array().into_iter().flatten().filter_map(|s| s["name"].as_str()).collect();
    if !services.is_empty() {
        out.push(format!("services stopped and started: {}", services.join(", ")));
    }
    let crl: Vec<&str> =
        m["crl"]["endpoints"].as_array().into_iter().flatten().filter_map(serde_json::Value::as_str).collect();
    if !crl.is_empty() {
        out.push(format!("CRL endpoints probed: {}", crl.join(", ")));
    }
    if !m["webapp"].is_null() {
        out.push("deploys a web app (versioned directory, atomic switch)".into());
    }
    out
}

/// `GET /packages`.
pub async fn page(State(state): State<AppState>, user: User) -> WebResult<PackagesPage> {
    let packages = state
        .store
        .list_packages()
        .await?
        .into_iter()
        .map(|p| PackageLine {
            title: format!("{} {}", p.name, p.version),
            description: p.manifest["rollup"]["description"].as_str().unwrap_or_default().to_owned(),
            summary: summary(&p.manifest),
            uploaded: format!("{} · {}", p.uploaded_by, time(p.uploaded_at)),
            size_kib: p.size.div_ceil(1024),
            key_id: p.key_id,
            sha256: p.sha256,
            id: p.id,
        })
        .collect();
    let trusted = state.trusted.iter().map(fleetup_proto::PublicKey::key_id).collect();
    Ok(PackagesPage { nav: Nav::new(&user, "packages"), packages, trusted })
}

/// `POST /packages` (body: the package file; CSRF token in the `X-CSRF-Token` header).
pub async fn upload(State(state): State<AppState>, user: User, body: Body) -> WebResult<Redirect> {
    user.require(Role::Operator)?;
    if state.trusted.is_empty() {
        return Err(WebError::Unprocessable(
            "no package-signing key is trusted by this server: start it with --trust KEY.pub".into(),
        ));
    }
    let dir = state.config.data_dir.join("packages");
    tokio::fs::create_dir_all(&dir).await.map_err(|e| WebError::Internal(format!("{}: {e}", dir.display())))?;
    let tmp = tempfile::NamedTempFile::new_in(&dir).map_err(|e| WebError::Internal(format!("temporary file: {e}")))?;
    let mut file = tokio::fs::File::from_std(tmp.reopen().map_err(|e| WebError::Internal(e.to_string()))?);
    let mut stream = body.into_data_stream();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| WebError::BadRequest(format!("reading the upload: {e}")))?;
        size += chunk.len() as u64;
        if size > state.config.max_package_bytes {
            return Err(WebError::Unprocessable(format!(
                "the package exceeds the server's limit of {} bytes",
                state.config.max_package_bytes
            )));
        }
        file.write_all(&chunk).await.map_err(|e| WebError::Internal(format!("writing the upload: {e}")))?;
    }
    file.sync_all().await.map_err(|e| WebError::Internal(e.to_string()))?;
    drop(file);
    if size == 0 {
        return Err(WebError::BadRequest("choose a package file first".into()));
    }
    let trusted = state.trusted.clone();
    let path = tmp.path().to_path_buf();
    let verified = tokio::task::spawn_blocking(move || {
        let v = fleetup_proto::package::verify_file(&path, &trusted, &fleetup_proto::package::Limits::default())?;
        let (sha, size) = fleetup_proto::package::file_sha256(&path)?;
        Ok::<_, fleetup_proto::package::PackageError>((v, sha, size))
    })
    .await
    .map_err(|e| WebError::Internal(e.to_string()))?;
    let (v, sha256, size) = verified.map_err(|e| WebError::Unprocessable(format!("package refused: {e}")))?;
    let dest = state.config.data_dir.join("packages").join(format!("{sha256}.fleetup"));
    tmp.persist(&dest).map_err(|e| WebError::Internal(format!("storing the package: {e}")))?;
    let id = crate::store::sql::new_id();
    let new = NewPackage {
        id: id.clone(),
        name: v.manifest.rollup.name.clone(),
        version: v.manifest.rollup.version.clone(),
        sha256: sha256.clone(),
        size,
        key_id: v.key_id.clone(),
        manifest: serde_json::to_value(&v.manifest).unwrap_or_default(),
        uploaded_by: user.actor(),
    };
    let audit = NewAudit::new(
        &user.actor(),
        "package.upload",
        "package",
        &id,
        serde_json::json!({ "name": new.name, "version": new.version, "sha256": sha256, "key_id": new.key_id }),
    );
    state.store.insert_package(&new, &audit).await?;
    Ok(Redirect::to("/packages"))
}

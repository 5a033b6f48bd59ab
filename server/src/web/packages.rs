//! The packages page: uploaded rollups with their signer and a summary of the manifest,
//! and an upload (the page's script sends the file as the request body, as the API does;
//! verification is the API's: every byte against the server's trusted keys).

use super::WebResult;
use super::session::User;
use super::view::{Nav, time};
use crate::app::AppState;
use askama::Template;
use askama_web::WebTemplate;
use axum::body::Body;
use axum::extract::State;
use axum::response::Redirect;

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
            id: p.id.to_string(),
        })
        .collect();
    let trusted = state.trusted.iter().map(fleetup_proto::PublicKey::key_id).collect();
    Ok(PackagesPage { nav: Nav::new(&user, "packages"), packages, trusted })
}

/// `POST /packages` (body: the package file; CSRF token in the `X-CSRF-Token` header).
pub async fn upload(State(state): State<AppState>, user: User, body: Body) -> WebResult<Redirect> {
    crate::ops::packages::ingest(&state, &user.actor(), body).await?;
    Ok(Redirect::to("/packages"))
}

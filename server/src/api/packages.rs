//! `POST /packages` (the body is the package file), `GET /packages`, `GET /packages/{id}`.
//!
//! An upload is verified against the server's trusted keys before it is kept
//! ([`crate::ops::packages::ingest`]); a package that fails any check is refused with 422
//! and the reason.

use super::paging;
use crate::app::AppState;
use crate::error::{ApiPath, ApiQuery, ApiResult};
use crate::model::{Package, PackageId, Page, Role};
use crate::ops::{self, Actor};
use crate::routes::{Access, Routes};
use axum::Json;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::handler::Handler as _;
use axum::http::StatusCode;

pub fn routes() -> Routes {
    Routes::new()
        .get("/packages", Access::Token(Role::Viewer), list)
        .post("/packages", Access::Token(Role::Operator), upload.layer(DefaultBodyLimit::disable()))
        .get("/packages/{id}", Access::Token(Role::Viewer), show)
}

/// `GET /packages` query: filter, page size, cursor.
#[derive(Debug, serde::Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct PackagesQuery {
    /// Only packages of this rollup name.
    name: Option<String>,
    /// Page size, 1 to 5000 (default 500).
    limit: Option<u64>,
    /// The `next` of the previous page.
    cursor: Option<String>,
    /// Refused (400): listings page by cursor.
    offset: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/packages", operation_id = "listPackages", tag = "packages", params(PackagesQuery),
    responses((status = 200, description = "A page of packages, newest upload first", body = Page<Package>)))]
/// `GET /packages`: newest upload first, paged by cursor.
async fn list(State(state): State<AppState>, ApiQuery(q): ApiQuery<PackagesQuery>) -> ApiResult<Json<Page<Package>>> {
    let limit = super::page_limit(q.limit, 500)?;
    let scope = format!("{:?}", q.name);
    let after = paging::after(&paging::PACKAGES, &scope, q.cursor.as_deref(), q.offset.as_deref())?;
    let key = |p: &Package| vec![format!("{:020}", p.uploaded_at.timestamp_millis()), p.id.to_string()];
    // Newest first: a key below the cursor's comes after it.
    let items: Vec<Package> = state
        .store
        .list_packages()
        .await?
        .into_iter()
        .filter(|p| q.name.as_deref().is_none_or(|n| p.name == n))
        .filter(|p| after.as_ref().is_none_or(|after| key(p) < *after))
        .take(usize::try_from(limit).unwrap_or(usize::MAX).saturating_add(1))
        .collect();
    Ok(Json(paging::page(items, limit, &paging::PACKAGES, &scope, key)))
}

/// One package with its manifest.
#[utoipa::path(get, path = "/api/v1/packages/{id}", operation_id = "getPackage", tag = "packages", params(("id" = PackageId, Path)),
    responses((status = 200, description = "The package", body = Package)))]
async fn show(State(state): State<AppState>, ApiPath(id): ApiPath<PackageId>) -> ApiResult<Json<Package>> {
    Ok(Json(state.store.get_package(&id).await?))
}

/// Uploads a signed package: the body is the file. Verified against the trusted keys before it is kept.
#[utoipa::path(post, path = "/api/v1/packages", operation_id = "uploadPackage", tag = "packages",
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The package file (`fleetup-agent pack`)"),
    responses((status = 201, description = "Kept", body = Package),
        (status = 409, description = "The same rollup and version with other contents is already uploaded", body = fleetup_proto::problem::Problem, content_type = "application/problem+json"),
        (status = 422, description = "The package failed verification: the reason", body = fleetup_proto::problem::Problem, content_type = "application/problem+json")))]
async fn upload(State(state): State<AppState>, actor: Actor, body: Body) -> ApiResult<(StatusCode, Json<Package>)> {
    Ok((StatusCode::CREATED, Json(ops::packages::ingest(&state, &actor, body).await?)))
}

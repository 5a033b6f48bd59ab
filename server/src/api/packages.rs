//! `POST /packages` (the body is the package file), `GET /packages`, `GET /packages/{id}`.
//!
//! An upload is verified against the server's trusted keys before it is kept
//! ([`crate::ops::packages::ingest`]); a package that fails any check is refused with 422
//! and the reason.

use crate::app::AppState;
use crate::error::{ApiPath, ApiResult};
use crate::model::{Package, PackageId, Role};
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

async fn list(State(state): State<AppState>) -> ApiResult<Json<Vec<Package>>> {
    Ok(Json(state.store.list_packages().await?))
}

async fn show(State(state): State<AppState>, ApiPath(id): ApiPath<PackageId>) -> ApiResult<Json<Package>> {
    Ok(Json(state.store.get_package(&id).await?))
}

async fn upload(State(state): State<AppState>, actor: Actor, body: Body) -> ApiResult<(StatusCode, Json<Package>)> {
    Ok((StatusCode::CREATED, Json(ops::packages::ingest(&state, &actor, body).await?)))
}

//! `Idempotency-Key` on creating POSTs (`POST /rollouts`, `POST /rollouts/{id}/retry-failed`):
//! a client that lost the answer (a timeout, a dropped link) sends the same request with
//! the same key again and gets the first answer back, marked `Idempotent-Replayed: true`,
//! instead of a second rollout.
//!
//! The key is claimed in the database before the request runs, so two retries racing each
//! other cannot both run it: the second is told the first is still running (409). A key
//! reused with another body or route is refused (422). A request that fails forgets its
//! key (a retry runs it again); keys are per caller and kept 24 hours. Enrollment tokens
//! are not covered: their answer holds a secret, which is never stored.

use crate::app::AppState;
use crate::error::{ApiResult, AppError};
use crate::ops::Actor;
use crate::store::idempotency::Claim;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse as _, Response};
use sha2::{Digest as _, Sha256};

/// The request header.
pub const HEADER: &str = "idempotency-key";

/// Runs `run` at most once per key: see the module docs. Without the header, just runs it.
pub async fn once<T: serde::Serialize>(
    state: &AppState,
    actor: &Actor,
    headers: &HeaderMap,
    route: &str,
    request: &impl serde::Serialize,
    run: impl Future<Output = ApiResult<(StatusCode, T)>>,
) -> ApiResult<Response> {
    let Some(key) = headers.get(HEADER) else {
        let (status, body) = run.await?;
        return Ok((status, axum::Json(body)).into_response());
    };
    let key = key
        .to_str()
        .ok()
        .filter(|k| (1..=255).contains(&k.len()) && k.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or_else(|| {
            AppError::BadRequest(
                "Idempotency-Key must be 1 to 255 visible ASCII characters (a fresh UUID per request is a good choice)"
                    .into(),
            )
        })?;
    let hash = hex::encode(Sha256::digest(serde_json::to_vec(request).unwrap_or_default()));
    let now = crate::model::now_ms();
    match state.store.claim_idempotency_key(&actor.name, key, route, &hash, now).await? {
        Claim::Run => match run.await {
            Ok((status, body)) => {
                let text = serde_json::to_string(&body).unwrap_or_default();
                if let Err(e) = state.store.finish_idempotency_key(&actor.name, key, status.as_u16(), &text).await {
                    // It ran: say so; a retry with the key will be told it is still running.
                    tracing::error!(error = %e, key, "keeping the answer of an idempotent request failed");
                }
                Ok(answer(status, text, false))
            }
            Err(e) => {
                if let Err(release) = state.store.release_idempotency_key(&actor.name, key).await {
                    tracing::error!(error = %release, key, "releasing the Idempotency-Key of a failed request failed");
                }
                Err(e)
            }
        },
        Claim::Replay { status, body } => {
            Ok(answer(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR), body, true))
        }
        Claim::InProgress(since) => Err(AppError::Conflict(format!(
            "the request with Idempotency-Key '{key}' that started {} s ago has not answered yet: retry in a moment \
             with the same key (if it never answers, look the rollout up by name before using a new key)",
            (now - since).max(0) / 1000
        ))),
        Claim::Mismatch => Err(AppError::Unprocessable(format!(
            "Idempotency-Key '{key}' was used for another request (another route or body): use a new key for a new \
             request, the same key only to repeat one exactly"
        ))),
    }
}

fn answer(status: StatusCode, body: String, replayed: bool) -> Response {
    let mut resp = (status, body).into_response();
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    if replayed {
        resp.headers_mut().insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

//! The rollouts list (the home page) and the rollout controls (start, pause, resume,
//! approve, cancel, retry failed). Controls are plain forms that redirect back to the
//! rollout, so they work without JavaScript.

use super::session::User;
use super::view::{Badge, Nav, Summary};
use super::{WebResult, confirm, form_pairs};
use crate::app::AppState;
use crate::domain::rollout::RolloutAction;
use crate::error::AppError;
use crate::model::{Rollout, RolloutId};
use crate::ops;
use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Redirect, Response};

/// One line of the list.
#[derive(Debug)]
pub struct Line {
    /// The rollout.
    pub r: Rollout,
    /// Its state's badge.
    pub badge: Badge,
    /// Its counts.
    pub sum: Summary,
    /// Package name and version.
    pub package: String,
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "rollouts.html")]
pub struct ListPage {
    nav: Nav,
    lines: Vec<Line>,
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "_rollout_rows.html")]
pub struct Rows {
    lines: Vec<Line>,
}

async fn lines(state: &AppState) -> WebResult<Vec<Line>> {
    let packages = state.store.list_packages().await?;
    Ok(state
        .store
        .list_rollouts()
        .await?
        .into_iter()
        .take(200)
        .map(|r| Line {
            badge: Badge::of(&r),
            sum: Summary::of(&r),
            package: packages
                .iter()
                .find(|p| p.id == r.package_id)
                .map_or_else(|| r.package_id.to_string(), |p| format!("{} {}", p.name, p.version)),
            r,
        })
        .collect())
}

/// `GET /` and `GET /rollouts`.
pub async fn list(State(state): State<AppState>, user: User) -> WebResult<ListPage> {
    Ok(ListPage { nav: Nav::new(&user, "rollouts"), lines: lines(&state).await? })
}

/// `GET /rollouts/rows`: the list's rows (htmx refreshes them every few seconds).
pub async fn rows(State(state): State<AppState>, _user: User) -> WebResult<Rows> {
    Ok(Rows { lines: lines(&state).await? })
}

/// `POST /rollouts/{id}/action/{action}`: an action, or `retry-failed` (which stages a new
/// rollout and shows it).
pub async fn action(
    State(state): State<AppState>,
    user: User,
    Path((id, action)): Path<(RolloutId, String)>,
    body: Bytes,
) -> WebResult<Response> {
    let actor = user.actor();
    let back = format!("/rollouts/{id}");
    if action == "retry-failed" {
        let new = ops::rollouts::retry_failed(&state, &actor, &id).await?;
        return Ok(Redirect::to(&format!("/rollouts/{}", new.id)).into_response());
    }
    let parsed =
        RolloutAction::parse(&action).ok_or_else(|| AppError::NotFound(format!("no rollout action '{action}'")))?;
    let form = form_pairs(&body);
    // Cancelling cannot be undone: asked first, with the sentence computed here (not taken
    // from the form), unless the form says it was confirmed.
    if parsed == RolloutAction::Cancel && !confirm::confirmed(&form) {
        let r = state.store.get_rollout(&id).await?;
        let url = format!("/rollouts/{id}/action/{action}");
        return Ok(confirm::page(&user, &url, &back, &form, super::detail::cancel_question(&r)).into_response());
    }
    ops::rollouts::act(&state, &actor, &id, parsed, None).await?;
    Ok(Redirect::to(&back).into_response())
}

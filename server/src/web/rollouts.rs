//! The rollouts list (the home page) and the rollout controls (start, pause, resume,
//! approve, cancel, retry failed). Controls are plain forms that redirect back to the
//! rollout, so they work without JavaScript.

use super::session::User;
use super::view::{Nav, Summary, rollout_class};
use super::{WebError, WebResult};
use crate::app::AppState;
use crate::model::{Role, Rollout, Targets};
use crate::store::{NewAudit, NewRollout, RolloutAction};
use askama::Template;
use askama_web::WebTemplate;
use axum::extract::{Path, State};
use axum::response::Redirect;

/// One line of the list.
#[derive(Debug)]
pub struct Line {
    /// The rollout.
    pub r: Rollout,
    /// Its state's class.
    pub class: &'static str,
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
            class: rollout_class(r.state),
            sum: Summary::of(&r),
            package: packages
                .iter()
                .find(|p| p.id == r.package_id)
                .map_or_else(|| r.package_id.clone(), |p| format!("{} {}", p.name, p.version)),
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

/// `POST /rollouts/{id}/action/{action}`.
pub async fn action(
    State(state): State<AppState>,
    user: User,
    Path((id, action)): Path<(String, String)>,
) -> WebResult<Redirect> {
    user.require(Role::Operator)?;
    let action = match action.as_str() {
        "start" => RolloutAction::Start,
        "pause" => RolloutAction::Pause,
        "resume" => RolloutAction::Resume,
        "approve" => RolloutAction::Approve,
        "cancel" => RolloutAction::Cancel,
        "retry-failed" => return retry_failed(&state, &user, &id).await,
        other => return Err(WebError::NotFound(format!("no rollout action '{other}'"))),
    };
    let audit =
        NewAudit::new(&user.actor(), &format!("rollout.{}", action.as_str()), "rollout", &id, serde_json::json!({}));
    let (_, wake) = state.store.rollout_action(&id, action, &audit).await?;
    state.wake_agents(&wake).await;
    state.scheduler_kick.notify_one();
    Ok(Redirect::to(&format!("/rollouts/{id}")))
}

/// Stages a new rollout of the failed, rolled-back and lost servers (as the API's
/// `retry-failed`), and shows it.
async fn retry_failed(state: &AppState, user: &User, id: &str) -> WebResult<Redirect> {
    let old = state.store.get_rollout(id).await?;
    let agents = crate::api::failed_agents(state, id).await?;
    if agents.is_empty() {
        return Err(WebError::Conflict(format!("rollout {id} has no failed, rolled-back or lost job to retry")));
    }
    let mut spec = old.spec.clone();
    spec.name = format!("{} (retry of failed)", old.spec.name);
    spec.targets = Targets { agents: Some(agents), labels: None };
    let plan = super::stage::plan(state, &spec).await.map_err(WebError::Unprocessable)?;
    let new_id = crate::store::sql::new_id();
    let audit = NewAudit::new(
        &user.actor(),
        "rollout.retry-failed",
        "rollout",
        &new_id,
        serde_json::json!({ "spec": spec, "retry_of": id }),
    );
    let lease_secs = spec.lease_secs.unwrap_or(state.config.lease_secs).max(1);
    let new = NewRollout {
        id: new_id.clone(),
        spec,
        wave_sizes: plan.wave_sizes,
        jobs: plan.jobs,
        lease_ms: i64::try_from(lease_secs).unwrap_or(60) * 1000,
        retry_of: Some(id.to_owned()),
        created_by: user.actor(),
    };
    state.store.create_rollout(&new, &audit).await?;
    Ok(Redirect::to(&format!("/rollouts/{new_id}")))
}

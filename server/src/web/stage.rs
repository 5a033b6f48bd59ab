//! Staging a rollout: the form, a live preview of which servers fall in which wave, and
//! the creation of the draft (started from its page). The plan is the API's: the form is
//! read into a [`RolloutSpec`] and handed to the same use cases ([`crate::ops::rollouts`]).

use super::session::User;
use super::view::Nav;
use super::{WebResult, form_pairs};
use crate::app::AppState;
use crate::error::AppError;
use crate::model::{
    Agent, AgentId, ErrorAction, MaintenanceWindow, Package, RetryPolicy, Role, RolloutSpec, Targets, Threshold,
    WaveSpec, WindowRange,
};
use crate::ops;
use askama::Template;
use askama_web::WebTemplate;
use axum::body::Bytes;
use axum::extract::State;
use axum::response::Redirect;
use fleetup_proto::agent_api::{CrlRemediation, FilesInUsePolicy, JobPolicies, WarningPolicy};
use std::collections::BTreeMap;

fn threshold(s: &str, what: &str) -> Result<Threshold, String> {
    let s = s.trim();
    if s.ends_with('%') {
        Ok(Threshold::Percent(s.to_owned()))
    } else {
        s.parse()
            .map(Threshold::Count)
            .map_err(|_| format!("{what}: write a number of servers or a percentage like 10%"))
    }
}

/// Reads the stage form into a spec; `agents` resolves the host names of "these servers".
pub fn spec_from_form(pairs: &[(String, String)], agents: &[Agent]) -> Result<RolloutSpec, String> {
    let get = |k: &str| pairs.iter().find(|(n, _)| n == k).map_or("", |(_, v)| v.as_str()).trim().to_owned();
    let all = |k: &str| pairs.iter().filter(|(n, _)| n == k).map(|(_, v)| v.trim().to_owned()).collect::<Vec<_>>();
    let targets = if get("target_mode") == "agents" {
        let mut ids: Vec<AgentId> = Vec::new();
        for name in get("hosts").split([',', ' ', '\n', '\r', '\t']).filter(|n| !n.is_empty()) {
            let agent = agents
                .iter()
                .find(|a| a.hostname == name || a.id.as_str() == name)
                .ok_or_else(|| format!("no enrolled server is called '{name}': check the name on the Agents page"))?;
            if !ids.contains(&agent.id) {
                ids.push(agent.id.clone());
            }
        }
        if ids.is_empty() {
            return Err("name the servers (host names, separated by commas or new lines), or target by labels".into());
        }
        Targets { agents: Some(ids), labels: None }
    } else {
        let mut labels = BTreeMap::new();
        for part in get("labels").split([',', ' ']).filter(|p| !p.is_empty()) {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("label selector '{part}': write key=value, separated by commas"))?;
            labels.insert(k.trim().to_owned(), v.trim().to_owned());
        }
        Targets { agents: None, labels: Some(labels) }
    };
    let mut waves = Vec::new();
    for w in get("waves").split([',', ' ']).filter(|p| !p.is_empty()) {
        if w.ends_with('%') {
            waves.push(WaveSpec::Percent(w.to_owned()));
        } else {
            waves.push(WaveSpec::Count(
                w.parse().map_err(|_| format!("wave '{w}': write a number of servers or a percentage like 25%"))?,
            ));
        }
    }
    let concurrency = get("concurrency");
    let concurrency = if concurrency.is_empty() {
        1
    } else {
        concurrency.parse().map_err(|_| "concurrency must be a whole number".to_owned())?
    };
    let success = get("success_threshold");
    let error = get("error_threshold");
    let warning = match get("warning_policy").as_str() {
        "continue" => WarningPolicy::Continue,
        "cancel" => WarningPolicy::Cancel,
        _ => WarningPolicy::Ask,
    };
    let files_in_use = match get("files_in_use").as_str() {
        "retry" => FilesInUsePolicy::Retry {
            times: get("retry_times").parse().map_err(|_| "retry times must be a whole number".to_owned())?,
        },
        "ignore" => FilesInUsePolicy::Ignore,
        "exit" => FilesInUsePolicy::Exit,
        _ => FilesInUsePolicy::Ask,
    };
    let crl = if get("crl_remediation") == "hosts-file" { CrlRemediation::HostsFile } else { CrlRemediation::None };
    let window = if get("window_start").is_empty() {
        None
    } else {
        Some(MaintenanceWindow {
            time_zone: Some(get("window_time_zone")).filter(|z| !z.is_empty()),
            utc_offset_minutes: get("window_utc_offset").parse().unwrap_or(0),
            ranges: vec![WindowRange { days: all("window_day"), start: get("window_start"), end: get("window_end") }],
            cutoff_minutes: get("window_cutoff").parse().unwrap_or(0),
        })
    };
    Ok(RolloutSpec {
        name: get("name"),
        package_id: get("package_id").parse().map_err(|e: fleetup_proto::id::IdError| {
            if get("package_id").is_empty() { "choose a package".to_owned() } else { e.to_string() }
        })?,
        targets,
        waves: if waves.is_empty() { vec![WaveSpec::Percent("100%".into())] } else { waves },
        concurrency,
        success_threshold: if success.is_empty() {
            Threshold::Percent("100%".into())
        } else {
            threshold(&success, "success threshold")?
        },
        error_threshold: if error.is_empty() { None } else { Some(threshold(&error, "error threshold")?) },
        error_action: if get("error_action") == "abort" { ErrorAction::Abort } else { ErrorAction::Pause },
        approval_required: get("approval") == "on",
        policies: JobPolicies { warning, files_in_use, crl_remediation: crl },
        phase_timeouts: BTreeMap::new(),
        maintenance_window: window,
        lease_secs: None,
        delivery_timeout_secs: match get("delivery_timeout").as_str() {
            "" => None,
            t => Some(t.parse().map_err(|_| "the delivery timeout must be a whole number of seconds".to_owned())?),
        },
        undeliverable_is_failure: get("undeliverable_is_failure") == "on",
        start_at: match get("start_at").as_str() {
            "" => None,
            t => Some(
                chrono::DateTime::parse_from_rfc3339(t)
                    .map_err(|_| format!("start at '{t}' is not a time: write it like 2026-12-24T02:00:00+01:00"))?
                    .to_utc(),
            ),
        },
        soak_secs: match get("soak_secs").as_str() {
            "" => 0,
            t => t.parse().map_err(|_| "the soak time must be a whole number of seconds".to_owned())?,
        },
        retries: match get("retries").as_str() {
            "" | "0" => None,
            t => Some(RetryPolicy {
                times: t.parse().map_err(|_| "retries must be a whole number".to_owned())?,
                backoff_secs: match get("retry_backoff").as_str() {
                    "" => 30,
                    b => b.parse().map_err(|_| "the retry backoff must be a whole number of seconds".to_owned())?,
                },
                max_backoff_secs: 600,
            }),
        },
        late_joiners: get("late_joiners") == "on",
        allow_downgrade: get("allow_downgrade") == "on",
    })
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "stage.html")]
pub struct StagePage {
    nav: Nav,
    packages: Vec<Package>,
    /// Enrolled, not revoked.
    enrolled: usize,
}

/// `GET /rollouts/new`.
pub async fn form(State(state): State<AppState>, user: User) -> WebResult<StagePage> {
    user.require(Role::Operator)?;
    let enrolled = state.store.list_agents().await?.iter().filter(|a| !a.revoked).count();
    Ok(StagePage { nav: Nav::new(&user, "stage"), packages: state.store.list_packages().await?, enrolled })
}

/// One wave of the preview.
#[derive(Debug)]
pub struct PreviewWave {
    /// 1-based.
    pub number: usize,
    /// Servers in it.
    pub size: u64,
    /// Their host names (the first 50).
    pub hosts: Vec<String>,
}

#[derive(Debug, Template, WebTemplate)]
#[template(path = "_preview.html")]
pub struct Preview {
    error: Option<String>,
    waves: Vec<PreviewWave>,
    total: usize,
    skipped: usize,
    catch_all: bool,
    /// Servers the selector matched that the package is not for: (host, why), at most 20.
    left_out: Vec<(String, String)>,
    /// How many there are in all.
    left_out_count: usize,
    /// Targets that are offline now: how many, and the first names.
    offline: usize,
    offline_hosts: Vec<String>,
}

/// `POST /rollouts/preview`: which servers fall in which wave (nothing is written).
pub async fn preview(State(state): State<AppState>, body: Bytes) -> Preview {
    let pairs = form_pairs(&body);
    let known = match state.store.list_agents().await {
        Ok(a) => a,
        Err(e) => return Preview::error(AppError::from(e).to_string()),
    };
    let result = match spec_from_form(&pairs, &known) {
        Ok(mut spec) => {
            // The plan does not depend on the name; the form asks for it when staging.
            if spec.name.is_empty() {
                spec.name = "preview".into();
            }
            ops::rollouts::preview_over(&state, &spec, known).await.map_err(|e| e.to_string())
        }
        Err(e) => Err(e),
    };
    match result {
        Ok(ops::rollouts::Preview { plan: p, agents }) => {
            let names: std::collections::HashMap<&AgentId, &str> =
                agents.iter().map(|a| (&a.id, a.hostname.as_str())).collect();
            let name = |id: &AgentId| names.get(id).map_or_else(|| id.to_string(), |h| (*h).to_owned());
            let waves = p
                .wave_sizes
                .iter()
                .enumerate()
                .map(|(i, size)| PreviewWave {
                    number: i + 1,
                    size: *size,
                    hosts: p
                        .jobs
                        .iter()
                        .filter(|j| j.wave as usize == i + 1)
                        .take(50)
                        .map(|j| {
                            if j.skip { format!("{} (already on it: skipped)", name(&j.agent)) } else { name(&j.agent) }
                        })
                        .collect(),
                })
                .collect();
            let horizon = super::agents::offline_horizon(&state);
            let by_id: std::collections::HashMap<&AgentId, &Agent> = agents.iter().map(|a| (&a.id, a)).collect();
            let offline: Vec<String> = p
                .jobs
                .iter()
                .filter_map(|j| by_id.get(&j.agent).copied())
                .filter(|a| super::agents::status_of(&state, a, horizon).0 != "online")
                .map(|a| a.hostname.clone())
                .collect();
            Preview {
                error: None,
                waves,
                total: p.jobs.len(),
                skipped: p.jobs.iter().filter(|j| j.skip).count(),
                catch_all: p.catch_all,
                left_out: p.left_out.iter().take(20).map(|(id, why)| (name(id), why.clone())).collect(),
                left_out_count: p.left_out.len(),
                offline: offline.len(),
                offline_hosts: offline.into_iter().take(10).collect(),
            }
        }
        Err(e) => Preview::error(e),
    }
}

impl Preview {
    fn error(e: String) -> Self {
        Self {
            error: Some(e),
            waves: Vec::new(),
            total: 0,
            skipped: 0,
            catch_all: false,
            left_out: Vec::new(),
            left_out_count: 0,
            offline: 0,
            offline_hosts: Vec::new(),
        }
    }
}

/// `POST /rollouts`: stages the rollout (state draft) and shows it.
pub async fn create(State(state): State<AppState>, user: User, body: Bytes) -> WebResult<Redirect> {
    user.require(Role::Operator)?;
    let known = state.store.list_agents().await?;
    let spec = spec_from_form(&form_pairs(&body), &known).map_err(AppError::Unprocessable)?;
    let rollout = ops::rollouts::stage(&state, &user.actor(), spec, None).await?;
    Ok(Redirect::to(&format!("/rollouts/{}", rollout.id)))
}

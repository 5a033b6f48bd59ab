//! `rollout apply FILE`: a spec file kept in git becomes a staged draft, once.
//!
//! Idempotent by name, because the name is what a person keeps in the file: applying the
//! same file again finds the rollout of that name and reports it unchanged; a changed file
//! under a name already staged is refused (a staged plan is never edited in place — the
//! jobs are planned from it), with the fields that differ. The create itself carries an
//! `Idempotency-Key` derived from the spec, so a retry after a lost answer cannot stage it
//! twice either.

use crate::fail::{Failure, Outcome};
use crate::output::{Out, labels};
use crate::plan::{self, HOSTS_SHOWN, Plan};
use crate::spec::{self, PackageRef, SpecFile, TargetRef};
use fleetup_client::{AgentQuery, Client, JobFilter};
use fleetup_proto::api::{Agent, JobSummary, Package, Rollout, RolloutSpec};
use fleetup_proto::id::AgentId;
use serde::Serialize;
use sha2::Digest as _;
use std::path::Path;

/// What apply did, as `--output json` prints it.
#[derive(Debug, Serialize)]
struct Applied<'a> {
    /// `created`, `unchanged` or `would-create` (`--dry-run`).
    action: &'a str,
    /// The plan.
    plan: &'a Plan,
    /// The rollout (not with `--dry-run`).
    #[serde(skip_serializing_if = "Option::is_none")]
    rollout: Option<&'a Rollout>,
}

/// `rollout apply FILE [--dry-run]`.
pub async fn apply(client: &Client, out: Out, file: &Path, dry_run: bool) -> Outcome {
    let parsed = spec::load(file).map_err(|e| Failure::usage(e.to_string()))?;
    let shown = file.display().to_string();
    let package = resolve_package(client, &parsed.package).await.map_err(|f| f.context(&shown))?;
    let (agent_ids, selector, hosts) = resolve_targets(client, &parsed).await.map_err(|f| f.context(&shown))?;
    let spec = parsed.resolved(package.id.clone(), agent_ids);

    if let Some(existing) = staged_named(client, &spec.name).await? {
        if existing.spec != spec {
            return Err(Failure::refused(format!(
                "{shown}: a rollout named \"{}\" already exists ({}, {}) with another spec — {}. \
                 A staged plan does not change: give this one a new name (or cancel the old one first)",
                spec.name,
                existing.id,
                existing.state.as_str(),
                differences(&existing.spec, &spec)
            )));
        }
        let plan = staged_plan(client, &existing, &package, selector).await?;
        out.show(&Applied { action: "unchanged", plan: &plan, rollout: Some(&existing) }, || {
            format!(
                "{}rollout \"{}\" ({}) is unchanged: already staged from this spec, now {}",
                plan::render(&plan),
                existing.name,
                existing.id,
                existing.state.as_str()
            )
        });
        return Ok(());
    }

    if dry_run {
        let plan = plan::local(&spec, &package, selector, &hosts);
        out.show(&Applied { action: "would-create", plan: &plan, rollout: None }, || {
            format!("{}dry run: nothing staged", plan::render(&plan))
        });
        return Ok(());
    }

    let key = idempotency_key(&spec);
    let created = match client.create_rollout_once(&spec, &key).await {
        // One retry after a lost answer, with the same key: staged at most once.
        Err(fleetup_client::Error::Transport { .. }) => client.create_rollout_once(&spec, &key).await,
        other => other,
    }
    .map_err(|e| Failure::from(e).context(&format!("{shown}: staging \"{}\"", spec.name)))?;
    let r = created.rollout;
    let plan = staged_plan(client, &r, &package, selector).await?;
    out.show(&Applied { action: "created", plan: &plan, rollout: Some(&r) }, || {
        format!(
            "{}staged rollout \"{}\" as a draft: {}\nstart it with: fleetupctl rollout start {}",
            plan::render(&plan),
            r.name,
            r.id,
            r.id
        )
    });
    Ok(())
}

/// The package a spec names, from the coordinator.
async fn resolve_package(client: &Client, p: &PackageRef) -> Outcome<Package> {
    match p {
        PackageRef::Id(id) => client.package(id).await.map_err(|e| {
            if e.status() == Some(fleetup_client::StatusCode::NOT_FOUND) {
                Failure::refused(format!("package_id: no package {id} on the coordinator (fleetupctl packages list)"))
            } else {
                e.into()
            }
        }),
        PackageRef::Named { name, version } => {
            let all = client.packages_named(name).await?;
            all.iter().find(|p| &p.version == version).cloned().ok_or_else(|| {
                let have: Vec<&str> = all.iter().map(|p| p.version.as_str()).collect();
                let have = if have.is_empty() { "none".to_owned() } else { have.join(", ") };
                Failure::refused(format!(
                    "package: {name} {version} is not uploaded (versions of {name} there: {have}); \
                     upload it with: fleetupctl packages upload FILE"
                ))
            })
        }
    }
}

/// The agent ids to send (for hosts), how the targets were chosen, and the targeted
/// hostnames in the coordinator's order (for the local plan).
async fn resolve_targets(client: &Client, f: &SpecFile) -> Outcome<(Option<Vec<AgentId>>, String, Vec<String>)> {
    let usable = |a: &Agent| !a.revoked;
    match &f.targets {
        TargetRef::Labels(l) => {
            let q = AgentQuery { label: Some(labels(l)), ..AgentQuery::default() };
            let agents = client.agents_where(&q).await?;
            let hosts = agents.iter().filter(|a| usable(a)).map(|a| a.hostname.clone()).collect();
            Ok((None, format!("labels {}", labels(l)), hosts))
        }
        TargetRef::Agents(ids) => {
            let all = client.agents().await?;
            let mut hosts = Vec::new();
            for (i, id) in ids.iter().enumerate() {
                match all.iter().find(|a| &a.id == id) {
                    Some(a) if usable(a) => hosts.push(a.hostname.clone()),
                    Some(_) => return Err(Failure::refused(format!("targets.agents[{i}]: agent {id} is revoked"))),
                    None => {
                        return Err(Failure::refused(format!(
                            "targets.agents[{i}]: no agent {id} (fleetupctl agents list)"
                        )));
                    }
                }
            }
            Ok((None, format!("{} agents by id", ids.len()), hosts))
        }
        TargetRef::Hosts(names) => {
            let all = client.agents().await?;
            let mut ids = Vec::new();
            let mut missing = Vec::new();
            for (i, name) in names.iter().enumerate() {
                let found: Vec<&Agent> = all.iter().filter(|a| &a.hostname == name && usable(a)).collect();
                match found.as_slice() {
                    [a] => ids.push(a.id.clone()),
                    [] => missing.push(name.as_str()),
                    several => {
                        let list: Vec<&str> = several.iter().map(|a| a.id.as_str()).collect();
                        return Err(Failure::refused(format!(
                            "targets.hosts[{i}]: {} agents are called '{name}' ({}): name them by id in targets.agents",
                            several.len(),
                            list.join(", ")
                        )));
                    }
                }
            }
            if !missing.is_empty() {
                return Err(Failure::refused(format!(
                    "targets.hosts: no enrolled agent is called {} (fleetupctl agents list)",
                    missing.iter().map(|m| format!("'{m}'")).collect::<Vec<_>>().join(", ")
                )));
            }
            Ok((Some(ids), format!("hosts {}", names.join(", ")), names.clone()))
        }
    }
}

/// The newest rollout called `name`, if any (retries of failed servers have their own
/// names, `… (retry of failed)`).
async fn staged_named(client: &Client, name: &str) -> Outcome<Option<Rollout>> {
    Ok(client.rollouts().await?.into_iter().find(|r| r.name == name))
}

/// The coordinator's plan of a staged rollout, with the first hosts of each wave.
async fn staged_plan(client: &Client, r: &Rollout, package: &Package, selector: String) -> Outcome<Plan> {
    let mut hosts = Vec::new();
    for w in &r.waves {
        let filter = JobFilter { wave: Some(w.number), limit: Some(HOSTS_SHOWN as u32), ..JobFilter::default() };
        let page = client.jobs_page::<JobSummary>(&r.id, &filter, None).await?;
        hosts.push(page.jobs.into_iter().map(|j| j.hostname).collect());
    }
    Ok(plan::staged(r, package, selector, &hosts))
}

/// The key of one spec: the same spec always gets the same key.
fn idempotency_key(spec: &RolloutSpec) -> String {
    let bytes = serde_json::to_vec(spec).unwrap_or_default();
    format!("fleetupctl-apply-{}", hex::encode(&sha2::Sha256::digest(&bytes)[..16]))
}

/// The top-level fields two specs disagree on, for people: `waves: [1,2] staged, [1] in the file`.
fn differences(staged: &RolloutSpec, file: &RolloutSpec) -> String {
    let (a, b) = (serde_json::to_value(staged).unwrap_or_default(), serde_json::to_value(file).unwrap_or_default());
    let (Some(a), Some(b)) = (a.as_object(), b.as_object()) else { return "they differ".into() };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    let diffs: Vec<String> = keys
        .into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| {
            let show = |v: Option<&serde_json::Value>| v.map_or_else(|| "(none)".into(), ToString::to_string);
            format!("{k}: {} staged, {} in the file", show(a.get(k)), show(b.get(k)))
        })
        .collect();
    if diffs.is_empty() { "they differ".into() } else { diffs.join("; ") }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: serde_json::Value) -> RolloutSpec {
        let mut v = serde_json::json!({ "name": "x", "package_id": "p", "targets": { "labels": { "env": "test" } } });
        v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn the_key_follows_the_spec_and_differences_name_the_fields() {
        let a = spec(serde_json::json!({ "waves": [1, 2] }));
        let b = spec(serde_json::json!({ "waves": [1] }));
        assert_eq!(idempotency_key(&a), idempotency_key(&a.clone()));
        assert_ne!(idempotency_key(&a), idempotency_key(&b));
        assert!(idempotency_key(&a).len() <= 255);
        assert_eq!(differences(&a, &b), "waves: [1,2] staged, [1] in the file");
    }
}

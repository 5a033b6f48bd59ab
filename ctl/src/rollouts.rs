//! The rollout commands besides `apply` and `watch`: list, show, jobs, the actions, the
//! decisions and a job's logs. A rollout is named by id or by name (the name is what a
//! spec file holds; `apply` keeps names unique).

use crate::apply;
use crate::cli::{Decide, Logs, RolloutCmd};
use crate::fail::{Failure, Outcome};
use crate::output::{Out, counts, labels, parse_labels, servers, table};
use fleetup_client::{BulkAnswer, Client, JobFilter, RolloutQuery, StatusCode};
use fleetup_proto::DecisionAnswer;
use fleetup_proto::api::{Job, JobState, JobSummary, Rollout};
use fleetup_proto::id::{JobId, RolloutId};
use std::fmt::Write as _;
use std::time::Duration;

/// The rollout `s` names: its id, else its name.
pub async fn find(client: &Client, s: &str) -> Outcome<Rollout> {
    if let Ok(id) = s.parse::<RolloutId>() {
        match client.rollout(&id).await {
            Ok(r) => return Ok(r),
            Err(e) if e.status() == Some(StatusCode::NOT_FOUND) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let named: Vec<Rollout> = client.rollouts().await?.into_iter().filter(|r| r.name == s).collect();
    match named.len() {
        0 => Err(Failure::refused(format!("no rollout has the id or name '{s}' (fleetupctl rollout list)"))),
        1 => Ok(named.into_iter().next().expect("one")),
        n => Err(Failure::refused(format!(
            "{n} rollouts are named '{s}': name one by id ({})",
            named.iter().map(|r| r.id.as_str()).collect::<Vec<_>>().join(", ")
        ))),
    }
}

fn summary(r: &Rollout) -> String {
    let reason = r.state_reason.as_deref().map_or_else(String::new, |w| format!(" ({w})"));
    let mut s = format!(
        "{} \"{}\": {}{reason}, wave {}/{}\n  jobs: {}\n",
        r.id,
        r.name,
        r.state.as_str(),
        r.current_wave,
        r.waves.len(),
        counts(&r.counts)
    );
    for w in &r.waves {
        let _ = writeln!(s, "  wave {} ({}, {}): {}", w.number, servers(w.size), w.state, counts(&w.counts));
    }
    if let Some(at) = r.wait_until {
        let _ = writeln!(s, "  waits until {}", at.to_rfc3339());
    }
    s
}

/// `rollout …`.
pub async fn run(client: &Client, out: Out, cmd: &RolloutCmd) -> Outcome {
    match cmd {
        RolloutCmd::Apply { file, dry_run } => apply::apply(client, out, file, *dry_run).await,
        RolloutCmd::List { state, label } => {
            let label = if label.is_empty() { None } else { Some(labels(&parse_labels(label, "--label")?)) };
            let list = client.rollouts_where(&RolloutQuery { state: state.clone(), label }).await?;
            out.show(&list, || {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|r| {
                        vec![
                            r.id.to_string(),
                            r.name.clone(),
                            r.state.as_str().to_owned(),
                            format!("{}/{}", r.current_wave, r.waves.len()),
                            counts(&r.counts),
                        ]
                    })
                    .collect();
                table(&["ID", "NAME", "STATE", "WAVE", "JOBS"], &rows)
            });
            Ok(())
        }
        RolloutCmd::Show(r) => {
            let r = find(client, &r.rollout).await?;
            out.show(&r, || summary(&r));
            Ok(())
        }
        RolloutCmd::Jobs { rollout, state, wave } => {
            let r = find(client, rollout).await?;
            let state = state
                .as_deref()
                .map(|s| {
                    JobState::parse(s).ok_or_else(|| {
                        let all: Vec<&str> = JobState::ALL.iter().map(|s| s.as_str()).collect();
                        Failure::usage(format!("--state '{s}': use one of {}", all.join(", ")))
                    })
                })
                .transpose()?;
            let jobs = client.all_jobs::<JobSummary>(&r.id, &JobFilter { state, wave: *wave, limit: None }).await?;
            out.show(&jobs, || {
                let rows: Vec<Vec<String>> = jobs
                    .iter()
                    .map(|j| {
                        vec![
                            j.hostname.clone(),
                            j.wave.to_string(),
                            j.state.as_str().to_owned(),
                            j.current_phase.map_or_else(|| "-".into(), |p| p.to_string()),
                            j.id.to_string(),
                        ]
                    })
                    .collect();
                table(&["HOST", "WAVE", "STATE", "PHASE", "JOB"], &rows)
            });
            Ok(())
        }
        RolloutCmd::Start(r) => act(client, out, &r.rollout, "start").await,
        RolloutCmd::Approve(r) => act(client, out, &r.rollout, "approve").await,
        RolloutCmd::Pause(r) => act(client, out, &r.rollout, "pause").await,
        RolloutCmd::Resume(r) => act(client, out, &r.rollout, "resume").await,
        RolloutCmd::Cancel(r) => act(client, out, &r.rollout, "cancel").await,
        RolloutCmd::RetryFailed(r) => act(client, out, &r.rollout, "retry-failed").await,
    }
}

/// An action on a rollout; prints the rollout after it.
async fn act(client: &Client, out: Out, rollout: &str, action: &str) -> Outcome {
    let r = find(client, rollout).await?;
    let after = match action {
        "start" => client.start(&r.id).await,
        "approve" => client.approve(&r.id).await,
        "pause" => client.pause(&r.id).await,
        "resume" => client.resume(&r.id).await,
        "cancel" => client.cancel(&r.id).await,
        _ => client.retry_failed(&r.id).await,
    }
    .map_err(|e| Failure::from(e).context(&format!("{action} \"{}\"", r.name)))?;
    out.show(&after, || {
        if action == "retry-failed" {
            format!(
                "staged {} \"{}\" as a draft for the failed servers\n{}start it with: fleetupctl rollout start {}",
                after.id,
                after.name,
                summary(&after),
                after.id
            )
        } else {
            summary(&after)
        }
    });
    Ok(())
}

/// One open decision, for the listing.
#[derive(Debug, serde::Serialize)]
struct Open {
    job: JobId,
    hostname: String,
    decision: fleetup_proto::api::Decision,
}

async fn open_decisions(client: &Client, jobs: Vec<Job>) -> Outcome<Vec<Open>> {
    let mut out = Vec::new();
    for j in jobs {
        for d in client.job_decisions(&j.id).await? {
            if d.answer.is_none() {
                out.push(Open { job: j.id.clone(), hostname: j.hostname.clone(), decision: d });
            }
        }
    }
    Ok(out)
}

/// `decide`.
pub async fn decide(client: &Client, out: Out, d: &Decide) -> Outcome {
    match (&d.job, &d.rollout, d.answer) {
        (Some(job), _, Some(answer)) => {
            let j = client.answer_decision(job, answer.into(), d.decision).await?;
            out.show(&j, || {
                format!(
                    "answered {} on {}: job {} is {}",
                    DecisionAnswer::from(answer),
                    j.hostname,
                    j.id,
                    j.state.as_str()
                )
            });
            Ok(())
        }
        (None, Some(rollout), Some(answer)) => {
            if !d.all {
                return Err(Failure::usage("with --rollout, --answer needs --all (or name one job instead)"));
            }
            let r = find(client, rollout).await?;
            let answer: DecisionAnswer = answer.into();
            let kind = d.kind.clone().unwrap_or_else(|| {
                if matches!(answer, DecisionAnswer::Continue | DecisionAnswer::Cancel) {
                    "warning"
                } else {
                    "files-in-use"
                }
                .into()
            });
            let body =
                BulkAnswer { kind, code: d.code.clone(), matching: d.matching.clone(), answer, remember: d.remember };
            let n = client.answer_all(&r.id, &body).await?;
            out.show(&serde_json::json!({ "answered": n }), || {
                format!(
                    "answered {answer} on {n} open decision(s) of \"{}\"{}",
                    r.name,
                    if d.remember { "; the answer stands for later ones too" } else { "" }
                )
            });
            Ok(())
        }
        (None, None, Some(_)) => Err(Failure::usage("name a job, or --rollout with --all")),
        (job, rollout, None) => {
            let jobs = match (job, rollout) {
                (Some(j), _) => vec![client.job(j).await?],
                (None, Some(r)) => {
                    let r = find(client, r).await?;
                    client
                        .all_jobs::<Job>(&r.id, &JobFilter { state: Some(JobState::Waiting), ..JobFilter::default() })
                        .await?
                }
                (None, None) => return Err(Failure::usage("name a job, or --rollout")),
            };
            let open = open_decisions(client, jobs).await?;
            out.show(&open, || {
                if open.is_empty() {
                    return "no open decision".into();
                }
                let mut s = String::new();
                for o in &open {
                    let text =
                        |k: &str| o.decision.request.get(k).and_then(|v| v.as_str()).unwrap_or_default().to_owned();
                    let options: Vec<String> =
                        o.decision.request.get("options").and_then(|v| v.as_array()).map_or_else(Vec::new, |a| {
                            a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
                        });
                    let _ = writeln!(
                        s,
                        "{} ({}), decision {} [{}{}]: {}",
                        o.hostname,
                        o.job,
                        o.decision.id,
                        o.decision.kind,
                        if text("code").is_empty() { String::new() } else { format!(" {}", text("code")) },
                        text("message")
                    );
                    if !text("remediation").is_empty() {
                        let _ = writeln!(s, "  remediation: {}", text("remediation"));
                    }
                    let _ = writeln!(s, "  answer: fleetupctl decide {} --answer {}", o.job, options.join("|"));
                }
                s
            });
            Ok(())
        }
    }
}

/// `logs JOB [--follow]`.
pub async fn logs(client: &Client, out: Out, l: &Logs) -> Outcome {
    const PAGE: u32 = 1000;
    let mut after = 0;
    loop {
        let lines = client.job_logs(&l.job, after, Some(PAGE)).await?;
        for line in &lines {
            // The engine's lines carry their own time.
            out.show(line, || format!("[{}] {}", line.phase, line.line));
            after = after.max(line.seq);
        }
        if lines.len() as u32 >= PAGE {
            continue;
        }
        if !l.follow {
            return Ok(());
        }
        // Lines may arrive after the job's last event: read once more after it ended.
        if client.job(&l.job).await?.state.is_terminal() {
            let rest = client.job_logs(&l.job, after, Some(PAGE)).await?;
            if rest.is_empty() {
                return Ok(());
            }
            continue;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

//! `watch`: a rollout's live progress until it ends — a bar per wave (indicatif), the job
//! counts, each failure once with its error, and each decision waiting once with the
//! command that answers it. Polls the coordinator (the rollout every interval; the failed
//! and waiting jobs only when there are some), so it needs nothing but the REST API.
//!
//! Not on a terminal, or with `--output json`, it prints one line per change instead of
//! bars (json: the whole state as one JSON object a line), so a CI log or a script sees
//! the same events. The exit code says how it ended (docs/api.md, exit codes).

use crate::cli::Watch;
use crate::fail::{Failure, Outcome, code};
use crate::output::{Out, counts};
use fleetup_client::{Client, JobFilter};
use fleetup_proto::api::{Job, JobState, Rollout, RolloutState};
use fleetup_proto::id::{JobId, RolloutId};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

/// How many failed or waiting jobs are fetched and shown; the counts cover the rest.
const SHOWN: u32 = 20;

/// Transport errors in a row tolerated (a coordinator restarting) before giving up.
const OUTAGE: Duration = Duration::from_secs(30);

/// What a watcher sees at one moment; a change of it is printed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Snapshot {
    /// The rollout.
    pub rollout: RolloutId,
    /// Its name.
    pub name: String,
    /// Its state.
    pub state: RolloutState,
    /// Why it is in that state.
    pub state_reason: Option<String>,
    /// The wave being run (0 before start).
    pub current_wave: u32,
    /// Jobs per state, the whole rollout.
    pub counts: BTreeMap<JobState, u64>,
    /// Each wave.
    pub waves: Vec<WaveView>,
    /// The failed servers (the first [`SHOWN`]).
    pub failures: Vec<FailedJob>,
    /// The decisions waiting for an operator (of the first [`SHOWN`] waiting jobs).
    pub decisions_waiting: Vec<WaitingDecision>,
}

/// A wave in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaveView {
    /// 1-based.
    pub number: u32,
    /// Servers in it.
    pub size: u64,
    /// `pending`, `open` or `done`.
    pub state: String,
    /// Jobs of the wave that ended.
    pub done: u64,
    /// Jobs per state.
    pub counts: BTreeMap<JobState, u64>,
}

/// A failed job in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailedJob {
    /// The job.
    pub job: JobId,
    /// Its server.
    pub hostname: String,
    /// Its wave.
    pub wave: u32,
    /// `failed`, `rolled-back` or `lost`.
    pub state: JobState,
    /// Why.
    pub error: Option<String>,
}

/// An open decision in a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WaitingDecision {
    /// The job.
    pub job: JobId,
    /// Its server.
    pub hostname: String,
    /// The decision's id within the job.
    pub decision: u32,
    /// `warning` or `files-in-use`.
    pub kind: String,
    /// The warning's code (`crl-unreachable`), if any.
    pub code: Option<String>,
    /// The question.
    pub message: String,
    /// The answers allowed.
    pub options: Vec<String>,
}

/// Jobs of a wave (or rollout) that ended; superseded attempts are not counted.
fn ended(counts: &BTreeMap<JobState, u64>) -> u64 {
    counts.iter().filter(|(s, _)| s.is_terminal() && **s != JobState::Retried).map(|(_, n)| n).sum()
}

fn failed(counts: &BTreeMap<JobState, u64>, undeliverable_too: bool) -> u64 {
    counts
        .iter()
        .filter(|(s, _)| s.is_failure() || (undeliverable_too && **s == JobState::Undeliverable))
        .map(|(_, n)| n)
        .sum()
}

/// Reads what changed since `last` into a new snapshot.
struct Reader<'a> {
    client: &'a Client,
    id: RolloutId,
    /// The failure count when `failures` was read.
    failures_at: Option<u64>,
    failures: Vec<FailedJob>,
}

impl Reader<'_> {
    async fn read(&mut self) -> Result<(Rollout, Snapshot), fleetup_client::Error> {
        let r = self.client.rollout(&self.id).await?;
        let nfailed = failed(&r.counts, true);
        if self.failures_at != Some(nfailed) {
            let mut list = Vec::new();
            if nfailed > 0 {
                for state in [JobState::Failed, JobState::RolledBack, JobState::Lost] {
                    if r.counts.get(&state).copied().unwrap_or(0) == 0 {
                        continue;
                    }
                    let filter = JobFilter { state: Some(state), limit: Some(SHOWN), ..JobFilter::default() };
                    let page = self.client.jobs_page::<Job>(&r.id, &filter, None).await?;
                    list.extend(page.jobs.into_iter().map(|j| FailedJob {
                        job: j.id,
                        hostname: j.hostname,
                        wave: j.wave,
                        state: j.state,
                        error: j.error,
                    }));
                }
            }
            self.failures = list;
            self.failures_at = Some(nfailed);
        }
        let mut decisions = Vec::new();
        if r.counts.get(&JobState::Waiting).copied().unwrap_or(0) > 0 {
            let filter = JobFilter { state: Some(JobState::Waiting), limit: Some(SHOWN), ..JobFilter::default() };
            let page = self.client.jobs_page::<Job>(&r.id, &filter, None).await?;
            for j in page.jobs {
                for d in self.client.job_decisions(&j.id).await?.into_iter().filter(|d| d.answer.is_none()) {
                    let text = |k: &str| d.request.get(k).and_then(|v| v.as_str()).map(str::to_owned);
                    let options =
                        d.request.get("options").and_then(|o| o.as_array()).map_or_else(Vec::new, |o| {
                            o.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect()
                        });
                    decisions.push(WaitingDecision {
                        job: j.id.clone(),
                        hostname: j.hostname.clone(),
                        decision: d.id,
                        kind: d.kind.clone(),
                        code: text("code"),
                        message: text("message").unwrap_or_default(),
                        options,
                    });
                }
            }
        }
        let snap = Snapshot {
            rollout: r.id.clone(),
            name: r.name.clone(),
            state: r.state,
            state_reason: r.state_reason.clone(),
            current_wave: r.current_wave,
            counts: r.counts.clone(),
            waves: r
                .waves
                .iter()
                .map(|w| WaveView {
                    number: w.number,
                    size: w.size,
                    state: w.state.clone(),
                    done: ended(&w.counts).min(w.size),
                    counts: w.counts.clone(),
                })
                .collect(),
            failures: self.failures.clone(),
            decisions_waiting: decisions,
        };
        Ok((r, snap))
    }
}

/// How a watch ends: the exit code and a sentence.
fn verdict(r: &Rollout, through_pauses: bool) -> Option<(u8, String)> {
    let summary = counts(&r.counts);
    let nfailed = failed(&r.counts, r.spec.undeliverable_is_failure);
    match r.state {
        RolloutState::Finished if nfailed == 0 => {
            Some((code::OK, format!("rollout \"{}\" finished: {summary}", r.name)))
        }
        RolloutState::Finished => Some((
            code::ROLLOUT_FAILED,
            format!("rollout \"{}\" finished with {nfailed} failed server(s): {summary}", r.name),
        )),
        RolloutState::Cancelled | RolloutState::Aborted => Some((
            code::ROLLOUT_FAILED,
            format!(
                "rollout \"{}\" {}{}: {summary}",
                r.name,
                r.state.as_str(),
                r.state_reason.as_deref().map_or_else(String::new, |w| format!(" ({w})"))
            ),
        )),
        RolloutState::Paused if !through_pauses => Some((
            code::ROLLOUT_STOPPED,
            format!(
                "rollout \"{}\" is paused{}: {summary}; resume it with: fleetupctl rollout resume {}",
                r.name,
                r.state_reason.as_deref().map_or_else(String::new, |w| format!(" ({w})")),
                r.id
            ),
        )),
        _ => None,
    }
}

/// One line for people: state, wave, each wave's progress.
fn line(s: &Snapshot) -> String {
    let waves: Vec<String> =
        s.waves.iter().map(|w| format!("wave {} {}/{} ({})", w.number, w.done, w.size, counts(&w.counts))).collect();
    let reason = s.state_reason.as_deref().map_or_else(String::new, |r| format!(" ({r})"));
    format!("{}{reason} · wave {}/{} · {}", s.state.as_str(), s.current_wave, s.waves.len(), waves.join(" · "))
}

fn failure_line(f: &FailedJob) -> String {
    format!(
        "✗ {} (wave {}) {}: {}  [logs: fleetupctl logs {}]",
        f.hostname,
        f.wave,
        f.state.as_str(),
        f.error.as_deref().unwrap_or("no error given"),
        f.job
    )
}

fn decision_line(d: &WaitingDecision) -> String {
    let code = d.code.as_deref().map_or_else(String::new, |c| format!(" [{c}]"));
    format!(
        "? {} waits{code}: {}\n  answer: fleetupctl decide {} --answer {}",
        d.hostname,
        d.message,
        d.job,
        if d.options.is_empty() { "…".to_owned() } else { d.options.join("|") }
    )
}

/// Bars on a terminal.
struct Bars {
    multi: MultiProgress,
    header: ProgressBar,
    waves: Vec<ProgressBar>,
}

impl Bars {
    fn new() -> Self {
        let multi = MultiProgress::new();
        let header = multi.add(ProgressBar::new_spinner());
        header.set_style(
            ProgressStyle::with_template("{spinner} {msg}").unwrap_or_else(|_| ProgressStyle::default_spinner()),
        );
        header.enable_steady_tick(Duration::from_millis(120));
        Self { multi, header, waves: Vec::new() }
    }

    fn update(&mut self, s: &Snapshot) {
        let reason = s.state_reason.as_deref().map_or_else(String::new, |r| format!(" ({r})"));
        self.header.set_message(format!(
            "{} \"{}\": {}{reason} · wave {}/{} · {}",
            s.rollout,
            s.name,
            s.state.as_str(),
            s.current_wave,
            s.waves.len(),
            counts(&s.counts)
        ));
        let style = ProgressStyle::with_template("{prefix:>8} [{bar:30}] {pos}/{len} {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        while self.waves.len() < s.waves.len() {
            let w = &s.waves[self.waves.len()];
            let bar = self.multi.add(ProgressBar::new(w.size));
            bar.set_style(style.clone());
            bar.set_prefix(format!("wave {}", w.number));
            self.waves.push(bar);
        }
        for (bar, w) in self.waves.iter().zip(&s.waves) {
            bar.set_length(w.size);
            bar.set_position(w.done);
            let open: BTreeMap<JobState, u64> =
                w.counts.iter().filter(|(st, _)| **st != JobState::Pending).map(|(k, v)| (*k, *v)).collect();
            if open.is_empty() {
                bar.set_message(w.state.clone());
            } else {
                bar.set_message(format!("{} · {}", w.state, counts(&open)));
            }
        }
    }

    fn println(&self, text: &str) {
        let _ = self.multi.println(text);
    }

    fn finish(&self) {
        for b in &self.waves {
            b.abandon();
        }
        self.header.finish_and_clear();
    }
}

/// `watch ROLLOUT`.
pub async fn watch(client: &Client, out: Out, id: RolloutId, w: &Watch) -> Outcome {
    let started = Instant::now();
    let every = Duration::from_millis(w.interval_ms.max(50));
    let mut reader = Reader { client, id: id.clone(), failures_at: None, failures: Vec::new() };
    let mut bars = (!out.is_json() && std::io::stdout().is_terminal()).then(Bars::new);
    let mut last: Option<Snapshot> = None;
    let mut told_failures = BTreeSet::new();
    let mut told_decisions = BTreeSet::new();
    let mut outage: Option<Instant> = None;
    loop {
        match reader.read().await {
            Ok((rollout, snap)) => {
                outage = None;
                if last.as_ref() != Some(&snap) {
                    if out.is_json() {
                        crate::output::json(&snap);
                    } else {
                        let mut notes = Vec::new();
                        for f in &snap.failures {
                            if told_failures.insert(f.job.clone()) {
                                notes.push(failure_line(f));
                            }
                        }
                        for d in &snap.decisions_waiting {
                            if told_decisions.insert((d.job.clone(), d.decision)) {
                                notes.push(decision_line(d));
                            }
                        }
                        if let Some(b) = &mut bars {
                            for n in &notes {
                                b.println(n);
                            }
                            b.update(&snap);
                        } else {
                            println!("{}", line(&snap));
                            for n in &notes {
                                println!("{n}");
                            }
                        }
                    }
                    last = Some(snap);
                }
                if let Some((exit, message)) = verdict(&rollout, w.through_pauses) {
                    if let Some(b) = &bars {
                        b.finish();
                    }
                    if exit == code::OK {
                        if !out.is_json() {
                            println!("{message}");
                        }
                        return Ok(());
                    }
                    return Err(Failure::new(exit, message));
                }
            }
            Err(e @ fleetup_client::Error::Transport { .. }) => {
                let since = *outage.get_or_insert_with(Instant::now);
                if since.elapsed() > OUTAGE {
                    return Err(Failure::from(e).context("the coordinator stopped answering"));
                }
            }
            Err(e) => return Err(e.into()),
        }
        if let Some(t) = w.timeout
            && started.elapsed() >= Duration::from_secs(t)
        {
            if let Some(b) = &bars {
                b.finish();
            }
            let state = last.as_ref().map_or_else(|| "unknown".into(), line);
            return Err(Failure::new(code::ROLLOUT_STOPPED, format!("gave up after {t} s (--timeout): {state}")));
        }
        tokio::time::sleep(every).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rollout(state: &str, counts: serde_json::Value) -> Rollout {
        serde_json::from_value(serde_json::json!({
            "id": "r1", "name": "demo", "package_id": "p", "state": state, "state_reason": null, "current_wave": 1,
            "spec": { "name": "demo", "package_id": "p", "targets": { "labels": { "env": "test" } } },
            "waves": [], "counts": counts, "retry_of": null, "created_by": "t",
            "created_at": "2026-12-03T00:00:00Z", "started_at": null, "finished_at": null,
        }))
        .unwrap()
    }

    #[test]
    fn the_exit_code_says_how_the_rollout_ended() {
        let cases = [
            ("finished", serde_json::json!({"succeeded": 3}), false, Some(code::OK)),
            ("finished", serde_json::json!({"succeeded": 2, "rolled-back": 1}), false, Some(code::ROLLOUT_FAILED)),
            ("finished", serde_json::json!({"succeeded": 2, "undeliverable": 1}), false, Some(code::OK)),
            ("cancelled", serde_json::json!({"cancelled": 3}), false, Some(code::ROLLOUT_FAILED)),
            ("aborted", serde_json::json!({"failed": 3}), false, Some(code::ROLLOUT_FAILED)),
            ("paused", serde_json::json!({"failed": 1}), false, Some(code::ROLLOUT_STOPPED)),
            ("paused", serde_json::json!({"failed": 1}), true, None),
            ("running", serde_json::json!({"running": 1}), false, None),
            ("awaiting-approval", serde_json::json!({"succeeded": 1}), false, None),
            ("draft", serde_json::json!({"pending": 1}), false, None),
            ("cancelling", serde_json::json!({"running": 1}), false, None),
        ];
        for (state, counts, through, want) in cases {
            let got = verdict(&rollout(state, counts.clone()), through).map(|(c, _)| c);
            assert_eq!(got, want, "{state} {counts} through_pauses={through}");
        }
        let (_, paused) = verdict(&rollout("paused", serde_json::json!({})), false).unwrap();
        assert!(paused.contains("fleetupctl rollout resume r1"), "{paused}");
    }

    #[test]
    fn a_wave_counts_ended_jobs_but_not_superseded_attempts() {
        let c = BTreeMap::from([
            (JobState::Succeeded, 2),
            (JobState::Retried, 1),
            (JobState::Running, 1),
            (JobState::Failed, 1),
        ]);
        assert_eq!(ended(&c), 3);
        assert_eq!(failed(&c, false), 1);
    }
}

//! Where a P7 host's time goes (issue 17, item 4), read back from the coordinator after a
//! fleetup roll: for every job its dispatch, its events (the engine's clock, the same
//! machine's) and its end; for every batch the gap the scheduler leaves before it.
//!
//! - `dispatch_to_first_event`: the pushed assignment reaching the agent, the package
//!   downloaded and verified, the engine started, up to its first event;
//! - one figure per phase: from the phase's first event to the next phase's first event
//!   (so what the engine does between phases counts in the phase before);
//! - `last_event_to_finished`: the final report reaching the coordinator and being stored;
//! - `batch_gap`: the previous batch's last job ending to this batch's first dispatch (the
//!   job-end report, the scheduler kick, its pass, the push);
//! - `batch_span`: a batch's first dispatch to its last job ending, against the median
//!   host's own time (`host_total`): the difference is the slowest host's lead over it.

use crate::stats::median;
use anyhow::{Context as _, Result};
use chrono::{DateTime, Utc};
use fleetup_client::{Client, JobFilter};
use fleetup_proto::RolloutId;
use fleetup_proto::api::Job;
use fleetup_proto::{EngineEvent, PhaseId};
use serde_json::{Map, Value, json};
use std::collections::BTreeMap;

fn ms(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap_or(0) as f64 / 1000.0
}

/// Durations (ms) of one host's install, by component name.
fn host_parts(job: &Job, events: &[EngineEvent]) -> Result<BTreeMap<String, f64>> {
    let dispatched = job.dispatched_at.with_context(|| format!("job {} has no dispatched_at", job.id))?;
    let finished = job.finished_at.with_context(|| format!("job {} has no finished_at", job.id))?;
    let (Some(first), Some(last)) = (events.first(), events.last()) else {
        anyhow::bail!("job {} has no events", job.id)
    };
    let mut parts = BTreeMap::new();
    parts.insert("dispatch_to_first_event".to_owned(), ms(dispatched, first.at));
    // Each phase's first event, in the order the engine ran them.
    let mut starts: Vec<(PhaseId, DateTime<Utc>)> = Vec::new();
    for ev in events {
        if !starts.iter().any(|(p, _)| *p == ev.phase) {
            starts.push((ev.phase, ev.at));
        }
    }
    for (i, (phase, at)) in starts.iter().enumerate() {
        let end = starts.get(i + 1).map_or(last.at, |(_, next)| *next);
        *parts.entry(format!("phase {}", phase.as_str())).or_default() += ms(*at, end);
    }
    parts.insert("last_event_to_finished".to_owned(), ms(last.at, finished));
    parts.insert("host_total".to_owned(), ms(dispatched, finished));
    Ok(parts)
}

/// The profile of a finished roll: medians over hosts of each component, and per batch its
/// span and the gap before it (medians over batches, and every batch's figures).
pub async fn profile(client: &Client, rollout: &RolloutId, started: DateTime<Utc>) -> Result<Value> {
    let jobs: Vec<Job> = client.all_jobs(rollout, &JobFilter::default()).await?;
    let mut per_part: BTreeMap<String, Vec<f64>> = BTreeMap::new();
    let mut waves: BTreeMap<u32, (DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
    for job in &jobs {
        let events = client.job_events(&job.id, 0, None).await?;
        for (name, v) in host_parts(job, &events)? {
            per_part.entry(name).or_default().push(v);
        }
        let (d, f) = (job.dispatched_at.unwrap_or(started), job.finished_at.unwrap_or(started));
        let w = waves.entry(job.wave).or_insert((d, f));
        w.0 = w.0.min(d);
        w.1 = w.1.max(f);
    }
    let mut gaps = Vec::new();
    let mut spans = Vec::new();
    let mut prev_end = None;
    for (first_dispatch, last_end) in waves.values() {
        // Before the first batch: the start request to the first push.
        gaps.push(ms(prev_end.unwrap_or(started), *first_dispatch));
        spans.push(ms(*first_dispatch, *last_end));
        prev_end = Some(*last_end);
    }
    let medians: Map<String, Value> = per_part.iter().map(|(k, v)| (k.clone(), json!(median(v)))).collect();
    Ok(json!({
        "host_median_ms": medians,
        "batch_gap_median_ms": median(&gaps),
        "batch_span_median_ms": median(&spans),
        "batch_gaps_ms": gaps,
        "batch_spans_ms": spans,
    }))
}

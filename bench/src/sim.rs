//! Simulated agents: tasks of this process that enroll, hold long-polls and, when a job
//! arrives, replay a recorded engine event stream (`bench/fixtures/sample-events.jsonl`, a
//! real `fleetup-agent install --json` of the sample rollup) with fresh timestamps.
//!
//! Agents report as fast as they are acknowledged (the whole stream at once, or one POST per
//! phase: the report flood), or paced: each phase's events sent when the recorded install
//! produced them, its times stretched by a scale factor, as a real agent reports an install
//! whose phases take time. The paced mode measures dispatch apart from the flood.
//!
//! Connections are spread over source addresses 127.0.0.2, 127.0.0.3, …: one source address
//! has about 28,000 ephemeral ports towards one server port, and 50,000 agents need more.

use crate::Transport;
use anyhow::{Context as _, Result};
use fleetup_proto::EngineEvent;
use fleetup_proto::agent_api::{EnrollRequest, EnrollResponse, JobAssignment};
use serde_json::json;
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Agents per source address (well under the ~28k ephemeral ports of one address).
const AGENTS_PER_SOURCE: usize = 10_000;

/// Agents sharing one HTTP/2 connection with [`Transport::H2`] (below hyper's default limit
/// of 200 concurrent streams per connection).
pub const AGENTS_PER_H2_CONNECTION: usize = 100;

/// The recorded event stream of one install of the sample rollup.
pub fn event_template() -> Vec<EngineEvent> {
    include_str!("../fixtures/sample-events.jsonl")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("fixture events parse"))
        .collect()
}

/// The template with fresh timestamps, split into the batches a real agent would send
/// when each phase's events are reported as they happen (`per_phase`) or all at once.
pub fn event_batches(template: &[EngineEvent], per_phase: bool) -> Vec<Vec<EngineEvent>> {
    let now = chrono::Utc::now();
    let events: Vec<EngineEvent> = template
        .iter()
        .enumerate()
        .map(|(i, e)| EngineEvent { at: now + chrono::Duration::microseconds(i as i64 * 10), ..e.clone() })
        .collect();
    if !per_phase {
        return vec![events];
    }
    let mut out: Vec<Vec<EngineEvent>> = Vec::new();
    for e in events {
        match out.last_mut() {
            Some(b) if b[0].phase == e.phase => b.push(e),
            _ => out.push(vec![e]),
        }
    }
    out
}

/// The template's phase batches, each with when the recorded install sent it (its last
/// event's time since the first event, times `scale`), and the events stamped with those
/// times from now.
pub fn paced_batches(template: &[EngineEvent], scale: f64) -> Vec<(Duration, Vec<EngineEvent>)> {
    let Some(first) = template.first().map(|e| e.at) else { return Vec::new() };
    let now = chrono::Utc::now();
    let offset = |e: &EngineEvent| (e.at - first).to_std().unwrap_or_default().mul_f64(scale.max(0.0));
    let mut out: Vec<(Duration, Vec<EngineEvent>)> = Vec::new();
    for e in template {
        let at = offset(e);
        let stamped = EngineEvent { at: now + chrono::Duration::from_std(at).unwrap_or_default(), ..e.clone() };
        match out.last_mut() {
            Some((when, b)) if b[0].phase == e.phase => {
                *when = at;
                b.push(stamped);
            }
            _ => out.push((at, vec![stamped])),
        }
    }
    out
}

/// How a simulated agent reports a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ReportMode {
    /// The whole stream in one POST (what the agent does when reports lag behind).
    OneBatch = 0,
    /// One POST per phase, each sent when the previous one was acknowledged.
    PerPhase = 1,
    /// One POST per phase, each when the recorded install sent it, its times scaled by
    /// [`Fleet::pace_scale`].
    Paced = 2,
}

/// One enrolled simulated agent.
#[derive(Debug, Clone)]
pub struct SimAgent {
    /// Agent id.
    pub id: String,
    /// Bearer token.
    pub token: String,
    /// Index into [`Fleet::clients`].
    pub client: usize,
}

/// What the simulated fleet observed; shared by all agent tasks.
#[derive(Debug, Default)]
pub struct Observed {
    /// Long-polls currently in flight.
    pub polls_in_flight: AtomicUsize,
    /// Poll requests that failed (connection errors, 5xx).
    pub poll_errors: AtomicU64,
    /// Event POSTs that failed.
    pub report_errors: AtomicU64,
    /// Events acknowledged as accepted.
    pub events_accepted: AtomicU64,
    /// Jobs whose final report was acknowledged.
    pub jobs_done: AtomicU64,
    /// When each job assignment arrived (since the `epoch` of the run).
    pub assignments: Mutex<Vec<Duration>>,
    /// Event POST latencies in ms.
    pub post_ms: Mutex<Vec<f64>>,
    /// Event → API visibility in ms (sampled agents).
    pub visible_ms: Mutex<Vec<f64>>,
    /// First event POST sent / last acknowledged (since `epoch`).
    pub first_post: Mutex<Option<Duration>>,
    /// See `first_post`.
    pub last_ack: Mutex<Option<Duration>>,
}

/// The simulated fleet: HTTP clients per source address and the shared observations.
#[derive(Debug)]
pub struct Fleet {
    /// Server base URL.
    pub url: String,
    /// Admin token (visibility sampling reads the jobs API).
    pub admin_token: String,
    /// HTTP clients: one per source address (HTTP/1.1; each holds a pool of connections)
    /// or one per [`AGENTS_PER_H2_CONNECTION`] agents (HTTP/2, one connection each).
    pub clients: Vec<reqwest::Client>,
    /// Agents per entry of `clients`.
    agents_per_client: usize,
    /// Observations.
    pub obs: Observed,
    /// Report mode for jobs (a [`ReportMode`] as u8).
    pub mode: AtomicU8,
    /// How much slower than recorded a [`ReportMode::Paced`] install runs (an `f64`'s bits).
    pub pace_scale: AtomicU64,
    /// Every `sample_every`-th agent also measures event → API visibility (0 = none).
    pub sample_every: usize,
    /// Time zero of the observations.
    pub epoch: Mutex<Instant>,
    /// Long-poll wait in seconds.
    pub poll_wait: u64,
    /// Stops every agent task.
    pub stop: CancellationToken,
    template: Vec<EngineEvent>,
}

impl Fleet {
    /// A fleet for `n` agents against `url`.
    pub fn new(url: &str, admin_token: &str, n: usize, poll_wait: u64, transport: Transport) -> Result<Arc<Self>> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let agents_per_client = match transport {
            Transport::H1 => AGENTS_PER_SOURCE,
            Transport::H2 => AGENTS_PER_H2_CONNECTION,
        };
        let clients = (0..n.div_ceil(agents_per_client).max(1))
            .map(|i| {
                let source = i * agents_per_client / AGENTS_PER_SOURCE;
                let ip = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + u8::try_from(source).expect("under 250 sources")));
                let builder = reqwest::Client::builder()
                    .local_address(ip)
                    .pool_max_idle_per_host(usize::MAX)
                    // Short: an agent's re-poll can race its own connection back into the
                    // pool and open a second one (hyper finishes a started connect and pools
                    // it). Such spares, kept for minutes, took the server to the open-file
                    // limit on a 2026-12-07 run (19,987 connections for 18,500 agents); an
                    // agent's own connection is never idle this long between its requests.
                    .pool_idle_timeout(Duration::from_secs(2))
                    .timeout(Duration::from_secs(poll_wait + 120));
                match transport {
                    Transport::H1 => builder.http1_only(),
                    Transport::H2 => builder.http2_prior_knowledge(),
                }
                .build()
                .context("http client")
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Arc::new(Self {
            url: url.to_owned(),
            admin_token: admin_token.to_owned(),
            clients,
            agents_per_client,
            obs: Observed::default(),
            mode: AtomicU8::new(ReportMode::OneBatch as u8),
            pace_scale: AtomicU64::new(1.0f64.to_bits()),
            sample_every: 10,
            epoch: Mutex::new(Instant::now()),
            poll_wait,
            stop: CancellationToken::new(),
            template: event_template(),
        }))
    }

    /// Enrolls `n` agents with `token`, `concurrency` at a time; agent `i` uses client
    /// `(offset + i) / agents_per_client`.
    pub async fn enroll(
        self: &Arc<Self>,
        n: usize,
        offset: usize,
        token: &str,
        concurrency: usize,
    ) -> Result<Vec<SimAgent>> {
        let next = Arc::new(AtomicUsize::new(0));
        let out = Arc::new(Mutex::new(vec![None; n]));
        let mut tasks = Vec::new();
        for _ in 0..concurrency.min(n.max(1)) {
            let (fleet, next, out, token) = (self.clone(), next.clone(), out.clone(), token.to_owned());
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= n {
                        return Ok::<_, anyhow::Error>(());
                    }
                    let client = (offset + i) / fleet.agents_per_client % fleet.clients.len();
                    let req = EnrollRequest {
                        token: token.clone(),
                        hostname: format!("sim-{:05}", offset + i),
                        labels: std::collections::BTreeMap::default(),
                        facts: std::collections::BTreeMap::default(),
                        version: "bench".into(),
                    };
                    let resp = fleet.clients[client]
                        .post(format!("{}/api/v1/agent/enroll", fleet.url))
                        .json(&req)
                        .send()
                        .await?;
                    anyhow::ensure!(resp.status().as_u16() == 201, "enroll: {}", resp.status());
                    let e: EnrollResponse = resp.json().await?;
                    out.lock().unwrap()[i] = Some(SimAgent { id: e.agent_id, token: e.agent_token, client });
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        let v = std::mem::take(&mut *out.lock().unwrap());
        Ok(v.into_iter().map(|a| a.expect("every agent enrolled")).collect())
    }

    /// Starts one long-polling task per agent, `per_sec` new agents a second (a burst of
    /// thousands of connects overflows the listen backlog). The first wait of agent `i` is
    /// spread over `1..=poll_wait` seconds so the re-polls do not arrive in lockstep.
    pub async fn start_polling(self: &Arc<Self>, agents: &[SimAgent], per_sec: usize, sample_offset: usize) {
        let chunk = (per_sec / 20).max(1);
        for (n, group) in agents.chunks(chunk).enumerate() {
            for (k, a) in group.iter().enumerate() {
                let i = n * chunk + k;
                let first_wait = 1 + (i as u64).wrapping_mul(2_654_435_761) % self.poll_wait.max(1);
                let sample = self.sample_every > 0 && (i + sample_offset).is_multiple_of(self.sample_every);
                tokio::spawn(agent_loop(self.clone(), a.clone(), first_wait, sample));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Events one install reports.
    pub fn events_per_install(&self) -> usize {
        self.template.len()
    }

    /// Sets the report mode, and for [`ReportMode::Paced`] its scale.
    pub fn set_mode(&self, mode: ReportMode, pace_scale: f64) {
        self.pace_scale.store(pace_scale.to_bits(), Ordering::Relaxed);
        self.mode.store(mode as u8, Ordering::Relaxed);
    }

    /// Time since the epoch.
    pub fn since_epoch(&self) -> Duration {
        self.epoch.lock().unwrap().elapsed()
    }

    /// Resets the epoch and the per-run observations (assignments, post latencies, …).
    pub fn reset(&self) {
        *self.epoch.lock().unwrap() = Instant::now();
        self.obs.assignments.lock().unwrap().clear();
        self.obs.post_ms.lock().unwrap().clear();
        self.obs.visible_ms.lock().unwrap().clear();
        *self.obs.first_post.lock().unwrap() = None;
        *self.obs.last_ack.lock().unwrap() = None;
        self.obs.events_accepted.store(0, Ordering::Relaxed);
        self.obs.jobs_done.store(0, Ordering::Relaxed);
    }
}

async fn agent_loop(fleet: Arc<Fleet>, agent: SimAgent, first_wait: u64, sample: bool) {
    let client = &fleet.clients[agent.client];
    let mut wait = first_wait;
    while !fleet.stop.is_cancelled() {
        fleet.obs.polls_in_flight.fetch_add(1, Ordering::Relaxed);
        let resp = tokio::select! {
            r = client.get(format!("{}/api/v1/agent/poll?wait={wait}", fleet.url)).bearer_auth(&agent.token).send() => r,
            () = fleet.stop.cancelled() => { fleet.obs.polls_in_flight.fetch_sub(1, Ordering::Relaxed); return; }
        };
        fleet.obs.polls_in_flight.fetch_sub(1, Ordering::Relaxed);
        wait = fleet.poll_wait;
        let job = match resp {
            Ok(r) if r.status().as_u16() == 204 => continue,
            Ok(r) if r.status().as_u16() == 200 => r.json::<JobAssignment>().await.ok(),
            _ => None,
        };
        let Some(job) = job else {
            fleet.obs.poll_errors.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(500)).await;
            continue;
        };
        fleet.obs.assignments.lock().unwrap().push(fleet.since_epoch());
        if let Err(e) = fake_install(&fleet, &agent, &job, sample).await {
            fleet.obs.report_errors.fetch_add(1, Ordering::Relaxed);
            eprintln!("fake install of job {}: {e:#}", job.job_id);
        }
    }
}

/// Posts the recorded event stream for `job`, as the configured [`ReportMode`] says.
async fn fake_install(fleet: &Fleet, agent: &SimAgent, job: &JobAssignment, sample: bool) -> Result<()> {
    let client = &fleet.clients[agent.client];
    let mode = fleet.mode.load(Ordering::Relaxed);
    let started = tokio::time::Instant::now();
    let batches: Vec<(Duration, Vec<EngineEvent>)> = if mode == ReportMode::Paced as u8 {
        paced_batches(&fleet.template, f64::from_bits(fleet.pace_scale.load(Ordering::Relaxed)))
    } else {
        let per_phase = mode == ReportMode::PerPhase as u8;
        event_batches(&fleet.template, per_phase).into_iter().map(|b| (Duration::ZERO, b)).collect()
    };
    for (when, batch) in batches {
        // Paced: the phase's events go when the install produced them (from the job's start,
        // so time spent in earlier POSTs is not added).
        tokio::time::sleep_until(started + when).await;
        let last_seq = batch.last().map_or(0, |e| e.seq);
        let body = json!({ "fencing_token": job.fencing_token, "events": batch });
        let t0 = Instant::now();
        fleet.obs.first_post.lock().unwrap().get_or_insert(fleet.since_epoch());
        let mut tries = 0;
        let resp = loop {
            let r = client
                .post(format!("{}/api/v1/agent/jobs/{}/events", fleet.url, job.job_id))
                .bearer_auth(&agent.token)
                .json(&body)
                .send()
                .await;
            match r {
                Ok(r) if r.status().is_success() => break r,
                Ok(r) if tries >= 5 => anyhow::bail!("events: {} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) if tries >= 5 => return Err(e.into()),
                _ => tries += 1,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        };
        let ack: fleetup_proto::agent_api::ReportResponse = resp.json().await?;
        fleet.obs.post_ms.lock().unwrap().push(t0.elapsed().as_secs_f64() * 1000.0);
        fleet.obs.events_accepted.fetch_add(u64::from(ack.accepted), Ordering::Relaxed);
        *fleet.obs.last_ack.lock().unwrap() = Some(fleet.since_epoch());
        if sample {
            // Event → API visibility: from sending the report until an operator's API read
            // returns its last event.
            loop {
                let r = client
                    .get(format!("{}/api/v1/jobs/{}/events?after={}&limit=1", fleet.url, job.job_id, last_seq - 1))
                    .bearer_auth(&fleet.admin_token)
                    .send()
                    .await?;
                let evs: Vec<EngineEvent> = r.json().await.unwrap_or_default();
                if evs.iter().any(|e| e.seq == last_seq) {
                    fleet.obs.visible_ms.lock().unwrap().push(t0.elapsed().as_secs_f64() * 1000.0);
                    break;
                }
                anyhow::ensure!(t0.elapsed() < Duration::from_mins(1), "event {last_seq} never visible");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    }
    fleet.obs.jobs_done.fetch_add(1, Ordering::Relaxed);
    Ok(())
}

/// Polls `wait=0` from `probes` agents (not otherwise polling) for `dur`, returning each
/// request's latency in ms: the poll path's own cost while the fleet is held.
pub async fn probe_polls(fleet: &Arc<Fleet>, probes: &[SimAgent], dur: Duration, gap: Duration) -> Vec<f64> {
    let mut tasks = Vec::new();
    for a in probes {
        let (fleet, a) = (fleet.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            let end = Instant::now() + dur;
            while Instant::now() < end {
                let t0 = Instant::now();
                let r = fleet.clients[a.client]
                    .get(format!("{}/api/v1/agent/poll?wait=0", fleet.url))
                    .bearer_auth(&a.token)
                    .send()
                    .await;
                if matches!(&r, Ok(r) if r.status().as_u16() == 204) {
                    out.push(t0.elapsed().as_secs_f64() * 1000.0);
                }
                tokio::time::sleep(gap).await;
            }
            out
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.unwrap_or_default());
    }
    all
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetup_proto::PhaseId;

    #[test]
    fn recorded_stream_is_a_whole_install() {
        let t = event_template();
        let seqs: Vec<u64> = t.iter().map(|e| e.seq).collect();
        assert_eq!(seqs, (1..=t.len() as u64).collect::<Vec<_>>(), "seq from 1 without gaps");
        let summary = t.last().and_then(EngineEvent::summary).expect("final event carries the summary");
        assert_eq!(summary.outcome, fleetup_proto::InstallOutcome::Succeeded);
        assert!(t[..t.len() - 1].iter().all(|e| e.summary().is_none()), "only the last event ends the job");
    }

    #[test]
    fn per_phase_batches_keep_order_and_cover_every_phase() {
        let t = event_template();
        let batches = event_batches(&t, true);
        assert_eq!(batches.len(), 12, "one batch per phase");
        assert!(batches.iter().all(|b| b.iter().all(|e| e.phase == b[0].phase)));
        assert_eq!(batches[0][0].phase, PhaseId::CheckSystem);
        let flat: Vec<u64> = batches.concat().iter().map(|e| e.seq).collect();
        assert_eq!(flat, t.iter().map(|e| e.seq).collect::<Vec<_>>());
        assert_eq!(event_batches(&t, false).len(), 1);
    }

    #[test]
    fn paced_batches_follow_the_recorded_times_scaled() {
        let t = event_template();
        let recorded = (t.last().unwrap().at - t[0].at).to_std().unwrap();
        let paced = paced_batches(&t, 10.0);
        assert_eq!(paced.len(), 12, "one batch per phase");
        let whens: Vec<Duration> = paced.iter().map(|(w, _)| *w).collect();
        assert!(whens.is_sorted(), "{whens:?}");
        let end = whens.last().unwrap().abs_diff(recorded * 10);
        assert!(end < Duration::from_millis(1), "the last batch at the recording's end, scaled: {whens:?}");
        let flat: Vec<u64> = paced.iter().flat_map(|(_, b)| b.iter().map(|e| e.seq)).collect();
        assert_eq!(flat, t.iter().map(|e| e.seq).collect::<Vec<_>>());
        assert!(paced_batches(&t, 0.0).iter().all(|(w, _)| w.is_zero()));
    }
}

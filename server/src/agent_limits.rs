//! Per-job caps on what an agent sends: events and log lines, each a token bucket per job,
//! in memory per coordinator process (issue 14, defect 8).
//!
//! A report or a log batch takes as many tokens as it carries items (at least one, so a
//! flood of empty reports is capped too). When the bucket has too few, the request is
//! refused with `429` and `Retry-After` (the seconds until it would pass); nothing of it is
//! written, so the agent sends the same batch again later and loses nothing. An install
//! sends a few hundred events and a few thousand log lines; the bursts below let a whole
//! install through at once, the rates let a runaway agent through at a pace the store takes
//! without harm to the rest of the fleet.

use crate::model::JobId;
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Events a job may report at once.
pub const EVENT_BURST: f64 = 2_000.0;
/// Events per second a job may report after its burst.
pub const EVENT_RATE: f64 = 200.0;
/// Log lines a job may ship at once.
pub const LINE_BURST: f64 = 20_000.0;
/// Log lines per second a job may ship after its burst.
pub const LINE_RATE: f64 = 2_000.0;
/// Most events in one report (the agent sends at most 200).
pub const MAX_EVENTS_PER_BATCH: usize = 1_000;
/// Most log lines in one batch (the agent sends at most 500).
pub const MAX_LINES_PER_BATCH: usize = 2_000;
/// Largest log batch body in bytes (the agent caps its batches at 256 KiB).
pub const MAX_LOG_BODY: usize = 1024 * 1024;
/// Buckets kept before full ones are looked for and forgotten.
const MAX_TRACKED: usize = 10_000;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets, and when to sweep them next.
#[derive(Debug)]
struct Buckets {
    jobs: HashMap<JobId, Bucket>,
    /// Sweep once the table holds this many: [`MAX_TRACKED`], or twice what the last sweep
    /// kept. A sweep that keeps everything (a wave of 10,000 jobs all reporting) is not
    /// repeated on the next take, so the sweeps cost O(1) a take, amortised. Before, a
    /// table at the limit was swept on every take: 10,000 entries scanned per report
    /// under the lock, 15 % of the coordinator's CPU during a 10,000-server wave.
    sweep_at: usize,
    /// Sweeps so far (tests).
    sweeps: u64,
}

/// One kind of cap: a token bucket per job.
#[derive(Debug)]
pub struct JobRate {
    burst: f64,
    rate: f64,
    buckets: Mutex<Buckets>,
}

impl JobRate {
    /// A cap of `burst` items at once, refilled at `rate` per second.
    pub fn new(burst: f64, rate: f64) -> Self {
        let buckets = Buckets { jobs: HashMap::new(), sweep_at: MAX_TRACKED, sweeps: 0 };
        Self { burst, rate, buckets: Mutex::new(buckets) }
    }

    /// How long an untouched bucket takes to fill up again: after that it is the same as
    /// no bucket, and can be forgotten.
    fn refill_time(&self) -> Duration {
        Duration::from_secs_f64(self.burst / self.rate)
    }

    /// Takes `n` items for `job` at `now`, or says how long to wait before they would pass.
    pub fn take(&self, job: &JobId, n: usize, now: Instant) -> Result<(), Duration> {
        let need = (n.max(1) as f64).min(self.burst);
        let mut buckets = self.buckets.lock().unwrap_or_else(PoisonError::into_inner);
        if buckets.jobs.len() >= buckets.sweep_at {
            let full = self.refill_time();
            buckets.jobs.retain(|_, b| now.saturating_duration_since(b.at) < full);
            buckets.sweep_at = MAX_TRACKED.max(buckets.jobs.len() * 2);
            buckets.sweeps += 1;
        }
        let b = buckets.jobs.entry(job.clone()).or_insert(Bucket { tokens: self.burst, at: now });
        b.tokens = (b.tokens + now.saturating_duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= need {
            b.tokens -= need;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((need - b.tokens) / self.rate))
        }
    }
}

/// The caps of the agent protocol.
#[derive(Debug)]
pub struct AgentLimits {
    /// Events per job.
    pub events: JobRate,
    /// Log lines per job.
    pub lines: JobRate,
}

impl Default for AgentLimits {
    fn default() -> Self {
        Self { events: JobRate::new(EVENT_BURST, EVENT_RATE), lines: JobRate::new(LINE_BURST, LINE_RATE) }
    }
}

/// Seconds for `Retry-After`: whole seconds, at least one.
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs_f64().ceil().max(1.0) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_passes_then_the_rate_holds() {
        let r = JobRate::new(10.0, 5.0);
        let (job, other): (JobId, JobId) = ("a".parse().unwrap(), "b".parse().unwrap());
        let t0 = Instant::now();
        assert!(r.take(&job, 10, t0).is_ok());
        let wait = r.take(&job, 5, t0).unwrap_err();
        assert_eq!(retry_after_secs(wait), 1);
        // Another job has its own bucket.
        assert!(r.take(&other, 10, t0).is_ok());
        // After the wait it passes; an empty batch costs one.
        assert!(r.take(&job, 5, t0 + Duration::from_secs(1)).is_ok());
        assert!(r.take(&job, 0, t0 + Duration::from_secs(1)).is_err());
    }

    /// A wave of more jobs than the table's first limit, all reporting: the table is swept
    /// once when it reaches the limit, not again on each of the following takes; a job
    /// idle long enough to be full again is forgotten at the next sweep.
    #[test]
    fn a_full_table_of_live_jobs_is_not_swept_on_every_take() {
        let r = JobRate::new(10.0, 5.0);
        let t0 = Instant::now();
        let jobs: Vec<JobId> = (0..MAX_TRACKED + 1_000).map(|i| format!("j{i}").parse().unwrap()).collect();
        for job in &jobs {
            assert!(r.take(job, 1, t0).is_ok());
        }
        let state = r.buckets.lock().unwrap();
        assert_eq!(state.sweeps, 1, "swept once, at the limit, where every job was live");
        assert_eq!(state.jobs.len(), jobs.len());
        drop(state);
        // Past the refill time (2 s here) those buckets are full: when new jobs fill the
        // table to twice what the last sweep kept, the sweep forgets the old ones.
        let later = t0 + Duration::from_secs(3);
        let wave2: Vec<JobId> = (0..=jobs.len()).map(|i| format!("k{i}").parse().unwrap()).collect();
        for job in &wave2 {
            assert!(r.take(job, 1, later).is_ok());
        }
        let state = r.buckets.lock().unwrap();
        assert_eq!(state.sweeps, 2, "one more sweep for {} more takes", wave2.len());
        assert_eq!(state.jobs.len(), wave2.len(), "the first wave's full buckets are forgotten");
        assert!(!state.jobs.contains_key(&jobs[0]));
    }
}

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
/// Buckets kept before idle ones are forgotten.
const MAX_TRACKED: usize = 10_000;
/// A bucket untouched this long is full again, so it can be forgotten.
const IDLE: Duration = Duration::from_mins(10);

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

/// One kind of cap: a token bucket per job.
#[derive(Debug)]
pub struct JobRate {
    burst: f64,
    rate: f64,
    jobs: Mutex<HashMap<JobId, Bucket>>,
}

impl JobRate {
    /// A cap of `burst` items at once, refilled at `rate` per second.
    pub fn new(burst: f64, rate: f64) -> Self {
        Self { burst, rate, jobs: Mutex::new(HashMap::new()) }
    }

    /// Takes `n` items for `job` at `now`, or says how long to wait before they would pass.
    pub fn take(&self, job: &JobId, n: usize, now: Instant) -> Result<(), Duration> {
        let need = (n.max(1) as f64).min(self.burst);
        let mut jobs = self.jobs.lock().unwrap_or_else(PoisonError::into_inner);
        if jobs.len() >= MAX_TRACKED {
            jobs.retain(|_, b| now.duration_since(b.at) < IDLE);
        }
        let b = jobs.entry(job.clone()).or_insert(Bucket { tokens: self.burst, at: now });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
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
}

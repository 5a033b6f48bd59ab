//! The rollout scheduler: a background task that, on every pass, declares silent jobs lost,
//! fails jobs whose phase ran past its timeout, and moves each running rollout on (opens
//! waves, fills concurrency slots, applies the gates and thresholds).
//!
//! The decisions are the domain's ([`crate::domain::schedule`]); the store reads the facts
//! and applies each step inside one transaction per pass ([`crate::store::SchedulerPass`]),
//! which on Postgres also holds an advisory lock so only one replica schedules at a time. A
//! pass runs every `--scheduler-interval-ms` and at once when something that may open work
//! happens (a job ends, a rollout starts or is approved). Each rollout's spec is parsed into
//! [`Rules`] once per process: specs never change after staging.

use crate::app::App;
use crate::domain::plan::Rules;
use crate::domain::schedule::{Step, next_step, phase_timed_out, window_open};
use crate::model::{AgentId, RolloutId, now_ms, to_time};
use crate::store::{StoreError, StoreResult};
use std::collections::HashMap;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// What a scheduler pass did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// This pass held the scheduler lock (Postgres: one replica at a time).
    pub ran: bool,
    /// Agents with a job that became ready or must hear a cancel: wake their long-polls.
    pub wake_agents: Vec<AgentId>,
    /// Jobs declared lost.
    pub lost: u64,
    /// Jobs declared undeliverable.
    pub undeliverable: u64,
}

/// Parsed rules of the rollouts seen so far.
#[derive(Debug, Default)]
pub struct RulesCache(HashMap<RolloutId, Arc<Rules>>);

impl RulesCache {
    fn get(&mut self, id: &RolloutId, spec_text: &str) -> StoreResult<Arc<Rules>> {
        if let Some(r) = self.0.get(id) {
            return Ok(r.clone());
        }
        let spec = crate::store::from_json(spec_text, "rollout spec")?;
        let rules = Arc::new(Rules::parse(&spec).map_err(|e| StoreError::Corrupt(format!("rollout {id}: {e}")))?);
        self.0.insert(id.clone(), rules.clone());
        Ok(rules)
    }
}

/// Runs scheduler passes until `shutdown`.
pub async fn run(app: Arc<App>, shutdown: CancellationToken) {
    let mut interval = tokio::time::interval(app.config.scheduler_interval());
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cache = RulesCache::default();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = interval.tick() => {}
            () = app.scheduler_kick.notified() => {}
        }
        match pass(&app, &mut cache, now_ms()).await {
            Ok(report) => {
                if report.ran {
                    metrics::counter!("fleetup_scheduler_passes_total").increment(1);
                }
                metrics::counter!("fleetup_jobs_lost_total").increment(report.lost);
                metrics::counter!("fleetup_jobs_undeliverable_total").increment(report.undeliverable);
                app.wake_agents(&report.wake_agents).await;
            }
            Err(e) => tracing::error!(error = %e, "scheduler pass failed"),
        }
    }
}

/// One pass at `now`.
pub async fn pass(app: &App, cache: &mut RulesCache, now: i64) -> StoreResult<PassReport> {
    let Some(mut tx) = app.store.begin_scheduler_pass(now).await? else { return Ok(PassReport::default()) };
    let mut report = PassReport {
        ran: true,
        lost: tx.expire_leases().await?,
        undeliverable: tx.expire_deliveries().await?,
        ..PassReport::default()
    };
    for job in tx.running_phases().await? {
        let rules = if let Some(r) = cache.0.get(&job.rollout_id) {
            r.clone()
        } else {
            let text = tx.rollout_spec_text(&job.rollout_id).await?;
            cache.get(&job.rollout_id, &text)?
        };
        if let Some(limit) = phase_timed_out(&rules, job.phase, job.started_at, now) {
            tx.fail_timed_out(&job, limit).await?;
        }
    }
    for rollout in tx.running_rollouts().await? {
        let rules = cache.get(&rollout.id, &rollout.spec_text)?;
        let in_window = rules.window.as_ref().is_none_or(|w| window_open(w, to_time(now)));
        let mut view = rollout.view;
        // A pass may open several waves in a row (empty gates), never more than there are.
        for _ in 0..=view.wave_count {
            let counts = tx.counts(&rollout.id).await?;
            let step = next_step(&view, &rules, &counts, in_window);
            report.wake_agents.extend(tx.apply(&rollout.id, view.current_wave, &step).await?);
            match step {
                Step::OpenWave(w) => view.current_wave = w,
                _ => break,
            }
        }
    }
    tx.commit().await?;
    Ok(report)
}

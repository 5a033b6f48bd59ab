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
use crate::domain::plan::{Rules, late_joiners};
use crate::domain::retry::{next_attempt_at, transient};
use crate::domain::schedule::{Step, WindowState, next_step, next_window_open, phase_timed_out, window_open};
use crate::domain::stall::{Learned, StallRules};
use crate::model::{AgentId, RolloutId, Stall, now_ms, to_time};
use crate::store::{ClaimedJob, SchedulerPass, StoreError, StoreResult};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// What a scheduler pass did.
#[derive(Debug, Clone, Default)]
pub struct PassReport {
    /// This pass held the scheduler lock (Postgres: one replica at a time).
    pub ran: bool,
    /// Agents with a job that became ready or must hear a cancel: wake their long-polls.
    pub wake_agents: Vec<AgentId>,
    /// Jobs this pass dispatched to agents whose long-poll is held here: hand them over.
    pub pushed: Vec<(AgentId, ClaimedJob)>,
    /// Jobs declared lost.
    pub lost: u64,
    /// Jobs declared undeliverable.
    pub undeliverable: u64,
    /// Transient failures given a new attempt.
    pub retried: u64,
    /// Running jobs whose phase is flagged stalled after this pass.
    pub stalled: u64,
}

/// How long learned phase durations are used before they are read again.
const LEARNED_FOR: Duration = Duration::from_secs(10);

/// Parsed rules of the rollouts seen so far, and phase durations learned per package name.
#[derive(Debug, Default)]
pub struct RulesCache {
    rules: HashMap<RolloutId, Arc<Rules>>,
    learned: HashMap<String, (Instant, Arc<Learned>)>,
}

impl RulesCache {
    fn get(&mut self, id: &RolloutId, spec_text: &str) -> StoreResult<Arc<Rules>> {
        if let Some(r) = self.rules.get(id) {
            return Ok(r.clone());
        }
        let spec = crate::store::from_json(spec_text, "rollout spec")?;
        let rules = Arc::new(Rules::parse(&spec).map_err(|e| StoreError::Corrupt(format!("rollout {id}: {e}")))?);
        self.rules.insert(id.clone(), rules.clone());
        Ok(rules)
    }

    /// The rules of a rollout, reading its spec inside the pass the first time.
    async fn of(&mut self, tx: &mut SchedulerPass, id: &RolloutId) -> StoreResult<Arc<Rules>> {
        if let Some(r) = self.rules.get(id) {
            return Ok(r.clone());
        }
        let text = tx.rollout_spec_text(id).await?;
        self.get(id, &text)
    }

    /// What finished installs of a package taught about its phases (read again after
    /// [`LEARNED_FOR`]).
    async fn learned(&mut self, tx: &mut SchedulerPass, package: &str) -> StoreResult<Arc<Learned>> {
        if let Some((at, l)) = self.learned.get(package)
            && at.elapsed() < LEARNED_FOR
        {
            return Ok(l.clone());
        }
        let history = tx.phase_history(package).await?;
        let learned = Arc::new(Learned::from_history(history.iter().map(|(a, p)| (a, p))));
        self.learned.insert(package.to_owned(), (Instant::now(), learned.clone()));
        Ok(learned)
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
        let started = Instant::now();
        match pass(&app, &mut cache, now_ms()).await {
            Ok(report) => {
                tracing::debug!(
                    ran = report.ran,
                    pushed = report.pushed.len(),
                    woken = report.wake_agents.len(),
                    ms = started.elapsed().as_secs_f64() * 1000.0,
                    "scheduler pass"
                );
                if report.ran {
                    metrics::counter!("fleetup_scheduler_passes_total").increment(1);
                }
                metrics::counter!("fleetup_jobs_lost_total").increment(report.lost);
                metrics::counter!("fleetup_jobs_undeliverable_total").increment(report.undeliverable);
                metrics::counter!("fleetup_jobs_retried_total").increment(report.retried);
                hand_over(&app, report).await;
            }
            Err(e) => tracing::error!(error = %e, "scheduler pass failed"),
        }
    }
}

/// After a pass has committed: its pushed assignments to their held polls, and a wake-up
/// to every other agent with news (here and, through the store, on other replicas).
async fn hand_over(app: &App, report: PassReport) {
    let pushed: std::collections::HashSet<AgentId> = report.pushed.iter().map(|(a, _)| a.clone()).collect();
    // An agent whose poll ended since the pass looked finds its job by claiming it.
    let gone = app.polls.deliver(report.pushed);
    let wake: Vec<AgentId> = report.wake_agents.into_iter().filter(|a| !pushed.contains(a)).chain(gone).collect();
    app.wake_agents(&wake).await;
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
    // Before the rollouts are judged: a transient failure given another attempt is not a
    // failure of the gate or the error threshold.
    for f in tx.unclassified_failures().await? {
        let rules = cache.of(&mut tx, &f.rollout_id).await?;
        let transient = transient(f.state, f.retry_later);
        match rules.retries.filter(|_| transient).and_then(|r| next_attempt_at(r, f.attempt, now)) {
            Some(at) => {
                tx.retry(&f, at).await?;
                report.retried += 1;
            }
            None => tx.classify(&f.job_id, transient).await?,
        }
    }
    // Answers an operator asked to keep giving, to the decisions asked since.
    for standing in tx.standing_answers().await? {
        report.wake_agents.extend(tx.apply_standing(&standing).await?);
    }
    let stall_rules = StallRules {
        factor: app.config.stall_factor,
        floor_ms: (app.config.stall_floor_secs as i64).saturating_mul(1000),
    };
    for job in tx.running_phases().await? {
        let rules = cache.of(&mut tx, &job.rollout_id).await?;
        if let Some(limit) = phase_timed_out(&rules, job.phase, job.started_at, now) {
            tx.fail_timed_out(&job, limit).await?;
            continue;
        }
        if job.stalled_phase == Some(job.phase) {
            report.stalled += 1;
            continue;
        }
        let elapsed = now - job.started_at;
        if let Some(v) =
            cache.learned(&mut tx, &job.package).await?.judge(stall_rules, &job.agent_id, job.phase, elapsed)
        {
            let secs = |ms: i64| ms as f64 / 1000.0;
            let stall = Stall {
                phase: job.phase,
                since: to_time(now),
                elapsed_secs: secs(elapsed),
                p50_secs: secs(v.p50_ms),
                p95_secs: secs(v.p95_ms),
                limit_secs: secs(v.limit_ms),
                samples: v.samples as u64,
                basis: v.basis.to_owned(),
            };
            tx.flag_stall(&job, &stall).await?;
            report.stalled += 1;
        }
    }
    for rollout in tx.running_rollouts().await? {
        let rules = cache.get(&rollout.id, &rollout.spec_text)?;
        if rules.late_joiners.is_some() {
            let package = tx.rollout_package(&rollout.id).await?;
            let outsiders = tx.outsiders(&rollout.id).await?;
            for (agent, skip) in late_joiners(&rules, &outsiders, &package) {
                tx.join(&rollout.id, agent, skip).await?;
            }
        }
        let window = match &rules.window {
            Some(w) if !window_open(w, to_time(now)) => {
                WindowState::Closed(next_window_open(w, to_time(now)).map(|t| t.timestamp_millis()))
            }
            _ => WindowState::Open,
        };
        let mut view = rollout.view;
        // A pass may open several waves in a row (empty gates), never more than there are.
        for _ in 0..=view.wave_count {
            let counts = tx.counts(&rollout.id).await?;
            let step = next_step(&view, &rules, &counts, window, now);
            report.wake_agents.extend(tx.apply(&rollout.id, view.current_wave, &step).await?);
            match step {
                Step::OpenWave(w) => {
                    view.current_wave = w;
                    view.wave_done_at = None;
                }
                Step::Soak(_) => view.wave_done_at = Some(now),
                _ => break,
            }
        }
    }
    // Dispatch by push: the jobs queued for agents whose poll is held here are assigned now,
    // in this transaction, so those polls answer without a claim (crate::mailbox).
    let held = app.polls.held_among(tx.queued_agents());
    report.pushed = tx.dispatch(&held).await?;
    tx.commit().await?;
    Ok(report)
}

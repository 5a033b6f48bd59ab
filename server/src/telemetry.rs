//! The Prometheus series of the coordinator, described once: every name, its HELP text
//! and unit live in [`SERIES`]; the recorder is installed (and the descriptions given)
//! before anything records, so no series is lost to a no-op handle taken early (the group
//! commit's histogram was, when the store started before the recorder).
//!
//! Counters count what this process did since it started; the `fleetup_*` gauges marked
//! "from the database" are read at scrape time and true of the database whatever ran
//! before. docs/operations.md has alert rules on them.

use crate::app::App;
use crate::error::AppError;
use crate::model::{JobState, RolloutState, now_ms};
use metrics::Unit;
use std::fmt::Write as _;
use std::sync::OnceLock;

/// A series: name, kind, HELP text.
#[derive(Debug)]
pub struct Series {
    /// The metric name.
    pub name: &'static str,
    /// Counter, gauge or histogram.
    pub kind: Kind,
    /// What it counts or measures.
    pub help: &'static str,
}

/// A series' type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Only goes up.
    Counter,
    /// Goes up and down.
    Gauge,
    /// A distribution.
    Histogram,
    /// A gauge read from the database at scrape time and written into the text by
    /// [`render`], not through the process-wide recorder: it is of this app's database, and
    /// a test process runs many apps.
    Stored,
}

/// Every series the coordinator exports.
pub const SERIES: &[Series] = &[
    Series { name: "fleetup_polls_total", kind: Kind::Counter, help: "Agent polls answered." },
    Series { name: "fleetup_long_polls_held", kind: Kind::Gauge, help: "Agent long-polls held open now." },
    Series { name: "fleetup_jobs_dispatched_total", kind: Kind::Counter, help: "Jobs handed to agents." },
    Series {
        name: "fleetup_jobs_pushed_total",
        kind: Kind::Counter,
        help: "Jobs the scheduler dispatched and handed to a held long-poll without a claim (part of the dispatched).",
    },
    Series {
        name: "fleetup_jobs_ended_total",
        kind: Kind::Counter,
        help: "Jobs that ended with an agent's final report, by the install's outcome (succeeded, failed, \
               rolled-back, recovery-required, cancelled, already-installed).",
    },
    Series {
        name: "fleetup_jobs_lost_total",
        kind: Kind::Counter,
        help: "Jobs declared lost after their lease ran out.",
    },
    Series {
        name: "fleetup_jobs_undeliverable_total",
        kind: Kind::Counter,
        help: "Jobs whose agent did not collect them within the delivery deadline.",
    },
    Series {
        name: "fleetup_jobs_retried_total",
        kind: Kind::Counter,
        help: "Automatic new attempts of transient failures.",
    },
    Series {
        name: "fleetup_events_accepted_total",
        kind: Kind::Counter,
        help: "Engine events stored from agent reports.",
    },
    Series {
        name: "fleetup_events_duplicate_total",
        kind: Kind::Counter,
        help: "Engine events an agent resent that were already stored (ignored).",
    },
    Series {
        name: "fleetup_agent_capped_total",
        kind: Kind::Counter,
        help: "Agent reports refused with 429 by the per-job flood caps.",
    },
    Series { name: "fleetup_scheduler_passes_total", kind: Kind::Counter, help: "Scheduler passes run." },
    Series {
        name: "fleetup_group_commit_batch_size",
        kind: Kind::Histogram,
        help: "Requests per group-commit transaction, by kind (claims, reports).",
    },
    Series {
        name: "fleetup_reports_written_total",
        kind: Kind::Counter,
        help: "Agent reports written, by path: batched (the batch's multi-row statements) or per-report (late, \
               after the end, asking a decision, ending failed, or a second report of a job in one batch).",
    },
    Series {
        name: "fleetup_jobs",
        kind: Kind::Stored,
        help: "Jobs by state, from the database (every state, 0 included).",
    },
    Series {
        name: "fleetup_rollouts",
        kind: Kind::Stored,
        help: "Rollouts by state, from the database (every state, 0 included).",
    },
    Series {
        name: "fleetup_jobs_stalled",
        kind: Kind::Stored,
        help: "Running or waiting jobs whose phase runs far longer than learned, from the database.",
    },
    Series {
        name: "fleetup_agents_enrolled",
        kind: Kind::Stored,
        help: "Enrolled agents not revoked, from the database.",
    },
    Series {
        name: "fleetup_agents_online",
        kind: Kind::Stored,
        help: "Enrolled agents seen within --offline-after-secs, from the database (last-seen times are flushed \
               every --heartbeat-flush-ms).",
    },
    Series {
        name: "fleetup_webhook_deliveries_total",
        kind: Kind::Counter,
        help: "Webhook delivery attempts, by result: delivered (2xx), failed (to be retried), gave-up (the last \
               attempt failed).",
    },
];

/// The process-wide recorder, installed with every description on first use (a process
/// can install only one). Call before anything records.
pub fn install() -> metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: OnceLock<metrics_exporter_prometheus::PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            let _ = metrics::set_global_recorder(recorder);
            for s in SERIES {
                match s.kind {
                    Kind::Counter => metrics::describe_counter!(s.name, Unit::Count, s.help),
                    Kind::Gauge => metrics::describe_gauge!(s.name, s.help),
                    Kind::Histogram => metrics::describe_histogram!(s.name, s.help),
                    Kind::Stored => {}
                }
            }
            handle
        })
        .clone()
}

/// The Prometheus text: this process's series, then the database gauges read now.
pub async fn render(app: &App) -> Result<String, AppError> {
    let horizon = now_ms() - i64::try_from(app.config.offline_after_secs).unwrap_or(90) * 1000;
    let g = app.store.gauges(horizon).await?;
    let count = |v: &[(String, u64)], state: &str| v.iter().find(|(s, _)| s == state).map_or(0, |(_, n)| *n);
    let mut out = app.metrics.render();
    let by_state = |states: Vec<&str>, v: &[(String, u64)]| -> Vec<(String, u64)> {
        states.into_iter().map(|s| (format!("{{state=\"{s}\"}}"), count(v, s))).collect()
    };
    let stored: [(&str, Vec<(String, u64)>); 5] = [
        ("fleetup_jobs", by_state(JobState::ALL.iter().map(|s| s.as_str()).collect(), &g.jobs)),
        ("fleetup_rollouts", by_state(RolloutState::ALL.iter().map(|s| s.as_str()).collect(), &g.rollouts)),
        ("fleetup_jobs_stalled", vec![(String::new(), g.jobs_stalled)]),
        ("fleetup_agents_enrolled", vec![(String::new(), g.agents_enrolled)]),
        ("fleetup_agents_online", vec![(String::new(), g.agents_online)]),
    ];
    for (name, samples) in stored {
        let help = SERIES.iter().find(|s| s.name == name).map_or("", |s| s.help);
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
        for (labels, n) in samples {
            let _ = writeln!(out, "{name}{labels} {n}");
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::SERIES;

    #[test]
    fn every_series_is_documented_in_operations_md() {
        let doc = include_str!("../../docs/operations.md");
        for s in SERIES {
            assert!(doc.contains(&format!("`{}", s.name)), "{} is not in docs/operations.md's table", s.name);
        }
    }
}

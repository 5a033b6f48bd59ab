//! Event emission: numbering, persistence, the sink, per-phase logs and the summary.
//!
//! Every event is appended to `<logs>/events.jsonl` before the sink sees it, so a
//! restarted engine continues the numbering (`seq` from 1, no gaps, across crashes) and
//! can compute durations of phases that ran before the crash.

use chrono::{DateTime, Utc};
use fleetup_proto::{EngineEvent, InstallOutcome, InstallSummary, PhaseId, PhaseStatus};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead as _, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Receives every engine event, in order. Implementations must not block for long: the
/// engine calls it inline (a coordinator-backed sink queues and sends in the background).
pub trait EventSink: Send + Sync {
    /// One event.
    fn emit(&self, event: &EngineEvent);
}

/// A sink that drops events (library users who only want the summary).
#[derive(Debug, Default)]
pub struct NullSink;

impl EventSink for NullSink {
    fn emit(&self, _event: &EngineEvent) {}
}

/// A sink that keeps every event in memory (tests, the daemon's batching).
#[derive(Debug, Default, Clone)]
pub struct MemorySink(pub Arc<Mutex<Vec<EngineEvent>>>);

impl EventSink for MemorySink {
    fn emit(&self, event: &EngineEvent) {
        self.0.lock().expect("sink lock").push(event.clone());
    }
}

/// Numbers, persists and forwards the events of one install.
pub(crate) struct Emitter {
    file: File,
    next_seq: u64,
    history: Vec<EngineEvent>,
    sink: Arc<dyn EventSink>,
    /// The first event that could not be persisted (a full or failing state dir), until
    /// the run takes it at the end of the phase and stops the install.
    persist_error: Option<String>,
    pub(crate) logs: PathBuf,
}

impl std::fmt::Debug for Emitter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Emitter").field("next_seq", &self.next_seq).field("logs", &self.logs).finish_non_exhaustive()
    }
}

impl Emitter {
    /// Opens (or continues) the event log in `logs`.
    pub(crate) fn open(logs: &Path, sink: Arc<dyn EventSink>) -> std::io::Result<Self> {
        fs::create_dir_all(logs)?;
        let path = logs.join("events.jsonl");
        let mut history = Vec::new();
        if let Ok(f) = File::open(&path) {
            for line in BufReader::new(f).lines() {
                match serde_json::from_str::<EngineEvent>(&line?) {
                    Ok(ev) => history.push(ev),
                    Err(_) => break,
                }
            }
            // Drop a torn tail so the file stays one event per line.
            let mut text = String::new();
            for ev in &history {
                text.push_str(&serde_json::to_string(ev).expect("events serialise"));
                text.push('\n');
            }
            fs::write(&path, text)?;
        }
        let file = OpenOptions::new().append(true).create(true).open(&path)?;
        let next_seq = history.last().map_or(1, |e| e.seq + 1);
        Ok(Self { file, next_seq, history, sink, logs: logs.to_path_buf(), persist_error: None })
    }

    /// Emits one event.
    pub(crate) fn emit(
        &mut self,
        phase: PhaseId,
        status: PhaseStatus,
        message: impl Into<String>,
        data: serde_json::Value,
    ) {
        let ev = EngineEvent { seq: self.next_seq, phase, status, message: message.into(), data, at: Utc::now() };
        self.next_seq += 1;
        let mut line = serde_json::to_string(&ev).expect("events serialise");
        line.push('\n');
        // Persist first: the sink may be a network; the file is the record of truth.
        if let Err(e) = self.file.write_all(line.as_bytes()).and_then(|()| self.file.sync_data()) {
            eprintln!("fleetup-engine: cannot persist event {}: {e}", ev.seq);
            self.persist_error.get_or_insert_with(|| format!("cannot persist event {}: {e}", ev.seq));
        }
        self.log(phase, &format!("[{}] {}", status, ev.message));
        self.sink.emit(&ev);
        self.history.push(ev);
    }

    /// The first persistence failure since the last call, if any.
    pub(crate) fn take_persist_error(&mut self) -> Option<String> {
        self.persist_error.take()
    }

    /// Appends a line to the phase's log file.
    pub(crate) fn log(&self, phase: PhaseId, line: &str) {
        append_log(&self.phase_log(phase), line);
    }

    /// `<logs>/<phase>.log`
    pub(crate) fn phase_log(&self, phase: PhaseId) -> PathBuf {
        self.logs.join(format!("{}.log", phase.as_str()))
    }

    /// The summary of this install, if its final event was already emitted.
    pub(crate) fn history_summary(&self) -> Option<InstallSummary> {
        self.history.iter().rev().find_map(EngineEvent::summary)
    }

    /// Builds the summary from every event of this install (including before a crash).
    pub(crate) fn summary(
        &self,
        outcome: InstallOutcome,
        rollup: &str,
        version: &str,
        restart_required: bool,
        failed_phase: Option<PhaseId>,
        error: Option<String>,
    ) -> InstallSummary {
        summarize(&self.history, outcome, rollup, version, restart_required, failed_phase, error)
    }
}

/// When the services stopped by `stop-services` served again:
/// - after a rollback, at its end (it restarted the old version; any time the new one
///   served before the rollback counts as outage too, so the figure is never short);
/// - after `start-services` succeeded, when the last of them first passed its health check
///   (`serving_since`: the rest of the start window only watches a serving process);
/// - otherwise at `start-services`' last event (a cancel's restart), or unknown (`None`:
///   the install has not got there).
fn outage_end(
    history: &[EngineEvent],
    spans: &BTreeMap<PhaseId, (DateTime<Utc>, DateTime<Utc>)>,
) -> Option<DateTime<Utc>> {
    if let Some((_, restored)) = spans.get(&PhaseId::Rollback) {
        return Some(*restored);
    }
    let start_events = || history.iter().filter(|e| e.phase == PhaseId::StartServices);
    let serving =
        start_events().filter_map(|e| e.data.get("serving_since")?.as_str()?.parse::<DateTime<Utc>>().ok()).max();
    let started = start_events().any(|e| e.status == PhaseStatus::Succeeded);
    match serving {
        Some(at) if started => Some(at),
        _ => spans.get(&PhaseId::StartServices).map(|s| s.1),
    }
}

/// Computes durations from an event history: each phase from its first `running` event
/// to its last event; the outage from `stop-services` start to the services serving again ([`outage_end`]).
pub(crate) fn summarize(
    history: &[EngineEvent],
    outcome: InstallOutcome,
    rollup: &str,
    version: &str,
    restart_required: bool,
    failed_phase: Option<PhaseId>,
    error: Option<String>,
) -> InstallSummary {
    let mut spans: BTreeMap<PhaseId, (DateTime<Utc>, DateTime<Utc>)> = BTreeMap::new();
    for ev in history {
        spans.entry(ev.phase).and_modify(|s| s.1 = ev.at).or_insert((ev.at, ev.at));
    }
    let now = Utc::now();
    let ms = |a: DateTime<Utc>, b: DateTime<Utc>| (b - a).num_milliseconds().max(0) as u64;
    let phase_ms = spans.iter().map(|(p, (a, b))| (*p, ms(*a, *b))).collect();
    let outage_ms = match spans.get(&PhaseId::StopServices) {
        Some((start, _)) => ms(*start, outage_end(history, &spans).unwrap_or(now)),
        None => 0,
    };
    let total_ms = history.first().map_or(0, |f| ms(f.at, now));
    InstallSummary {
        outcome,
        rollup: rollup.to_owned(),
        version: version.to_owned(),
        outage_ms,
        total_ms,
        phase_ms,
        restart_required,
        failed_phase,
        error,
    }
}

/// Appends a timestamped line to a log file, creating it. Logging never fails the install.
pub(crate) fn append_log(path: &Path, line: &str) {
    append_log_lines(path, &[line.to_owned()]);
}

/// Appends lines to a log file with one timestamp and one open (many files per phase).
/// Logging never fails the install.
pub(crate) fn append_log_lines(path: &Path, lines: &[String]) {
    if let Ok(f) = OpenOptions::new().append(true).create(true).open(path) {
        let at = Utc::now().format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string();
        let mut w = std::io::BufWriter::new(f);
        for line in lines {
            let _ = writeln!(w, "{at} {line}");
        }
        let _ = w.flush();
    }
}

/// Every event recorded for install `install_id` in `state_dir` (empty when none): what
/// the agent daemon resends after a restart.
pub fn recorded_events(state_dir: &Path, install_id: &str) -> Vec<EngineEvent> {
    let path = state_dir.join("logs").join(install_id).join("events.jsonl");
    let Ok(f) = File::open(path) else { return Vec::new() };
    BufReader::new(f).lines().map_while(Result::ok).map_while(|l| serde_json::from_str(&l).ok()).collect()
}

/// The least time between two progress events of one phase: each event is an fsync and a
/// line in `--json`, and the services may be down.
pub(crate) const PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_millis(250);

/// Bounds the rate of progress events: the first step, then at most one per
/// [`PROGRESS_EVERY`], and always the last.
#[derive(Debug)]
pub(crate) struct Throttle {
    last: Option<std::time::Instant>,
}

impl Throttle {
    pub(crate) fn new() -> Self {
        Self { last: None }
    }

    /// Whether step `done` of `total` gets an event.
    pub(crate) fn due(&mut self, done: u64, total: u64) -> bool {
        let due = done >= total || self.last.is_none_or(|t| t.elapsed() >= PROGRESS_EVERY);
        if due {
            self.last = Some(std::time::Instant::now());
        }
        due
    }
}

//! Ships the engine's phase logs (`<state>/logs/<install-id>/*.log`) to the coordinator.
//!
//! Lines are numbered per job in the order they are shipped; the offsets reached and the
//! next number are saved after each acknowledged batch, so a restarted agent continues
//! where it was (at worst resending one batch, which the coordinator ignores by number).
//!
//! Nothing one phase prints can stall the others (issue 14, defect 3):
//! - a batch holds at most [`BATCH`] lines and [`BATCH_BYTES`] bytes of text;
//! - a line longer than [`MAX_LINE`] bytes is cut, with a marker saying how much was cut
//!   (it is read in bounded pieces, so a line of any length costs bounded memory);
//! - each phase's log ships at most [`PHASE_CAP`] bytes; past it a marker line says so and
//!   where the whole log is on the server, and the rest of that file is skipped;
//! - a batch the coordinator refuses (4xx) is never sent again unchanged: a batch of
//!   several lines is split in two; a single line is dropped, and a marker line counts
//!   the lines dropped. A `429` waits its `Retry-After`.

use super::Ctx;
use super::client::CallError;
use fleetup_proto::PhaseId;
use fleetup_proto::agent_api::{LogBatch, LogLine};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

/// Most lines in one batch.
pub const BATCH: usize = 500;
/// Most bytes of line text in one batch.
pub const BATCH_BYTES: usize = 256 * 1024;
/// Longest line shipped; a longer one is cut with a marker.
pub const MAX_LINE: usize = 8 * 1024;
/// Most bytes shipped of one phase's log.
pub const PHASE_CAP: u64 = 1024 * 1024;
/// Batches sent per call of [`LogShipper::ship`]: the reporter's events and heartbeats
/// come between.
const BATCHES_PER_CALL: usize = 8;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    offsets: BTreeMap<String, u64>,
    next_seq: u64,
    /// Bytes shipped per log file, for the per-phase cap.
    #[serde(default)]
    shipped: BTreeMap<String, u64>,
    /// Files whose cap was reached (their marker is shipped).
    #[serde(default)]
    capped: BTreeMap<String, bool>,
}

/// One collected line, before it is numbered.
#[derive(Debug, Clone)]
struct Collected {
    phase: PhaseId,
    line: String,
    at: chrono::DateTime<chrono::Utc>,
}

/// Tails one install's log directory.
#[derive(Debug)]
pub struct LogShipper {
    dir: PathBuf,
    progress: Mutex<Progress>,
    /// Not before this instant (a `429`'s `Retry-After`).
    paused_until: Mutex<Option<Instant>>,
    /// Lines dropped (refused by the coordinator) and not yet counted in a marker.
    dropped: Mutex<BTreeMap<PhaseId, u64>>,
}

impl LogShipper {
    /// A shipper for the logs of install `install_id`.
    pub fn new(state_dir: &Path, install_id: &str) -> Self {
        let dir = state_dir.join("logs").join(install_id);
        let progress = std::fs::read(dir.join(".shipped.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Progress { next_seq: 1, ..Progress::default() });
        Self { dir, progress: Mutex::new(progress), paused_until: Mutex::new(None), dropped: Mutex::default() }
    }

    /// Sends (some of) the lines written since the last call. Failures are left for the
    /// next call; refusals are split or dropped, never resent as they were.
    pub async fn ship(&self, ctx: &Ctx, job: &fleetup_proto::agent_api::JobAssignment) {
        if self.paused_until.lock().expect("pause").is_some_and(|t| Instant::now() < t) {
            return;
        }
        for _ in 0..BATCHES_PER_CALL {
            let (mut lines, offsets, shipped, capped) = self.collect();
            lines.extend(self.dropped_markers());
            if lines.is_empty() {
                return;
            }
            match self.send(ctx, job, lines).await {
                Ok(()) => self.advance(offsets, shipped, capped),
                Err(CallError::Busy(after)) => {
                    *self.paused_until.lock().expect("pause") = Some(Instant::now() + after);
                    return;
                }
                Err(e) => {
                    tracing::debug!(job = %job.job_id, "log shipping deferred: {e}");
                    return;
                }
            }
        }
    }

    /// Sends `lines`, numbered from the next number: a refused batch is split in halves
    /// (each sent on its own), a refused single line is dropped and counted. Ok once every
    /// line is either recorded or dropped.
    async fn send(
        &self,
        ctx: &Ctx,
        job: &fleetup_proto::agent_api::JobAssignment,
        lines: Vec<Collected>,
    ) -> Result<(), CallError> {
        let mut pending = vec![lines];
        let mut split = false;
        while let Some(part) = pending.pop() {
            let first = self.progress.lock().expect("progress").next_seq;
            let numbered: Vec<LogLine> = part
                .iter()
                .enumerate()
                .map(|(i, c)| LogLine { seq: first + i as u64, phase: c.phase, line: c.line.clone(), at: c.at })
                .collect();
            let batch = LogBatch { fencing_token: job.fencing_token, lines: numbered };
            match ctx.client.logs(&job.job_id, &batch).await {
                Ok(_) => self.progress.lock().expect("progress").next_seq += part.len() as u64,
                Err(CallError::Rejected { status, message }) if part.len() > 1 => {
                    tracing::warn!(job = %job.job_id, "the coordinator refused a log batch of {} lines ({status}: {message}); splitting it", part.len());
                    split = true;
                    let mut part = part;
                    let second = part.split_off(part.len() / 2);
                    pending.push(second);
                    pending.push(part);
                }
                Err(CallError::Rejected { status, message }) => {
                    tracing::warn!(job = %job.job_id, "the coordinator refused a log line ({status}: {message}); dropped");
                    *self.dropped.lock().expect("dropped").entry(part[0].phase).or_default() += 1;
                }
                Err(e) if !split => return Err(e),
                Err(e) => {
                    // Halfway through a split batch: the halves sent are numbered, so the
                    // rest cannot be collected again under the same numbers; count it.
                    tracing::warn!(job = %job.job_id, "log shipping failed while splitting a refused batch ({e}); the rest of it is dropped");
                    let mut dropped = self.dropped.lock().expect("dropped");
                    for c in pending.iter().flatten().chain(&part) {
                        *dropped.entry(c.phase).or_default() += 1;
                    }
                    return Ok(());
                }
            }
        }
        Ok(())
    }

    /// Marker lines counting the lines dropped since the last marker.
    fn dropped_markers(&self) -> Vec<Collected> {
        let mut dropped = self.dropped.lock().expect("dropped");
        let markers = dropped
            .iter()
            .map(|(phase, n)| Collected {
                phase: *phase,
                line: format!("[fleetup-agent] {n} line(s) of this phase's log were refused by the coordinator and dropped; the whole log is in {} on the server", self.dir.display()),
                at: chrono::Utc::now(),
            })
            .collect();
        dropped.clear();
        markers
    }

    fn advance(&self, offsets: BTreeMap<String, u64>, shipped: BTreeMap<String, u64>, capped: BTreeMap<String, bool>) {
        let mut p = self.progress.lock().expect("progress");
        p.offsets = offsets;
        p.shipped = shipped;
        p.capped = capped;
        if let Ok(json) = serde_json::to_vec(&*p) {
            let _ = std::fs::write(self.dir.join(".shipped.json"), json);
        }
    }

    /// Up to [`BATCH`] lines and [`BATCH_BYTES`] bytes of new complete lines, and the
    /// offsets, shipped bytes and caps after them.
    #[allow(clippy::type_complexity)]
    fn collect(&self) -> (Vec<Collected>, BTreeMap<String, u64>, BTreeMap<String, u64>, BTreeMap<String, bool>) {
        let p = self.progress.lock().expect("progress");
        let (mut offsets, mut shipped, mut capped) = (p.offsets.clone(), p.shipped.clone(), p.capped.clone());
        drop(p);
        let mut lines = Vec::new();
        let mut bytes = 0usize;
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return (lines, offsets, shipped, capped) };
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| std::path::Path::new(n).extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        'files: for name in files {
            let Some(phase) = phase_of(&name) else { continue };
            let path = self.dir.join(&name);
            let Ok(mut f) = std::fs::File::open(&path) else { continue };
            let offset = offsets.get(&name).copied().unwrap_or(0);
            if capped.get(&name).copied().unwrap_or(false) {
                // Past the cap: skip whatever was added since.
                if let Ok(m) = f.metadata() {
                    offsets.insert(name, m.len().max(offset));
                }
                continue;
            }
            if f.seek(std::io::SeekFrom::Start(offset)).is_err() {
                continue;
            }
            let mut reader = std::io::BufReader::new(f);
            let mut pos = offset;
            while lines.len() < BATCH && bytes < BATCH_BYTES {
                let Some((text, consumed)) = read_line_capped(&mut reader, MAX_LINE) else { break };
                pos += consumed;
                let sent = shipped.entry(name.clone()).or_default();
                if *sent + text.len() as u64 > PHASE_CAP {
                    lines.push(Collected {
                        phase,
                        line: format!(
                            "[fleetup-agent] the rest of this phase's log is not shipped: over its cap of {PHASE_CAP} bytes; the whole log is {} on the server",
                            path.display()
                        ),
                        at: chrono::Utc::now(),
                    });
                    capped.insert(name.clone(), true);
                    let end = reader.get_ref().metadata().map_or(pos, |m| m.len());
                    offsets.insert(name, end.max(pos));
                    continue 'files;
                }
                *sent += text.len() as u64;
                bytes += text.len();
                lines.push(Collected { phase, at: written_at(&text).unwrap_or_else(chrono::Utc::now), line: text });
            }
            offsets.insert(name, pos);
            if lines.len() >= BATCH || bytes >= BATCH_BYTES {
                break;
            }
        }
        (lines, offsets, shipped, capped)
    }
}

/// Reads one complete line (up to `\n`), keeping at most `max` bytes of it (cut on a
/// character boundary, with a marker). Returns the text and the bytes consumed, or `None`
/// at the end of what is written so far (a line without its `\n` yet is left for later).
fn read_line_capped(reader: &mut std::io::BufReader<std::fs::File>, max: usize) -> Option<(String, u64)> {
    let start = reader.stream_position().ok()?;
    let mut kept: Vec<u8> = Vec::new();
    let mut total = 0u64;
    loop {
        let buf = reader.fill_buf().ok()?;
        if buf.is_empty() {
            // No newline yet: come back when the line is complete.
            let _ = reader.seek(std::io::SeekFrom::Start(start));
            return None;
        }
        let (piece, found) = match buf.iter().position(|b| *b == b'\n') {
            Some(i) => (&buf[..i], true),
            None => (buf, false),
        };
        let room = max.saturating_sub(kept.len());
        kept.extend_from_slice(&piece[..piece.len().min(room)]);
        let used = piece.len() + usize::from(found);
        total += used as u64;
        reader.consume(used);
        if found {
            break;
        }
    }
    let line_len = total - 1;
    let mut text = String::from_utf8_lossy(&kept).into_owned();
    if line_len > max as u64 {
        // `from_utf8_lossy` may have replaced a cut character; drop the replacement.
        while text.len() > max {
            text.pop();
        }
        let more = line_len - text.len() as u64;
        text.push_str(" … [line cut: ");
        text.push_str(&more.to_string());
        text.push_str(" more bytes]");
    }
    Some((text, total))
}

/// When the engine wrote a log line: its leading RFC 3339 timestamp. Lines are shipped
/// file by file, so this, not the shipping order, puts the phases' logs back in time order.
fn written_at(line: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    let stamp = line.split_whitespace().next()?;
    chrono::DateTime::parse_from_rfc3339(stamp).ok().map(|t| t.to_utc())
}

/// The phase a log file belongs to: `<phase>.log`, or one of the seeds' named logs.
fn phase_of(file: &str) -> Option<PhaseId> {
    let stem = file.strip_suffix(".log")?;
    match stem {
        "service-control" => Some(PhaseId::StartServices),
        "patch-config" => Some(PhaseId::PatchConfig),
        "update-webapp" => Some(PhaseId::PatchWebapp),
        other => other.parse().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_keeps_the_time_the_engine_wrote_it() {
        let at = written_at("2026-11-21T15:57:36.094Z start demo (exec backend)\n").unwrap();
        assert_eq!(at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true), "2026-11-21T15:57:36.094Z");
        assert!(written_at("no timestamp here").is_none());
    }

    #[test]
    fn log_files_map_to_their_phase() {
        assert_eq!(phase_of("update-files.log"), Some(PhaseId::UpdateFiles));
        assert_eq!(phase_of("patch-config.log"), Some(PhaseId::PatchConfig));
        assert_eq!(phase_of("notes.txt"), None);
    }

    /// A 3.6 MB hook output in one phase: batches stay under their byte cap, a long line is
    /// cut with a marker, the phase stops at its cap with a marker, and the next phase's
    /// lines still come.
    #[test]
    fn a_huge_phase_log_is_capped_and_the_next_phase_still_ships() {
        use std::io::Write as _;
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("logs").join("job1");
        std::fs::create_dir_all(&dir).unwrap();
        let mut hooks = std::fs::File::create(dir.join("pre-hooks.log")).unwrap();
        writeln!(hooks, "{}", "x".repeat(100_000)).unwrap();
        for i in 0..36_000 {
            writeln!(hooks, "2026-11-21T15:57:36.094Z hook line {i} {}", "y".repeat(60)).unwrap();
        }
        write!(hooks, "an unfinished line").unwrap();
        std::fs::write(dir.join("stop-services.log"), "2026-11-21T15:57:40.000Z service demo stopped\n").unwrap();
        let shipper = LogShipper::new(state.path(), "job1");
        let mut all = Vec::new();
        for _ in 0..100 {
            let (lines, offsets, shipped, capped) = shipper.collect();
            if lines.is_empty() {
                break;
            }
            let bytes: usize = lines.iter().map(|l| l.line.len()).sum();
            assert!(
                lines.len() <= BATCH && bytes <= BATCH_BYTES + MAX_LINE + 200,
                "{} lines, {bytes} bytes",
                lines.len()
            );
            all.extend(lines);
            shipper.advance(offsets, shipped, capped);
        }
        assert!(
            all[0].line.starts_with(&"x".repeat(MAX_LINE)) && all[0].line.contains("[line cut: "),
            "{}",
            &all[0].line[MAX_LINE..]
        );
        assert!(all[0].line.len() < MAX_LINE + 100);
        let hook_bytes: u64 = all.iter().filter(|l| l.phase == PhaseId::PreHooks).map(|l| l.line.len() as u64).sum();
        assert!(hook_bytes <= PHASE_CAP + 500, "{hook_bytes}");
        assert!(all.iter().any(|l| l.phase == PhaseId::PreHooks && l.line.contains("not shipped: over its cap")));
        assert!(!all.iter().any(|l| l.line.contains("unfinished")));
        assert!(all.iter().any(|l| l.phase == PhaseId::StopServices && l.line.contains("service demo stopped")));
    }

    /// A batch the coordinator refuses (4xx) is never sent again as it was: it is split
    /// until the refused line stands alone, which is dropped and counted in a marker line;
    /// every other line arrives, and shipping goes on past it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_batch_is_split_and_a_refused_line_dropped_with_a_count() {
        use fleetup_e2e::proxy::{Action, Proxy};
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("logs").join("job1");
        std::fs::create_dir_all(&dir).unwrap();
        let mut lines: Vec<String> = (0..9).map(|i| format!("2026-11-21T15:57:36.094Z line {i}")).collect();
        lines.insert(5, "z".repeat(6000));
        let text = lines.join("\n") + "\n";
        std::fs::write(dir.join("pre-hooks.log"), text).unwrap();
        // A coordinator refusing any log batch over 4,000 bytes with 413.
        let coordinator = Proxy::start("127.0.0.1:9").await;
        coordinator.set_rule(|r| {
            let len: usize = r.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
            if len > 4000 {
                Action::Fail(413)
            } else {
                Action::Answer(200, br#"{"accepted":1,"duplicates":0}"#.to_vec())
            }
        });
        let ctx = super::super::Ctx::for_test(&coordinator.url, state.path());
        let job = super::super::job::test_assignment();
        let shipper = LogShipper::new(state.path(), "job1");
        shipper.ship(&ctx, &job).await;
        shipper.ship(&ctx, &job).await;
        let sent: Vec<usize> = coordinator
            .seen()
            .iter()
            .map(|r| r.header("content-length").and_then(|v| v.parse().ok()).unwrap_or(0))
            .collect();
        let refused: Vec<usize> = sent.iter().copied().filter(|n| *n > 4000).collect();
        // Each refusal is followed by smaller batches: no body is sent twice.
        let mut distinct = refused.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), refused.len(), "a refused batch was sent again unchanged: {sent:?}");
        assert!(sent.len() < 12, "{sent:?}");
        // Everything was read: a third call has nothing to send.
        let before = coordinator.seen().len();
        shipper.ship(&ctx, &job).await;
        assert_eq!(coordinator.seen().len(), before);
        let p = shipper.progress.lock().unwrap();
        // 9 short lines and the marker were numbered (the dropped line took none).
        assert_eq!(p.next_seq, 11, "{sent:?}");
    }
}

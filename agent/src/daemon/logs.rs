//! Ships the engine's phase logs (`<state>/logs/<install-id>/*.log`) to the coordinator.
//!
//! Lines are numbered per job in the order they are shipped; the offsets reached and the
//! next number are saved after each acknowledged batch, so a restarted agent continues
//! where it was (at worst resending one batch, which the coordinator ignores by number).

use super::Ctx;
use fleetup_proto::PhaseId;
use fleetup_proto::agent_api::{LogBatch, LogLine};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{BufRead as _, Seek as _};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// Most lines in one batch.
const BATCH: usize = 500;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Progress {
    offsets: BTreeMap<String, u64>,
    next_seq: u64,
}

/// Tails one install's log directory.
#[derive(Debug)]
pub struct LogShipper {
    dir: PathBuf,
    progress: Mutex<Progress>,
}

impl LogShipper {
    /// A shipper for the logs of install `install_id`.
    pub fn new(state_dir: &Path, install_id: &str) -> Self {
        let dir = state_dir.join("logs").join(install_id);
        let progress = std::fs::read(dir.join(".shipped.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(Progress { offsets: BTreeMap::new(), next_seq: 1 });
        Self { dir, progress: Mutex::new(progress) }
    }

    /// Sends the lines written since the last call. Failures are left for the next call.
    pub async fn ship(&self, ctx: &Ctx, job: &fleetup_proto::agent_api::JobAssignment) {
        loop {
            let (lines, offsets) = self.collect();
            if lines.is_empty() {
                return;
            }
            let batch = LogBatch { fencing_token: job.fencing_token, lines };
            match ctx.client.logs(&job.job_id, &batch).await {
                Ok(_) => {
                    let mut p = self.progress.lock().expect("progress");
                    p.next_seq += batch.lines.len() as u64;
                    p.offsets = offsets;
                    if let Ok(json) = serde_json::to_vec(&*p) {
                        let _ = std::fs::write(self.dir.join(".shipped.json"), json);
                    }
                }
                Err(e) => {
                    tracing::debug!(job = %job.job_id, "log shipping deferred: {e}");
                    return;
                }
            }
        }
    }

    /// Up to [`BATCH`] new complete lines, and the offsets after them.
    fn collect(&self) -> (Vec<LogLine>, BTreeMap<String, u64>) {
        let p = self.progress.lock().expect("progress");
        let mut offsets = p.offsets.clone();
        let mut lines = Vec::new();
        let Ok(entries) = std::fs::read_dir(&self.dir) else { return (lines, offsets) };
        let mut files: Vec<_> = entries
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| std::path::Path::new(n).extension().is_some_and(|e| e == "log"))
            .collect();
        files.sort();
        for name in files {
            let Some(phase) = phase_of(&name) else { continue };
            let offset = offsets.get(&name).copied().unwrap_or(0);
            let Ok(mut f) = std::fs::File::open(self.dir.join(&name)) else { continue };
            if f.seek(std::io::SeekFrom::Start(offset)).is_err() {
                continue;
            }
            let mut reader = std::io::BufReader::new(f);
            let mut pos = offset;
            let mut buf = String::new();
            while lines.len() < BATCH {
                buf.clear();
                match reader.read_line(&mut buf) {
                    Ok(n) if n > 0 && buf.ends_with('\n') => {
                        pos += n as u64;
                        lines.push(LogLine {
                            seq: p.next_seq + lines.len() as u64,
                            phase,
                            line: buf.trim_end_matches('\n').to_owned(),
                            at: written_at(&buf).unwrap_or_else(chrono::Utc::now),
                        });
                    }
                    _ => break,
                }
            }
            offsets.insert(name, pos);
            if lines.len() >= BATCH {
                break;
            }
        }
        (lines, offsets)
    }
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
}

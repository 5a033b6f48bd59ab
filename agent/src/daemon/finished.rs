//! The jobs this agent finished, remembered (bounded) across restarts in
//! `<state>/finished.json`, so a finished job handed out again is answered with its earlier
//! outcome instead of being installed a second time (issue 14, defect 5).
//!
//! Each entry is the job's final event, exactly as it was reported. The newest
//! [`KEEP`] jobs are kept: far more than an agent finishes between two operator looks,
//! and a replay older than that is refused anyway by its expiry (`expires_at`).

use fleetup_proto::EngineEvent;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::path::{Path, PathBuf};

/// Finished jobs remembered.
pub const KEEP: usize = 256;

#[derive(Debug, Default, Serialize, Deserialize)]
struct Memory {
    jobs: VecDeque<Finished>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Finished {
    job_id: String,
    final_event: EngineEvent,
}

fn path(state_dir: &Path) -> PathBuf {
    state_dir.join("finished.json")
}

fn load(state_dir: &Path) -> Memory {
    match std::fs::read(path(state_dir)) {
        Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
            let aside = state_dir.join("finished.json.damaged");
            tracing::error!(
                "{} is damaged ({e}); moved to {}; finished jobs from before are no longer recognised",
                path(state_dir).display(),
                aside.display()
            );
            let _ = std::fs::rename(path(state_dir), aside);
            Memory::default()
        }),
        Err(_) => Memory::default(),
    }
}

/// The final event of `job_id`, if this agent finished it.
pub fn lookup(state_dir: &Path, job_id: &str) -> Option<EngineEvent> {
    load(state_dir).jobs.into_iter().find(|f| f.job_id == job_id).map(|f| f.final_event)
}

/// Remembers that `job_id` ended with `final_event` (durably: temp file, fsync, rename).
pub fn record(state_dir: &Path, job_id: &str, final_event: &EngineEvent) -> std::io::Result<()> {
    let mut memory = load(state_dir);
    memory.jobs.retain(|f| f.job_id != job_id);
    memory.jobs.push_back(Finished { job_id: job_id.to_owned(), final_event: final_event.clone() });
    while memory.jobs.len() > KEEP {
        memory.jobs.pop_front();
    }
    let tmp = state_dir.join("finished.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec(&memory)?)?;
    std::fs::File::open(&tmp)?.sync_all()?;
    std::fs::rename(&tmp, path(state_dir))?;
    std::fs::File::open(state_dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetup_proto::{PhaseId, PhaseStatus};

    fn final_event(n: u64) -> EngineEvent {
        EngineEvent {
            seq: n,
            phase: PhaseId::Cleanup,
            status: PhaseStatus::Succeeded,
            message: format!("done {n}"),
            data: serde_json::Value::Null,
            at: chrono::Utc::now(),
        }
    }

    #[test]
    fn finished_jobs_are_remembered_across_restarts_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        assert!(lookup(dir.path(), "j0").is_none());
        for n in 0..(KEEP as u64 + 10) {
            record(dir.path(), &format!("j{n}"), &final_event(n)).unwrap();
        }
        // A fresh read of the file, as after a restart.
        assert_eq!(lookup(dir.path(), &format!("j{}", KEEP + 9)).unwrap().message, format!("done {}", KEEP + 9));
        assert_eq!(lookup(dir.path(), "j10").unwrap().seq, 10);
        assert!(lookup(dir.path(), "j9").is_none(), "the oldest are forgotten beyond {KEEP}");
        std::fs::write(dir.path().join("finished.json"), b"{ not json").unwrap();
        assert!(lookup(dir.path(), "j10").is_none());
        assert!(dir.path().join("finished.json.damaged").exists());
    }
}

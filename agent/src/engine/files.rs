//! `validate-files` and `update-files`: find who holds the files about to change, then
//! back up and replace by rename from staging (same filesystem), journaling each step
//! before making it. No byte is copied while services are down.

use super::events::append_log;
use super::inuse;
use super::journal::{Record, sync_dir};
use super::run::{PhaseResult, Run, Stop, action_word};
use fleetup_proto::manifest::FileAction;
use fleetup_proto::{DecisionAnswer, DecisionKind, PhaseId, PhaseStatus};
use serde_json::json;
use std::collections::BTreeMap;
use std::fs;
use std::time::{Duration, Instant};

impl Run<'_> {
    pub(crate) fn validate_files(&mut self) -> PhaseResult {
        let p = PhaseId::ValidateFiles;
        let m = self.manifest().clone();
        let mut targets = BTreeMap::new();
        for f in m.files.iter().filter(|f| f.action != FileAction::Add) {
            targets.insert(self.root.join(&f.path), f.path.clone());
        }
        for c in &m.config_patches {
            targets.insert(self.root.join(&c.file), c.file.clone());
        }
        loop {
            self.check_cancel(p)?;
            let holders = inuse::scan(&targets);
            if holders.is_empty() {
                return Ok(if self.restart_required {
                    (PhaseStatus::Warning, "files in use were ignored: restart required after the install".into())
                } else {
                    (PhaseStatus::Succeeded, "no process holds a file that will be replaced".into())
                });
            }
            let names: Vec<String> =
                holders.iter().map(|h| format!("{} (pid {}) holds {}", h.name, h.pid, h.files.join(", "))).collect();
            let answer = self.ask(
                p,
                format!("files in use: {}", names.join("; ")),
                DecisionKind::FilesInUse { processes: holders },
            );
            match answer {
                DecisionAnswer::Retry => {
                    let t = Instant::now();
                    while t.elapsed() < Duration::from_secs(1) && !self.cancel().is_requested() {
                        std::thread::sleep(Duration::from_millis(50));
                    }
                }
                DecisionAnswer::Ignore => {
                    self.restart_required = true;
                    return Ok((
                        PhaseStatus::Warning,
                        format!("files in use ignored: restart required ({})", names.join("; ")),
                    ));
                }
                _ => return Err(Stop::Exit(format!("files in use; exit chosen: {}", names.join("; ")))),
            }
        }
    }

    pub(crate) fn update_files(&mut self) -> PhaseResult {
        let p = PhaseId::UpdateFiles;
        let m = self.manifest().clone();
        let total = m.files.len();
        let t = Instant::now();
        for (i, f) in m.files.iter().enumerate() {
            self.check_cancel(p)?;
            let dst = self.root.join(&f.path);
            let parent = dst.parent().expect("paths under the root have a parent").to_path_buf();
            if f.action == FileAction::Add {
                let mut missing = Vec::new();
                let mut d = parent.clone();
                while !d.exists() && d.starts_with(&self.root) {
                    missing.push(d.clone());
                    d = d.parent().expect("under root").to_path_buf();
                }
                for d in missing.into_iter().rev() {
                    let rel = d.strip_prefix(&self.root).expect("under root").display().to_string();
                    self.record(Record::MkDir { path: rel })?;
                    fs::create_dir(&d).map_err(|e| Stop::Failed(format!("creating {}: {e}", d.display())))?;
                }
            }
            if f.action != FileAction::Add {
                let bak = self.backup().join(&f.path);
                fs::create_dir_all(bak.parent().expect("has parent")).map_err(|e| Stop::Failed(e.to_string()))?;
                self.record(Record::Backup { path: f.path.clone() })?;
                fs::rename(&dst, &bak).map_err(|e| Stop::Failed(format!("backing up {}: {e}", f.path)))?;
            }
            if f.action != FileAction::Remove {
                self.record(Record::Place { path: f.path.clone(), added: f.action == FileAction::Add })?;
                fs::rename(self.pkg().join(f.source_path()), &dst)
                    .map_err(|e| Stop::Failed(format!("renaming {} into place: {e}", f.path)))?;
            }
            sync_dir(&parent).map_err(|e| Stop::Failed(e.to_string()))?;
            append_log(&self.em.phase_log(p), &format!("{:?} {} (rename)", f.action, f.path));
            self.em.emit(
                p,
                PhaseStatus::Running,
                format!("{} {} ({}/{total})", action_word(f.action), f.path, i + 1),
                json!({ "progress": { "done": i + 1, "total": total }, "path": f.path }),
            );
        }
        self.check_cancel(p)?;
        self.record(Record::Committed)?;
        Ok((
            PhaseStatus::Succeeded,
            format!("{total} file(s) updated by rename in {} ms; 0 bytes copied", t.elapsed().as_millis()),
        ))
    }
}

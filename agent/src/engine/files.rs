//! `validate-files` and `update-files`: re-check who holds the files about to change, then
//! back up and replace by rename from staging (same filesystem), the whole rename set
//! journaled as one record before the first change. No byte is copied while services
//! are down.

use super::events::{Throttle, append_log_lines};
use super::journal::{PAUSE_RENAME_ENV, PausePoint, Placement, Record, sync_dir};
use super::run::{PhaseResult, Run, Stop, action_word};
use fleetup_proto::manifest::{FileAction, FileChange};
use fleetup_proto::{PhaseId, PhaseStatus};
use serde_json::json;
use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

impl Run<'_> {
    /// Re-checks, now that the services are stopped, who holds the files about to change
    /// (the question was first asked before the services stopped, in `stop-services`).
    pub(crate) fn validate_files(&mut self) -> PhaseResult {
        let ignored = self.ignored_holders.clone();
        let status = self.ask_files_in_use(PhaseId::ValidateFiles, &ignored)?;
        Ok(match status {
            _ if self.restart_required => {
                (PhaseStatus::Warning, "files in use were ignored: restart required after the install".into())
            }
            None => (PhaseStatus::Succeeded, "no process holds a file that will be replaced".into()),
            Some(msg) => (PhaseStatus::Warning, msg),
        })
    }

    /// Replaces the files by rename: the whole set of changes is journaled as one record
    /// (one fsync), then made (backups first, a barrier, then placements), then every
    /// touched directory is fsynced once and `committed` is journaled. Progress events are
    /// throttled: each one is an fsync, and the services are down.
    pub(crate) fn update_files(&mut self) -> PhaseResult {
        let p = PhaseId::UpdateFiles;
        let m = self.manifest().clone();
        let t = Instant::now();
        self.check_cancel(p)?;
        let plan = self.plan_renames(&m.files)?;
        let (mkdirs, backups, places) = (plan.mkdirs.len(), plan.backups.len(), plan.places.len());
        self.record(plan.record())?;
        let steps = mkdirs + backups + places;
        let mut pause = PausePoint::from_env(PAUSE_RENAME_ENV, "rename");
        let mut progress = Progress::new(m.files.len() + self.config_originals.len());
        let mut root_dirs = BTreeSet::new();
        for d in &plan.mkdirs {
            let dir = self.root.join(d);
            fs::create_dir(&dir).map_err(|e| Stop::Failed(format!("creating {}: {e}", dir.display())))?;
            pause.step(steps);
            root_dirs.insert(parent_of(&dir));
        }
        let mut backup_dirs = BTreeSet::new();
        for (path, action, _) in &plan.backups {
            let (dst, bak) = (self.root.join(path), self.backup().join(path));
            fs::rename(&dst, &bak).map_err(|e| Stop::Failed(format!("backing up {path}: {e}")))?;
            pause.step(steps);
            root_dirs.insert(parent_of(&dst));
            backup_dirs.insert(parent_of(&bak));
            if *action == FileAction::Remove {
                progress.file_done(self, *action, path);
            }
        }
        // Barrier: no file is overwritten before every backup's new name is durable. The
        // backup dirs are new (staging is per install), so their own names are synced
        // too, up to the directory holding staging.
        let backup_dirs = with_ancestors(&backup_dirs, &parent_of(&self.stage));
        sync_dirs(&backup_dirs)?;
        for (placement, src) in &plan.places {
            let dst = self.root.join(&placement.path);
            fs::rename(src, &dst).map_err(|e| Stop::Failed(format!("renaming {} into place: {e}", placement.path)))?;
            pause.step(steps);
            root_dirs.insert(parent_of(&dst));
            let action = if placement.added { FileAction::Add } else { FileAction::Replace };
            progress.file_done(self, action, &placement.path);
        }
        sync_dirs(&root_dirs)?;
        let lines: Vec<String> = m.files.iter().map(|f| format!("{:?} {} (rename)", f.action, f.path)).collect();
        append_log_lines(&self.em.phase_log(p), &lines);
        self.check_cancel(p)?;
        self.record(Record::Committed)?;
        Ok((
            PhaseStatus::Succeeded,
            format!(
                "{} file(s) updated by rename in {} ms ({mkdirs} dir(s) created, {backups} backed up, {places} \
                 placed; {} dir(s) synced); 0 bytes copied",
                m.files.len(),
                t.elapsed().as_millis(),
                root_dirs.len() + backup_dirs.len()
            ),
        ))
    }

    /// Plans the rename set and checks it against the disk before anything is journaled
    /// or changed: what an `add` creates must not exist, what a `replace` or `remove`
    /// moves must exist, every staged file must be there. Creates the backup directories
    /// (inside staging, removed with it).
    fn plan_renames(&self, files: &[FileChange]) -> Result<RenamePlan, Stop> {
        let mut plan = RenamePlan::default();
        let mut mkdirs = BTreeSet::new();
        for f in files {
            // Checked in check-system too; the disk may have changed since.
            if let Some(why) = super::beneath::escapes(&self.root, &f.path, false) {
                return Err(Stop::Failed(format!("refusing to write outside the install root: {why}")));
            }
            let dst = self.root.join(&f.path);
            let meta = fs::symlink_metadata(&dst).ok();
            let exists = meta.is_some();
            // A link entry adds or replaces, whichever the disk says.
            let action = match f.action {
                FileAction::Symlink if exists => FileAction::Replace,
                FileAction::Symlink => FileAction::Add,
                a => a,
            };
            match (action, exists) {
                (FileAction::Add, true) => {
                    return Err(Stop::Failed(format!("{} already exists, but the rollup adds it", f.path)));
                }
                (FileAction::Replace | FileAction::Remove, false) => {
                    return Err(Stop::Failed(format!(
                        "{} no longer exists, but the rollup {}s it",
                        f.path,
                        action_verb(f.action)
                    )));
                }
                _ => {}
            }
            if action == FileAction::Add {
                let mut d = parent_of(&dst);
                while !d.exists() && d.starts_with(&self.root) && d != self.root {
                    mkdirs.insert(d.strip_prefix(&self.root).expect("under root").display().to_string());
                    d = parent_of(&d);
                }
            }
            if action != FileAction::Add {
                let bak = self.backup().join(&f.path);
                fs::create_dir_all(parent_of(&bak))
                    .map_err(|e| Stop::Failed(format!("creating the backup dir of {}: {e}", f.path)))?;
                plan.backups.push((f.path.clone(), action, meta.map_or(0, |m| m.ino())));
            }
            if action != FileAction::Remove {
                let src = self.staged_source(f);
                let staged = fs::symlink_metadata(&src).ok();
                let ok = match f.action {
                    FileAction::Symlink => staged.is_some_and(|m| m.file_type().is_symlink()),
                    _ => staged.is_some_and(|m| m.is_file()),
                };
                if !ok {
                    return Err(Stop::Failed(format!("{} is not staged", src.display())));
                }
                plan.places.push((Placement { path: f.path.clone(), added: action == FileAction::Add }, src));
            }
        }
        // Patched config files swap in with the payload: the services start on them.
        for (file, original) in &self.config_originals {
            let dst = self.root.join(file);
            if let Some(why) = super::beneath::escapes(&self.root, file, true) {
                return Err(Stop::Failed(format!("refusing to write outside the install root: {why}")));
            }
            if fs::read(&dst).ok().as_ref() != Some(original) {
                return Err(Stop::Failed(format!(
                    "{file} changed since its patch was computed while staging; nothing was changed, run the install again"
                )));
            }
            let bak = self.backup().join(file);
            fs::create_dir_all(parent_of(&bak))
                .map_err(|e| Stop::Failed(format!("creating the backup dir of {file}: {e}")))?;
            let ino = fs::symlink_metadata(&dst).map_or(0, |m| m.ino());
            plan.backups.push((file.clone(), FileAction::Replace, ino));
            plan.places.push((Placement { path: file.clone(), added: false }, self.staged_config(file)));
        }
        // Sorted paths put every parent before its children.
        plan.mkdirs = mkdirs.into_iter().collect();
        Ok(plan)
    }
}

/// The changes of `update-files`, in the order they are made.
#[derive(Debug, Default)]
struct RenamePlan {
    /// Directories to create under the root, parents first.
    mkdirs: Vec<String>,
    /// Files to move into the backup dir, with their action (`replace` or `remove`) and
    /// inode.
    backups: Vec<(String, FileAction, u64)>,
    /// Staged files to rename into place, with their staged path.
    places: Vec<(Placement, PathBuf)>,
}

impl RenamePlan {
    fn record(&self) -> Record {
        Record::RenameSet {
            mkdirs: self.mkdirs.clone(),
            backups: self.backups.iter().map(|(p, _, _)| p.clone()).collect(),
            backup_inodes: self.backups.iter().map(|(_, _, ino)| *ino).collect(),
            places: self.places.iter().map(|(p, _)| p.clone()).collect(),
        }
    }
}

/// Throttled progress of `update-files` ([`Throttle`]), each event with
/// `data.progress.done/total`.
struct Progress {
    total: usize,
    done: usize,
    throttle: Throttle,
}

impl Progress {
    fn new(total: usize) -> Self {
        Self { total, done: 0, throttle: Throttle::new() }
    }

    fn file_done(&mut self, run: &mut Run<'_>, action: FileAction, path: &str) {
        self.done += 1;
        if !self.throttle.due(self.done as u64, self.total as u64) {
            return;
        }
        let total = self.total;
        run.em.emit(
            PhaseId::UpdateFiles,
            PhaseStatus::Running,
            format!("{} {path} ({}/{total})", action_word(action), self.done),
            json!({ "progress": { "done": self.done, "total": total }, "path": path }),
        );
    }
}

fn action_verb(a: FileAction) -> &'static str {
    match a {
        FileAction::Add => "add",
        FileAction::Replace => "replace",
        FileAction::Remove => "remove",
        FileAction::Tree => "replace as a tree",
        FileAction::Symlink => "link",
    }
}

fn parent_of(path: &Path) -> PathBuf {
    path.parent().expect("paths under the root and staging have a parent").to_path_buf()
}

/// `dirs` and each of their ancestors up to and including `top`.
fn with_ancestors(dirs: &BTreeSet<PathBuf>, top: &Path) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for d in dirs {
        for a in d.ancestors().take_while(|a| a.starts_with(top)) {
            if !out.insert(a.to_path_buf()) {
                break;
            }
        }
    }
    out
}

/// fsyncs each directory once.
fn sync_dirs(dirs: &BTreeSet<PathBuf>) -> Result<(), Stop> {
    for d in dirs {
        sync_dir(d).map_err(|e| Stop::Failed(format!("syncing {}: {e}", d.display())))?;
    }
    Ok(())
}

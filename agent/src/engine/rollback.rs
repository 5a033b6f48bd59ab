//! Rollback: undo every journaled change, newest first, then run the rollback scripts
//! and put services back as they were.
//!
//! Each undo step is idempotent and driven only by the journal and what is on disk, so
//! the same code finishes a rollback that a crash interrupted.

use super::journal::{PAUSE_UNDO_ENV, PausePoint, Record, expand_rename_sets, sync_dir};
use super::run::{Run, Stop};
use super::webapp;
use fleetup_proto::{InstallOutcome, PhaseId, PhaseStatus};
use serde_json::json;
use std::collections::BTreeSet;
use std::fs;
use std::path::Path;

/// Stopped by the install and not started again by it, a service that runs now was started
/// behind its back (the boot starting an enabled unit after a crash, an operator, a restart
/// policy), on a tree half updated or half restored: it is stopped, or it would go on
/// serving what it read then, and `start` would find it running and leave it.
fn stop_started_behind(run: &mut Run<'_>, when: &str, errors: &mut Vec<String>) {
    let Some(m) = run.manifest.clone() else { return };
    for s in m.services.iter().rev() {
        if !run.services.is_running(s).unwrap_or(false) {
            continue;
        }
        match run.services.stop(s) {
            Err(e) => errors.push(format!("stopping {}: {e}", s.name)),
            Ok(()) => run.em.emit(
                PhaseId::Rollback,
                PhaseStatus::Running,
                format!(
                    "service {} was running though the install had stopped it (started by the boot or by someone \
                     else while the install was interrupted): stopped {when}",
                    s.name
                ),
                json!({ "service": s.name, "started_behind_the_install": true }),
            ),
        }
    }
}

/// Rolls back everything the journal records. `Err` lists what could not be undone.
pub(crate) fn rollback(run: &mut Run<'_>, reason: &str, outcome: InstallOutcome) -> Result<(), String> {
    let p = PhaseId::Rollback;
    if let Err(Stop::Failed(e) | Stop::Cancelled(e) | Stop::Exit(e) | Stop::AlreadyInstalled(e)) =
        run.record(Record::RollbackStarted { reason: reason.to_owned(), outcome })
    {
        return Err(e);
    }
    run.em.emit(p, PhaseStatus::Running, format!("{}: {reason}", p.title()), json!({ "reason": reason }));
    let records = run.journal.records().to_vec();
    let mut errors = Vec::new();
    let started_new = records.iter().any(
        |r| matches!(r, Record::Phase { phase } if *phase >= PhaseId::StartServices && *phase != PhaseId::Rollback),
    );
    let stopped = records.iter().any(|r| matches!(r, Record::ServicesStopping { .. }));
    if started_new && let Some(m) = run.manifest.clone() {
        for s in m.services.iter().rev() {
            if let Err(e) = run.services.stop(s) {
                errors.push(format!("stopping {}: {e}", s.name));
            }
        }
    } else if stopped {
        stop_started_behind(run, "before restoring the files", &mut errors);
    }
    let mut files_changed = false;
    // A rename set stands for its per-file records, each of which may or may not have
    // been made: every undo below decides from what is on disk.
    let records = expand_rename_sets(&records);
    let undo_steps = records.iter().filter(|r| is_file_step(r)).count();
    let mut pause = PausePoint::from_env(PAUSE_UNDO_ENV, "undo");
    // Directories whose entries changed, fsynced once after the last undo.
    let mut touched = BTreeSet::new();
    // Old files that cannot be restored: the rollback cannot claim the previous version.
    let mut lost = Vec::new();
    for r in records.iter().rev() {
        let result = match r {
            Record::WebappSwitch { link, old_target } => {
                let link = run.root.join(link);
                match old_target {
                    Some(t) => webapp::switch_link(&link, t),
                    None => fs::remove_file(&link).or_else(not_found_ok),
                }
            }
            Record::WebappDeploy { dir } => fs::remove_dir_all(run.root.join(dir)).or_else(not_found_ok),
            Record::ConfigPatch { file } => {
                let bak = run.backup().join("config").join(file);
                if bak.exists() { fs::rename(&bak, run.root.join(file)) } else { Ok(()) }
            }
            // An added file exists only if it was placed (check-system and update-files
            // both refuse an add whose path exists).
            Record::Place { path, added: true } => {
                let dst = run.root.join(path);
                touched.extend(dst.parent().map(Path::to_path_buf));
                fs::remove_file(dst).or_else(not_found_ok)
            }
            // A backup present means the file was moved away and not yet moved back:
            // whatever is at the path now (nothing, or the staged file) gives way to it.
            Record::Backup { path, ino } => match undo_backup(&run.root, &run.backup(), path, *ino) {
                Ok(dir) => {
                    touched.extend(dir);
                    Ok(())
                }
                Err(BackupProblem::Io(e)) => Err(e),
                Err(BackupProblem::Lost(why)) => {
                    lost.push(why);
                    Ok(())
                }
            },
            Record::MkDir { path } => {
                let dir = run.root.join(path);
                touched.extend(dir.parent().map(Path::to_path_buf));
                fs::remove_dir(dir).or_else(not_found_ok)
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            errors.push(format!("undoing {r:?}: {e}"));
        }
        if is_file_step(r) {
            files_changed = true;
            pause.step(undo_steps);
        }
    }
    if !lost.is_empty() {
        errors.push(format!(
            "the previous version cannot be restored: {} (the root still holds the new file(s) there)",
            lost.join("; ")
        ));
    }
    for dir in &touched {
        // A directory the rollback removed is gone with its entries.
        if let Err(e) = sync_dir(dir).or_else(not_found_ok) {
            errors.push(format!("syncing {}: {e}", dir.display()));
        }
    }
    run.em.emit(p, PhaseStatus::Running, "files, config and web app restored", serde_json::Value::Null);
    if files_changed && let Some(m) = run.manifest.clone() {
        for s in &m.scripts.rollback {
            let script = run.pkg().join(s);
            let cmd = format!("sh '{}'", script.display());
            match run.shell(p, &cmd, &run.root.clone(), m.scripts.deadline_secs) {
                Ok(()) => {
                    run.em.emit(p, PhaseStatus::Running, format!("rollback script {s} done"), serde_json::Value::Null);
                }
                Err(Stop::Failed(e) | Stop::Cancelled(e) | Stop::Exit(e) | Stop::AlreadyInstalled(e)) => {
                    errors.push(format!("rollback script {s}: {e}"));
                }
            }
        }
    }
    if stopped && let Some(m) = run.manifest.clone() {
        // Again after the files are back: one started meanwhile (the boot's start of an
        // enabled unit racing the recovery) may have read them half restored.
        stop_started_behind(run, "after restoring the files, to start it on them", &mut errors);
        let was_running = run.was_running.clone();
        for s in m.services.iter().filter(|s| was_running.contains(&s.name)) {
            let mut old = s.clone();
            // The old version does not answer with the new version's text.
            if let Some(h) = &mut old.health {
                h.expect = None;
            }
            match run.start_service(&old, true) {
                Ok(_) => run.em.emit(
                    p,
                    PhaseStatus::Running,
                    format!("service {} running again", s.name),
                    json!({ "service": s.name }),
                ),
                Err(e) => errors.push(format!("starting {} again: {e}", s.name)),
            }
        }
    }
    if errors.is_empty() {
        run.em.emit(
            p,
            PhaseStatus::Succeeded,
            "rolled back: the root holds the previous version, services are as they were",
            serde_json::Value::Null,
        );
        Ok(())
    } else {
        let e = errors.join("; ");
        run.em.emit(p, PhaseStatus::Failed, format!("rollback incomplete: {e}"), serde_json::Value::Null);
        Err(e)
    }
}

/// Why a backup cannot be renamed back.
enum BackupProblem {
    /// The rename failed.
    Io(std::io::Error),
    /// The old file is not in the backup (missing, or another file): named for the person.
    Lost(String),
}

/// Renames the backup of `path` back over it, if the file was moved away. With the old
/// file's inode (journals since the rename set carry it), a backup that is missing while
/// the path holds another file, or a backup that is another file, is the old version
/// lost, never a no-op. Returns the directory whose entries changed.
fn undo_backup(
    root: &Path,
    backup: &Path,
    path: &str,
    ino: Option<u64>,
) -> Result<Option<std::path::PathBuf>, BackupProblem> {
    use std::os::unix::fs::MetadataExt as _;
    let (bak, dst) = (backup.join(path), root.join(path));
    match (fs::symlink_metadata(&bak), ino) {
        (Ok(md), Some(ino)) if md.ino() != ino => Err(BackupProblem::Lost(format!(
            "{path}: its backup {} is not the file that was there (another file replaced it)",
            bak.display()
        ))),
        (Ok(_), _) => {
            fs::rename(&bak, &dst).map_err(BackupProblem::Io)?;
            Ok(dst.parent().map(Path::to_path_buf))
        }
        (Err(_), None) => Ok(None),
        // Never moved: the old file is still at its path.
        (Err(_), Some(ino)) if fs::symlink_metadata(&dst).is_ok_and(|md| md.ino() == ino) => Ok(None),
        (Err(_), Some(_)) => Err(BackupProblem::Lost(format!("{path}: its backup {} is missing", bak.display()))),
    }
}

/// Puts the hosts file back byte for byte, if the journal says it was changed.
pub(crate) fn restore_hosts(run: &Run<'_>) -> Result<(), String> {
    for r in run.journal.records() {
        if let Record::HostsFile { path, saved } = r {
            match fs::read(saved) {
                Ok(bytes) => {
                    if fs::read(path).ok().as_deref() != Some(bytes.as_slice()) {
                        super::crl::write_in_place(path, &bytes).map_err(|e| format!("{}: {e}", path.display()))?;
                    }
                }
                // Saved copy gone: it was removed only after a successful restore.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(format!("{}: {e}", saved.display())),
            }
        }
    }
    Ok(())
}

/// A record of the file set (`mkdir`, `backup`, `place`), whose undo is one step.
fn is_file_step(r: &Record) -> bool {
    matches!(r, Record::MkDir { .. } | Record::Backup { .. } | Record::Place { .. })
}

fn not_found_ok(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound { Ok(()) } else { Err(e) }
}

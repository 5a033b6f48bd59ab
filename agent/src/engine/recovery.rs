//! Recovery of an install interrupted by a crash or kill: read the journal, then either
//! finish the rollback, roll back (not yet committed), or redo the remaining idempotent
//! post-install phases (committed), and report exactly one outcome.

use super::events::Emitter;
use super::journal::{Journal, Record};
use super::lock::{self, Locks};
use super::run::{Run, state_err};
use super::services::Services;
use super::{CrlRemediation, Engine, EngineError};
use fleetup_proto::manifest::Manifest;
use fleetup_proto::{InstallOutcome, InstallSummary, PhaseId, PhaseStatus};
use serde_json::json;
use std::fs;
use std::path::Path;

pub(crate) fn recover(engine: &Engine, state_dir: &Path) -> Result<Option<InstallSummary>, EngineError> {
    let Ok(state_dir) = fs::canonicalize(state_dir) else { return Ok(None) };
    if !Journal::path_in(&state_dir).exists() {
        return Ok(None);
    }
    // A journal is only "interrupted" if no live engine holds the lock: a running install's
    // journal must never be rolled back underneath it.
    let mut locks = Locks::state(&state_dir, &lock::me("recover", "", ""))
        .map_err(|e| e.into_engine(&format!("state dir {}", state_dir.display())))?;
    let Some(journal) = Journal::open(&state_dir).map_err(state_err(&state_dir))? else { return Ok(None) };
    let Some(Record::Begin { install_id, package, root, stage, vars, backend, hosts_file, allow_downgrade }) =
        journal.records().first().cloned()
    else {
        // Not even the first record made it: nothing was changed.
        let _ = fs::remove_file(Journal::path_in(&state_dir));
        return Ok(None);
    };
    let holder = lock::me("recover", &install_id, &package.display().to_string());
    locks.root(&root, &holder).map_err(|e| e.into_engine(&format!("install root {}", root.display())))?;
    let logs = state_dir.join("logs").join(&install_id);
    let em = Emitter::open(&logs, engine.sink.clone()).map_err(state_err(&logs))?;
    let manifest = journal.records().iter().find_map(|r| match r {
        Record::Staged { manifest } => Manifest::from_toml(manifest).ok(),
        _ => None,
    });
    let mut vars = vars;
    if let Some(m) = &manifest {
        vars.insert("version".into(), m.rollup.version.clone());
    }
    let was_running = journal.records().iter().find_map(|r| match r {
        Record::ServicesStopping { was_running } => Some(was_running.clone()),
        _ => None,
    });
    let services = Services {
        kind: super::BackendKind::parse(&backend).unwrap_or_default(),
        root: root.clone(),
        vars: vars.clone(),
        output_dir: state_dir.join("logs").join("services"),
        log: logs.join("service-control.log"),
    };
    let records = journal.records().to_vec();
    let run = Run {
        engine,
        id: install_id,
        root,
        state_dir,
        stage,
        package,
        trusted: Vec::new(),
        vars,
        services,
        hosts_file,
        remediation: CrlRemediation::None,
        device_class: None,
        allow_downgrade,
        journal,
        em,
        manifest,
        was_running: was_running.clone().unwrap_or_default(),
        restart_required: false,
        ignored_holders: std::collections::BTreeSet::new(),
        config_originals: std::collections::BTreeMap::new(),
        remediate_hosts: Vec::new(),
        decisions: 0,
        _locks: locks,
    };
    // The final event may have been emitted just before the kill: report nothing twice.
    if let Some(done) = run.em.history_summary() {
        let mut run = run;
        let _ = run.journal.append(Record::End { outcome: done.outcome });
        let logs = run.em.logs.clone();
        let _ = run.journal.archive(&logs);
        return Ok(Some(done));
    }
    let last_phase = records.iter().rev().find_map(|r| match r {
        Record::Phase { phase } => Some(*phase),
        _ => None,
    });
    let rolling = records.iter().rev().find_map(|r| match r {
        Record::RollbackStarted { outcome, reason } => Some((*outcome, reason.clone())),
        _ => None,
    });
    let committed = records.iter().any(|r| matches!(r, Record::Committed));
    let where_ = last_phase.map_or("check-system", PhaseId::as_str);
    let mut run = run;
    run.em.emit(
        last_phase.unwrap_or(PhaseId::CheckSystem),
        PhaseStatus::Running,
        format!("recovering: the engine was interrupted during '{where_}'"),
        json!({ "recovery": true }),
    );
    // Before any service is started or stopped: no process of this install runs untracked.
    super::orphans::stop_untracked(&mut run, last_phase.unwrap_or(PhaseId::CheckSystem));
    if let Some((outcome, reason)) = rolling {
        return Ok(Some(run.rollback_and_finish(
            outcome,
            last_phase,
            format!("{reason} (rollback resumed after an interruption)"),
        )));
    }
    if committed && run.manifest.is_some() {
        let from = last_phase
            .and_then(PhaseId::number)
            .map_or(0, |n| n - 1)
            .max(PhaseId::PostPrecompile.number().expect("install phase") - 1);
        return Ok(Some(run.run_from(from)));
    }
    let msg = format!("the engine was interrupted during '{where_}'");
    if was_running.is_some() {
        Ok(Some(run.rollback_and_finish(InstallOutcome::RolledBack, last_phase, msg)))
    } else {
        Ok(Some(run.finish(
            InstallOutcome::Failed,
            last_phase,
            Some(format!("{msg}, before anything on the server was changed")),
        )))
    }
}

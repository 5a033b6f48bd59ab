//! Service processes an interrupted install started but never tracked.
//!
//! The exec backend learns a service's pid only after the service runs, and writes the
//! pidfile after that: an engine killed in between left a service nobody tracked. Recovery
//! then started a second one (which died on its port), the health check passed against the
//! orphan, and a rollback could leave an orphaned new version serving beside old files.
//!
//! So every start is journaled (`service-spawned`: the start shell's process group, held
//! before it runs anything) and, before recovery touches services, every live process of a
//! recorded group that the service's pidfile does not name is stopped — SIGTERM, then
//! SIGKILL at the service's stop deadline. After a reboot (another boot id) the groups are
//! gone and nothing is done. A group id is only reused once all its members are gone, so a
//! live member is one of ours (unless pids wrapped around onto that very number between the
//! kill and the recovery, which is accepted).

use super::exec::Poll;
use super::journal::Record;
use super::run::Run;
use fleetup_proto::{PhaseId, PhaseStatus};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;
use std::time::{Duration, Instant};

/// This boot's id (empty if unreadable: then every recorded group is taken as current).
pub(crate) fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id").map(|s| s.trim().to_owned()).unwrap_or_default()
}

/// Live (non-zombie) processes whose process group is `pgid`.
fn members(pgid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            // `pid (comm) state ppid pgrp …`; comm may hold spaces and parentheses.
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
            let Some((_, rest)) = stat.rsplit_once(')') else { return false };
            let fields: Vec<&str> = rest.split_whitespace().collect();
            fields.first().is_some_and(|s| *s != "Z") && fields.get(2).and_then(|g| g.parse().ok()) == Some(pgid)
        })
        .collect()
}

/// Stops every untracked process of the service groups the journal records; see the
/// module docs. Reported as events of `phase`.
pub(crate) fn stop_untracked(run: &mut Run<'_>, phase: PhaseId) {
    let Some(m) = run.manifest.clone() else { return };
    let now = boot_id();
    let spawned: Vec<(String, i32)> = run
        .journal
        .records()
        .iter()
        .filter_map(|r| match r {
            Record::ServiceSpawned { name, pgid, boot_id } if *boot_id == now => Some((name.clone(), *pgid)),
            _ => None,
        })
        .collect();
    for (name, pgid) in spawned {
        let Some(svc) = m.services.iter().find(|s| s.name == name) else { continue };
        let live = members(pgid);
        let tracked = run.services.tracked_pid(svc);
        if live.is_empty() || tracked.is_some_and(|p| live.contains(&p)) {
            continue;
        }
        let deadline = Duration::from_secs(svc.stop_deadline_secs.max(1));
        let _ = kill(Pid::from_raw(-pgid), Signal::SIGTERM);
        let t = Instant::now();
        let mut poll = Poll::new(Duration::from_millis(2), Duration::from_millis(20));
        while !members(pgid).is_empty() && t.elapsed() < deadline {
            poll.sleep();
        }
        let killed = !members(pgid).is_empty();
        if killed {
            let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
        }
        let how = if killed { "SIGKILL after its stop deadline" } else { "SIGTERM" };
        run.em.emit(
            phase,
            PhaseStatus::Running,
            format!(
                "stopped {name}'s untracked process(es) {live:?} (group {pgid}, started by the interrupted install, \
                 not in its pidfile) with {how}"
            ),
            json!({ "service": name, "untracked_pids": live }),
        );
    }
}

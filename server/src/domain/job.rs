//! What an operator may do to one job: cancel it in flight, and the guided-failure answers
//! to a job that failed (retry this server, skip its failure, exclude it from the rollout).

use crate::model::{JobState, RolloutState};
use fleetup_proto::{Cancellability, PhaseId};

/// An operator's answer to one failed (or not yet started) job; the rollout goes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobAction {
    /// Try this server again now, as a new attempt.
    Retry,
    /// Its failure no longer counts: the job becomes `skipped` (a success for the gate).
    Skip,
    /// Take the server out of the rollout: the job becomes `excluded`, counted nowhere.
    Exclude,
}

impl JobAction {
    /// Every action.
    pub const ALL: [JobAction; 3] = [JobAction::Retry, JobAction::Skip, JobAction::Exclude];

    /// The id used in paths and the audit log.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobAction::Retry => "retry",
            JobAction::Skip => "skip",
            JobAction::Exclude => "exclude",
        }
    }

    /// Parses a path segment.
    pub fn parse(s: &str) -> Option<JobAction> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// Ended without installing, through no choice of the operator: what retry and skip apply to.
const fn unsuccessful(s: JobState) -> bool {
    matches!(s, JobState::Failed | JobState::RolledBack | JobState::Lost | JobState::Undeliverable)
}

/// Why `action` is refused on a job in `state` of a rollout in `rollout`, if it is (a
/// sentence for the operator).
pub fn guided_refused(action: JobAction, state: JobState, rollout: RolloutState) -> Option<String> {
    if rollout.is_terminal() || rollout.is_ending() {
        return Some(format!(
            "its rollout is {}; stage a new one for this server (POST /api/v1/rollouts/{{id}}/retry-failed)",
            rollout.as_str()
        ));
    }
    let ok = match action {
        JobAction::Retry => unsuccessful(state) || state == JobState::Cancelled,
        JobAction::Skip => unsuccessful(state),
        JobAction::Exclude => {
            unsuccessful(state) || matches!(state, JobState::Pending | JobState::Queued | JobState::Cancelled)
        }
    };
    if ok {
        return None;
    }
    Some(match state {
        s if s.is_active() => format!("the job is {}: cancel it first, or wait for it to end", s.as_str()),
        JobState::Succeeded | JobState::Skipped => format!("the job is {}: there is nothing to answer", state.as_str()),
        JobState::Retried => "this attempt was already retried: answer the newer attempt".to_owned(),
        s => format!("{} does not apply to a {} job", action.as_str(), s.as_str()),
    })
}

/// Why a cancel of a job in `phase` would be refused by the engine, if it would: from
/// `post-precompile` on, the engine finishes forward (undoing would cost more than
/// finishing), so asking it to cancel would be silently dropped.
pub fn cancel_refused(phase: Option<PhaseId>) -> Option<String> {
    let phase = phase?;
    (phase.cancellability() == Cancellability::Refused).then(|| {
        format!(
            "the job is in {} ({}), where the engine refuses a cancel: from post-precompile on it finishes \
             forward instead of undoing; wait for it to end, then roll back with a new rollout if needed",
            phase.as_str(),
            phase.title()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (action, job state) in a running rollout: allowed or refused, and an ended
    /// rollout refuses them all.
    #[test]
    fn guided_failure_table() {
        use JobState as J;
        let allowed: &[(JobAction, &[JobState])] = &[
            (JobAction::Retry, &[J::Failed, J::RolledBack, J::Lost, J::Undeliverable, J::Cancelled]),
            (JobAction::Skip, &[J::Failed, J::RolledBack, J::Lost, J::Undeliverable]),
            (
                JobAction::Exclude,
                &[J::Failed, J::RolledBack, J::Lost, J::Undeliverable, J::Pending, J::Queued, J::Cancelled],
            ),
        ];
        for (action, states) in allowed {
            for s in JobState::ALL {
                let refused = guided_refused(*action, s, RolloutState::Running);
                assert_eq!(
                    refused.is_none(),
                    states.contains(&s),
                    "{} on {}: {refused:?}",
                    action.as_str(),
                    s.as_str()
                );
                assert!(guided_refused(*action, s, RolloutState::Finished).is_some());
            }
        }
        assert!(guided_refused(JobAction::Skip, J::Running, RolloutState::Paused).unwrap().contains("cancel it first"));
    }

    #[test]
    fn cancel_is_refused_from_post_precompile_on() {
        for p in PhaseId::INSTALL {
            let refused = cancel_refused(Some(p)).is_some();
            let before = PhaseId::INSTALL.iter().position(|q| *q == p)
                < PhaseId::INSTALL.iter().position(|q| *q == PhaseId::PostPrecompile);
            assert_eq!(refused, !before, "{p}");
        }
        assert_eq!(cancel_refused(None), None, "a job that has not reported yet can be cancelled");
        assert!(cancel_refused(Some(PhaseId::StartServices)).unwrap().contains("start-services"));
    }
}

//! What an operator may do to one job in flight.

use fleetup_proto::{Cancellability, PhaseId};

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

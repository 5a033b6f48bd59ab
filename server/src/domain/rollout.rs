//! A rollout's state machine: which operator action is allowed in which state, and what
//! it does. The scheduler's own transitions (pausing at the error threshold or a failed
//! gate, aborting) are the same [`Effect`]s, so "pause" is written once for both.

use crate::model::RolloutState;

/// An operator action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    /// draft → running.
    Start,
    /// running / awaiting-approval → paused.
    Pause,
    /// paused → running (accepting the failures so far and the current wave's gate).
    Resume,
    /// awaiting-approval → running, opening the next wave.
    Approve,
    /// → cancelled; unstarted jobs cancelled, jobs in flight asked to cancel.
    Cancel,
}

impl RolloutAction {
    /// Every action, in the order the dashboard offers them.
    pub const ALL: [RolloutAction; 5] = [
        RolloutAction::Start,
        RolloutAction::Pause,
        RolloutAction::Resume,
        RolloutAction::Approve,
        RolloutAction::Cancel,
    ];

    /// The id used in paths and the audit log.
    pub const fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Start => "start",
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Approve => "approve",
            RolloutAction::Cancel => "cancel",
        }
    }

    /// Parses a path segment.
    pub fn parse(s: &str) -> Option<RolloutAction> {
        Self::ALL.into_iter().find(|a| a.as_str() == s)
    }
}

/// What a transition does to the rollout, for the store to apply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// draft → running: wave 1 opens and is approved.
    Start,
    /// → paused, with the reason shown to people; queued jobs go back to pending.
    Pause(String),
    /// paused → running; the failures so far and the current wave's gate are accepted.
    Resume,
    /// awaiting-approval → running, with the next wave approved.
    Approve,
    /// → `state` (cancelled or aborted), with the reason: unstarted jobs are cancelled, jobs
    /// in flight are asked to cancel.
    End(RolloutState, String),
}

/// The effect of an operator's `action` on a rollout in `state`, or why it is refused (a
/// Does an `If-Match` header value hold for the current entity tag? `*` matches any
/// version; otherwise one of the comma-separated tags must equal it by strong comparison
/// (RFC 9110 §13.1.1: a weak tag `W/"…"` never matches).
pub fn etag_matches(if_match: &str, current: &str) -> bool {
    if_match.trim() == "*" || if_match.split(',').map(str::trim).any(|tag| !tag.starts_with("W/") && tag == current)
}

/// sentence to follow "rollout ID is STATE; ").
pub fn operator_action(state: RolloutState, action: RolloutAction, actor: &str) -> Result<Effect, &'static str> {
    use RolloutAction as A;
    use RolloutState as S;
    let refuse = Err;
    match (action, state) {
        (A::Start, S::Draft) => Ok(Effect::Start),
        (A::Start, _) => refuse("only a draft rollout can be started"),
        (A::Pause, S::Running | S::AwaitingApproval) => Ok(Effect::Pause(format!("paused by {actor}"))),
        (A::Pause, _) => refuse("only a running rollout can be paused"),
        (A::Resume, S::Paused) => Ok(Effect::Resume),
        (A::Resume, _) => refuse("only a paused rollout can be resumed"),
        (A::Approve, S::AwaitingApproval) => Ok(Effect::Approve),
        (A::Approve, _) => refuse("approve applies only to a rollout awaiting approval for its next wave"),
        (A::Cancel, s) if s.is_ending() => refuse("it is already ending: its jobs in flight are finishing"),
        (A::Cancel, s) if !s.is_terminal() => Ok(Effect::End(S::Cancelled, format!("cancelled by {actor}"))),
        (A::Cancel, _) => refuse("it has already ended"),
    }
}

/// The state a rollout that ends as `target` (cancelled or aborted) is in while `in_flight`
/// of its jobs are still ending: a rollout says it has ended only once every job has.
pub fn ending_state(target: RolloutState, in_flight: usize) -> RolloutState {
    match (target, in_flight) {
        (_, 0) => target,
        (RolloutState::Aborted, _) => RolloutState::Aborting,
        _ => RolloutState::Cancelling,
    }
}

/// The final state of an ending rollout once its last job in flight has ended, if it now is.
pub fn settled(state: RolloutState, in_flight: u64) -> Option<RolloutState> {
    match (state, in_flight) {
        (RolloutState::Cancelling, 0) => Some(RolloutState::Cancelled),
        (RolloutState::Aborting, 0) => Some(RolloutState::Aborted),
        _ => None,
    }
}

impl Effect {
    /// The state the rollout is in afterwards.
    pub fn state(&self) -> RolloutState {
        match self {
            Effect::Start | Effect::Resume | Effect::Approve => RolloutState::Running,
            Effect::Pause(_) => RolloutState::Paused,
            Effect::End(s, _) => *s,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn if_match_compares_strongly_and_star_matches_any() {
        assert!(etag_matches("\"a1\"", "\"a1\""));
        assert!(etag_matches("\"zz\", \"a1\"", "\"a1\""));
        assert!(etag_matches("*", "\"a1\""));
        assert!(!etag_matches("W/\"a1\"", "\"a1\""));
        assert!(!etag_matches("\"a2\"", "\"a1\""));
    }
    use RolloutAction as A;
    use RolloutState as S;

    /// Every (state, action) pair: allowed ones give their effect, the others a reason.
    #[test]
    fn every_action_in_every_state() {
        let all_states = [S::Draft, S::Running, S::Paused, S::AwaitingApproval, S::Finished, S::Cancelled, S::Aborted];
        let table: &[(A, &[S], Effect)] = &[
            (A::Start, &[S::Draft], Effect::Start),
            (A::Pause, &[S::Running, S::AwaitingApproval], Effect::Pause("paused by token:ops".into())),
            (A::Resume, &[S::Paused], Effect::Resume),
            (A::Approve, &[S::AwaitingApproval], Effect::Approve),
            (
                A::Cancel,
                &[S::Draft, S::Running, S::Paused, S::AwaitingApproval],
                Effect::End(S::Cancelled, "cancelled by token:ops".into()),
            ),
        ];
        for (action, allowed, effect) in table {
            for state in all_states {
                let got = operator_action(state, *action, "token:ops");
                if allowed.contains(&state) {
                    assert_eq!(got.as_ref(), Ok(effect), "{action:?} in {state:?}");
                } else {
                    let why = got.expect_err("refused");
                    assert!(!why.is_empty(), "{action:?} in {state:?}");
                }
            }
        }
    }

    /// A cancelled or aborted rollout says so only when no job is in flight any more.
    #[test]
    fn ending_rollouts_settle_when_their_last_job_ends() {
        assert_eq!(ending_state(S::Cancelled, 2), S::Cancelling);
        assert_eq!(ending_state(S::Aborted, 1), S::Aborting);
        assert_eq!(ending_state(S::Cancelled, 0), S::Cancelled);
        assert_eq!(ending_state(S::Aborted, 0), S::Aborted);
        assert_eq!(settled(S::Cancelling, 1), None);
        assert_eq!(settled(S::Cancelling, 0), Some(S::Cancelled));
        assert_eq!(settled(S::Aborting, 0), Some(S::Aborted));
        for s in [S::Running, S::Paused, S::Cancelled, S::Finished] {
            assert_eq!(settled(s, 0), None, "{s:?}");
        }
    }

    #[test]
    fn effects_name_the_state_after() {
        assert_eq!(Effect::Start.state(), S::Running);
        assert_eq!(Effect::Pause(String::new()).state(), S::Paused);
        assert_eq!(Effect::End(S::Aborted, String::new()).state(), S::Aborted);
    }

    #[test]
    fn actions_round_trip_their_ids() {
        for a in A::ALL {
            assert_eq!(A::parse(a.as_str()), Some(a));
        }
        assert_eq!(A::parse("retry-failed"), None);
    }
}

//! Automatic retries: which failures are transient, and when the next attempt may start.

use super::plan::Retries;
use crate::model::{JobState, Millis};

/// A failure worth trying again by itself: the agent lost its lease (it went quiet: a
/// reboot, a network cut), or the install ended asking to be retried later (a hook's
/// "retry later" exit code). A failed check or a rolled-back install is not: it would fail
/// the same way again.
pub fn transient(state: JobState, retry_later: bool) -> bool {
    state == JobState::Lost || (retry_later && matches!(state, JobState::Failed | JobState::RolledBack))
}

/// When attempt `attempt`'s transient failure at `now` may be tried again, or `None` once the
/// policy's retries are used up.
pub fn next_attempt_at(retries: Retries, attempt: u32, now: Millis) -> Option<Millis> {
    (attempt <= retries.times).then(|| now + retries.delay_ms(attempt + 1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_lost_jobs_and_retry_later_exits_are_transient() {
        assert!(transient(JobState::Lost, false));
        assert!(transient(JobState::Failed, true));
        assert!(transient(JobState::RolledBack, true));
        assert!(!transient(JobState::Failed, false));
        assert!(!transient(JobState::Cancelled, true), "a cancel is the operator's");
        assert!(!transient(JobState::Undeliverable, false), "an offline server has its own timeout and retry");
    }

    #[test]
    fn attempts_stop_after_the_policy_times() {
        let r = Retries { times: 2, backoff_ms: 1000, max_backoff_ms: 60_000 };
        assert_eq!(next_attempt_at(r, 1, 0), Some(1000));
        assert_eq!(next_attempt_at(r, 2, 0), Some(2000));
        assert_eq!(next_attempt_at(r, 3, 0), None, "two retries: three attempts in all");
    }
}

//! In-memory limits: failed dashboard logins per user name and in total. In-process on
//! purpose: a restart forgives, and several replicas each apply the limit
//! (docs/decisions.md).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failed logins of one user name allowed within [`LOGIN_WINDOW`] before logins are refused.
pub const MAX_FAILED_LOGINS: usize = 5;
/// The rate limit's window.
pub const LOGIN_WINDOW: Duration = Duration::from_mins(5);
/// Failed logins of all names together allowed within [`LOGIN_WINDOW`] (slows spraying).
pub const MAX_FAILED_LOGINS_TOTAL: usize = 100;

/// Failed login attempts kept in memory, per user name and in total. In-process on
/// purpose: a restart forgives, and several replicas each apply the limit (docs/decisions.md).
#[derive(Debug, Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, Vec<Instant>>>,
}

impl LoginLimiter {
    fn prune(list: &mut Vec<Instant>, now: Instant) {
        list.retain(|t| now.duration_since(*t) < LOGIN_WINDOW);
    }

    /// `Some(wait)` when logins for this name are refused for now.
    pub fn blocked(&self, username: &str) -> Option<Duration> {
        let now = Instant::now();
        let mut map = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let total: usize = map
            .values_mut()
            .map(|l| {
                Self::prune(l, now);
                l.len()
            })
            .sum();
        map.retain(|_, l| !l.is_empty());
        let mine = map.get(username).map_or(&[][..], Vec::as_slice);
        if mine.len() >= MAX_FAILED_LOGINS || total >= MAX_FAILED_LOGINS_TOTAL {
            let oldest = mine.first().copied().unwrap_or(now);
            Some(LOGIN_WINDOW.saturating_sub(now.duration_since(oldest)))
        } else {
            None
        }
    }

    /// Records a failed attempt.
    pub fn failed(&self, username: &str) {
        let mut map = self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        map.entry(username.to_owned()).or_default().push(Instant::now());
    }

    /// Forgets a name's failures after a successful login.
    pub fn succeeded(&self, username: &str) {
        self.failures.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(username);
    }
}

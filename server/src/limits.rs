//! In-memory limits on dashboard logins, designed so that no one can use them to lock
//! another operator out.
//!
//! - Per (user name, source address): [`MAX_FAILED_PER_PAIR`] failures in [`LOGIN_WINDOW`].
//!   A guesser at one address runs out for that name; the real user at another address
//!   does not.
//! - Per source address: [`MAX_FAILED_PER_ADDRESS`] failures in the window, whatever the
//!   names (spraying made-up or real names from one address), and at most
//!   [`MAX_CHECKS_PER_ADDRESS`] password checks in flight.
//! - Global: at most [`MAX_CHECKS`] argon2 checks in flight (each takes 19 MiB and a core
//!   for tens of milliseconds), and once [`SLOW_DOWN_AFTER`] failures of anyone are in the
//!   window, every *failed* attempt is answered [`SLOW_DOWN`] later. A right password is
//!   never locked out or delayed by what others do; at worst it hears "busy, try again in a
//!   second" while [`MAX_CHECKS`] checks run.
//!
//! Counting happens BEFORE the hash runs: [`LoginLimiter::reserve`] takes a slot that
//! counts as a failure until [`Attempt::succeeded`] gives it back, in one step under one
//! lock, so 40 concurrent guesses cannot all pass a "fewer than 5 failures?" check.
//!
//! In-process on purpose: a restart forgives, each replica limits on its own, and no write
//! per failed guess (docs/decisions.md).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Failed logins of one user name from one address allowed within [`LOGIN_WINDOW`].
pub const MAX_FAILED_PER_PAIR: usize = 5;
/// Failed logins from one address (any names) allowed within [`LOGIN_WINDOW`].
pub const MAX_FAILED_PER_ADDRESS: usize = 20;
/// How long a failure counts.
pub const LOGIN_WINDOW: Duration = Duration::from_mins(5);
/// Password checks running at once, in total.
pub const MAX_CHECKS: usize = 8;
/// Password checks running at once for one address.
pub const MAX_CHECKS_PER_ADDRESS: usize = 2;
/// Failures of everyone in the window after which failed attempts are slowed down.
pub const SLOW_DOWN_AFTER: usize = 100;
/// The extra wait of a failed attempt while slowed down.
pub const SLOW_DOWN: Duration = Duration::from_secs(1);

/// Why an attempt was not even checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Too many failures for this name from this address, or from this address; retry after.
    Limited(Duration),
    /// Too many checks running right now; retry in a second.
    Busy,
}

/// What a recorded failure led to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Failure {
    /// This failure used up the last attempt of its name and address, or of its address:
    /// further attempts are refused until the window passes (worth an audit record).
    pub locked_out: bool,
    /// Wait this long before answering (the global slow-down).
    pub delay: Duration,
}

type Pair = (String, IpAddr);

#[derive(Debug, Default)]
struct State {
    /// Failures in the window, oldest first.
    failures: VecDeque<(Instant, Pair)>,
    /// Failures (recorded and in flight) per pair and per address.
    per_pair: HashMap<Pair, usize>,
    per_address: HashMap<IpAddr, usize>,
    /// Checks in flight, per address and in total.
    checking: HashMap<IpAddr, usize>,
    checking_total: usize,
}

fn bump<K: std::hash::Hash + Eq>(map: &mut HashMap<K, usize>, key: K, up: bool) {
    if up {
        *map.entry(key).or_default() += 1;
    } else if let std::collections::hash_map::Entry::Occupied(mut e) = map.entry(key) {
        *e.get_mut() -= 1;
        if *e.get() == 0 {
            e.remove();
        }
    }
}

impl State {
    fn prune(&mut self, now: Instant) {
        while let Some((at, _)) = self.failures.front() {
            if now.duration_since(*at) < LOGIN_WINDOW {
                break;
            }
            let (_, (name, addr)) = self.failures.pop_front().expect("front exists");
            bump(&mut self.per_address, addr, false);
            bump(&mut self.per_pair, (name, addr), false);
        }
    }

    /// When the oldest failure matching `f` leaves the window.
    fn wait_for(&self, now: Instant, f: impl Fn(&Pair) -> bool) -> Duration {
        let oldest = self.failures.iter().find(|(_, p)| f(p)).map_or(now, |(at, _)| *at);
        LOGIN_WINDOW.saturating_sub(now.duration_since(oldest)).max(Duration::from_secs(1))
    }

    /// Counts or uncounts one attempt in flight (which counts as a failure until it succeeds).
    fn in_flight(&mut self, pair: &Pair, up: bool) {
        bump(&mut self.per_pair, pair.clone(), up);
        bump(&mut self.per_address, pair.1, up);
        bump(&mut self.checking, pair.1, up);
        self.checking_total = if up { self.checking_total + 1 } else { self.checking_total.saturating_sub(1) };
    }
}

/// The login limits of this process (see the module docs).
#[derive(Debug, Default)]
pub struct LoginLimiter {
    state: Arc<Mutex<State>>,
}

impl LoginLimiter {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Reserves a password check for `username` from `addr`, or says why not. The reservation
    /// counts as a failure until [`Attempt::succeeded`]; dropping it unresolved also counts
    /// as a failure (a cancelled request is not a free guess).
    pub fn reserve(&self, username: &str, addr: IpAddr) -> Result<Attempt, Refusal> {
        let now = Instant::now();
        let mut s = self.lock();
        s.prune(now);
        let pair = (username.to_owned(), addr);
        if s.per_pair.get(&pair).copied().unwrap_or(0) >= MAX_FAILED_PER_PAIR {
            return Err(Refusal::Limited(s.wait_for(now, |p| *p == pair)));
        }
        if s.per_address.get(&addr).copied().unwrap_or(0) >= MAX_FAILED_PER_ADDRESS {
            return Err(Refusal::Limited(s.wait_for(now, |p| p.1 == addr)));
        }
        if s.checking_total >= MAX_CHECKS || s.checking.get(&addr).copied().unwrap_or(0) >= MAX_CHECKS_PER_ADDRESS {
            return Err(Refusal::Busy);
        }
        s.in_flight(&pair, true);
        Ok(Attempt { state: Arc::clone(&self.state), pair: Some(pair) })
    }
}

/// A reserved password check; resolve it with [`Attempt::succeeded`] or [`Attempt::failed`].
#[derive(Debug)]
pub struct Attempt {
    state: Arc<Mutex<State>>,
    pair: Option<Pair>,
}

impl Attempt {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The password was right: the slot is given back and the pair's failures forgiven.
    pub fn succeeded(mut self) {
        let pair = self.pair.take().expect("unresolved");
        let mut s = self.lock();
        s.in_flight(&pair, false);
        let before = s.failures.len();
        s.failures.retain(|(_, p)| *p != pair);
        for _ in s.failures.len()..before {
            bump(&mut s.per_address, pair.1, false);
            bump(&mut s.per_pair, pair.clone(), false);
        }
    }

    /// The check could not run (the database failed): the slot is given back, nothing is
    /// counted.
    pub fn abandon(mut self) {
        let pair = self.pair.take().expect("unresolved");
        self.lock().in_flight(&pair, false);
    }

    /// The password was wrong (or the user unknown or disabled): the reservation becomes a
    /// recorded failure.
    pub fn failed(mut self) -> Failure {
        let pair = self.pair.take().expect("unresolved");
        record_failure(&mut self.lock(), pair)
    }
}

fn record_failure(s: &mut State, pair: Pair) -> Failure {
    // The reservation already counted in per_pair and per_address; it only stops checking.
    bump(&mut s.checking, pair.1, false);
    s.checking_total = s.checking_total.saturating_sub(1);
    let locked_out = s.per_pair.get(&pair).copied().unwrap_or(0) == MAX_FAILED_PER_PAIR
        || s.per_address.get(&pair.1).copied().unwrap_or(0) == MAX_FAILED_PER_ADDRESS;
    s.failures.push_back((Instant::now(), pair));
    let delay = if s.failures.len() > SLOW_DOWN_AFTER { SLOW_DOWN } else { Duration::ZERO };
    Failure { locked_out, delay }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if let Some(pair) = self.pair.take() {
            record_failure(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner), pair);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn reservations_count_before_the_check_ends() {
        let l = LoginLimiter::default();
        let a = l.reserve("ada", ip(1)).unwrap();
        let b = l.reserve("ada", ip(1)).unwrap();
        assert_eq!(l.reserve("ada", ip(1)).unwrap_err(), Refusal::Busy, "two checks per address at once");
        a.failed();
        b.failed();
        for _ in 0..3 {
            l.reserve("ada", ip(1)).unwrap().failed();
        }
        assert!(matches!(l.reserve("ada", ip(1)), Err(Refusal::Limited(_))));
        // The real user elsewhere is not locked out, and succeeds.
        l.reserve("ada", ip(2)).unwrap().succeeded();
    }

    #[test]
    fn the_fifth_failure_reports_the_lockout_and_success_forgives() {
        let l = LoginLimiter::default();
        for i in 1..=4 {
            assert!(!l.reserve("bob", ip(1)).unwrap().failed().locked_out, "failure {i}");
        }
        l.reserve("bob", ip(1)).unwrap().succeeded();
        for _ in 0..4 {
            l.reserve("bob", ip(1)).unwrap().failed();
        }
        assert!(l.reserve("bob", ip(1)).unwrap().failed().locked_out);
    }

    #[test]
    fn made_up_names_exhaust_only_their_address() {
        let l = LoginLimiter::default();
        for i in 0..MAX_FAILED_PER_ADDRESS {
            l.reserve(&format!("nobody-{i}"), ip(1)).unwrap().failed();
        }
        assert!(matches!(l.reserve("ada", ip(1)), Err(Refusal::Limited(_))));
        l.reserve("ada", ip(2)).unwrap().succeeded();
    }

    #[test]
    fn a_dropped_attempt_counts_as_a_failure() {
        let l = LoginLimiter::default();
        for _ in 0..MAX_FAILED_PER_PAIR {
            drop(l.reserve("eve", ip(3)).unwrap());
        }
        assert!(matches!(l.reserve("eve", ip(3)), Err(Refusal::Limited(_))));
    }

    #[test]
    fn many_failures_slow_down_failures_only() {
        let l = LoginLimiter::default();
        let mut last = Duration::ZERO;
        for i in 0..=SLOW_DOWN_AFTER {
            let addr = IpAddr::from([10, 0, u8::try_from(i / 250).unwrap(), u8::try_from(i % 250).unwrap()]);
            last = l.reserve("x", addr).unwrap().failed().delay;
        }
        assert_eq!(last, SLOW_DOWN);
        l.reserve("ada", ip(9)).unwrap().succeeded();
    }
}

//! The job's lease as the agent knows it: renewed by every acknowledged report, lost at the
//! first `409`, and confirmed on demand before anything on the server changes.
//!
//! The reporter renews the lease on its own timer for the whole job, from the moment the
//! job is received, whatever runs meanwhile (download, checks, a decision waiting for an
//! operator, a long hook). Two moments need more than "renewed lately": starting the engine
//! and the engine's first change (see `Bridge`'s gate). There the agent asks for a
//! confirmation, a report sent *after* the question, and waits for its answer. Without an
//! answer within the lease (the coordinator unreachable for that long) the lease is
//! presumed lost: the coordinator will have declared the job lost by then.

use std::sync::{Condvar, Mutex, PoisonError};
use std::time::{Duration, Instant};

#[derive(Debug)]
struct State {
    /// Confirmations asked so far.
    asked: u64,
    /// Confirmations answered: every question up to this number.
    confirmed: u64,
    /// The coordinator refused a report (`409`), or the lease ran out unconfirmed.
    lost: bool,
    /// The last acknowledged report.
    last_ok: Instant,
}

/// One job's lease.
#[derive(Debug)]
pub struct Lease {
    secs: Duration,
    state: Mutex<State>,
    changed: Condvar,
    /// Wakes the reporter when a confirmation is asked.
    pub asked: tokio::sync::Notify,
    /// Wakes async waiters when the lease is renewed or lost.
    renewed: tokio::sync::Notify,
}

/// What a confirmation found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Confirmed {
    /// The coordinator acknowledged a report sent after the question.
    Held,
    /// The coordinator refused a report, or none was acknowledged within the lease.
    Lost,
}

impl Lease {
    /// A lease of `secs`, counted from now (the job was just handed over).
    pub fn new(secs: Duration) -> Self {
        Self {
            secs: secs.max(Duration::from_secs(1)),
            state: Mutex::new(State { asked: 0, confirmed: 0, lost: false, last_ok: Instant::now() }),
            changed: Condvar::new(),
            asked: tokio::sync::Notify::new(),
            renewed: tokio::sync::Notify::new(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The question a report sent now answers (read before sending it).
    pub fn ticket(&self) -> u64 {
        self.lock().asked
    }

    /// True while a confirmation waits for a report.
    pub fn wanted(&self) -> bool {
        let s = self.lock();
        !s.lost && s.asked > s.confirmed
    }

    /// A report read with [`Lease::ticket`] = `ticket` was acknowledged.
    pub fn renewed(&self, ticket: u64) {
        let mut s = self.lock();
        s.confirmed = s.confirmed.max(ticket);
        s.last_ok = Instant::now();
        drop(s);
        self.changed.notify_all();
        self.renewed.notify_waiters();
    }

    /// The coordinator no longer holds this job for this agent.
    pub fn lose(&self) {
        self.lock().lost = true;
        self.changed.notify_all();
        self.renewed.notify_waiters();
    }

    /// True once lost.
    pub fn is_lost(&self) -> bool {
        self.lock().lost
    }

    fn ask(&self) -> u64 {
        let mut s = self.lock();
        s.asked += 1;
        let ticket = s.asked;
        drop(s);
        self.asked.notify_one();
        ticket
    }

    /// Where a confirmation stands: `Some` once decided. Presumes the lease lost (and
    /// records it) when no report was acknowledged for a whole lease.
    fn settled(&self, ticket: u64) -> Option<Confirmed> {
        let mut s = self.lock();
        if s.lost {
            return Some(Confirmed::Lost);
        }
        if s.confirmed >= ticket {
            return Some(Confirmed::Held);
        }
        if s.last_ok.elapsed() > self.secs {
            s.lost = true;
            return Some(Confirmed::Lost);
        }
        None
    }

    /// Asks for a confirmation and blocks until it is decided (the engine's thread).
    pub fn confirm_blocking(&self) -> Confirmed {
        let ticket = self.ask();
        let mut guard = self.lock();
        loop {
            drop(guard);
            if let Some(c) = self.settled(ticket) {
                return c;
            }
            guard = self.lock();
            // Renewals and losses notify at once; the timeout bounds the presumption check.
            guard =
                self.changed.wait_timeout(guard, Duration::from_millis(500)).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// Asks for a confirmation and waits until it is decided (async side).
    pub async fn confirm(&self) -> Confirmed {
        let ticket = self.ask();
        loop {
            let renewed = self.renewed.notified();
            tokio::pin!(renewed);
            renewed.as_mut().enable();
            if let Some(c) = self.settled(ticket) {
                return c;
            }
            let _ = tokio::time::timeout(Duration::from_millis(500), renewed).await;
        }
    }

    /// Resolves once the lease is lost (for aborting a download).
    pub async fn lost(&self) {
        loop {
            let renewed = self.renewed.notified();
            tokio::pin!(renewed);
            renewed.as_mut().enable();
            if self.is_lost() {
                return;
            }
            renewed.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_confirmation_needs_a_report_sent_after_it() {
        let lease = Arc::new(Lease::new(Duration::from_secs(30)));
        // A report acknowledged before the question does not answer it.
        let before = lease.ticket();
        lease.renewed(before);
        let waiter = {
            let lease = lease.clone();
            std::thread::spawn(move || lease.confirm_blocking())
        };
        crate::daemon::lease::tests::until(|| lease.wanted());
        let t = lease.ticket();
        lease.renewed(t);
        assert_eq!(waiter.join().unwrap(), Confirmed::Held);
        assert!(!lease.wanted());
    }

    #[test]
    fn a_refusal_or_a_silent_lease_is_lost() {
        let lease = Lease::new(Duration::from_secs(30));
        lease.lose();
        assert_eq!(lease.confirm_blocking(), Confirmed::Lost);
        let silent = Lease::new(Duration::from_secs(1));
        assert_eq!(silent.confirm_blocking(), Confirmed::Lost, "no report acknowledged within the lease");
        assert!(silent.is_lost());
    }

    pub(super) fn until(check: impl Fn() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !check() {
            assert!(Instant::now() < deadline, "condition not reached");
            std::thread::yield_now();
        }
    }
}

//! The bridge between the blocking engine thread and the async reporter: the engine's
//! events go into an outbox the reporter drains in order; the engine's questions wait
//! for answers the reporter brings back from the coordinator.
//!
//! It is also the lease's gate before the first change. The engine announces each phase
//! with a `running` event before the phase does anything; [`FIRST_CHANGE`] is the first
//! phase that writes outside the agent's state dir (the CRL hosts-file remediation,
//! staging beside the root, then hooks, services and files). When the engine announces it,
//! `emit` holds the engine until the coordinator has acknowledged a report sent after that
//! event. If the lease is lost (or the job expired) the engine is cancelled there, in a
//! phase whose cancel ends the install with nothing changed.

use super::lease::{Confirmed, Lease};
use crate::engine::{CancelHandle, Decider, EventSink};
use fleetup_proto::{DecisionAnswer, DecisionKind, DecisionRequest, EngineEvent, PhaseId, PhaseStatus};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::Duration;

/// The first phase that changes anything outside the agent's state dir.
pub const FIRST_CHANGE: PhaseId = PhaseId::PrePrecompile;

/// Shared between the engine thread (as its [`EventSink`] and [`Decider`]) and the
/// reporter task.
#[derive(Debug)]
pub struct Bridge {
    /// Events not yet acknowledged by the coordinator, oldest first.
    outbox: Mutex<VecDeque<EngineEvent>>,
    /// Answers received, by decision id.
    answers: Mutex<BTreeMap<u32, DecisionAnswer>>,
    answered: Condvar,
    /// The decision the engine waits on now.
    waiting_on: Mutex<Option<u32>>,
    /// Wakes the reporter when there is something to send.
    pub wake: tokio::sync::Notify,
    /// Open and future questions get the safe answer (cancel / exit): the job was
    /// cancelled, or the coordinator no longer accepts reports for it.
    give_up: AtomicBool,
    /// The job's lease.
    pub lease: Lease,
    /// The job starts changing the server before this instant or not at all.
    expires_at: chrono::DateTime<chrono::Utc>,
    /// The running install's cancel handle, for the gate.
    cancel: OnceLock<CancelHandle>,
    /// Set once the engine passed (or was stopped at) the gate.
    gated: AtomicBool,
    /// The job's final event (the one with the summary), once emitted.
    last: Mutex<Option<EngineEvent>>,
}

impl Bridge {
    /// A bridge for a job with this lease and expiry.
    pub fn new(lease: Duration, expires_at: chrono::DateTime<chrono::Utc>) -> Self {
        Self {
            outbox: Mutex::default(),
            answers: Mutex::default(),
            answered: Condvar::new(),
            waiting_on: Mutex::default(),
            wake: tokio::sync::Notify::new(),
            give_up: AtomicBool::new(false),
            lease: Lease::new(lease),
            expires_at,
            cancel: OnceLock::new(),
            gated: AtomicBool::new(false),
            last: Mutex::default(),
        }
    }

    /// The job's final event, once emitted (or requeued after a restart).
    pub fn final_event(&self) -> Option<EngineEvent> {
        self.last.lock().expect("final event").clone()
    }

    fn note_final(&self, event: &EngineEvent) {
        if event.summary().is_some() {
            *self.last.lock().expect("final event") = Some(event.clone());
        }
    }

    /// The cancel handle of the install this bridge serves.
    pub fn set_cancel(&self, cancel: CancelHandle) {
        let _ = self.cancel.set(cancel);
    }

    /// True when the job's expiry has passed.
    pub fn expired(&self) -> bool {
        chrono::Utc::now() >= self.expires_at
    }

    /// The gate: called on the engine's thread when it announces [`FIRST_CHANGE`].
    fn gate(&self) {
        let why = if self.expired() {
            Some(format!("the job expired at {} before the install changed anything", self.expires_at.to_rfc3339()))
        } else if self.lease.confirm_blocking() == Confirmed::Lost {
            Some("the coordinator no longer holds this job's lease for this agent".to_owned())
        } else {
            None
        };
        if let Some(why) = why {
            tracing::warn!("{why}; the install stops before its first change");
            self.give_up();
            if let Some(c) = self.cancel.get() {
                let _ = c.cancel();
            }
        }
    }

    /// Queues events recorded before a restart (the coordinator ignores duplicates).
    pub fn requeue(&self, events: Vec<EngineEvent>) {
        let mut outbox = self.outbox.lock().expect("outbox");
        for ev in events.into_iter().rev() {
            self.note_final(&ev);
            outbox.push_front(ev);
        }
        drop(outbox);
        self.wake.notify_one();
    }

    /// Up to `max` of the oldest unacknowledged events.
    pub fn peek(&self, max: usize) -> Vec<EngineEvent> {
        self.outbox.lock().expect("outbox").iter().take(max).cloned().collect()
    }

    /// Drops the `n` oldest events: the coordinator recorded them.
    pub fn acknowledge(&self, n: usize) {
        let mut outbox = self.outbox.lock().expect("outbox");
        let n = n.min(outbox.len());
        outbox.drain(..n);
    }

    /// True when every event was acknowledged.
    pub fn is_empty(&self) -> bool {
        self.outbox.lock().expect("outbox").is_empty()
    }

    /// The decision the engine is waiting on, if any.
    pub fn waiting_on(&self) -> Option<u32> {
        *self.waiting_on.lock().expect("waiting")
    }

    /// Records answers from the coordinator and wakes the engine.
    pub fn answer(&self, answers: impl IntoIterator<Item = (u32, DecisionAnswer)>) {
        let mut map = self.answers.lock().expect("answers");
        map.extend(answers);
        drop(map);
        self.answered.notify_all();
    }

    /// Every open and future question gets the safe answer (cancel / exit).
    pub fn give_up(&self) {
        self.give_up.store(true, Ordering::SeqCst);
        self.answered.notify_all();
    }

    fn gave_up(&self) -> bool {
        self.give_up.load(Ordering::SeqCst)
    }
}

impl EventSink for Bridge {
    fn emit(&self, event: &EngineEvent) {
        self.note_final(event);
        self.outbox.lock().expect("outbox").push_back(event.clone());
        self.wake.notify_one();
        if event.phase == FIRST_CHANGE
            && event.status == PhaseStatus::Running
            && !self.gated.swap(true, Ordering::SeqCst)
        {
            self.gate();
        }
    }
}

impl Decider for Bridge {
    fn decide(&self, request: &DecisionRequest) -> DecisionAnswer {
        let safe = match request.kind {
            DecisionKind::Warning { .. } => DecisionAnswer::Cancel,
            DecisionKind::FilesInUse { .. } => DecisionAnswer::Exit,
        };
        *self.waiting_on.lock().expect("waiting") = Some(request.id);
        self.wake.notify_one();
        let mut answers = self.answers.lock().expect("answers");
        let answer = loop {
            if let Some(a) = answers.get(&request.id) {
                break if request.options.contains(a) { *a } else { safe };
            }
            if self.gave_up() {
                break safe;
            }
            // Answers and give_up notify at once; the timeout is only a safety net.
            answers = self.answered.wait_timeout(answers, Duration::from_secs(1)).expect("answers").0;
        };
        drop(answers);
        *self.waiting_on.lock().expect("waiting") = None;
        answer
    }
}

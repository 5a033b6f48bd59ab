//! The bridge between the blocking engine thread and the async reporter: the engine's
//! events go into an outbox the reporter drains in order; the engine's questions wait
//! for answers the reporter brings back from the coordinator.

use crate::engine::{Decider, EventSink};
use fleetup_proto::{DecisionAnswer, DecisionKind, DecisionRequest, EngineEvent};
use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Shared between the engine thread (as its [`EventSink`] and [`Decider`]) and the
/// reporter task.
#[derive(Debug, Default)]
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
}

impl Bridge {
    /// Queues events recorded before a restart (the coordinator ignores duplicates).
    pub fn requeue(&self, events: Vec<EngineEvent>) {
        let mut outbox = self.outbox.lock().expect("outbox");
        for ev in events.into_iter().rev() {
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
        self.outbox.lock().expect("outbox").push_back(event.clone());
        self.wake.notify_one();
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

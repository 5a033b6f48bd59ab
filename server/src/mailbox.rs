//! The long-polls this process holds, and the assignments the scheduler pushes to them.
//!
//! Dispatch by push: when a scheduler pass queues jobs for agents whose long-poll is held
//! here, it assigns them in its own transaction (state `dispatched`, a new fencing token, the
//! lease) and, once that transaction has committed, drops each assignment into its agent's
//! mailbox and wakes the poll. The woken poll answers from the mailbox without a claim query
//! (docs/decisions.md, "Dispatch by push"). The store stays the truth: an assignment that no
//! poll collects from its mailbox (the poll ended between the pass's look and the delivery,
//! the connection dropped) is still `dispatched` there, and the agent's next poll is handed
//! the same dispatch, fencing token and all, by the claim path.
//!
//! A mailbox holds an assignment only while a poll of its agent is held: the last poll to
//! leave empties it, so an assignment never waits here for an agent that is gone (it would
//! be stale by the time the agent came back).

use crate::model::AgentId;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use tokio::sync::Notify;

/// One agent's wake-up, its held polls and its pushed assignment.
#[derive(Debug)]
struct Slot<T> {
    /// Wakes the agent's long-polls (job polls and event reports waiting for an answer).
    notify: Arc<Notify>,
    /// Job polls of this agent held now.
    held: u32,
    /// An assignment pushed to those polls, not yet collected. Boxed: every agent that
    /// ever polled has a slot, and inline the assignment (the rollout's spec and package)
    /// made a slot 648 bytes, a 32,768-bucket table for 18,500 agents ~22 MB while empty.
    pushed: Option<Box<T>>,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self { notify: Arc::default(), held: 0, pushed: None }
    }
}

/// Every agent's slot; `T` is the assignment (the coordinator's is a
/// [`crate::store::ClaimedJob`]).
#[derive(Debug)]
pub struct Mailboxes<T>(Mutex<HashMap<AgentId, Slot<T>>>);

impl<T> Default for Mailboxes<T> {
    fn default() -> Self {
        Self(Mutex::default())
    }
}

impl<T> Mailboxes<T> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<AgentId, Slot<T>>> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The wake-up of one agent.
    pub fn waker(&self, agent_id: &AgentId) -> Arc<Notify> {
        self.lock().entry(agent_id.clone()).or_default().notify.clone()
    }

    /// Wakes these agents' long-polls held here.
    pub fn wake(&self, ids: &[AgentId]) {
        let map = self.lock();
        for id in ids {
            if let Some(slot) = map.get(id) {
                slot.notify.notify_waiters();
            }
        }
    }

    /// Registers a held job poll of `agent_id` until the returned guard is dropped.
    pub fn hold<'a>(&'a self, agent_id: &AgentId) -> Held<'a, T> {
        let notify = {
            let mut map = self.lock();
            let slot = map.entry(agent_id.clone()).or_default();
            slot.held += 1;
            slot.notify.clone()
        };
        Held { boxes: self, agent_id: agent_id.clone(), notify }
    }

    /// Of these agents, the ones with a job poll held here now.
    pub fn held_among<'a>(&self, ids: impl IntoIterator<Item = &'a AgentId>) -> std::collections::HashSet<AgentId> {
        let map = self.lock();
        ids.into_iter().filter(|id| map.get(*id).is_some_and(|s| s.held > 0)).cloned().collect()
    }

    /// Hands each assignment to its agent's held poll and wakes it; returns the agents that
    /// no longer have a poll held (their assignment stays only in the store, where their
    /// next poll's claim finds it).
    pub fn deliver(&self, pushed: Vec<(AgentId, T)>) -> Vec<AgentId> {
        let mut gone = Vec::new();
        let mut map = self.lock();
        for (agent_id, job) in pushed {
            match map.get_mut(&agent_id) {
                Some(slot) if slot.held > 0 => {
                    slot.pushed = Some(Box::new(job));
                    slot.notify.notify_waiters();
                }
                _ => gone.push(agent_id),
            }
        }
        gone
    }
}

/// A held job poll: takes what is pushed to its agent; leaving, it empties the mailbox if
/// it was the last one held.
#[derive(Debug)]
pub struct Held<'a, T> {
    boxes: &'a Mailboxes<T>,
    agent_id: AgentId,
    notify: Arc<Notify>,
}

impl<T> Held<'_, T> {
    /// The agent's wake-up.
    pub fn notify(&self) -> &Notify {
        &self.notify
    }

    /// The assignment pushed to this agent, if any (taken: one poll answers with it).
    pub fn take(&self) -> Option<T> {
        self.boxes.lock().get_mut(&self.agent_id).and_then(|s| s.pushed.take()).map(|b| *b)
    }

    /// Ends the hold, with what was pushed since the last look: a poll leaving at its
    /// deadline answers with it rather than leave it behind.
    pub fn release(self) -> Option<T> {
        let pushed = self.take();
        drop(self);
        pushed
    }
}

impl<T> Drop for Held<'_, T> {
    fn drop(&mut self) {
        let mut map = self.boxes.lock();
        if let Some(slot) = map.get_mut(&self.agent_id) {
            slot.held = slot.held.saturating_sub(1);
            if slot.held == 0 {
                slot.pushed = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pushed_assignment_waits_only_while_a_poll_is_held() {
        let boxes = Mailboxes::<u64>::default();
        let agent: AgentId = "agent-1".parse().unwrap();
        assert_eq!(boxes.deliver(vec![(agent.clone(), 1)]), std::slice::from_ref(&agent), "no poll held: not kept");
        let held = boxes.hold(&agent);
        assert_eq!(boxes.held_among([&agent]).len(), 1);
        assert!(boxes.deliver(vec![(agent.clone(), 2)]).is_empty());
        assert_eq!(held.take(), Some(2), "the held poll collects it");
        assert_eq!(held.take(), None, "collected once");
        assert!(boxes.deliver(vec![(agent.clone(), 3)]).is_empty());
        assert_eq!(held.release(), Some(3), "a poll leaving answers with it");
        let again = boxes.hold(&agent);
        assert!(boxes.deliver(vec![(agent.clone(), 4)]).is_empty());
        drop(again);
        assert!(boxes.held_among([&agent]).is_empty());
        let later = boxes.hold(&agent);
        assert_eq!(later.take(), None, "the last poll to leave emptied the mailbox");
    }

    #[test]
    fn an_empty_slot_does_not_carry_the_size_of_an_assignment() {
        // Every agent that ever polled keeps a slot: the table's size is slots x this.
        let size = std::mem::size_of::<Slot<crate::store::ClaimedJob>>();
        assert!(size <= 32, "a slot takes {size} bytes");
    }
}

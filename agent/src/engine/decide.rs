//! Decisions: who answers "continue or cancel?" and "retry, ignore or exit?".
//!
//! The trait is blocking on purpose: the engine waits for the answer. A coordinator-
//! backed decider (agent daemon) posts the request over HTTP and blocks on the reply
//! with `Handle::block_on` from the engine's blocking thread; a terminal decider reads
//! stdin; [`AutoDecider`] is `--yes`.

use fleetup_proto::{DecisionAnswer, DecisionKind, DecisionRequest};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, Ordering};

/// Answers the engine's questions. The answer must be one of `request.options`;
/// anything else is treated as the safe choice (cancel / exit).
pub trait Decider: Send + Sync {
    /// Blocks until an answer is known.
    fn decide(&self, request: &DecisionRequest) -> DecisionAnswer;
}

/// `--yes`: warnings → continue; files in use → retry up to `files_in_use_retries`
/// times (the engine waits a second between looks), then exit (services restarted,
/// nothing changed). Never "ignore": leaving processes on replaced files is a choice
/// for a person.
#[derive(Debug)]
pub struct AutoDecider {
    /// How many retries before answering exit.
    pub files_in_use_retries: u32,
    asked: AtomicU32,
}

impl AutoDecider {
    /// The `--yes` policy with `retries` retries for files in use.
    pub fn new(retries: u32) -> Self {
        Self { files_in_use_retries: retries, asked: AtomicU32::new(0) }
    }
}

impl Default for AutoDecider {
    fn default() -> Self {
        Self::new(3)
    }
}

impl Decider for AutoDecider {
    fn decide(&self, request: &DecisionRequest) -> DecisionAnswer {
        match request.kind {
            DecisionKind::Warning { .. } => DecisionAnswer::Continue,
            DecisionKind::FilesInUse { .. } => {
                if self.asked.fetch_add(1, Ordering::SeqCst) < self.files_in_use_retries {
                    DecisionAnswer::Retry
                } else {
                    DecisionAnswer::Exit
                }
            }
        }
    }
}

/// A decider built from a closure (tests, policies, the daemon's bridge). Records every
/// request it was asked.
pub struct ScriptedDecider {
    answer: Box<dyn Fn(&DecisionRequest) -> DecisionAnswer + Send + Sync>,
    /// Every request, in order.
    pub asked: Mutex<Vec<DecisionRequest>>,
}

impl std::fmt::Debug for ScriptedDecider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScriptedDecider").finish_non_exhaustive()
    }
}

impl ScriptedDecider {
    /// Answers with `answer`.
    pub fn new(answer: impl Fn(&DecisionRequest) -> DecisionAnswer + Send + Sync + 'static) -> Self {
        Self { answer: Box::new(answer), asked: Mutex::new(Vec::new()) }
    }
}

impl Decider for ScriptedDecider {
    fn decide(&self, request: &DecisionRequest) -> DecisionAnswer {
        self.asked.lock().expect("lock").push(request.clone());
        (self.answer)(request)
    }
}

//! Questions on the terminal, and the `c` + Enter cancel key between them.
//!
//! One thread reads stdin and hands each line to whoever wants it now: the open prompt if
//! there is one, otherwise the cancel key. (Two readers taking turns on one channel lost
//! answers to the wrong one.) A prompt suspends the progress display for as long as it is
//! open, so the spinner never draws over the question. Answers are whole words, compared
//! exactly: `c`, the cancel key the spinner advertises, is no answer at all at a prompt
//! (a prefix match made it mean *continue*); anything else asks again.

use crate::engine::{CancelHandle, Decider};
use fleetup_proto::{DecisionAnswer, DecisionKind, DecisionRequest};
use indicatif::ProgressBar;
use std::io::{BufRead as _, Write as _};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::{Arc, Mutex};

/// Where the stdin thread sends a line: to the open prompt, if any.
#[derive(Default)]
struct Slot {
    /// The open prompt.
    prompt: Option<Sender<String>>,
    /// Stdin has ended: every prompt gets the safe answer.
    closed: bool,
}

type PromptSlot = Arc<Mutex<Slot>>;

/// The answer `line` names among `options`: the whole word, any case, nothing else.
pub(crate) fn parse_answer(line: &str, options: &[DecisionAnswer]) -> Option<DecisionAnswer> {
    let word = line.trim().to_lowercase();
    options.iter().copied().find(|o| o.as_str() == word)
}

/// Asks decisions on the terminal.
pub(crate) struct TerminalDecider {
    slot: PromptSlot,
    /// The progress display, suspended while a question is open.
    bar: Arc<Mutex<Option<ProgressBar>>>,
}

impl TerminalDecider {
    /// A decider drawing over `bar` (the progress display's current spinner).
    pub(crate) fn new(bar: Arc<Mutex<Option<ProgressBar>>>) -> Self {
        Self { slot: Arc::new(Mutex::new(Slot::default())), bar }
    }

    /// Starts the stdin thread: lines go to the open prompt, or else `c` / `cancel`
    /// requests a cancel (its answer is printed).
    pub(crate) fn read_stdin(&self, cancel: CancelHandle) {
        let slot = self.slot.clone();
        std::thread::spawn(move || {
            for line in std::io::stdin().lock().lines() {
                let Ok(line) = line else { break };
                let prompt = slot.lock().expect("prompt slot").prompt.clone();
                match prompt {
                    Some(tx) => {
                        let _ = tx.send(line);
                    }
                    None if matches!(line.trim(), "c" | "cancel") => {
                        let (Ok(m) | Err(m)) = cancel.cancel();
                        println!("\n{m}");
                    }
                    None => {}
                }
            }
            // End of input: an open (or later) prompt gets the safe answer.
            *slot.lock().expect("prompt slot") = Slot { prompt: None, closed: true };
        });
    }

    fn ask(req: &DecisionRequest, answers: &Receiver<String>) -> DecisionAnswer {
        println!("\n{}", req.message);
        match &req.kind {
            DecisionKind::Warning { remediation: Some(r), .. } => {
                println!("---- remediation (copy this) ----\n{r}\n---------------------------------");
            }
            DecisionKind::FilesInUse { processes } => {
                for p in processes {
                    println!("  pid {:>7}  {:<16} {}", p.pid, p.name, p.files.join(", "));
                }
            }
            DecisionKind::Warning { .. } => {}
        }
        let opts: Vec<&str> = req.options.iter().map(|o| o.as_str()).collect();
        loop {
            print!("answer [{}]: ", opts.join("/"));
            let _ = std::io::stdout().flush();
            // No more input: the safe choice (cancel / exit), as without a terminal.
            let Ok(line) = answers.recv() else { return *req.options.last().expect("options") };
            if let Some(a) = parse_answer(&line, &req.options) {
                return a;
            }
            println!("'{}' is not an answer here: type one whole word of {}", line.trim(), opts.join(", "));
        }
    }
}

impl Decider for TerminalDecider {
    fn decide(&self, req: &DecisionRequest) -> DecisionAnswer {
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut slot = self.slot.lock().expect("prompt slot");
            // With stdin closed, `rx` has no sender left and the prompt takes the safe answer.
            if !slot.closed {
                slot.prompt = Some(tx);
            }
        }
        let bar = self.bar.lock().expect("progress").clone();
        // The spinner's ticker waits while the display is suspended: nothing draws over
        // the question or the answer being typed.
        let answer = match bar {
            Some(pb) => pb.suspend(|| Self::ask(req, &rx)),
            None => Self::ask(req, &rx),
        };
        self.slot.lock().expect("prompt slot").prompt = None;
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_whole_words_only() {
        let warn = [DecisionAnswer::Continue, DecisionAnswer::Cancel];
        assert_eq!(parse_answer(" Continue \n", &warn), Some(DecisionAnswer::Continue));
        assert_eq!(parse_answer("cancel", &warn), Some(DecisionAnswer::Cancel));
        for ambiguous in ["c", "co", "can", "", "yes", "exit"] {
            assert_eq!(parse_answer(ambiguous, &warn), None, "{ambiguous}");
        }
    }
}

//! Waiting on the coordinator with a deadline: every helper polls a condition and gives up
//! with [`Error::Deadline`] (carrying the last state seen) when the time is up, so a caller
//! never sleeps "long enough" and a failed wait says what it saw. A request in flight when
//! the deadline passes is abandoned, so a wait never overruns by a request timeout.

use crate::{Client, Error};
use fleetup_proto::api::{Agent, Rollout};
use fleetup_proto::id::RolloutId;
use std::time::Duration;
use tokio::time::Instant;

/// How often the wait helpers poll unless told otherwise.
pub(crate) const DEFAULT_POLL: Duration = Duration::from_millis(100);

impl Client {
    /// Calls `check` every poll interval until it returns `Some`, and returns that. An error
    /// from `check` ends the wait at once (a 404 will not go away by waiting); `what` names
    /// the condition in the [`Error::Deadline`].
    pub async fn poll_until<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl AsyncFnMut() -> Result<Option<T>, Error>,
    ) -> Result<T, Error> {
        let deadline = Instant::now() + within;
        loop {
            match tokio::time::timeout_at(deadline, check()).await {
                Ok(Ok(Some(v))) => return Ok(v),
                Ok(Ok(None)) => {}
                Ok(Err(e)) => return Err(e),
                Err(_) => break,
            }
            if Instant::now() + self.poll_every >= deadline {
                break;
            }
            tokio::time::sleep(self.poll_every).await;
        }
        Err(Error::Deadline { what: what.to_owned(), after: within, last: None })
    }

    /// Waits until `/healthz` answers 200. Connection errors and 5xx count as "not yet":
    /// the coordinator may still be binding or migrating.
    pub async fn wait_healthy(&self, within: Duration) -> Result<(), Error> {
        let mut last = None;
        let ok = self
            .poll_until("the coordinator to answer /healthz", within, async || match self.health().await {
                Ok(_) => Ok(Some(())),
                Err(e) => {
                    last = Some(e.to_string());
                    Ok(None)
                }
            })
            .await;
        ok.map_err(|e| with_last(e, last))
    }

    /// Waits until `done` holds for the rollout; returns the rollout that satisfied it.
    pub async fn wait_rollout(
        &self,
        id: &RolloutId,
        within: Duration,
        done: impl Fn(&Rollout) -> bool,
    ) -> Result<Rollout, Error> {
        let mut last = None;
        let r = self
            .poll_until(&format!("rollout {id}"), within, async || {
                let r = self.rollout(id).await?;
                if done(&r) {
                    return Ok(Some(r));
                }
                last = Some(format!("{} ({:?}) counts {:?}", r.state.as_str(), r.state_reason, r.counts));
                Ok(None)
            })
            .await;
        r.map_err(|e| with_last(e, last))
    }

    /// Waits until at least `n` agents are online; returns every agent.
    pub async fn wait_agents_online(&self, n: usize, within: Duration) -> Result<Vec<Agent>, Error> {
        let mut last = None;
        let r = self
            .poll_until(&format!("{n} agents online"), within, async || {
                let agents = self.agents().await?;
                let online = agents.iter().filter(|a| a.online).count();
                if online >= n {
                    return Ok(Some(agents));
                }
                last = Some(format!("{online} of {} online", agents.len()));
                Ok(None)
            })
            .await;
        r.map_err(|e| with_last(e, last))
    }
}

/// A deadline error with the last state seen.
fn with_last(e: Error, seen: Option<String>) -> Error {
    match e {
        Error::Deadline { what, after, last } => Error::Deadline { what, after, last: seen.or(last) },
        other => other,
    }
}

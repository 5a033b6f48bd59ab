//! What the operator CLI (`fleetupctl`) needs beyond the calls every user of the client
//! makes: the listings with their server-side filters (the plain `rollouts()`, `agents()`
//! and `packages()` return everything), a create that says whether it was replayed by its
//! `Idempotency-Key`, and the bulk decision answer. Kept apart from `lib.rs` so the core
//! client stays the small surface the tests and the benchmarks read.

use crate::{Client, Error, Method};
use fleetup_proto::DecisionAnswer;
use fleetup_proto::api::{Agent, Package, Page, Rollout, RolloutSpec};
use fleetup_proto::id::RolloutId;
use serde::de::DeserializeOwned;

/// Filters of `GET /rollouts` (docs/api.md, "Listings").
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RolloutQuery {
    /// Only rollouts in this state (`running`, `paused`, …).
    pub state: Option<String>,
    /// `k=v,k2=v2`: only rollouts whose target labels carry every pair.
    pub label: Option<String>,
}

/// Filters of `GET /agents`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AgentQuery {
    /// `k=v,k2=v2`: only agents carrying every pair.
    pub label: Option<String>,
    /// Only online (`Some(true)`) or offline (`Some(false)`) agents.
    pub online: Option<bool>,
    /// Only agents whose last installed rollup has this version (`none`: nothing installed).
    pub installed: Option<String>,
}

/// The filter and answer of `POST /rollouts/{id}/decisions`: every open decision of the
/// rollout that the filter covers gets `answer`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BulkAnswer {
    /// `warning` or `files-in-use`.
    pub kind: String,
    /// Only warnings with this code (`crl-unreachable`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Only questions whose text contains this.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matching: Option<String>,
    /// The answer.
    pub answer: DecisionAnswer,
    /// Also answer every such decision asked later in the rollout.
    pub remember: bool,
}

/// A staged rollout and whether the coordinator replayed an earlier answer for the same
/// `Idempotency-Key` instead of staging it again.
#[derive(Debug, Clone)]
pub struct Created {
    /// The rollout.
    pub rollout: Rollout,
    /// `Idempotent-Replayed: true` was on the answer.
    pub replayed: bool,
}

impl Client {
    /// Every item of a cursor-paged listing with `filters`, following `next`.
    async fn every_page_where<T: DeserializeOwned>(
        &self,
        path: &str,
        filters: &[(&str, String)],
    ) -> Result<Vec<T>, Error> {
        let mut items = Vec::new();
        let mut cursor: Option<String> = None;
        loop {
            let mut params: Vec<(&str, String)> = filters.to_vec();
            params.push(("limit", "5000".into()));
            if let Some(c) = &cursor {
                params.push(("cursor", c.clone()));
            }
            let page: Page<T> =
                self.send(format!("GET /api/v1{path}"), self.request(Method::GET, path).query(&params)).await?;
            items.extend(page.items);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(items),
            }
        }
    }

    /// `GET /rollouts` with filters, every page: newest first.
    pub async fn rollouts_where(&self, q: &RolloutQuery) -> Result<Vec<Rollout>, Error> {
        let mut f = Vec::new();
        f.extend(q.state.clone().map(|s| ("state", s)));
        f.extend(q.label.clone().map(|l| ("label", l)));
        self.every_page_where("/rollouts", &f).await
    }

    /// `GET /agents` with filters, every page: by hostname.
    pub async fn agents_where(&self, q: &AgentQuery) -> Result<Vec<Agent>, Error> {
        let mut f = Vec::new();
        f.extend(q.label.clone().map(|l| ("label", l)));
        f.extend(q.online.map(|o| ("online", o.to_string())));
        f.extend(q.installed.clone().map(|i| ("installed", i)));
        self.every_page_where("/agents", &f).await
    }

    /// `GET /packages?name=NAME`, every page: the uploads of one rollup, newest first.
    pub async fn packages_named(&self, name: &str) -> Result<Vec<Package>, Error> {
        self.every_page_where("/packages", &[("name", name.to_owned())]).await
    }

    /// `POST /rollouts` with an `Idempotency-Key`: sent again with the same key and spec
    /// (after a lost answer), the coordinator answers the first rollout instead of staging a
    /// second one.
    pub async fn create_rollout_once(&self, spec: &RolloutSpec, key: &str) -> Result<Created, Error> {
        let call = "POST /api/v1/rollouts".to_owned();
        let req = self.request(Method::POST, "/rollouts").header("idempotency-key", key).json(spec);
        let resp = req.send().await.map_err(|source| Error::Transport { call: call.clone(), source })?;
        let status = resp.status();
        let replayed = resp.headers().get("idempotent-replayed").is_some_and(|v| v.as_bytes() == b"true");
        let text = resp.text().await.map_err(|source| Error::Transport { call: call.clone(), source })?;
        if !status.is_success() {
            return Err(crate::error::status_error(call, status, &text));
        }
        let rollout = serde_json::from_str(&text).map_err(|source| Error::Decode {
            call,
            source,
            body: crate::error::shown(&text),
        })?;
        Ok(Created { rollout, replayed })
    }

    /// `POST /rollouts/{id}/decisions`: answers every open decision the filter covers;
    /// returns how many were answered.
    pub async fn answer_all(&self, rollout: &RolloutId, body: &BulkAnswer) -> Result<u64, Error> {
        #[derive(serde::Deserialize)]
        struct Answered {
            answered: u64,
        }
        let a: Answered = self.post(&format!("/rollouts/{rollout}/decisions"), body).await?;
        Ok(a.answered)
    }
}

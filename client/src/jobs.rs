//! A rollout's jobs, page by page (`GET /rollouts/{id}/jobs`).
//!
//! The coordinator pages by an opaque cursor (docs/api.md, "Listing a rollout's jobs"), so
//! the client never counts offsets: [`JobPages`] follows `next` until it is `null`. The view
//! is chosen by the type asked for ([`Job`] is `full`, [`JobSummary`] is `summary`), so a
//! caller cannot ask for one view and parse the other.

use crate::{Client, Error, Method};
use fleetup_proto::api::{Job, JobState, JobSummary};
use fleetup_proto::id::RolloutId;
use serde::de::DeserializeOwned;

/// A view of a job the listing can answer: [`Job`] (`full`) or [`JobSummary`] (`summary`).
pub trait JobView: DeserializeOwned {
    /// The `view=` word.
    const VIEW: &'static str;
}

impl JobView for Job {
    const VIEW: &'static str = "full";
}

impl JobView for JobSummary {
    const VIEW: &'static str = "summary";
}

/// Filters and page size of a jobs listing; the default is every job, 500 a page.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobFilter {
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Only this wave.
    pub wave: Option<u32>,
    /// Page size, 1–5000 (server default 500).
    pub limit: Option<u32>,
}

/// One page: the jobs in (wave, position) order and the cursor of the next page.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct JobsPage<T> {
    /// The jobs.
    pub jobs: Vec<T>,
    /// Pass to the next call for the page after; `None` on the last page.
    pub next: Option<String>,
}

impl Client {
    /// One page of a rollout's jobs in the view `T`, starting after `cursor` (`None`: the
    /// first page).
    pub async fn jobs_page<T: JobView>(
        &self,
        rollout: &RolloutId,
        filter: &JobFilter,
        cursor: Option<&str>,
    ) -> Result<JobsPage<T>, Error> {
        let path = format!("/rollouts/{rollout}/jobs");
        let mut query: Vec<(&str, String)> = vec![("view", T::VIEW.to_owned())];
        if let Some(s) = filter.state {
            query.push(("state", s.as_str().to_owned()));
        }
        if let Some(w) = filter.wave {
            query.push(("wave", w.to_string()));
        }
        if let Some(l) = filter.limit {
            query.push(("limit", l.to_string()));
        }
        if let Some(c) = cursor {
            query.push(("cursor", c.to_owned()));
        }
        self.send(format!("GET /api/v1{path}"), self.request(Method::GET, &path).query(&query)).await
    }

    /// Walks every page of a rollout's jobs, one request per [`JobPages::next_page`].
    pub fn job_pages<T: JobView>(&self, rollout: &RolloutId, filter: JobFilter) -> JobPages<'_, T> {
        JobPages {
            client: self,
            rollout: rollout.clone(),
            filter,
            cursor: None,
            done: false,
            _view: std::marker::PhantomData,
        }
    }

    /// Every job of a rollout that passes `filter`, following the cursors to the last page.
    pub async fn all_jobs<T: JobView>(&self, rollout: &RolloutId, filter: &JobFilter) -> Result<Vec<T>, Error> {
        let mut pages = self.job_pages(rollout, filter.clone());
        let mut all = Vec::new();
        while let Some(page) = pages.next_page().await? {
            all.extend(page);
        }
        Ok(all)
    }
}

/// The pages of a rollout's jobs, fetched one at a time (see [`Client::job_pages`]).
#[derive(Debug)]
pub struct JobPages<'a, T> {
    client: &'a Client,
    rollout: RolloutId,
    filter: JobFilter,
    cursor: Option<String>,
    done: bool,
    _view: std::marker::PhantomData<fn() -> T>,
}

impl<T: JobView> JobPages<'_, T> {
    /// The next page, or `None` after the last one.
    pub async fn next_page(&mut self) -> Result<Option<Vec<T>>, Error> {
        if self.done {
            return Ok(None);
        }
        let page: JobsPage<T> = self.client.jobs_page(&self.rollout, &self.filter, self.cursor.as_deref()).await?;
        self.done = page.next.is_none();
        self.cursor = page.next;
        Ok(Some(page.jobs))
    }
}

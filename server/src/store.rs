//! Storage: one [`Store`] trait, one implementation per backend.
//!
//! Both backends share one schema shape (times as unix milliseconds, structured values as
//! JSON text) so most queries are the same text; they are written once in [`sql`] as a
//! macro that expands into each backend's `impl Store`. What differs is written in the
//! backend's own file: how a read-then-write transaction begins (SQLite `BEGIN IMMEDIATE`,
//! Postgres row locks), the claim (`FOR UPDATE SKIP LOCKED` on Postgres), the scheduler's
//! advisory lock and LISTEN/NOTIFY.

#[macro_use]
pub(crate) mod sql;
pub(crate) mod group_commit;
pub mod postgres;
pub mod sqlite;

use crate::model::{
    Agent, AuditEntry, Decision, EnrollmentToken, Job, JobSummary, Millis, Package, Role, Rollout, RolloutSpec,
};
use fleetup_proto::agent_api::{DecisionReply, LogLine};
use fleetup_proto::{DecisionAnswer, EngineEvent};
use std::collections::BTreeMap;
use std::sync::Arc;

/// Why a store call failed. The user-facing variants carry a sentence a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// No such object.
    #[error("{0}")]
    NotFound(String),
    /// The object is in a state that does not allow this.
    #[error("{0}")]
    Conflict(String),
    /// The request is well-formed but refused (expired token, bad answer, …).
    #[error("{0}")]
    Refused(String),
    /// The caller may not touch this object.
    #[error("{0}")]
    Forbidden(String),
    /// A report carries a fencing token that is not the job's current one.
    #[error("{0}")]
    StaleLease(String),
    /// Stored data could not be read back (a bug or a hand-edited database).
    #[error("corrupt stored data: {0}")]
    Corrupt(String),
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
    /// Migrations failed.
    #[error(transparent)]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The shared transaction this request was written in failed; nothing of it was written.
    #[error("the database did not commit this write: {0}")]
    Batch(String),
}

impl StoreError {
    /// A refusal of the request as asked (not found, conflict, refused, forbidden, stale
    /// lease), as opposed to a failure of the database or of stored data.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            StoreError::NotFound(_)
                | StoreError::Conflict(_)
                | StoreError::Refused(_)
                | StoreError::Forbidden(_)
                | StoreError::StaleLease(_)
        )
    }
}

/// Result of store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// An audit record to write in the same transaction as the mutation it describes.
#[derive(Debug, Clone)]
pub struct NewAudit {
    /// Who.
    pub actor: String,
    /// What.
    pub action: String,
    /// Kind of object.
    pub object_type: String,
    /// Object id.
    pub object_id: String,
    /// Details (the request, minus secrets).
    pub detail: serde_json::Value,
}

impl NewAudit {
    /// A record.
    pub fn new(actor: &str, action: &str, object_type: &str, object_id: &str, detail: serde_json::Value) -> Self {
        Self {
            actor: actor.to_owned(),
            action: action.to_owned(),
            object_type: object_type.to_owned(),
            object_id: object_id.to_owned(),
            detail,
        }
    }
}

/// An authenticated API token.
#[derive(Debug, Clone)]
pub struct ApiTokenInfo {
    /// Token id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// A new enrollment token.
#[derive(Debug, Clone)]
pub struct NewEnrollmentToken {
    /// Id.
    pub id: String,
    /// Name.
    pub name: String,
    /// sha256 of the secret.
    pub token_hash: String,
    /// Labels for enrolled agents.
    pub labels: BTreeMap<String, String>,
    /// Expiry.
    pub expires_at: Option<Millis>,
    /// Max uses.
    pub max_uses: Option<u64>,
}

/// A new agent (enrollment).
#[derive(Debug, Clone)]
pub struct NewAgent {
    /// Id.
    pub id: String,
    /// Host name.
    pub hostname: String,
    /// sha256 of its secret.
    pub secret_hash: String,
    /// Labels it proposed (the token's win).
    pub labels: BTreeMap<String, String>,
    /// Facts.
    pub facts: BTreeMap<String, serde_json::Value>,
    /// Version.
    pub version: String,
}

/// A new package.
#[derive(Debug, Clone)]
pub struct NewPackage {
    /// Id.
    pub id: String,
    /// Rollup name.
    pub name: String,
    /// Version.
    pub version: String,
    /// Hex sha256.
    pub sha256: String,
    /// Size.
    pub size: u64,
    /// Signer.
    pub key_id: String,
    /// Manifest.
    pub manifest: serde_json::Value,
    /// Uploader.
    pub uploaded_by: String,
}

/// A new rollout with its waves and jobs already planned.
#[derive(Debug, Clone)]
pub struct NewRollout {
    /// Id.
    pub id: String,
    /// The plan.
    pub spec: RolloutSpec,
    /// Sizes of the waves, in order.
    pub wave_sizes: Vec<u64>,
    /// (agent id, wave number) per job, in dispatch order.
    pub jobs: Vec<(String, u32)>,
    /// Lease of its jobs, in milliseconds.
    pub lease_ms: i64,
    /// The rollout this one retries.
    pub retry_of: Option<String>,
    /// Creator.
    pub created_by: String,
}

/// A new dashboard user (the password already hashed with argon2id).
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Id.
    pub id: String,
    /// Login name, unique.
    pub username: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// What the user may do.
    pub role: Role,
}

/// A stored dashboard user, as login needs it.
#[derive(Debug, Clone)]
pub struct UserRecord {
    /// Id.
    pub id: String,
    /// Login name.
    pub username: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// Role.
    pub role: Role,
    /// Disabled users cannot log in and their sessions stop working.
    pub disabled: bool,
}

/// A new dashboard session.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Id.
    pub id: String,
    /// The user.
    pub user_id: String,
    /// sha256 of the cookie secret (the secret itself is never stored).
    pub token_hash: String,
    /// The session's CSRF token, echoed by every form and htmx request.
    pub csrf_token: String,
    /// When it stops working.
    pub expires_at: Millis,
}

/// A live session with its user.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Session id.
    pub id: String,
    /// User id.
    pub user_id: String,
    /// Login name.
    pub username: String,
    /// The user's role (read at every request: a changed role applies at once).
    pub role: Role,
    /// The session's CSRF token.
    pub csrf_token: String,
}

/// An operator action on a rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RolloutAction {
    /// draft → running.
    Start,
    /// running / awaiting-approval → paused.
    Pause,
    /// paused → running (accepting the failures so far and the current wave's gate).
    Resume,
    /// awaiting-approval → running, opening the next wave.
    Approve,
    /// → cancelled; unstarted jobs cancelled, jobs in flight asked to cancel.
    Cancel,
}

impl RolloutAction {
    /// The id used in paths and the audit log.
    pub const fn as_str(self) -> &'static str {
        match self {
            RolloutAction::Start => "start",
            RolloutAction::Pause => "pause",
            RolloutAction::Resume => "resume",
            RolloutAction::Approve => "approve",
            RolloutAction::Cancel => "cancel",
        }
    }
}

/// A job handed to an agent by a poll.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job's id.
    pub job_id: String,
    /// Its rollout.
    pub rollout_id: String,
    /// The fencing token of this dispatch: every report must carry it.
    pub fencing_token: u64,
    /// Its rollout's plan.
    pub spec: RolloutSpec,
    /// Its package.
    pub package: Package,
    /// Lease in milliseconds.
    pub lease_ms: i64,
}

/// A poll's claim, written by the claims' group commit.
#[derive(Debug)]
pub(crate) struct ClaimRequest {
    /// The polling agent.
    pub agent_id: String,
    /// When it polled.
    pub now: Millis,
}

/// An event report, written by the reports' group commit.
#[derive(Debug)]
pub(crate) struct ReportRequest {
    /// The job.
    pub job_id: String,
    /// The reporting agent.
    pub agent_id: String,
    /// Its fencing token.
    pub fencing_token: u64,
    /// The events, in any order.
    pub events: Vec<EngineEvent>,
    /// When the report arrived.
    pub now: Millis,
}

/// What a report changed.
#[derive(Debug, Clone, Default)]
pub struct ReportOutcome {
    /// Events recorded now.
    pub accepted: u32,
    /// Events already recorded.
    pub duplicates: u32,
    /// The job ended with this report.
    pub finished: bool,
    /// The rollup this report installed, added to the agent's list at the end of the
    /// report's transaction.
    pub installed: Option<crate::model::InstalledRollup>,
}

/// What the agent must hear about one job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobMessages {
    /// Cancel requested.
    pub cancel: bool,
    /// Answered decisions.
    pub decisions: Vec<DecisionReply>,
}

/// Settings of a scheduler pass.
#[derive(Debug, Clone, Copy)]
pub struct TickSettings {
    /// Now.
    pub now: Millis,
}

/// What a scheduler pass did.
#[derive(Debug, Clone, Default)]
pub struct TickReport {
    /// This pass held the scheduler lock (Postgres: one replica at a time).
    pub ran: bool,
    /// Agents with a job that became ready: wake their long-polls.
    pub wake_agents: Vec<String>,
    /// Jobs declared lost.
    pub lost: u64,
}

/// Where a job sits in its rollout's listing order: (wave, position), unique per rollout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct JobKey {
    /// Wave (1-based).
    pub wave: u32,
    /// Dispatch position within the rollout.
    pub position: u64,
}

/// Filters for job listings, which are in (wave, position) order.
#[derive(Debug, Clone, Default)]
pub struct JobFilter {
    /// Only this state.
    pub state: Option<String>,
    /// Only this wave.
    pub wave: Option<u32>,
    /// Only jobs after this one (keyset paging: an index seek, whatever the depth).
    pub after: Option<JobKey>,
    /// Rows to skip (the dashboard's numbered grid pages; the API pages by `after`).
    pub offset: u64,
    /// Page size.
    pub limit: u64,
}

/// One page of a job listing.
#[derive(Debug, Clone)]
pub struct JobPage<T> {
    /// The jobs, in (wave, position) order.
    pub items: Vec<T>,
    /// The key of the last item when more jobs match after it; `None` on the last page.
    pub next: Option<JobKey>,
}

/// The coordinator's storage. Every mutation an operator makes writes its audit record in
/// the same transaction.
#[async_trait::async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// `sqlite` or `postgres`.
    fn backend(&self) -> &'static str;

    /// Creates an API token (its hash).
    async fn create_api_token(
        &self,
        id: &str,
        name: &str,
        role: Role,
        token_hash: &str,
        audit: &NewAudit,
    ) -> StoreResult<()>;
    /// The live token with this hash.
    async fn api_token_by_hash(&self, token_hash: &str) -> StoreResult<Option<ApiTokenInfo>>;

    /// Creates an enrollment token.
    async fn create_enrollment_token(
        &self,
        token: &NewEnrollmentToken,
        audit: &NewAudit,
    ) -> StoreResult<EnrollmentToken>;
    /// Lists enrollment tokens.
    async fn list_enrollment_tokens(&self) -> StoreResult<Vec<EnrollmentToken>>;
    /// Uses an enrollment token to create an agent.
    async fn enroll_agent(&self, token_hash: &str, agent: &NewAgent, now: Millis) -> StoreResult<Agent>;

    /// The live agent with this secret hash: (id, hostname).
    async fn agent_by_secret_hash(&self, secret_hash: &str) -> StoreResult<Option<(String, String)>>;
    /// All agents (revoked ones too), `online` left false.
    async fn list_agents(&self) -> StoreResult<Vec<Agent>>;
    /// One agent.
    async fn get_agent(&self, id: &str) -> StoreResult<Agent>;
    /// Replaces an agent's labels.
    async fn set_agent_labels(
        &self,
        id: &str,
        labels: &BTreeMap<String, String>,
        audit: &NewAudit,
    ) -> StoreResult<Agent>;
    /// Revokes an agent; its unstarted jobs are cancelled.
    async fn revoke_agent(&self, id: &str, audit: &NewAudit) -> StoreResult<()>;
    /// Writes last-seen times collected in memory, in one transaction.
    async fn touch_agents(&self, seen: &[(String, Millis)]) -> StoreResult<()>;

    /// Records an uploaded package.
    async fn insert_package(&self, package: &NewPackage, audit: &NewAudit) -> StoreResult<Package>;
    /// All packages, newest first.
    async fn list_packages(&self) -> StoreResult<Vec<Package>>;
    /// One package.
    async fn get_package(&self, id: &str) -> StoreResult<Package>;
    /// May this agent download this package (it has a job installing it)?
    async fn agent_may_download(&self, agent_id: &str, package_id: &str) -> StoreResult<bool>;

    /// Creates a rollout (state draft) with its waves and pending jobs.
    async fn create_rollout(&self, rollout: &NewRollout, audit: &NewAudit) -> StoreResult<Rollout>;
    /// All rollouts, newest first.
    async fn list_rollouts(&self) -> StoreResult<Vec<Rollout>>;
    /// One rollout.
    async fn get_rollout(&self, id: &str) -> StoreResult<Rollout>;
    /// Applies an operator action; refused with [`StoreError::Conflict`] when the state does
    /// not allow it. Returns the agents to wake (cancel requests).
    async fn rollout_action(
        &self,
        id: &str,
        action: RolloutAction,
        audit: &NewAudit,
    ) -> StoreResult<(Rollout, Vec<String>)>;

    /// A page of a rollout's jobs, full view.
    async fn list_jobs(&self, rollout_id: &str, filter: &JobFilter) -> StoreResult<JobPage<Job>>;
    /// A page of a rollout's jobs, compact view (no phase map, no warning texts).
    async fn list_job_summaries(&self, rollout_id: &str, filter: &JobFilter) -> StoreResult<JobPage<JobSummary>>;
    /// One job.
    async fn get_job(&self, id: &str) -> StoreResult<Job>;
    /// A job's events after `after_seq`.
    async fn list_events(&self, job_id: &str, after_seq: u64, limit: u64) -> StoreResult<Vec<EngineEvent>>;
    /// A job's log lines after `after_seq`.
    async fn list_logs(&self, job_id: &str, after_seq: u64, limit: u64) -> StoreResult<Vec<LogLine>>;
    /// A job's decisions.
    async fn list_decisions(&self, job_id: &str) -> StoreResult<Vec<Decision>>;
    /// Answers a job's open decision (the given one, or the only open one). Returns the agent.
    async fn answer_decision(
        &self,
        job_id: &str,
        decision_id: Option<u32>,
        answer: DecisionAnswer,
        audit: &NewAudit,
    ) -> StoreResult<(Job, String)>;
    /// Cancels one job (unstarted: at once; in flight: asks the agent).
    async fn cancel_job(&self, job_id: &str, audit: &NewAudit) -> StoreResult<Job>;

    /// Hands the agent its next ready job, if any. An idle call writes nothing.
    async fn claim_job(&self, agent_id: &str, now: Millis) -> StoreResult<Option<ClaimedJob>>;
    /// Records a batch of events from the agent holding the job's lease.
    async fn report_events(
        &self,
        job_id: &str,
        agent_id: &str,
        fencing_token: u64,
        events: &[EngineEvent],
        now: Millis,
    ) -> StoreResult<ReportOutcome>;
    /// Records log lines from the agent holding the job's lease: (accepted, duplicates).
    async fn report_logs(
        &self,
        job_id: &str,
        agent_id: &str,
        fencing_token: u64,
        lines: &[LogLine],
    ) -> StoreResult<(u32, u32)>;
    /// Cancel request and answered decisions of a job.
    async fn job_messages(&self, job_id: &str) -> StoreResult<JobMessages>;

    /// Creates a dashboard user; [`StoreError::Conflict`] when the name is taken.
    async fn create_user(&self, user: &NewUser, audit: &NewAudit) -> StoreResult<()>;
    /// The user with this login name, disabled or not.
    async fn user_by_name(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    /// Records a new session (login), audited.
    async fn create_session(&self, session: &NewSession, audit: &NewAudit) -> StoreResult<()>;
    /// The unexpired session with this cookie hash, if its user is not disabled.
    async fn session_by_hash(&self, token_hash: &str, now: Millis) -> StoreResult<Option<SessionInfo>>;
    /// Ends a session (logout) and drops expired ones.
    async fn delete_session(&self, token_hash: &str, now: Millis) -> StoreResult<()>;
    /// A cheap fingerprint of everything the rollout page shows: it changes when a job,
    /// a decision or the rollout's state changes (the dashboard's live updates poll it).
    async fn rollout_stamp(&self, rollout_id: &str) -> StoreResult<String>;
    /// Jobs of a rollout that reported warnings, in dispatch order, and how many there are.
    async fn list_warned_jobs(&self, rollout_id: &str, limit: u64) -> StoreResult<(Vec<Job>, u64)>;
    /// The last `limit` log lines of a job, oldest first.
    async fn tail_logs(&self, job_id: &str, limit: u64) -> StoreResult<Vec<LogLine>>;
    /// Jobs of one agent across rollouts, newest first (the server page's previous installs).
    async fn list_agent_jobs(&self, agent_id: &str, limit: u64) -> StoreResult<Vec<Job>>;

    /// Audit records, newest first.
    async fn list_audit(&self, limit: u64, object_id: Option<&str>) -> StoreResult<Vec<AuditEntry>>;

    /// One scheduler pass (see `scheduler`). On Postgres only one replica runs it at a time.
    async fn scheduler_tick(&self, settings: TickSettings) -> StoreResult<TickReport>;
    /// Tells other replicas that these agents have news (Postgres NOTIFY; no-op on SQLite).
    async fn publish_wakeups(&self, agent_ids: &[String]) -> StoreResult<()>;
    /// A stream of agent ids woken by other replicas (Postgres LISTEN), if the backend has one.
    async fn wakeup_listener(&self) -> StoreResult<Option<futures_util::stream::BoxStream<'static, String>>>;
}

/// Opens the store the URL names (`sqlite:…` or `postgres://…`) and applies migrations.
pub async fn connect(url: &str) -> StoreResult<Arc<dyn Store>> {
    if url.starts_with("postgres:") || url.starts_with("postgresql:") {
        Ok(Arc::new(postgres::PgStore::connect(url).await?))
    } else if url.starts_with("sqlite:") {
        Ok(Arc::new(sqlite::SqliteStore::connect(url).await?))
    } else {
        Err(StoreError::Refused(format!(
            "unsupported database URL scheme in '{}': use sqlite:PATH or postgres://…",
            url.split(':').next().unwrap_or_default()
        )))
    }
}

//! The values store calls take and return besides the API's own types: new objects to
//! insert, credentials as login and authentication need them, and the agent protocol's
//! requests and answers.

use crate::model::{AgentId, JobId, Millis, Package, PackageId, Role, RolloutId, TokenId, UserId};
use fleetup_proto::EngineEvent;
use fleetup_proto::agent_api::DecisionReply;
use std::collections::BTreeMap;

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
    pub id: TokenId,
    /// Its name.
    pub name: String,
    /// Its role.
    pub role: Role,
    /// When it stops working (none: never).
    pub expires_at: Option<Millis>,
    /// When it was last used (none: never).
    pub last_used_at: Option<Millis>,
    /// When it was revoked (none: live).
    pub revoked_at: Option<Millis>,
}

/// A new enrollment token.
#[derive(Debug, Clone)]
pub struct NewEnrollmentToken {
    /// Id.
    pub id: TokenId,
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
    pub id: AgentId,
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
    pub id: PackageId,
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
    pub id: RolloutId,
    /// The plan.
    pub spec: crate::model::RolloutSpec,
    /// Sizes of the waves, in order.
    pub wave_sizes: Vec<u64>,
    /// The jobs, in dispatch order.
    pub jobs: Vec<crate::domain::plan::PlannedJob>,
    /// Lease of its jobs, in milliseconds.
    pub lease_ms: i64,
    /// How long an agent has to collect its ready job, in milliseconds.
    pub delivery_ms: i64,
    /// The rollout this one retries.
    pub retry_of: Option<RolloutId>,
    /// Creator.
    pub created_by: String,
}

/// A new dashboard user (the password already hashed with argon2id).
#[derive(Debug, Clone)]
pub struct NewUser {
    /// Id.
    pub id: UserId,
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
    pub id: UserId,
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
    pub user_id: UserId,
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
    pub user_id: UserId,
    /// Login name.
    pub username: String,
    /// The user's role (read at every request: a changed role applies at once).
    pub role: Role,
    /// The session's CSRF token.
    pub csrf_token: String,
    /// When it was last used (for the idle timeout; written at most every few seconds).
    pub last_used_at: Millis,
}

/// A job handed to an agent by a poll.
#[derive(Debug, Clone)]
pub struct ClaimedJob {
    /// The job's id.
    pub job_id: JobId,
    /// Its rollout.
    pub rollout_id: RolloutId,
    /// The fencing token of this dispatch: every report must carry it.
    pub fencing_token: u64,
    /// Its rollout's plan.
    pub spec: crate::model::RolloutSpec,
    /// Its package.
    pub package: Package,
    /// Lease in milliseconds.
    pub lease_ms: i64,
}

/// A poll's claim, written by the claims' group commit.
#[derive(Debug)]
pub(crate) struct ClaimRequest {
    /// The polling agent.
    pub agent_id: AgentId,
    /// When it polled.
    pub now: Millis,
}

/// An event report, written by the reports' group commit.
#[derive(Debug)]
pub(crate) struct ReportRequest {
    /// The job.
    pub job_id: JobId,
    /// The reporting agent.
    pub agent_id: AgentId,
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
    /// The job ended with this report: its rollout (whose state may settle now).
    pub finished: Option<RolloutId>,
    /// The job ended with this report: the install's outcome.
    pub ended: Option<fleetup_proto::InstallOutcome>,
    /// The rollup this report installed, added to the agent's list at the end of the
    /// report's transaction.
    pub installed: Option<crate::model::InstalledRollup>,
    /// The report came after the job was declared lost and carried its outcome: recorded
    /// on the job as late (this sentence), but refused to the agent as a stale lease.
    pub late: Option<String>,
}

/// What the agent must hear about one job.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct JobMessages {
    /// Cancel requested.
    pub cancel: bool,
    /// Answered decisions.
    pub decisions: Vec<DecisionReply>,
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
    pub state: Option<crate::model::JobState>,
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

//! The operator API's wire types: what `/api/v1` accepts and returns, shared by the
//! coordinator (which stores and serves them) and by every client of the API (the typed
//! client crate, the CLI, the demo, the tests and the benchmarks), so both sides compile
//! against one definition.
//!
//! Times appear as RFC 3339 in JSON. Ids are the newtypes of [`crate::id`].

use crate::agent_api::JobPolicies;
use crate::id::{AgentId, JobId, PackageId, RolloutId, TokenId};
use crate::phase::{PhaseId, PhaseStatus};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod access;
pub use access::{ApiToken, CreatedApiToken, NewApiToken, NewPassword, User};

/// What an API token or a user may do. Ordered: each role includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Reads everything.
    Viewer,
    /// Also uploads packages, stages and drives rollouts, answers decisions.
    Operator,
    /// Also manages enrollment tokens and agents.
    Admin,
}

impl Role {
    /// The stable lowercase id.
    pub const fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }

    /// Parses the stored id.
    pub fn parse(s: &str) -> Option<Role> {
        [Role::Viewer, Role::Operator, Role::Admin].into_iter().find(|r| r.as_str() == s)
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Role::parse(s).ok_or_else(|| format!("unknown role '{s}': use viewer, operator or admin"))
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A job's state. Terminal states never change again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum JobState {
    /// In a wave that has not opened, or waiting for a concurrency slot.
    Pending,
    /// Ready: the agent gets it on its next poll.
    Queued,
    /// Handed to the agent; no event yet.
    Dispatched,
    /// The agent reports progress.
    Running,
    /// A decision is asked and no policy answers it: an operator must.
    Waiting,
    /// Installed.
    Succeeded,
    /// The server already ran this version when the rollout was staged: nothing to do.
    /// Counts as a success.
    Skipped,
    /// Ended without changing the server, or failed by the coordinator (phase timeout).
    Failed,
    /// Changes were undone.
    RolledBack,
    /// Cancelled by an operator or by the rollout.
    Cancelled,
    /// The agent stopped reporting past its lease.
    Lost,
    /// The agent did not collect its ready job within the rollout's delivery timeout (it is
    /// offline): the job freed its slot. Not a failure unless the rollout says so; retry it
    /// when the agent is back.
    Undeliverable,
    /// A failed attempt that was tried again as a new job (automatically, for a transient
    /// failure, or by an operator): kept as the record of that attempt, counted neither as a
    /// success nor as a failure. The job it became names it in `retry_of`.
    Retried,
    /// An operator took the server out of the rollout: it gets nothing more from it, and the
    /// job counts neither toward the gate nor toward the error threshold.
    Excluded,
}

impl JobState {
    /// Every state, in life-cycle order.
    pub const ALL: [JobState; 14] = [
        JobState::Pending,
        JobState::Queued,
        JobState::Dispatched,
        JobState::Running,
        JobState::Waiting,
        JobState::Succeeded,
        JobState::Skipped,
        JobState::Failed,
        JobState::RolledBack,
        JobState::Cancelled,
        JobState::Lost,
        JobState::Undeliverable,
        JobState::Retried,
        JobState::Excluded,
    ];

    /// The stable kebab-case id.
    pub const fn as_str(self) -> &'static str {
        match self {
            JobState::Pending => "pending",
            JobState::Queued => "queued",
            JobState::Dispatched => "dispatched",
            JobState::Running => "running",
            JobState::Waiting => "waiting",
            JobState::Succeeded => "succeeded",
            JobState::Skipped => "skipped",
            JobState::Failed => "failed",
            JobState::RolledBack => "rolled-back",
            JobState::Cancelled => "cancelled",
            JobState::Lost => "lost",
            JobState::Undeliverable => "undeliverable",
            JobState::Retried => "retried",
            JobState::Excluded => "excluded",
        }
    }

    /// Parses the stored id.
    pub fn parse(s: &str) -> Option<JobState> {
        JobState::ALL.into_iter().find(|j| j.as_str() == s)
    }

    /// Ended for good.
    pub const fn is_terminal(self) -> bool {
        matches!(
            self,
            JobState::Succeeded
                | JobState::Skipped
                | JobState::Failed
                | JobState::RolledBack
                | JobState::Cancelled
                | JobState::Lost
                | JobState::Undeliverable
                | JobState::Retried
                | JobState::Excluded
        )
    }

    /// Left out of a rollout's counting: a superseded attempt, or an excluded server. The
    /// gate, the error threshold and the wave sizes are taken over the other jobs.
    pub const fn is_set_aside(self) -> bool {
        matches!(self, JobState::Retried | JobState::Excluded)
    }

    /// Counts as a success for a wave's gate (installed, or nothing to install).
    pub const fn is_success(self) -> bool {
        matches!(self, JobState::Succeeded | JobState::Skipped)
    }

    /// Counts against the error threshold (an undeliverable job counts only when its rollout
    /// says so: `undeliverable_is_failure`).
    pub const fn is_failure(self) -> bool {
        matches!(self, JobState::Failed | JobState::RolledBack | JobState::Lost)
    }

    /// Holds a concurrency slot of its wave.
    pub const fn is_active(self) -> bool {
        matches!(self, JobState::Queued | JobState::Dispatched | JobState::Running | JobState::Waiting)
    }
}

/// A rollout's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum RolloutState {
    /// Staged, not started.
    Draft,
    /// Dispatching.
    Running,
    /// Stopped dispatching (operator, error threshold or success gate); jobs in flight go on.
    Paused,
    /// A wave passed its gate and the next one needs `approve`.
    AwaitingApproval,
    /// Every wave ran.
    Finished,
    /// Cancelled by an operator, while jobs in flight are still ending (each was asked to
    /// cancel; one past the point of no return finishes forward). Becomes `cancelled` when
    /// the last of them ends.
    Cancelling,
    /// Cancelled by an operator; every job has ended.
    Cancelled,
    /// Stopped by the error threshold with action `abort`, while jobs in flight are still
    /// ending. Becomes `aborted` when the last of them ends.
    Aborting,
    /// Stopped by the error threshold with action `abort`; every job has ended.
    Aborted,
}

impl RolloutState {
    /// The stable kebab-case id.
    pub const fn as_str(self) -> &'static str {
        match self {
            RolloutState::Draft => "draft",
            RolloutState::Running => "running",
            RolloutState::Paused => "paused",
            RolloutState::AwaitingApproval => "awaiting-approval",
            RolloutState::Finished => "finished",
            RolloutState::Cancelling => "cancelling",
            RolloutState::Cancelled => "cancelled",
            RolloutState::Aborting => "aborting",
            RolloutState::Aborted => "aborted",
        }
    }

    /// Every state, in lifecycle order.
    pub const ALL: [RolloutState; 9] = [
        RolloutState::Draft,
        RolloutState::Running,
        RolloutState::Paused,
        RolloutState::AwaitingApproval,
        RolloutState::Finished,
        RolloutState::Cancelling,
        RolloutState::Cancelled,
        RolloutState::Aborting,
        RolloutState::Aborted,
    ];

    /// Parses the stored id.
    pub fn parse(s: &str) -> Option<RolloutState> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Ended for good.
    pub const fn is_terminal(self) -> bool {
        matches!(self, RolloutState::Finished | RolloutState::Cancelled | RolloutState::Aborted)
    }

    /// Ending: cancelled or aborted, with jobs still in flight.
    pub const fn is_ending(self) -> bool {
        matches!(self, RolloutState::Cancelling | RolloutState::Aborting)
    }
}

/// One entry of a wave plan: a number of servers, or a cumulative share of the targets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum WaveSpec {
    /// This many servers in this wave.
    Count(u64),
    /// `"25%"`: this wave brings the servers covered so far up to this share of the targets.
    Percent(String),
}

/// A threshold: a count of jobs or a percentage (`"10%"`) of the jobs it applies to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(untagged)]
pub enum Threshold {
    /// This many jobs.
    Count(u64),
    /// This share of the jobs, written `"N%"`.
    Percent(String),
}

/// What crossing the error threshold does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "kebab-case")]
pub enum ErrorAction {
    /// Stop opening jobs; an operator may resume.
    #[default]
    Pause,
    /// Cancel everything not yet finished.
    Abort,
}

/// Which agents a rollout targets: explicit ids, or every agent whose labels include all of
/// `labels`. Exactly one of the two.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Targets {
    /// Agent ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agents: Option<Vec<AgentId>>,
    /// Label selector (all must match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
}

/// One weekly range of a maintenance window, in the window's local time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct WindowRange {
    /// Days the range starts on (`mon` … `sun`); empty means every day.
    #[serde(default)]
    pub days: Vec<String>,
    /// Start, `HH:MM`.
    pub start: String,
    /// End, `HH:MM`; earlier than `start` means the range ends the next day.
    pub end: String,
}

/// When jobs may start.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct MaintenanceWindow {
    /// The window's time zone, an IANA name such as `Europe/Berlin`: its ranges follow the
    /// zone's daylight-saving changes. Leave it out to use `utc_offset_minutes`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// A fixed offset from UTC, in minutes (e.g. 60 for UTC+01:00), when no `time_zone` is
    /// given. Does not follow daylight saving.
    #[serde(default)]
    pub utc_offset_minutes: i32,
    /// Weekly ranges.
    pub ranges: Vec<WindowRange>,
    /// No job starts in the last `cutoff_minutes` of a range (a job needs time to finish).
    #[serde(default)]
    pub cutoff_minutes: u32,
}

/// Everything an operator says about a rollout (`POST /rollouts`). Stored as given.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// A name for people.
    pub name: String,
    /// The package to install.
    pub package_id: PackageId,
    /// Which agents.
    pub targets: Targets,
    /// Wave plan, e.g. `[1, 5, "25%", "100%"]`; default one wave of everything.
    #[serde(default = "default_waves")]
    pub waves: Vec<WaveSpec>,
    /// Servers of a wave that may run at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: u32,
    /// Share (or count) of a wave's jobs that must succeed before the next wave opens.
    #[serde(default = "default_success")]
    pub success_threshold: Threshold,
    /// Failures (failed, rolled back, lost) across the rollout that trigger `error_action`.
    #[serde(default)]
    pub error_threshold: Option<Threshold>,
    /// What crossing the error threshold does.
    #[serde(default)]
    pub error_action: ErrorAction,
    /// Each wave after the first waits for `POST /rollouts/{id}/approve`.
    #[serde(default)]
    pub approval_required: bool,
    /// Warning / files-in-use policies and CRL remediation, passed to the agents.
    #[serde(default)]
    pub policies: JobPolicies,
    /// Per-phase time limits in seconds.
    #[serde(default)]
    pub phase_timeouts: BTreeMap<PhaseId, u64>,
    /// When jobs may start; none means any time.
    #[serde(default)]
    pub maintenance_window: Option<MaintenanceWindow>,
    /// Lease in seconds (default: the server's `--lease-secs`).
    #[serde(default)]
    pub lease_secs: Option<u64>,
    /// A ready job its agent does not collect within this many seconds becomes
    /// `undeliverable` and frees its slot (default: the server's `--delivery-timeout-secs`).
    #[serde(default)]
    pub delivery_timeout_secs: Option<u64>,
    /// Undeliverable jobs count toward the error threshold and against the success gate,
    /// like failures. By default they are counted apart: a wave's gate is taken over the
    /// servers that could be reached.
    #[serde(default)]
    pub undeliverable_is_failure: bool,
    /// No wave opens before this instant (RFC 3339); a rollout started earlier waits, and
    /// says so in its `state_reason`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_at: Option<DateTime<Utc>>,
    /// After a wave passes its gate, the next one opens only once this many seconds have
    /// passed without the rollout being stopped (the soak time); 0 opens it at once.
    #[serde(default)]
    pub soak_secs: u64,
    /// Try jobs again that failed for a transient reason (lost lease, a hook's "retry later"
    /// exit code).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retries: Option<RetryPolicy>,
    /// With a label selector: agents that enroll, or gain the labels, while the rollout runs
    /// join its last wave.
    #[serde(default)]
    pub late_joiners: bool,
    /// Allow installing a version older than one a target already runs (refused otherwise,
    /// at staging and by the agent).
    #[serde(default)]
    pub allow_downgrade: bool,
}

/// How a rollout tries transient failures again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts after the first (at most 10).
    pub times: u32,
    /// Wait before the first retry, in seconds; doubled for each later one.
    #[serde(default = "default_backoff")]
    pub backoff_secs: u64,
    /// The longest wait between attempts, in seconds.
    #[serde(default = "default_max_backoff")]
    pub max_backoff_secs: u64,
}

const fn default_backoff() -> u64 {
    30
}
const fn default_max_backoff() -> u64 {
    600
}

fn default_waves() -> Vec<WaveSpec> {
    vec![WaveSpec::Percent("100%".into())]
}
const fn default_concurrency() -> u32 {
    1
}
fn default_success() -> Threshold {
    Threshold::Percent("100%".into())
}

/// An enrolled agent.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Agent {
    /// Id.
    pub id: AgentId,
    /// Host name it reported.
    pub hostname: String,
    /// Labels (targets select on them).
    pub labels: BTreeMap<String, String>,
    /// Facts it reported.
    pub facts: BTreeMap<String, serde_json::Value>,
    /// Agent version.
    pub version: String,
    /// Rollups installed through fleetup, oldest first.
    pub installed: Vec<InstalledRollup>,
    /// When it enrolled.
    pub enrolled_at: DateTime<Utc>,
    /// Last poll or report.
    pub last_seen: DateTime<Utc>,
    /// Seen within the server's `--offline-after-secs`.
    pub online: bool,
    /// Revoked: its token no longer works.
    pub revoked: bool,
}

/// A rollup an agent installed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct InstalledRollup {
    /// Rollup name.
    pub rollup: String,
    /// Version.
    pub version: String,
    /// The job that installed it.
    pub job_id: JobId,
    /// When.
    pub at: DateTime<Utc>,
}

/// A stored package.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Package {
    /// Id.
    pub id: PackageId,
    /// Rollup name.
    pub name: String,
    /// Rollup version.
    pub version: String,
    /// Hex sha256 of the file.
    pub sha256: String,
    /// File size in bytes.
    pub size: u64,
    /// The trusted key that signed it.
    pub key_id: String,
    /// The manifest.
    pub manifest: serde_json::Value,
    /// Who uploaded it.
    pub uploaded_by: String,
    /// When.
    pub uploaded_at: DateTime<Utc>,
}

/// A rollout with its waves and job counts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rollout {
    /// Id.
    /// Names the rollout's control state (state, wave, approvals, spec, times; not the job
    /// counts, which move with every report). Sent as the `ETag` header too; `If-Match` with
    /// it on an action refuses the action (412) if the rollout changed since.
    #[serde(default)]
    pub etag: String,
    pub id: RolloutId,
    /// Name.
    pub name: String,
    /// Package id.
    pub package_id: PackageId,
    /// State.
    pub state: RolloutState,
    /// Why it is paused, aborted, … (for people).
    pub state_reason: Option<String>,
    /// The wave being run (1-based; 0 before start).
    pub current_wave: u32,
    /// The plan as given.
    pub spec: RolloutSpec,
    /// Waves with their sizes and states.
    pub waves: Vec<Wave>,
    /// Number of jobs per state.
    pub counts: BTreeMap<JobState, u64>,
    /// The rollout this one retries, if any.
    pub retry_of: Option<RolloutId>,
    /// Who created it.
    pub created_by: String,
    /// When.
    pub created_at: DateTime<Utc>,
    /// When it started.
    pub started_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// While it waits (a scheduled start, a soak time, a maintenance window): when the
    /// wait ends, as far as is known. `state_reason` says what it waits for.
    #[serde(default)]
    pub wait_until: Option<DateTime<Utc>>,
}

/// One wave of a rollout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Wave {
    /// 1-based.
    pub number: u32,
    /// Servers in it.
    pub size: u64,
    /// `pending`, `open` or `done`.
    pub state: String,
    /// Number of jobs per state.
    pub counts: BTreeMap<JobState, u64>,
}

/// The latest status of one phase of a job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PhaseState {
    /// Status.
    pub status: PhaseStatus,
    /// Sequence number of the event that set it.
    pub seq: u64,
    /// When.
    pub at: DateTime<Utc>,
}

/// One server's install within a rollout.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Job {
    /// Id.
    pub id: JobId,
    /// Rollout.
    pub rollout_id: RolloutId,
    /// Agent.
    pub agent_id: AgentId,
    /// Agent's host name.
    pub hostname: String,
    /// Wave (1-based).
    pub wave: u32,
    /// State.
    pub state: JobState,
    /// Phase of the latest event.
    pub current_phase: Option<PhaseId>,
    /// Latest status of every phase reported so far.
    pub phases: BTreeMap<PhaseId, PhaseState>,
    /// Warnings reported (phase, message, data).
    pub warnings: Vec<serde_json::Value>,
    /// Measured outage in seconds (from the final summary).
    pub outage_secs: Option<f64>,
    /// Why it failed.
    pub error: Option<String>,
    /// Processes kept replaced files open: restart the server.
    pub restart_required: bool,
    /// A cancel was requested and not yet reported done.
    pub cancel_requested: bool,
    /// Dispatch counter, sent as the fencing token.
    pub fencing_token: u64,
    /// When the lease ends.
    pub lease_expires_at: Option<DateTime<Utc>>,
    /// When it was handed to the agent.
    pub dispatched_at: Option<DateTime<Utc>>,
    /// When it ended.
    pub finished_at: Option<DateTime<Utc>>,
    /// Which attempt at this server this job is (1 for the first).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// The job of the previous attempt, which this one retries.
    #[serde(default)]
    pub retry_of: Option<JobId>,
    /// Not queued before this instant (a retry's backoff).
    #[serde(default)]
    pub not_before: Option<DateTime<Utc>>,
    /// Its running phase has run far longer than that phase usually takes.
    #[serde(default)]
    pub stalled: Option<Stall>,
    /// What an operator decided about it (skipped or excluded), with who and why.
    #[serde(default)]
    pub note: Option<String>,
}

const fn first_attempt() -> u32 {
    1
}

/// A running phase flagged as stalled: it has run past `limit_secs`, the larger of a
/// multiple of the phase's learned p95 and an absolute floor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Stall {
    /// The phase.
    pub phase: PhaseId,
    /// When it was flagged.
    pub since: DateTime<Utc>,
    /// How long the phase had run then, in seconds.
    pub elapsed_secs: f64,
    /// The phase's learned median and 95th percentile, in seconds.
    pub p50_secs: f64,
    /// 95th percentile.
    pub p95_secs: f64,
    /// The limit it crossed, in seconds.
    pub limit_secs: f64,
    /// How many finished jobs the figures were learned from, and whether from this host's
    /// own history (`host`) or the package's across the fleet (`fleet`).
    pub samples: u64,
    /// `host` or `fleet`.
    pub basis: String,
}

/// One server's install, compact: what a grid of thousands of servers shows per row
/// (`GET /rollouts/{id}/jobs?view=summary`). The full [`Job`] has the phase map and the
/// warning texts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct JobSummary {
    /// Id.
    pub id: JobId,
    /// Agent.
    pub agent_id: AgentId,
    /// Agent's host name.
    pub hostname: String,
    /// Wave (1-based).
    pub wave: u32,
    /// State.
    pub state: JobState,
    /// Phase of the latest event.
    pub current_phase: Option<PhaseId>,
    /// Latest status of that phase.
    pub phase_status: Option<PhaseStatus>,
    /// Measured outage in seconds (from the final summary).
    pub outage_secs: Option<f64>,
    /// How many warnings the job reported.
    pub warning_count: u64,
    /// Which attempt at this server this job is (1 for the first).
    #[serde(default = "first_attempt")]
    pub attempt: u32,
    /// Its running phase is flagged as stalled.
    #[serde(default)]
    pub stalled: bool,
}

/// A decision a job asked.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Decision {
    /// Per-job id.
    pub id: u32,
    /// Phase that asked.
    pub phase: PhaseId,
    /// `warning` or `files-in-use`.
    pub kind: String,
    /// The full request (message, options, processes, remediation).
    pub request: serde_json::Value,
    /// The answer, once given.
    pub answer: Option<String>,
    /// Who answered (`policy` or the operator).
    pub answered_by: Option<String>,
    /// When asked.
    pub asked_at: DateTime<Utc>,
    /// When answered.
    pub answered_at: Option<DateTime<Utc>>,
}

/// An enrollment token (without its secret).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EnrollmentToken {
    /// Id.
    pub id: TokenId,
    /// Name.
    pub name: String,
    /// Labels given to the agents enrolled with it.
    pub labels: BTreeMap<String, String>,
    /// Expiry.
    pub expires_at: Option<DateTime<Utc>>,
    /// How many agents may enroll with it (none: unlimited).
    pub max_uses: Option<u64>,
    /// How many did.
    pub uses: u64,
    /// When it was revoked (`DELETE /enrollment-tokens/{id}`); none: it still enrolls
    /// agents while it has uses left and has not expired.
    #[serde(default)]
    pub revoked_at: Option<DateTime<Utc>>,
}

/// One audit record.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AuditEntry {
    /// Id.
    pub id: String,
    /// When.
    pub at: DateTime<Utc>,
    /// Who (`token:NAME`, `agent:ID`, `scheduler`, `cli`).
    pub actor: String,
    /// What (`rollout.start`, `package.upload`, …).
    pub action: String,
    /// Kind of object.
    pub object_type: String,
    /// Object id.
    pub object_id: String,
    /// Details.
    pub detail: serde_json::Value,
}

/// One page of a listing (`GET /rollouts`, `/agents`, `/packages`, `/audit`), in the
/// listing's stable order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Page<T> {
    /// The items of this page.
    pub items: Vec<T>,
    /// Pass as `?cursor=` (with the same filters) for the next page; `null` on the last.
    pub next: Option<String>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Health {
    /// `ok`.
    pub status: String,
    /// The store: `sqlite` or `postgres`.
    pub backend: String,
}

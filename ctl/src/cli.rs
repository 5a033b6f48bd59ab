//! The command line: every command and option, documented in `--help`. The token is never
//! an argument (other users of the machine see arguments in `ps`): it comes from the saved
//! context, `FLEETUP_TOKEN`, a file or stdin.

use clap::{Args, Parser, Subcommand, ValueEnum};
use fleetup_proto::DecisionAnswer;
use fleetup_proto::id::JobId;
use std::path::PathBuf;

/// The operator CLI of a fleetup coordinator.
#[derive(Debug, Parser)]
#[command(
    name = "fleetupctl",
    version,
    about = "The operator CLI of a fleetup coordinator: rollouts from spec files, live progress, decisions, logs, agents, packages",
    after_help = "The coordinator and token come from the context file (fleetupctl login), overridden by \
                  FLEETUP_SERVER, FLEETUP_TOKEN and FLEETUP_CA_CERT.\n\n\
                  Exit codes: 0 done; 1 coordinator unreachable or unexpected answer, local file error; \
                  2 bad command line or spec file; 3 refused by the coordinator (not found, conflict, invalid plan) \
                  or a rollout of that name staged with another spec; 4 no context or token refused; \
                  5 watch: rollout cancelled, aborted or finished with failures; 6 watch: rollout paused, or --timeout passed."
)]
pub struct Cli {
    /// The context file (server, token, CA). Default: $XDG_CONFIG_HOME/fleetup/context.toml
    /// (~/.config/fleetup/context.toml).
    #[arg(long, global = true, env = "FLEETUP_CONTEXT", value_name = "FILE")]
    pub context: Option<PathBuf>,
    /// The coordinator's URL (`https://fleetup.example:8443`), instead of the context's.
    #[arg(long, global = true, env = "FLEETUP_SERVER", value_name = "URL")]
    pub server: Option<String>,
    /// A PEM file of the CA that signed the coordinator's certificate (a private CA:
    /// `fleetup-server tls init`'s ca.pem), instead of the context's.
    #[arg(long, global = true, env = "FLEETUP_CA_CERT", value_name = "FILE")]
    pub ca_cert: Option<PathBuf>,
    /// Allow plain http:// to a host other than loopback: the token would cross the
    /// network unencrypted.
    #[arg(long, global = true)]
    pub insecure_http: bool,
    /// `human` (tables, progress bars) or `json` (the API's objects, one JSON document per
    /// line; `watch` prints one line per change).
    #[arg(long, short = 'o', global = true, value_enum, default_value_t = Output::Human, env = "FLEETUP_OUTPUT")]
    pub output: Output,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// How results are printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    /// For people.
    Human,
    /// For scripts.
    Json,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Saves the coordinator and a token in the context file.
    ///
    /// The file is written mode 0600, after checking that the coordinator accepts the
    /// token. The URL is --server (or FLEETUP_SERVER).
    Login(Login),
    /// Removes the context file.
    Logout,
    /// Shows the context in use (the token is never shown).
    Context,
    /// Rollouts: apply a spec file, list, show, drive.
    #[command(subcommand)]
    Rollout(RolloutCmd),
    /// Live progress of a rollout: waves, counts, failures, decisions waiting.
    ///
    /// Exits 0 when it finished without failures, 5 when it failed, was cancelled or
    /// aborted, 6 when it is paused (unless --through-pauses) or --timeout passed.
    Watch(Watch),
    /// Lists open decisions, or answers them (--answer).
    ///
    /// One job's, or every one of a rollout's that a filter covers (--rollout R --all).
    Decide(Decide),
    /// A job's phase logs.
    Logs(Logs),
    /// Agents: list, show, label, revoke.
    #[command(subcommand)]
    Agents(AgentsCmd),
    /// Packages: list, upload.
    #[command(subcommand)]
    Packages(PackagesCmd),
    /// Tokens: API tokens for people and automation, enrollment tokens for agents.
    #[command(subcommand)]
    Tokens(TokensCmd),
    /// Prints a shell completion script.
    ///
    /// `fleetupctl completions bash > /etc/bash_completion.d/fleetupctl`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
}

/// `login`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("token").required(true).args(["token_file", "token_stdin"])))]
pub struct Login {
    /// Read the API token from this file (`fleetup-server token create` prints it).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Read the API token from standard input.
    #[arg(long)]
    pub token_stdin: bool,
}

/// A rollout, by id or by name.
#[derive(Debug, Args)]
pub struct RolloutRef {
    /// The rollout's id or its name.
    pub rollout: String,
}

/// `rollout …`.
#[derive(Debug, Subcommand)]
pub enum RolloutCmd {
    /// Validates a rollout spec file, shows its plan and stages it as a draft.
    ///
    /// TOML, YAML or JSON, by extension. Idempotent by name: the same spec again is reported
    /// unchanged; another spec under a name already used is refused (exit 3).
    Apply {
        /// The spec file (`.toml`, `.yaml`/`.yml` or `.json`).
        file: PathBuf,
        /// Validate and show the plan; stage nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Lists rollouts, newest first.
    List {
        /// Only this state (`running`, `paused`, `draft`, …).
        #[arg(long)]
        state: Option<String>,
        /// Only rollouts targeting these labels (`k=v`, repeatable).
        #[arg(long, value_name = "K=V")]
        label: Vec<String>,
    },
    /// A rollout's state, waves and counts.
    Show(RolloutRef),
    /// A rollout's jobs (one per server).
    Jobs {
        /// The rollout's id or name.
        rollout: String,
        /// Only jobs in this state.
        #[arg(long)]
        state: Option<String>,
        /// Only this wave.
        #[arg(long)]
        wave: Option<u32>,
    },
    /// Starts a draft.
    Start(RolloutRef),
    /// Opens the next wave of a rollout awaiting approval.
    Approve(RolloutRef),
    /// Stops dispatching (jobs in flight go on).
    Pause(RolloutRef),
    /// Resumes a paused rollout.
    Resume(RolloutRef),
    /// Cancels a rollout (jobs in flight are asked to cancel).
    Cancel(RolloutRef),
    /// Stages a new draft of the failed, rolled-back and lost servers only.
    RetryFailed(RolloutRef),
}

/// `watch`.
#[derive(Debug, Args)]
pub struct Watch {
    /// The rollout's id or name.
    pub rollout: String,
    /// Keep watching while the rollout is paused (an operator may resume it elsewhere).
    #[arg(long)]
    pub through_pauses: bool,
    /// Give up after this many seconds (exit 6).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// How often to ask the coordinator, in milliseconds.
    #[arg(long, default_value_t = 500, value_name = "MS")]
    pub interval_ms: u64,
}

/// An answer to a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Answer {
    /// Go on despite the warning.
    Continue,
    /// End the install.
    Cancel,
    /// Look again (files in use).
    Retry,
    /// Replace the files anyway; the server needs a restart (files in use).
    Ignore,
    /// Restart the services and end the install (files in use).
    Exit,
}

impl From<Answer> for DecisionAnswer {
    fn from(a: Answer) -> Self {
        match a {
            Answer::Continue => DecisionAnswer::Continue,
            Answer::Cancel => DecisionAnswer::Cancel,
            Answer::Retry => DecisionAnswer::Retry,
            Answer::Ignore => DecisionAnswer::Ignore,
            Answer::Exit => DecisionAnswer::Exit,
        }
    }
}

/// `decide`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("what").required(true).args(["job", "rollout"])))]
pub struct Decide {
    /// The job whose decision to list or answer.
    pub job: Option<JobId>,
    /// The rollout whose open decisions to list, or (with --all) answer.
    #[arg(long, value_name = "ROLLOUT")]
    pub rollout: Option<String>,
    /// Answer every open decision of --rollout that --kind, --code and --matching cover.
    #[arg(long, requires = "rollout", requires = "answer")]
    pub all: bool,
    /// The answer; without it, the open decisions are listed.
    #[arg(long, value_enum)]
    pub answer: Option<Answer>,
    /// Which of the job's decisions (default: its only open one).
    #[arg(long, value_name = "N", conflicts_with = "all")]
    pub decision: Option<u32>,
    /// With --all: `warning` or `files-in-use` (default: the kind the answer is for).
    #[arg(long)]
    pub kind: Option<String>,
    /// With --all: only warnings with this code (`crl-unreachable`).
    #[arg(long)]
    pub code: Option<String>,
    /// With --all: only questions whose text contains this.
    #[arg(long)]
    pub matching: Option<String>,
    /// With --all: the answer also stands for such decisions asked later in the rollout.
    #[arg(long)]
    pub remember: bool,
}

/// `logs`.
#[derive(Debug, Args)]
pub struct Logs {
    /// The job.
    pub job: JobId,
    /// Keep printing new lines until the job ends.
    #[arg(long, short = 'f')]
    pub follow: bool,
}

/// `agents …`.
#[derive(Debug, Subcommand)]
pub enum AgentsCmd {
    /// Lists agents by hostname.
    List {
        /// Only agents carrying these labels (`k=v`, repeatable).
        #[arg(long, value_name = "K=V")]
        label: Vec<String>,
        /// Only online (true) or offline (false) agents.
        #[arg(long)]
        online: Option<bool>,
        /// Only agents whose last installed rollup has this version (`none`: nothing).
        #[arg(long)]
        installed: Option<String>,
    },
    /// One agent, by id or hostname.
    Show {
        /// Id or hostname.
        agent: String,
    },
    /// Sets or removes labels of an agent.
    Label {
        /// Id or hostname.
        agent: String,
        /// `k=v` to set, `k-` to remove.
        #[arg(required = true, value_name = "K=V|K-")]
        changes: Vec<String>,
    },
    /// Revokes an agent (admin): its token stops working.
    Revoke {
        /// Id or hostname.
        agent: String,
    },
}

/// `packages …`.
#[derive(Debug, Subcommand)]
pub enum PackagesCmd {
    /// Lists packages, newest upload first.
    List {
        /// Only this rollup name.
        #[arg(long)]
        name: Option<String>,
    },
    /// Uploads a signed package file (`fleetup-agent pack`); the coordinator verifies it.
    Upload {
        /// The package file.
        file: PathBuf,
    },
}

/// `tokens …`.
#[derive(Debug, Subcommand)]
pub enum TokensCmd {
    /// API tokens (admin): what people and automation call the API with.
    #[command(subcommand)]
    Api(ApiTokenCmd),
    /// Enrollment tokens (admin): what new agents enroll with.
    #[command(subcommand)]
    Enrollment(EnrollmentCmd),
}

/// `tokens api …`.
#[derive(Debug, Subcommand)]
pub enum ApiTokenCmd {
    /// Creates one; its secret is printed this once.
    Create {
        /// A name for people (the audit log records its actions as `token:NAME`).
        #[arg(long)]
        name: String,
        /// What it may do: viewer, operator or admin.
        #[arg(long)]
        role: fleetup_proto::api::Role,
        /// Lifetime in seconds (default: it never expires).
        #[arg(long, value_name = "SECS")]
        expires_in_secs: Option<u64>,
    },
    /// Lists them, revoked and expired ones included (never their secrets).
    List,
    /// Revokes one: it is refused (`token-revoked`) from its next request.
    Revoke {
        /// Its id (from `tokens api list`).
        id: String,
    },
}

/// `tokens enrollment …`.
#[derive(Debug, Subcommand)]
pub enum EnrollmentCmd {
    /// Creates one; its secret is printed this once.
    Create {
        /// A name for people.
        #[arg(long)]
        name: Option<String>,
        /// Labels given to every agent enrolled with it (`k=v`, repeatable).
        #[arg(long, value_name = "K=V")]
        label: Vec<String>,
        /// Lifetime in seconds (default 24 h).
        #[arg(long, value_name = "SECS")]
        expires_in_secs: Option<u64>,
        /// How many agents may enroll with it (default unlimited).
        #[arg(long)]
        max_uses: Option<u64>,
    },
    /// Lists them (never their secrets).
    List,
    /// Revokes one: no agent enrolls with it any more (agents enrolled with it stay).
    Revoke {
        /// Its id (from `tokens enrollment list`).
        id: String,
    },
}

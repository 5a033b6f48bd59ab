//! fleetup-proto: everything the coordinator and the agent must agree on.
//!
//! The phase ids, the engine event, decisions, the rollup manifest and the signed
//! package format are defined here once, so the API, the dashboard, logs and tests all
//! speak the same words. This crate is deliberately free of async runtimes and web
//! frameworks: it is plain data plus the package verifier, which must be usable from
//! any context (CLI, agent, coordinator upload path).

pub mod agent_api;
pub mod api;
pub mod decision;
pub mod event;
pub mod id;
pub mod keys;
#[cfg(feature = "logging")]
pub mod logging;
pub mod manifest;
pub mod package;
pub mod phase;
pub mod problem;
pub mod version;
pub mod webhooks;

pub use decision::{DecisionAnswer, DecisionKind, DecisionRequest, HoldingProcess};
pub use event::{EngineEvent, InstallOutcome, InstallSummary};
pub use id::{AgentId, JobId, PackageId, RolloutId, TokenId, UserId};
pub use keys::{KeyError, PublicKey, SecretKey};
pub use manifest::Manifest;
pub use phase::{Cancellability, PhaseId, PhaseStatus};

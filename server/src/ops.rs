//! The use cases: one function per operation, written once for the REST API, the dashboard
//! and the command line. Each checks the caller's role, validates its input, calls the
//! domain and the store, and does what follows from the operation itself: the audit record
//! (in the store's transaction), waking the agents concerned and kicking the scheduler. The
//! edges (`api/`, `web/`) only parse, call one of these, and render.

pub mod access;
pub mod agents;
pub mod jobs;
pub mod packages;
pub mod rollouts;
pub mod sessions;
pub mod webhooks;

use crate::error::AppError;
use crate::model::Role;

/// Who performs an operation: the name recorded in the audit log and the role it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// `token:NAME`, `user:NAME`, `cli`, …
    pub name: String,
    /// What it may do.
    pub role: Role,
}

impl Actor {
    /// An actor with this audit name and role.
    pub fn new(name: impl Into<String>, role: Role) -> Self {
        Self { name: name.into(), role }
    }

    /// Refuses unless the actor has at least `role`.
    pub fn require(&self, role: Role) -> Result<(), AppError> {
        if self.role >= role {
            Ok(())
        } else {
            Err(AppError::Forbidden(format!(
                "this needs the {} role; {} has the {} role",
                role.as_str(),
                self.name,
                self.role.as_str()
            )))
        }
    }
}

//! The coordinator's rules, as a pure core: no sqlx, no axum, no tokio.
//!
//! Everything that decides what happens next lives here, written once and unit-tested
//! without a database: how an operator's action or the scheduler moves a rollout
//! ([`rollout`]), how a staged spec becomes typed rules and a plan of waves ([`plan`]), what
//! the scheduler does with a running rollout ([`schedule`]), how an agent's engine events
//! fold into a job ([`report`]), which failures are retried ([`retry`]), what an operator may
//! do to one job ([`job`]) and when a running phase has stalled ([`stall`]). The store reads the facts these functions need and applies
//! what they return; the use cases in [`crate::ops`] call them.

pub mod decide;
pub mod job;
pub mod labels;
pub mod plan;
pub mod report;
pub mod retry;
pub mod rollout;
pub mod schedule;
pub mod stall;

//! fleetup-agent: the install engine (a library) and the agent binary around it.
//!
//! The engine is in [`engine`]; the binary's subcommands live in [`cli`] (`install`,
//! `recover`) and [`packaging`] (`keygen`, `pack`, `verify`).

pub mod cli;
pub mod daemon;
pub mod engine;
pub mod packaging;

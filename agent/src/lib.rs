//! fleetup-agent: the install engine (a library) and the agent binary around it.
//!
//! The binary's subcommands live in [`cli`]; packagers use `keygen`, `pack` and `verify`.

pub mod cli;
pub mod packaging;

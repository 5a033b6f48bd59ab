//! End-to-end tests: the real binaries, driven as a user would.

mod agent_config;
mod browser;
mod crash;
mod ctl;
mod debs;
mod demo;
mod dispatch;
mod docker;
mod fleet;
mod link;
mod packaging_cli;
mod tls;

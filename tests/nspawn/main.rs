//! Real systemd hosts (systemd-nspawn), in a test binary of their own. Cargo runs test
//! binaries one after another, so these hosts, which share the machine's network and
//! cgroups, never run beside the other end-to-end tests: in one full run beside them, a
//! host's new service never answered its health check (alone, the same tests pass).

mod hosts;

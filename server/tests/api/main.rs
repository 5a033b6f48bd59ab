//! API integration tests: one binary. Every test runs on SQLite and on Postgres (the
//! Postgres variant skips loudly when no server is reachable, or fails under
//! `FLEETUP_TEST_REQUIRE_ALL=1`). Together they are the store's contract suite.

mod audit;
mod contract;
mod control;
mod errors;
mod helpers;
mod listing;
mod protocol;
mod rbac;
mod rollouts;
mod scale;
mod tokens;
mod web;
mod webhooks;

/// Declares `NAME::sqlite` and `NAME::postgres` tests running `async fn NAME(Backend)`.
#[macro_export]
macro_rules! both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                super::$name($crate::helpers::Backend::Sqlite).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                super::$name($crate::helpers::Backend::Postgres).await;
            }
        }
    )*};
}

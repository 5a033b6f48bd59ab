//! fleetup-server: the coordinator. It keeps rollout plans, hands jobs to agents over a
//! long-poll protocol, records their progress, and runs the scheduler that opens waves.
//!
//! [`run`] takes a listener and a shutdown future so tests can bind port 0 and stop the
//! server; `main.rs` only parses the command line.

/// jemalloc, not glibc's malloc, for every binary that links the coordinator
/// (`fleetup-server`, `fleetup`, and this crate's tests): during a 10,000-server wave glibc's
/// allocator took 29 % of the coordinator's CPU (perf); jemalloc took less CPU than mimalloc
/// for 160 MiB less memory with 18,500 polls held (docs/decisions.md, "The coordinator
/// allocates with jemalloc"). The agent's binary does not link this crate.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

pub mod agent_limits;
pub mod api;
pub mod app;
pub mod auth;
pub mod cli;
pub mod config;
pub mod domain;
pub mod error;
pub mod hooks;
pub mod limits;
pub mod mailbox;
pub mod model;
pub mod ops;
pub mod routes;
pub mod scheduler;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod web;

use app::{App, AppState};
use config::Config;
use std::future::Future;
use std::sync::Arc;
use tokio_util::sync::CancellationToken;

/// Why the server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The database.
    #[error("database: {0}")]
    Store(#[from] store::StoreError),
    /// A trusted key file.
    #[error("trusted key {path}: {source}")]
    Key {
        /// The file.
        path: String,
        /// Why.
        source: fleetup_proto::KeyError,
    },
    /// The TLS certificate pair.
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    /// Files or the socket.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Every accepted connection sends at once (`TCP_NODELAY`). With Nagle's algorithm on, a
/// response written in more than one piece (a package download, streamed from its file)
/// held its last small segment until the agent acknowledged the one before, and the agent
/// delays that acknowledgement by up to 40 ms: a download of the 10 KB sample package took
/// 42 ms instead of under one (bench P7 profile, docs/decisions.md).
fn no_delay(tcp: &mut tokio::net::TcpStream) {
    if let Err(e) = tcp.set_nodelay(true) {
        tracing::debug!(error = %e, "could not set TCP_NODELAY on an accepted connection");
    }
}

/// Opens the store, starts the scheduler and serves until `shutdown` completes.
pub async fn run(
    config: Config,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServerError> {
    // First: a series recorded before the recorder exists is lost for good.
    let metrics = telemetry::install();
    // A bad certificate pair stops the server before anything else happens.
    let tls = config.tls().map(|pair| pair.load().map(|live| (pair, live))).transpose()?;
    let store = store::connect(&config.database_url).await?;
    let mut trusted = Vec::new();
    for path in &config.trust {
        trusted.push(
            fleetup_proto::PublicKey::read(path)
                .map_err(|source| ServerError::Key { path: path.display().to_string(), source })?,
        );
    }
    std::fs::create_dir_all(config.data_dir.join("packages"))?;
    let cancel = CancellationToken::new();
    let app = Arc::new(App {
        config,
        store,
        trusted,
        polls: mailbox::Mailboxes::default(),
        last_seen: std::sync::Mutex::default(),
        seen_cache: std::sync::Mutex::default(),
        scheduler_kick: tokio::sync::Notify::new(),
        shutdown: cancel.clone(),
        metrics,
        logins: limits::LoginLimiter::default(),
        agent_limits: agent_limits::AgentLimits::default(),
        events: hooks::EventBus::default(),
    });
    let addr = listener.local_addr()?;
    tracing::info!(%addr, tls = tls.is_some(), backend = app.store.backend(), "fleetup-server listening");
    let tasks = [
        tokio::spawn(scheduler::run(app.clone(), cancel.clone())),
        tokio::spawn(app::heartbeat_flusher(app.clone(), cancel.clone())),
        tokio::spawn(app::wakeup_forwarder(app.clone(), cancel.clone())),
        tokio::spawn(hooks::tail(app.clone(), cancel.clone())),
        tokio::spawn(hooks::deliver(app.clone(), cancel.clone())),
    ];
    // The dashboard has no fallback of its own: unknown paths get the API's JSON 404.
    let router = web::router(AppState(app.clone())).merge(api::router(AppState(app.clone())));
    let stop = cancel.clone();
    let shutdown = async move {
        shutdown.await;
        stop.cancel();
    };
    // Under systemd (`Type=notify`): ready once the socket is bound and the store open.
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    // `into_make_service`: a cheap clone of the router per connection. Serving the `Router`
    // itself re-runs `with_state(())` for every connection, rebuilding the route tables:
    // ~19 KiB per held connection (docs/benchmarks.md, P1 memory). `with_connect_info`: the
    // peer address as `ConnectInfo`, which the login limits key on (docs/decisions.md).
    let result = match tls {
        None => {
            use axum::serve::ListenerExt as _;
            let listener = listener.tap_io(no_delay);
            axum::serve(listener, router.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .with_graceful_shutdown(shutdown)
                .await
        }
        Some((pair, live)) => {
            let reload = tokio::spawn(pair.reload_on_sighup(live.clone(), cancel.clone()));
            let handle = axum_server::Handle::new();
            let stopper = handle.clone();
            tokio::spawn(async move {
                shutdown.await;
                // Long-polls end at once on `cancel`; give uploads and downloads a while.
                stopper.graceful_shutdown(Some(std::time::Duration::from_secs(30)));
            });
            // Over TLS the request is https whatever a client claims: cookies get `Secure`
            // (web::session reads the same header a TLS-terminating proxy sets).
            let router = router.layer(axum::middleware::map_request(mark_https));
            let acceptor =
                axum_server::tls_rustls::RustlsAcceptor::new(live).acceptor(axum_server::accept::NoDelayAcceptor);
            let served = axum_server::from_tcp(listener.into_std()?)?
                .acceptor(acceptor)
                .handle(handle)
                .serve(router.into_make_service_with_connect_info::<std::net::SocketAddr>())
                .await;
            reload.abort();
            served
        }
    };
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    result.map_err(ServerError::Io)
}

/// Marks a request that arrived over this server's TLS as https (`X-Forwarded-Proto`).
async fn mark_https(mut req: axum::extract::Request) -> axum::extract::Request {
    req.headers_mut().insert("x-forwarded-proto", axum::http::HeaderValue::from_static("https"));
    req
}

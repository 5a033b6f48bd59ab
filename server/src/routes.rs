//! The route table: every route's method, path and access rule, registered together.
//!
//! [`Routes`] is the only way the operator API, the agent protocol and the dashboard add a
//! route: each call names the method, the path, the [`Access`] rule and the handler, and
//! the rule goes into a table beside the route. [`Routes::guarded`] puts [`guard`] before
//! every handler: it looks the matched route up (axum's [`MatchedPath`] and the method),
//! authenticates the caller the rule names and checks the role, and only then lets the
//! request through. A route that reached the router without a rule is refused for everyone
//! (403, fail closed): a forgotten rule is a closed route, never an open one. A method a
//! path has no rule for is a 405 that runs no handler.
//!
//! [`table`] is the table of the whole server; the RBAC matrix test
//! (`server/tests/api/rbac.rs`) calls every route in it with every kind of caller, so a new
//! route is tested the day it is added.

use crate::app::AppState;
use crate::error::AppError;
use crate::model::Role;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::handler::Handler;
use axum::http::{HeaderValue, Method, StatusCode, header::ALLOW};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, on};
use std::sync::Arc;

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone, without credentials: health, metrics, the API description, the login form,
    /// static files, agent enrollment (whose credential, the enrollment token, is in the body).
    Public,
    /// An API token (`Authorization: Bearer`) of at least this role.
    Token(Role),
    /// An enrolled, not revoked agent's secret (`Authorization: Bearer`).
    Agent,
    /// A dashboard session of at least this role; anything but GET/HEAD also needs the
    /// session's CSRF token.
    Session(Role),
}

impl Access {
    /// The rule as the API description (`docs/api.md`, `/api/v1/openapi.json`) names it:
    /// `public`, `agent`, or the minimum role (`session:` and the role for the dashboard).
    pub fn name(self) -> String {
        match self {
            Access::Public => "public".into(),
            Access::Token(role) => role.as_str().into(),
            Access::Agent => "agent".into(),
            Access::Session(role) => format!("session:{}", role.as_str()),
        }
    }
}

/// One route's rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// The method (HEAD follows GET's rule).
    pub method: Method,
    /// The path as registered, with its `{params}` (`/api/v1/jobs/{id}`).
    pub path: String,
    /// Who may call it.
    pub access: Access,
}

/// A router being built and the rule of each of its routes.
#[derive(Debug)]
pub struct Routes<S = AppState> {
    router: Router<S>,
    rules: Vec<Rule>,
}

impl<S: Clone + Send + Sync + 'static> Default for Routes<S> {
    fn default() -> Self {
        Self { router: Router::new(), rules: Vec::new() }
    }
}

impl<S: Clone + Send + Sync + 'static> Routes<S> {
    /// No routes yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// `GET path` (and HEAD) for `access`.
    pub fn get<H: Handler<T, S>, T: 'static>(self, path: &str, access: Access, handler: H) -> Self {
        self.on(Method::GET, path, access, handler)
    }

    /// `POST path` for `access`.
    pub fn post<H: Handler<T, S>, T: 'static>(self, path: &str, access: Access, handler: H) -> Self {
        self.on(Method::POST, path, access, handler)
    }

    /// `PATCH path` for `access`.
    pub fn patch<H: Handler<T, S>, T: 'static>(self, path: &str, access: Access, handler: H) -> Self {
        self.on(Method::PATCH, path, access, handler)
    }

    /// `DELETE path` for `access`.
    pub fn delete<H: Handler<T, S>, T: 'static>(self, path: &str, access: Access, handler: H) -> Self {
        self.on(Method::DELETE, path, access, handler)
    }

    fn on<H: Handler<T, S>, T: 'static>(mut self, method: Method, path: &str, access: Access, handler: H) -> Self {
        let filter = MethodFilter::try_from(method.clone()).expect("routes use standard methods");
        // Two methods on one path merge into one method router; the same method twice panics.
        self.router = self.router.route(path, on(filter, handler));
        self.rules.push(Rule { method, path: path.to_owned(), access });
        self
    }

    /// These routes and `other`'s.
    #[must_use]
    pub fn merge(mut self, other: Self) -> Self {
        self.router = self.router.merge(other.router);
        self.rules.extend(other.rules);
        self
    }

    /// `other`'s routes under `prefix`.
    #[must_use]
    pub fn nest(mut self, prefix: &str, other: Self) -> Self {
        self.router = self.router.nest(prefix, other.router);
        self.rules.extend(other.rules.into_iter().map(|r| Rule { path: format!("{prefix}{}", r.path), ..r }));
        self
    }

    /// The rules, in registration order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }
}

impl Routes<AppState> {
    /// The router, with [`guard`] before every route: apply before any other layer, so that
    /// every route registered here is guarded and nothing runs before the check but routing.
    pub fn guarded(self, state: AppState) -> Router<AppState> {
        let guard_state = Guard { app: state, rules: Arc::new(self.rules) };
        self.router.route_layer(axum::middleware::from_fn_with_state(guard_state, guard))
    }
}

/// Every route of the server and its rule: the dashboard's and the HTTP API's, built by the
/// same functions the server is built from.
pub fn table() -> Vec<Rule> {
    let mut rules = crate::web::routes().rules;
    rules.extend(crate::api::routes().rules);
    rules
}

/// What [`guard`] needs: the application (to authenticate) and the rules.
#[derive(Debug, Clone)]
pub struct Guard {
    app: AppState,
    rules: Arc<Vec<Rule>>,
}

/// What the table says about a request.
#[derive(Debug, PartialEq, Eq)]
enum Found {
    /// The route's rule.
    Rule(Access),
    /// The path has rules, but not for this method: these methods.
    OtherMethods(Vec<Method>),
    /// No rule at all.
    Nothing,
}

fn find(rules: &[Rule], method: &Method, path: &str) -> Found {
    let method = if method == Method::HEAD { &Method::GET } else { method };
    let of_path: Vec<&Rule> = rules.iter().filter(|r| r.path == path).collect();
    match of_path.iter().find(|r| r.method == *method) {
        Some(rule) => Found::Rule(rule.access),
        None if of_path.is_empty() => Found::Nothing,
        None => Found::OtherMethods(of_path.iter().map(|r| r.method.clone()).collect()),
    }
}

/// Middleware before every route: the route's rule, the caller it demands, its role.
pub async fn guard(State(g): State<Guard>, req: Request, next: Next) -> Response {
    let method = req.method().clone();
    let path = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_owned());
    let found = path.as_deref().map_or(Found::Nothing, |p| find(&g.rules, &method, p));
    let access = match found {
        Found::Rule(access) => access,
        Found::OtherMethods(methods) => {
            let allow = methods.iter().map(Method::as_str).collect::<Vec<_>>().join(",");
            let allow = HeaderValue::from_str(&allow).unwrap_or(HeaderValue::from_static(""));
            return (StatusCode::METHOD_NOT_ALLOWED, [(ALLOW, allow)]).into_response();
        }
        Found::Nothing => {
            let shown = path.unwrap_or_else(|| req.uri().path().to_owned());
            tracing::error!(%method, path = %shown, "a route without an access rule was refused");
            return AppError::Forbidden(format!(
                "{method} {shown} is closed to everyone: the server has no access rule for it (a bug in the \
                 server; every route is registered with its rule in server/src/routes.rs)"
            ))
            .into_response();
        }
    };
    match access {
        Access::Public => next.run(req).await,
        Access::Token(role) => {
            let (mut parts, body) = req.into_parts();
            match crate::auth::api_caller(&g.app, &parts, role).await {
                Ok(actor) => {
                    parts.extensions.insert(actor);
                    next.run(Request::from_parts(parts, body)).await
                }
                Err(e) => e.into_response(),
            }
        }
        Access::Agent => {
            let (mut parts, body) = req.into_parts();
            match crate::auth::agent_caller(&g.app, &parts).await {
                Ok(agent) => {
                    parts.extensions.insert(agent);
                    next.run(Request::from_parts(parts, body)).await
                }
                Err(e) => e.into_response(),
            }
        }
        Access::Session(role) => crate::web::session::require_session(&g.app, role, req, next).await,
    }
}

#[cfg(test)]
mod tests {
    use super::{Access, Found, Rule, find};
    use crate::app::{App, AppState};
    use crate::model::Role;
    use axum::body::Body;
    use axum::http::{Method, Request};
    use axum::routing::get;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    use tower::ServiceExt as _;

    fn rule(method: Method, path: &str, access: Access) -> Rule {
        Rule { method, path: path.into(), access }
    }

    #[test]
    fn head_follows_get_and_a_missing_method_names_the_others() {
        let rules = [
            rule(Method::GET, "/a/{id}", Access::Token(Role::Viewer)),
            rule(Method::DELETE, "/a/{id}", Access::Token(Role::Admin)),
        ];
        assert_eq!(find(&rules, &Method::HEAD, "/a/{id}"), Found::Rule(Access::Token(Role::Viewer)));
        assert_eq!(find(&rules, &Method::DELETE, "/a/{id}"), Found::Rule(Access::Token(Role::Admin)));
        assert_eq!(find(&rules, &Method::PUT, "/a/{id}"), Found::OtherMethods(vec![Method::GET, Method::DELETE]));
        assert_eq!(find(&rules, &Method::GET, "/b"), Found::Nothing);
    }

    #[test]
    fn every_route_of_the_server_has_one_rule() {
        let table = super::table();
        assert!(table.len() > 40, "the table has only {} rules", table.len());
        for (i, r) in table.iter().enumerate() {
            assert!(
                !table[..i].iter().any(|o| o.method == r.method && o.path == r.path),
                "{} {} has two rules",
                r.method,
                r.path
            );
        }
    }

    /// The coordinator's state on a fresh SQLite file in `dir` (no listener, no scheduler).
    async fn app_in(dir: &std::path::Path) -> AppState {
        let url = format!("sqlite:{}", dir.join("fleetup.db").display());
        let store = crate::store::connect(&url).await.unwrap();
        AppState(Arc::new(App {
            config: crate::config::Config::new(&url, dir.join("data")),
            store,
            trusted: Vec::new(),
            polls: crate::mailbox::Mailboxes::default(),
            last_seen: std::sync::Mutex::default(),
            seen_cache: std::sync::Mutex::default(),
            scheduler_kick: tokio::sync::Notify::new(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            metrics: crate::telemetry::install(),
            logins: crate::limits::LoginLimiter::default(),
            agent_limits: crate::agent_limits::AgentLimits::default(),
            events: crate::hooks::EventBus::default(),
        }))
    }

    /// Valid credentials of every kind, as request headers: none, an admin API token, an
    /// admin's dashboard session with its CSRF token, an enrolled agent's secret.
    async fn every_caller(app: &AppState) -> Vec<(&'static str, Vec<(&'static str, String)>)> {
        use crate::ops::{self, Actor};
        let admin = Actor::new("test", Role::Admin);
        let token = ops::access::create_api_token(&app.store, &admin, Role::Admin, "admin").await.unwrap();
        ops::access::create_user(&app.store, &admin, "ada", "correct horse battery", Role::Admin).await.unwrap();
        let user = app.store.user_by_name("ada").await.unwrap().unwrap();
        let (secret, csrf) = (ops::sessions::random_hex(), ops::sessions::random_hex());
        let session = crate::store::NewSession {
            id: fleetup_proto::id::new_id(),
            user_id: user.id,
            token_hash: crate::auth::hash_secret(&secret),
            csrf_token: csrf.clone(),
            expires_at: crate::model::now_ms() + 3_600_000,
        };
        let audit = crate::store::NewAudit::new("user:ada", "session.login", "user", "", serde_json::json!({}));
        app.store.create_session(&session, &audit).await.unwrap();
        let options = ops::access::EnrollmentOptions::default();
        let (_, enroll) = ops::access::create_enrollment_token(app, &admin, options).await.unwrap();
        let request = fleetup_proto::agent_api::EnrollRequest {
            token: enroll,
            hostname: "web-1".into(),
            labels: std::collections::BTreeMap::default(),
            facts: std::collections::BTreeMap::default(),
            version: "0.1.0".into(),
        };
        let agent = ops::agents::enroll(app, request).await.unwrap().agent_token;
        vec![
            ("anonymous", vec![]),
            ("admin token", vec![("authorization", format!("Bearer {token}"))]),
            ("admin session", vec![("cookie", format!("fleetup_session={secret}")), ("x-csrf-token", csrf)]),
            ("agent", vec![("authorization", format!("Bearer {agent}"))]),
        ]
    }

    /// What a careless edit does: a route put straight on the router, beside the table. It
    /// is refused to every kind of caller, on the API and on the dashboard, and its handler
    /// never runs; the routes with rules beside it still answer.
    #[tokio::test]
    async fn a_route_without_a_rule_is_refused_for_everyone() {
        let dir = tempfile::tempdir().unwrap();
        let app = app_in(dir.path()).await;
        let ran = Arc::new(AtomicBool::new(false));
        let handler = {
            let ran = ran.clone();
            move || async move {
                ran.store(true, Ordering::SeqCst);
                "open"
            }
        };
        let mut api = crate::api::routes();
        api.router = api.router.route("/api/v1/forgotten/{id}", get(handler.clone()).post(handler.clone()));
        let mut web = crate::web::routes();
        web.router = web.router.route("/forgotten", get(handler.clone()).post(handler));
        let router = crate::web::serve(web, app.clone()).merge(crate::api::serve(api, app.clone()));
        for (who, headers) in every_caller(&app).await {
            for (method, path) in [
                ("GET", "/api/v1/forgotten/1"),
                ("POST", "/api/v1/forgotten/1"),
                ("GET", "/forgotten"),
                ("POST", "/forgotten"),
            ] {
                let mut req = Request::builder().method(method).uri(path);
                for (name, value) in &headers {
                    req = req.header(*name, value);
                }
                let resp = router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
                let status = resp.status().as_u16();
                let body = axum::body::to_bytes(resp.into_body(), 1 << 20).await.unwrap();
                let body = String::from_utf8_lossy(&body);
                assert_eq!(status, 403, "{who}: {method} {path}: {body}");
                assert!(body.contains("no access rule"), "{who}: {method} {path}: {body}");
            }
            let mut req = Request::builder().uri("/api/v1/agents");
            for (name, value) in &headers {
                req = req.header(*name, value);
            }
            let resp = router.clone().oneshot(req.body(Body::empty()).unwrap()).await.unwrap();
            let expected = if who == "admin token" { 200 } else { 401 };
            assert_eq!(resp.status().as_u16(), expected, "{who}: GET /api/v1/agents");
        }
        assert!(!ran.load(Ordering::SeqCst), "the handler of a route without a rule ran");
    }
}

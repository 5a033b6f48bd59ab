//! Issue 14, case 11: the RBAC matrix. Every route of the server's route table
//! (`fleetup_server::routes::table()`, built by the same functions the server is built
//! from, so a new route is in it the day it is added) is called by every kind of caller: no
//! credentials, a viewer's, an operator's and an admin's API token, an agent's secret, and
//! a viewer's, an operator's and an admin's dashboard session. Each answer is held to what
//! the route's rule says: refused as unauthenticated (401, or a page's redirect to the
//! login form) without the credential the rule names, 403 below its role, and neither at
//! or above it. (A route without a rule: `routes::tests::a_route_without_a_rule_is_refused_for_everyone`.)
//!
//! The matrix tests access, not behaviour: reads run on real objects; a change (anything
//! but GET) of an operator route names an object that does not exist, or sends a body the
//! route refuses, so no call changes what the next one sees. Agent routes get real empty
//! reports of the agent's own job.

use crate::helpers::{Backend, TestApp, spawn_app};
use fleetup_server::model::Role;
use fleetup_server::routes::{Access, Rule};
use fleetup_server::store::{NewAudit, NewSession, Store};
use reqwest::Method;
use serde_json::json;

crate::both_backends!(every_route_answers_every_kind_of_caller_by_its_rule);

/// A kind of caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Caller {
    Anonymous,
    Token(Role),
    Agent,
    Session(Role),
}

const CALLERS: [Caller; 8] = [
    Caller::Anonymous,
    Caller::Token(Role::Viewer),
    Caller::Token(Role::Operator),
    Caller::Token(Role::Admin),
    Caller::Agent,
    Caller::Session(Role::Viewer),
    Caller::Session(Role::Operator),
    Caller::Session(Role::Admin),
];

/// What a call should get.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Through to the handler: neither 401 nor 403, nor the login redirect.
    Allowed,
    /// 401 (or, for a dashboard page, a redirect to the login form).
    Unauthenticated,
    /// 403.
    Forbidden,
}

/// What the rule says `caller` gets.
fn expected(access: Access, caller: Caller) -> Expect {
    match (access, caller) {
        (Access::Public, _) | (Access::Agent, Caller::Agent) => Expect::Allowed,
        (Access::Token(need), Caller::Token(has)) | (Access::Session(need), Caller::Session(has)) => {
            if has >= need {
                Expect::Allowed
            } else {
                Expect::Forbidden
            }
        }
        _ => Expect::Unauthenticated,
    }
}

/// Dashboard users, one per role (their sessions are made fresh for each call, so a
/// logout in the matrix ends only its own).
pub(crate) struct Users {
    pub store: Store,
    users: Vec<(Role, fleetup_server::model::UserId)>,
}

impl Users {
    pub(crate) async fn new(app: &TestApp) -> Self {
        let store = fleetup_server::store::connect(&app.db_url).await.unwrap();
        let actor = fleetup_server::ops::Actor::new("test", Role::Admin);
        let mut users = Vec::new();
        for role in [Role::Viewer, Role::Operator, Role::Admin] {
            let name = format!("{}-user", role.as_str());
            fleetup_server::ops::access::create_user(&store, &actor, &name, "correct horse battery", role)
                .await
                .unwrap();
            users.push((role, store.user_by_name(&name).await.unwrap().unwrap().id));
        }
        Self { store, users }
    }

    /// A new session of the user with `role`: (cookie header, CSRF token).
    pub(crate) async fn session(&self, role: Role) -> (String, String) {
        let user = self.users.iter().find(|(r, _)| *r == role).unwrap().1.clone();
        let (secret, csrf) = (fleetup_server::ops::sessions::random_hex(), fleetup_server::ops::sessions::random_hex());
        let session = NewSession {
            id: fleetup_proto::id::new_id(),
            user_id: user,
            token_hash: fleetup_server::auth::hash_secret(&secret),
            csrf_token: csrf.clone(),
            expires_at: fleetup_server::model::now_ms() + 3_600_000,
        };
        let audit = NewAudit::new("test", "session.login", "user", "", json!({}));
        self.store.create_session(&session, &audit).await.unwrap();
        (format!("fleetup_session={secret}"), csrf)
    }
}

/// The objects the calls name.
struct World {
    package: String,
    rollout: String,
    job: String,
    fencing: u64,
    agent_id: String,
    agent_token: String,
}

/// The path of `rule` with its parameters filled: real objects for reads and agent routes,
/// objects that do not exist for an operator's change.
fn fill(rule: &Rule, w: &World) -> String {
    let real = rule.method == Method::GET || rule.access == Access::Agent;
    let segments: Vec<&str> = rule.path.split('/').collect();
    let mut out = Vec::new();
    for (i, seg) in segments.iter().enumerate() {
        if !seg.starts_with('{') {
            out.push((*seg).to_owned());
            continue;
        }
        let value = match (*seg, segments[i - 1]) {
            ("{id}", _) if !real => fleetup_proto::id::new_id(),
            ("{id}", "rollouts") => w.rollout.clone(),
            ("{id}", "jobs") => w.job.clone(),
            ("{id}", "agents") => w.agent_id.clone(),
            ("{id}", "packages") => w.package.clone(),
            ("{file}", "static") => "app.css".to_owned(),
            ("{action}", _) if rule.path.contains("/rollouts/") => "pause".to_owned(),
            ("{action}", _) => "retry".to_owned(),
            ("{panel}" | "{key}", _) => "warnings".to_owned(),
            ("{state}", "open") => "running".to_owned(),
            ("{wave}", _) => "1".to_owned(),
            ("{name}", "users") => "nobody".to_owned(),
            ("{id}", "webhooks") => fleetup_proto::id::new_id(),
            (other, _) => {
                panic!("the matrix cannot fill {other} in {} {}: teach `fill` about it", rule.method, rule.path)
            }
        };
        out.push(value);
    }
    out.join("/")
}

async fn every_route_answers_every_kind_of_caller_by_its_rule(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let table = fleetup_server::routes::table();
    for access in [
        Access::Public,
        Access::Agent,
        Access::Token(Role::Viewer),
        Access::Token(Role::Operator),
        Access::Token(Role::Admin),
        Access::Session(Role::Viewer),
        Access::Session(Role::Operator),
    ] {
        assert!(table.iter().any(|r| r.access == access), "no route of the table has the rule {access:?}");
    }
    // A package, an agent with a dispatched job of a started rollout (so it may download it).
    let package = app.upload_package().await;
    let agent = app.fleet("matrix", 1).await.remove(0);
    let rollout = app.rollout(json!({ "package_id": package, "targets": { "agents": [agent.id] } }), true).await;
    let job = agent.next_job().await;
    let users = Users::new(&app).await;
    let w = World {
        package,
        rollout,
        job: job.job_id.clone(),
        fencing: job.fencing_token,
        agent_id: agent.id.clone(),
        agent_token: agent.token.clone(),
    };
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(std::time::Duration::from_secs(30))
        .build()
        .unwrap();
    let mut failures = Vec::new();
    for rule in &table {
        let path = fill(rule, &w);
        for caller in CALLERS {
            let mut req = client.request(rule.method.clone(), format!("{}{path}", app.base));
            let mut cookies = Vec::new();
            match caller {
                Caller::Anonymous => {}
                Caller::Token(Role::Viewer) => req = req.bearer_auth(&app.viewer),
                Caller::Token(Role::Operator) => req = req.bearer_auth(&app.operator),
                Caller::Token(Role::Admin) => req = req.bearer_auth(&app.admin),
                Caller::Agent => req = req.bearer_auth(&w.agent_token),
                Caller::Session(role) => {
                    let (cookie, csrf) = users.session(role).await;
                    cookies.push(cookie);
                    req = req.header("x-csrf-token", csrf);
                }
            }
            req = match (rule.method.as_str(), rule.path.as_str()) {
                ("GET" | "DELETE", _) => req,
                // A real login: the form's own CSRF cookie and a right password (anything
                // less is refused by design; case 12).
                ("POST", "/login") => {
                    let form = client.get(format!("{}/login", app.base)).send().await.unwrap();
                    let login_cookie = form
                        .headers()
                        .get_all("set-cookie")
                        .iter()
                        .find_map(|v| v.to_str().unwrap().strip_prefix("fleetup_login="))
                        .map(|v| v.split(';').next().unwrap().to_owned())
                        .expect("the login form sets its cookie");
                    let html = form.text().await.unwrap();
                    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap();
                    cookies.push(format!("fleetup_login={login_cookie}"));
                    req.header("content-type", "application/x-www-form-urlencoded")
                        .body(format!("csrf={csrf}&username=viewer-user&password=correct+horse+battery&next=%2F"))
                }
                ("POST", p) if p.ends_with("/events") => req.json(&json!({ "fencing_token": w.fencing, "events": [] })),
                ("POST", p) if p.ends_with("/logs") => req.json(&json!({ "fencing_token": w.fencing, "lines": [] })),
                (_, p) if p.starts_with("/api/") => req.json(&json!({})),
                _ => req.header("content-type", "application/x-www-form-urlencoded").body(""),
            };
            if !cookies.is_empty() {
                req = req.header("cookie", cookies.join("; "));
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let location = resp.headers().get("location").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
            let to_login = status == 303 && location.starts_with("/login?next=");
            let got = match status {
                401 => Expect::Unauthenticated,
                _ if to_login => Expect::Unauthenticated,
                403 => Expect::Forbidden,
                _ => Expect::Allowed,
            };
            // (Only refusals are read: a page's live stream never ends.)
            let body = if matches!(status, 401 | 403 | 404) { resp.text().await.unwrap() } else { String::new() };
            // A 404 of the fallback would mean the path matched no route at all.
            let unrouted = status == 404 && body.contains("no route");
            let silent = matches!(status, 401 | 403) && !body.contains(' ');
            let want = expected(rule.access, caller);
            if got != want || unrouted || silent {
                failures.push(format!(
                    "{} {path} ({:?}) as {caller:?}: want {want:?}, got {status} {location}{}{}",
                    rule.method,
                    rule.access,
                    if unrouted { " (no route matched)" } else { "" },
                    if silent { " (refused without a sentence)" } else { "" },
                ));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} calls broke their rule:\n{}",
        failures.len(),
        table.len() * CALLERS.len(),
        failures.join("\n")
    );
}

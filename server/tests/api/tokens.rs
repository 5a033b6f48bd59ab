//! Issue 16, item 4: the token lifecycle. API tokens are listed (never their secrets, with
//! their last use), created with an expiry and revoked; an expired or revoked token is
//! refused with its own problem code; a revoked enrollment token enrolls nobody; a disabled
//! user cannot log in and their open session stops working; a password reset makes the old
//! password fail and the new one work. Each change is in the audit log with its actor, and
//! only an admin may do any of it (API and command line).

use crate::helpers::{Backend, TestApp, spawn_app};
use crate::rbac::Users;
use fleetup_proto::agent_api::EnrollRequest;
use fleetup_server::model::Role;
use serde_json::{Value, json};

crate::both_backends!(
    a_revoked_token_is_refused_as_revoked_and_the_listing_shows_its_last_use,
    an_expired_token_is_refused_as_expired,
    a_revoked_enrollment_token_enrolls_nobody,
    a_disabled_user_cannot_log_in_and_their_session_ends,
    a_password_reset_makes_the_old_password_fail_and_the_new_one_work,
    only_an_admin_manages_tokens_and_users,
    the_command_line_lists_and_revokes_tokens_and_manages_users,
);

/// The audit records of `action`, newest first.
async fn audited(app: &TestApp, action: &str) -> Vec<Value> {
    app.get(&format!("/api/v1/audit?action={action}")).await["items"].as_array().unwrap().clone()
}

/// Creates an API token as the admin; returns (id, secret).
async fn new_token(app: &TestApp, name: &str, role: &str, expires_in_secs: Option<u64>) -> (String, String) {
    let mut body = json!({ "name": name, "role": role });
    if let Some(s) = expires_in_secs {
        body["expires_in_secs"] = json!(s);
    }
    let (s, v) = app.call("POST", "/api/v1/tokens", &app.admin, Some(body)).await;
    assert_eq!(s, 201, "{v}");
    (v["id"].as_str().unwrap().to_owned(), v["secret"].as_str().unwrap().to_owned())
}

/// The token of this id as `GET /tokens` lists it.
async fn listed(app: &TestApp, id: &str) -> Value {
    let (s, page) = app.call("GET", "/api/v1/tokens?limit=5000", &app.admin, None).await;
    assert_eq!(s, 200, "{page}");
    page["items"].as_array().unwrap().iter().find(|t| t["id"] == id).cloned().unwrap_or_else(|| panic!("{id}: {page}"))
}

async fn a_revoked_token_is_refused_as_revoked_and_the_listing_shows_its_last_use(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let (id, secret) = new_token(&app, "ci", "operator", None).await;
    let fresh = listed(&app, &id).await;
    assert_eq!(fresh["name"], "ci");
    assert_eq!(fresh["role"], "operator");
    assert!(fresh["last_used_at"].is_null() && fresh["revoked_at"].is_null() && fresh["expires_at"].is_null());
    assert!(fresh.get("secret").is_none() && !fresh.to_string().contains(&secret), "the listing shows the secret");

    let (s, v) = app.call("GET", "/api/v1/rollouts", &secret, None).await;
    assert_eq!(s, 200, "{v}");
    let used = listed(&app, &id).await;
    assert!(used["last_used_at"].is_string(), "the first use is recorded: {used}");

    // Paged by cursor: four tokens (admin, operator, viewer, ci), one a page, newest first.
    let (mut seen, mut cursor) = (Vec::new(), String::new());
    loop {
        let path = format!(
            "/api/v1/tokens?limit=1{}",
            if cursor.is_empty() { String::new() } else { format!("&cursor={cursor}") }
        );
        let (s, page) = app.call("GET", &path, &app.admin, None).await;
        assert_eq!(s, 200, "{page}");
        seen.extend(page["items"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()));
        match page["next"].as_str() {
            Some(next) => next.clone_into(&mut cursor),
            None => break,
        }
    }
    assert_eq!(seen[0], "ci", "newest first: {seen:?}");
    seen.sort();
    assert_eq!(seen, ["admin", "ci", "operator", "viewer"], "each token once");

    let (s, v) = app.call("DELETE", &format!("/api/v1/tokens/{id}"), &app.admin, None).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = app.call("GET", "/api/v1/rollouts", &secret, None).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["code"], "token-revoked", "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("'ci' was revoked") && detail.contains("ask an admin"), "{detail}");
    assert!(listed(&app, &id).await["revoked_at"].is_string());
    let (s, v) = app.call("DELETE", &format!("/api/v1/tokens/{id}"), &app.admin, None).await;
    assert_eq!(s, 409, "a second revoke: {v}");

    let created = audited(&app, "api-token.create").await;
    assert!(created.iter().any(|e| e["object_id"] == id.as_str() && e["actor"] == "token:admin"), "{created:?}");
    let revoked = audited(&app, "api-token.revoke").await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["actor"], "token:admin");
    assert_eq!(revoked[0]["object_id"], id.as_str());
    assert_eq!(revoked[0]["detail"]["name"], "ci");
}

/// Moves a token's expiry into the past, as if its lifetime had gone by.
async fn age_token(app: &TestApp, backend: Backend, id: &str) {
    use sqlx::Connection as _;
    let sql = "update api_tokens set expires_at = $1 where id = $2";
    let past = fleetup_server::model::now_ms() - 1000;
    match backend {
        Backend::Sqlite => {
            let mut c = sqlx::SqliteConnection::connect(&app.db_url).await.unwrap();
            sqlx::query(sql).bind(past).bind(id).execute(&mut c).await.unwrap();
        }
        Backend::Postgres => {
            let mut c = sqlx::PgConnection::connect(&app.db_url).await.unwrap();
            sqlx::query(sql).bind(past).bind(id).execute(&mut c).await.unwrap();
        }
    }
}

async fn an_expired_token_is_refused_as_expired(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/tokens",
            &app.admin,
            Some(json!({ "name": "x", "role": "viewer", "expires_in_secs": 0 })),
        )
        .await;
    assert_eq!(s, 422, "a zero lifetime: {v}");
    let (id, secret) = new_token(&app, "nightly", "viewer", Some(3600)).await;
    let token = listed(&app, &id).await;
    let expires = chrono::DateTime::parse_from_rfc3339(token["expires_at"].as_str().unwrap()).unwrap();
    let left = expires.signed_duration_since(chrono::Utc::now()).num_seconds();
    assert!((3500..=3600).contains(&left), "expires in an hour: {token}");
    let (s, v) = app.call("GET", "/api/v1/agents", &secret, None).await;
    assert_eq!(s, 200, "before its expiry: {v}");

    age_token(&app, backend, &id).await;
    let (s, v) = app.call("GET", "/api/v1/agents", &secret, None).await;
    assert_eq!(s, 401, "{v}");
    assert_eq!(v["code"], "token-expired", "{v}");
    let detail = v["detail"].as_str().unwrap();
    assert!(detail.contains("'nightly' expired at") && detail.contains("ask an admin"), "{detail}");
}

/// Enrolls a host with an enrollment secret; returns (status, body).
async fn try_enroll(app: &TestApp, secret: &str, hostname: &str) -> (u16, Value) {
    let req = EnrollRequest {
        token: secret.into(),
        hostname: hostname.into(),
        labels: std::collections::BTreeMap::default(),
        facts: std::collections::BTreeMap::default(),
        version: "0.1.0".into(),
    };
    let res = app.client.post(format!("{}/api/v1/agent/enroll", app.base)).json(&req).send().await.unwrap();
    let status = res.status().as_u16();
    (status, res.json().await.unwrap_or(Value::Null))
}

async fn a_revoked_enrollment_token_enrolls_nobody(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let (s, created) =
        app.call("POST", "/api/v1/enrollment-tokens", &app.admin, Some(json!({ "name": "rack-4" }))).await;
    assert_eq!(s, 201, "{created}");
    let (id, secret) = (created["id"].as_str().unwrap(), created["secret"].as_str().unwrap());
    assert!(created["revoked_at"].is_null());
    let first = app.enroll(secret, "web-1").await;

    let (s, v) = app.call("DELETE", &format!("/api/v1/enrollment-tokens/{id}"), &app.admin, None).await;
    assert_eq!(s, 204, "{v}");
    let (s, v) = try_enroll(&app, secret, "web-2").await;
    assert_eq!(s, 401, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("revoked"), "{v}");
    let (_, tokens) = app.call("GET", "/api/v1/enrollment-tokens", &app.admin, None).await;
    let listed = tokens.as_array().unwrap().iter().find(|t| t["id"] == id).unwrap();
    assert!(listed["revoked_at"].is_string(), "{listed}");
    assert_eq!(listed["uses"], 1);
    // The agent enrolled before keeps working; nobody enrolled after.
    assert!(first.poll(0).await.is_none());
    let agents = app.get("/api/v1/agents").await["items"].as_array().unwrap().len();
    assert_eq!(agents, 1);
    let (s, _) = app.call("DELETE", &format!("/api/v1/enrollment-tokens/{id}"), &app.admin, None).await;
    assert_eq!(s, 409, "a second revoke");

    let revoked = audited(&app, "enrollment-token.revoke").await;
    assert_eq!(revoked.len(), 1, "{revoked:?}");
    assert_eq!(revoked[0]["actor"], "token:admin");
    assert_eq!(revoked[0]["object_id"], id);
}

/// A browser without a cookie jar (redirects not followed).
fn browser() -> reqwest::Client {
    reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap()
}

/// Logs in with the form; the session cookie header if the login worked.
async fn login(app: &TestApp, username: &str, password: &str) -> Option<String> {
    let form = browser().get(format!("{}/login", app.base)).send().await.unwrap();
    let cookie = form
        .headers()
        .get_all("set-cookie")
        .iter()
        .find_map(|v| {
            v.to_str().unwrap().strip_prefix("fleetup_login=").map(|v| v.split(';').next().unwrap().to_owned())
        })
        .expect("the login form sets its cookie");
    let html = form.text().await.unwrap();
    let csrf = html.split("name=\"csrf\" value=\"").nth(1).unwrap().split('"').next().unwrap().to_owned();
    let enc = |s: &str| {
        use std::fmt::Write as _;
        s.bytes().fold(String::new(), |mut out, b| {
            let _ = write!(out, "%{b:02X}");
            out
        })
    };
    let body = format!("csrf={}&username={}&password={}&next=%2F", enc(&csrf), enc(username), enc(password));
    let resp = browser()
        .post(format!("{}/login", app.base))
        .header("cookie", format!("fleetup_login={cookie}"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    resp.headers()
        .get_all("set-cookie")
        .iter()
        .find_map(|v| {
            v.to_str().unwrap().strip_prefix("fleetup_session=").map(|v| v.split(';').next().unwrap().to_owned())
        })
        .filter(|v| !v.is_empty())
        .map(|v| format!("fleetup_session={v}"))
}

/// Whether a session cookie still opens the dashboard.
async fn session_works(app: &TestApp, cookie: &str) -> bool {
    browser().get(format!("{}/", app.base)).header("cookie", cookie).send().await.unwrap().status().as_u16() == 200
}

const PASSWORD: &str = "correct horse battery";

async fn a_disabled_user_cannot_log_in_and_their_session_ends(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let _users = Users::new(&app).await;
    let session = login(&app, "operator-user", PASSWORD).await.expect("the user logs in");
    assert!(session_works(&app, &session).await);

    let (s, user) = app.call("POST", "/api/v1/users/operator-user/disable", &app.admin, None).await;
    assert_eq!(s, 200, "{user}");
    assert_eq!(user["username"], "operator-user");
    assert!(user["disabled_at"].is_string(), "{user}");
    assert!(!session_works(&app, &session).await, "the open session of a disabled user still works");
    assert!(login(&app, "operator-user", PASSWORD).await.is_none(), "a disabled user logged in");
    let (s, page) = app.call("GET", "/api/v1/users", &app.admin, None).await;
    assert_eq!(s, 200, "{page}");
    let names: Vec<(&str, bool)> = page["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|u| (u["username"].as_str().unwrap(), u["disabled_at"].is_string()))
        .collect();
    assert_eq!(names, [("admin-user", false), ("operator-user", true), ("viewer-user", false)]);
    let (s, v) = app.call("POST", "/api/v1/users/operator-user/disable", &app.admin, None).await;
    assert_eq!(s, 409, "disabled twice: {v}");
    let (s, v) = app.call("POST", "/api/v1/users/nobody/disable", &app.admin, None).await;
    assert_eq!(s, 404, "{v}");

    let (s, user) = app.call("POST", "/api/v1/users/operator-user/enable", &app.admin, None).await;
    assert_eq!(s, 200, "{user}");
    assert!(user["disabled_at"].is_null());
    let again = login(&app, "operator-user", PASSWORD).await.expect("an enabled user logs in again");
    assert!(session_works(&app, &again).await);

    for action in ["user.disable", "user.enable"] {
        let records = audited(&app, action).await;
        assert_eq!(records.len(), 1, "{action}: {records:?}");
        assert_eq!(records[0]["actor"], "token:admin", "{action}");
        assert_eq!(records[0]["detail"]["username"], "operator-user", "{action}");
    }
}

async fn a_password_reset_makes_the_old_password_fail_and_the_new_one_work(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let _users = Users::new(&app).await;
    let session = login(&app, "viewer-user", PASSWORD).await.expect("the user logs in");
    let path = "/api/v1/users/viewer-user/password";
    let (s, v) = app.call("POST", path, &app.admin, Some(json!({ "password": "short" }))).await;
    assert_eq!(s, 422, "{v}");
    assert!(session_works(&app, &session).await, "a refused reset ended the session");

    let (s, v) = app.call("POST", path, &app.admin, Some(json!({ "password": "a brand new passphrase" }))).await;
    assert_eq!(s, 204, "{v}");
    assert!(!session_works(&app, &session).await, "the session opened with the old password still works");
    assert!(login(&app, "viewer-user", PASSWORD).await.is_none(), "the old password still works");
    let new = login(&app, "viewer-user", "a brand new passphrase").await.expect("the new password works");
    assert!(session_works(&app, &new).await);

    let records = audited(&app, "user.password-reset").await;
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["actor"], "token:admin");
    assert!(!records[0].to_string().contains("brand new"), "the password is in the audit log");
}

async fn only_an_admin_manages_tokens_and_users(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let _users = Users::new(&app).await;
    let (id, _) = new_token(&app, "kept", "viewer", None).await;
    let calls: [(&str, String, Option<Value>); 8] = [
        ("GET", "/api/v1/tokens".into(), None),
        ("POST", "/api/v1/tokens".into(), Some(json!({ "name": "mine", "role": "admin" }))),
        ("DELETE", format!("/api/v1/tokens/{id}"), None),
        ("DELETE", format!("/api/v1/enrollment-tokens/{id}"), None),
        ("GET", "/api/v1/users".into(), None),
        ("POST", "/api/v1/users/admin-user/disable".into(), None),
        ("POST", "/api/v1/users/admin-user/enable".into(), None),
        ("POST", "/api/v1/users/admin-user/password".into(), Some(json!({ "password": "taken over now" }))),
    ];
    for (who, token) in [("viewer", &app.viewer), ("operator", &app.operator)] {
        for (method, path, body) in &calls {
            let (s, v) = app.call(method, path, token, body.clone()).await;
            assert_eq!(s, 403, "{who}: {method} {path}: {v}");
            assert_eq!(v["code"], "forbidden", "{who}: {method} {path}: {v}");
        }
    }
    // Nothing changed.
    assert!(listed(&app, &id).await["revoked_at"].is_null());
    assert!(login(&app, "admin-user", PASSWORD).await.is_some());
    let names: Vec<String> = {
        let (_, page) = app.call("GET", "/api/v1/tokens", &app.admin, None).await;
        page["items"].as_array().unwrap().iter().map(|t| t["name"].as_str().unwrap().to_owned()).collect()
    };
    assert!(!names.contains(&"mine".to_owned()), "{names:?}");
}

async fn the_command_line_lists_and_revokes_tokens_and_manages_users(backend: Backend) {
    use fleetup_server::cli;
    let Some(app) = spawn_app(backend).await else { return };
    let _users = Users::new(&app).await;
    let created = cli::create_expiring_token(&app.db_url, Role::Operator, "deploy-bot", Some(86_400)).await.unwrap();
    let id = created.token.id.to_string();
    assert!(created.token.expires_at.is_some());
    let (s, v) = app.call("GET", "/api/v1/rollouts", &created.secret, None).await;
    assert_eq!(s, 200, "{v}");
    let table = cli::list_tokens(&app.db_url).await.unwrap();
    let line = table.lines().find(|l| l.contains("deploy-bot")).unwrap_or_else(|| panic!("{table}"));
    assert!(line.starts_with(&id) && line.contains("operator") && line.ends_with("live"), "{line}");
    assert!(!table.contains(&created.secret));

    cli::revoke_token(&app.db_url, &id).await.unwrap();
    let (s, v) = app.call("GET", "/api/v1/rollouts", &created.secret, None).await;
    assert_eq!((s, v["code"].as_str()), (401, Some("token-revoked")), "{v}");
    let table = cli::list_tokens(&app.db_url).await.unwrap();
    assert!(table.lines().any(|l| l.contains("deploy-bot") && l.ends_with("revoked")), "{table}");
    assert!(cli::revoke_token(&app.db_url, "no-such-token").await.is_err());

    let (_, enrollment) =
        app.call("POST", "/api/v1/enrollment-tokens", &app.admin, Some(json!({ "name": "rack-9" }))).await;
    let enrollment_id = enrollment["id"].as_str().unwrap();
    let table = cli::list_enrollment_tokens(&app.db_url).await.unwrap();
    assert!(table.lines().any(|l| l.starts_with(enrollment_id) && l.ends_with("live")), "{table}");
    cli::revoke_enrollment_token(&app.db_url, enrollment_id).await.unwrap();
    let (s, v) = try_enroll(&app, enrollment["secret"].as_str().unwrap(), "web-9").await;
    assert_eq!(s, 401, "{v}");
    let table = cli::list_enrollment_tokens(&app.db_url).await.unwrap();
    assert!(table.lines().any(|l| l.starts_with(enrollment_id) && l.ends_with("revoked")), "{table}");

    cli::set_user_disabled(&app.db_url, "admin-user", true).await.unwrap();
    assert!(login(&app, "admin-user", PASSWORD).await.is_none());
    let users = cli::list_users(&app.db_url).await.unwrap();
    assert!(users.lines().any(|l| l.starts_with("admin-user") && !l.ends_with('-')), "{users}");
    cli::set_user_disabled(&app.db_url, "admin-user", false).await.unwrap();
    cli::reset_password(&app.db_url, "admin-user", "another good passphrase").await.unwrap();
    assert!(login(&app, "admin-user", "another good passphrase").await.is_some());

    for action in [
        "api-token.create",
        "api-token.revoke",
        "enrollment-token.revoke",
        "user.disable",
        "user.enable",
        "user.password-reset",
    ] {
        let records = audited(&app, action).await;
        assert!(records.iter().any(|e| e["actor"] == "cli"), "{action} by the command line: {records:?}");
    }
}

//! The login's protections, each with the attack it stops (issue 18, item 7): concurrent
//! guesses counted before the hash, made-up names that cannot lock out another operator,
//! `next` kept on this site, foreign origins refused, the idle timeout, no cached pages,
//! and the audit records of logins, failures, lockouts and logouts.

use super::{FormExt as _, LoginForm, add_user, client, client_from, draft_rollout, login};
use crate::helpers::{Backend, TestApp, spawn_app, spawn_app_with};
use fleetup_server::model::Role;
use fleetup_server::store::NewAudit;
use serde_json::{Value, json};
use std::time::{Duration, Instant};

crate::both_backends!(
    forty_concurrent_wrong_passwords_are_checked_at_most_five_times,
    made_up_names_from_one_address_do_not_lock_out_a_user_elsewhere,
    next_after_login_stays_on_this_site,
    a_foreign_origin_is_refused,
    an_idle_session_ends,
    html_is_never_cached,
    logins_failures_lockouts_and_logouts_are_audited,
    the_audit_page_is_paged_filtered_and_readable,
);

const PASSWORD: &str = "correct horse battery";
const GUESS: &str = "Tr0ub4dor&3-guess";

/// Every audit record (the API's listing, newest first).
async fn audit(app: &TestApp) -> Vec<Value> {
    app.get("/api/v1/audit?limit=5000").await["items"].as_array().unwrap().clone()
}

fn count(records: &[Value], action: &str, actor: &str) -> usize {
    records.iter().filter(|r| r["action"] == action && r["actor"] == actor).count()
}

async fn forty_concurrent_wrong_passwords_are_checked_at_most_five_times(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    add_user(&app, "ada", Role::Admin).await;
    // 40 forms first, then 40 posts at once: the check and the count must be one step.
    let mut forms = Vec::new();
    for _ in 0..40 {
        forms.push(LoginForm::open(&app, [127, 0, 0, 1]).await);
    }
    let app = std::sync::Arc::new(app);
    let mut posts = tokio::task::JoinSet::new();
    for form in forms {
        let app = app.clone();
        posts.spawn(async move { form.submit(&app, "ada", GUESS, "/").await.status().as_u16() });
    }
    let statuses = posts.join_all().await;
    let checked = statuses.iter().filter(|s| **s == 401).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!((1..=5).contains(&checked), "at most 5 passwords checked: {statuses:?}");
    assert_eq!(checked + refused, 40, "the rest refused before the hash: {statuses:?}");
    // The audit log agrees: one failure record per checked password, never the password.
    let records = audit(&app).await;
    assert_eq!(count(&records, "session.login-failed", "user:ada"), checked);
    assert!(!serde_json::to_string(&records).unwrap().contains(GUESS), "no password in the audit log");
}

async fn made_up_names_from_one_address_do_not_lock_out_a_user_elsewhere(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    add_user(&app, "ada", Role::Admin).await;
    let mut statuses = Vec::new();
    for i in 0..100 {
        let form = LoginForm::open(&app, [127, 0, 0, 1]).await;
        statuses.push(form.submit(&app, &format!("made-up-{i}"), GUESS, "/").await.status().as_u16());
    }
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(checked, 20, "one address gets 20 failures in the window: {statuses:?}");
    assert!(statuses[20..].iter().all(|s| *s == 429), "{statuses:?}");
    // The real user at another address logs in at once, with the right password.
    let elsewhere = LoginForm::open(&app, [127, 0, 0, 2]).await;
    let r = elsewhere.submit(&app, "ada", PASSWORD, "/").await;
    assert_eq!(r.status().as_u16(), 303, "ada is not locked out: {}", r.text().await.unwrap());
    // The spraying address itself is limited, for every name.
    let here = LoginForm::open(&app, [127, 0, 0, 1]).await;
    assert_eq!(here.submit(&app, "ada", PASSWORD, "/").await.status().as_u16(), 429);
    // Unknown names are audited as anonymous with the name tried; the lockout once.
    let records = audit(&app).await;
    assert_eq!(count(&records, "session.login-failed", "anonymous"), 20);
    assert!(records.iter().any(|r| r["detail"]["username"] == "made-up-7"), "the attempted name is recorded");
    assert_eq!(count(&records, "session.lockout", "anonymous"), 1);
}

async fn next_after_login_stays_on_this_site(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    add_user(&app, "ada", Role::Admin).await;
    let cases = [
        ("/rollouts/new", "/rollouts/new"),
        ("/audit?actor=user%3Aada", "/audit?actor=user%3Aada"),
        ("/\t/evil.example", "/"),
        ("/\n/evil.example", "/"),
        ("//evil.example", "/"),
        ("/\\evil.example", "/"),
        ("https://evil.example/", "/"),
        ("javascript:alert(1)", "/"),
        ("/x//evil.example", "/"),
    ];
    for (next, expected) in cases {
        let r = LoginForm::open(&app, [127, 0, 0, 1]).await.submit(&app, "ada", PASSWORD, next).await;
        assert_eq!(r.status().as_u16(), 303, "{next:?}");
        assert_eq!(r.headers()["location"], expected, "next={next:?}");
    }
    // The login page itself never carries a foreign `next` into its form either.
    let page = client().get(format!("{}/login?next=%2F%09%2Fevil.example", app.base)).send().await.unwrap();
    let html = page.text().await.unwrap();
    assert!(html.contains("name=\"next\" value=\"/\""), "{html}");
}

async fn a_foreign_origin_is_refused(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    add_user(&app, "ada", Role::Admin).await;
    let ours = app.base.clone();
    // The login form posted from another site: refused, with a sentence, before the password check.
    let form = LoginForm::open(&app, [127, 0, 0, 1]).await;
    let r = form.request(&app, "ada", PASSWORD, "/").header("origin", "http://evil.example").send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403);
    assert!(r.headers().get("set-cookie").is_none_or(|c| !c.to_str().unwrap().starts_with("fleetup_session")));
    assert!(r.text().await.unwrap().contains("sent from another site (http://evil.example)"));
    // A state change with a valid session and CSRF token, but from another site: refused.
    let (cookie, csrf, _) = login(&app, "ada").await;
    let id = draft_rollout(&app).await;
    let start = format!("{}/rollouts/{id}/action/start", app.base);
    let post = |header: &'static str, value: String| {
        client().post(&start).header("cookie", &cookie).header(header, value).form_body(&[("csrf", csrf.as_str())])
    };
    assert_eq!(post("origin", "http://evil.example".into()).send().await.unwrap().status().as_u16(), 403);
    assert_eq!(post("origin", "null".into()).send().await.unwrap().status().as_u16(), 403);
    let r = post("referer", "http://evil.example/page".into()).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 403, "without Origin, the Referer decides");
    let port = ours.rsplit(':').next().unwrap();
    let other_port = post("origin", format!("http://127.0.0.1:{}", port.parse::<u32>().unwrap() + 1));
    assert_eq!(other_port.send().await.unwrap().status().as_u16(), 403, "another port is another origin");
    assert_eq!(app.get(&format!("/api/v1/rollouts/{id}")).await["state"], "draft");
    // From the dashboard's own origin it works.
    assert_eq!(post("origin", ours).send().await.unwrap().status().as_u16(), 303);
    assert_eq!(app.get(&format!("/api/v1/rollouts/{id}")).await["state"], "running");
}

async fn an_idle_session_ends(backend: Backend) {
    // 1.2 s of idleness ends a session (`--session-idle-mins 0.02`).
    let Some(app) = spawn_app_with(backend, |c| c.session_idle = Duration::from_millis(1200)).await else { return };
    add_user(&app, "ada", Role::Admin).await;
    let started = Instant::now();
    let (cookie, _, _) = login(&app, "ada").await;
    // Background refreshes (htmx polling) are checked but do not count as activity.
    let poll = || {
        client()
            .get(format!("{}/rollouts/rows", app.base))
            .header("cookie", &cookie)
            .header("hx-request", "true")
            .send()
    };
    let deadline = started + Duration::from_secs(30);
    loop {
        let r = poll().await.unwrap();
        if r.headers().contains_key("hx-redirect") {
            assert!(r.headers()["hx-redirect"].to_str().unwrap().starts_with("/login?next="));
            break;
        }
        assert_eq!(r.status().as_u16(), 200);
        assert!(Instant::now() < deadline, "the idle session never ended");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(started.elapsed() >= Duration::from_secs(1), "not before the idle timeout");
    // A page load now goes to the login form: the session is over, not just one request.
    let page = client().get(format!("{}/rollouts", app.base)).header("cookie", &cookie).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 303);
    assert!(page.headers()["location"].to_str().unwrap().starts_with("/login?next=/rollouts"));
}

async fn html_is_never_cached(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    add_user(&app, "ada", Role::Admin).await;
    let (cookie, _, _) = login(&app, "ada").await;
    for path in ["/", "/rollouts/new", "/agents", "/audit", "/rollouts/rows"] {
        let r = client().get(format!("{}{path}", app.base)).header("cookie", &cookie).send().await.unwrap();
        assert_eq!(r.status().as_u16(), 200, "{path}");
        assert_eq!(r.headers()["cache-control"], "no-store", "{path}");
    }
    let login_page = client().get(format!("{}/login", app.base)).send().await.unwrap();
    assert_eq!(login_page.headers()["cache-control"], "no-store");
    let html = client().get(format!("{}/", app.base)).header("cookie", &cookie).send().await.unwrap();
    let css = super::attr(&html.text().await.unwrap(), "rel=\"stylesheet\" href=\"");
    let asset = client().get(format!("{}{css}", app.base)).send().await.unwrap();
    assert_ne!(asset.headers()["cache-control"], "no-store", "static files keep their long cache");
}

async fn logins_failures_lockouts_and_logouts_are_audited(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    add_user(&app, "ada", Role::Admin).await;
    let form = LoginForm::open(&app, [127, 0, 0, 1]).await;
    for _ in 0..5 {
        assert_eq!(form.submit(&app, "ada", GUESS, "/").await.status().as_u16(), 401);
    }
    assert_eq!(form.submit(&app, "nobody", GUESS, "/").await.status().as_u16(), 401);
    let (cookie, csrf, _) = login_from_elsewhere(&app).await;
    let r = client_from([127, 0, 0, 2])
        .post(format!("{}/logout", app.base))
        .header("cookie", &cookie)
        .form_body(&[("csrf", csrf.as_str())])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 303);
    let records = audit(&app).await;
    assert_eq!(count(&records, "session.login-failed", "user:ada"), 5);
    assert_eq!(count(&records, "session.lockout", "user:ada"), 1);
    assert_eq!(count(&records, "session.login", "user:ada"), 1);
    assert_eq!(count(&records, "session.logout", "user:ada"), 1);
    let anonymous = records.iter().find(|r| r["actor"] == "anonymous").expect("the unknown name's failure");
    assert_eq!(anonymous["detail"]["username"], "nobody");
    assert_eq!(anonymous["detail"]["address"], "127.0.0.1");
    let login = records.iter().find(|r| r["action"] == "session.login").unwrap();
    assert_eq!(login["detail"]["address"], "127.0.0.2");
    let text = serde_json::to_string(&records).unwrap();
    assert!(!text.contains(GUESS) && !text.contains(PASSWORD), "no password in the audit log");
}

/// Logs ada in from 127.0.0.2; returns (session cookie, CSRF token, Set-Cookie lines).
async fn login_from_elsewhere(app: &TestApp) -> (String, String, Vec<String>) {
    let r = LoginForm::open(app, [127, 0, 0, 2]).await.submit(app, "ada", PASSWORD, "/").await;
    assert_eq!(r.status().as_u16(), 303);
    let lines = super::set_cookies(&r);
    let cookie = format!("fleetup_session={}", super::cookie_value(&lines, "fleetup_session").unwrap());
    let home = client_from([127, 0, 0, 2]).get(format!("{}/", app.base)).header("cookie", &cookie).send().await;
    let csrf = super::attr(&home.unwrap().text().await.unwrap(), "data-csrf=\"");
    (cookie, csrf, lines)
}

async fn the_audit_page_is_paged_filtered_and_readable(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    add_user(&app, "ada", Role::Admin).await;
    let (cookie, _, _) = login(&app, "ada").await;
    let id = draft_rollout(&app).await;
    app.post(&format!("/api/v1/rollouts/{id}/start"), json!({})).await;
    let store = fleetup_server::store::connect(&app.db_url).await.unwrap();
    for i in 0..60 {
        let detail = json!({ "name": format!("bulk {i}"), "labels": { "env": "prod" } });
        store
            .record_audit(&NewAudit::new("token:bulk", "api-token.create", "api-token", &format!("t{i:02}"), detail))
            .await
            .unwrap();
    }
    let page = |query: String| {
        let cookie = cookie.clone();
        let url = format!("{}/audit{query}", app.base);
        async move {
            let r = client().get(url).header("cookie", cookie).send().await.unwrap();
            assert_eq!(r.status().as_u16(), 200);
            r.text().await.unwrap()
        }
    };
    // Newest first, 50 a page, a summary instead of JSON, and a link to the next page.
    let first = page(String::new()).await;
    assert_eq!(first.matches("token:bulk</a>").count(), 50, "one page of 50");
    assert!(first.contains("labels: env=prod · name: bulk 59</td>"), "a readable summary");
    assert!(!first.contains("{&quot;") && !first.contains("\"name\":"), "no raw JSON (only the htmx header is JSON)");
    let older = first.split("\" id=\"audit-older\"").next().unwrap().rsplit("href=\"").next().unwrap();
    let href = older.replace("&#38;", "&").replace("&amp;", "&");
    let second = page(href.trim_start_matches("/audit").to_owned()).await;
    assert!(second.contains("name: bulk 9</td>") && !second.contains("name: bulk 10</td>"), "the next 50, no repeats");
    assert!(second.contains(&format!("href=\"/rollouts/{id}\"")), "the rollout's record links to its page");
    // Filters: by actor, by action, by object.
    let by_actor = page("?actor=user%3Aada".into()).await;
    assert!(!by_actor.contains("token:bulk") && by_actor.contains("session.login"), "{by_actor}");
    let by_object = page(format!("?object={id}")).await;
    assert!(by_object.contains("rollout.start") && !by_object.contains("api-token.create"));
    let by_action = page("?action=rollout.start".into()).await;
    assert_eq!(by_action.matches("<code>rollout.start</code>").count(), 1);
}

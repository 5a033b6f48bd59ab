//! Issue 16, item 5: webhooks and the event stream. A loopback receiver that fails its
//! first deliveries gets the event after retries, signed (verified here with the secret,
//! independently of the server's code) and timestamped; the delivery log over the API shows
//! the failed attempts; an endpoint gets only the types it subscribed to. The SSE stream
//! is read with a bearer token, left, and resumed with `Last-Event-ID`: exactly the events
//! missed come, as the whole log has them. Private addresses are refused without
//! `--webhook-allow-private`. The dashboard's page lists endpoints and their deliveries.

use crate::helpers::{Backend, TestApp, final_ev, spawn_app, spawn_app_with, warning_ev};
use crate::rbac::Users;
use fleetup_proto::InstallOutcome;
use fleetup_server::model::Role;
use hmac::{KeyInit as _, Mac as _};
use serde_json::{Value, json};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

crate::both_backends!(
    a_webhook_is_delivered_after_failures_signed_and_logged,
    the_event_stream_resumes_with_last_event_id,
    private_webhook_urls_are_refused_without_the_flag,
    the_dashboard_lists_webhooks_and_their_deliveries,
    old_events_and_settled_deliveries_are_pruned,
    each_kind_of_change_is_an_event_of_its_job,
);

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: axum::http::HeaderMap,
    body: Vec<u8>,
    answered: u16,
}

/// A loopback webhook receiver that answers 500 to its first `failures` requests, then 200.
struct Receiver {
    url: String,
    got: Arc<Mutex<Vec<Received>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(failures: usize) -> Self {
        let got: Arc<Mutex<Vec<Received>>> = Arc::default();
        let seen = got.clone();
        let handler = move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
            let seen = seen.clone();
            async move {
                let mut all = seen.lock().unwrap();
                let answered = if all.len() < failures { 500 } else { 200 };
                all.push(Received { headers, body: body.to_vec(), answered });
                axum::http::StatusCode::from_u16(answered).unwrap()
            }
        };
        let router = axum::Router::new().route("/hook", axum::routing::post(handler));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        Self { url, got, _task: task }
    }

    fn requests(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

/// The signature a receiver expects: `v1=` hex HMAC-SHA256 of `"{timestamp}.{body}"`.
fn expected_signature(secret: &str, timestamp: &str, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

fn header<'a>(r: &'a Received, name: &str) -> &'a str {
    r.headers.get(name).unwrap_or_else(|| panic!("no {name} header")).to_str().unwrap()
}

async fn create_webhook(app: &TestApp, body: Value) -> (u16, Value) {
    app.call("POST", "/api/v1/webhooks", &app.operator, Some(body)).await
}

async fn a_webhook_is_delivered_after_failures_signed_and_logged(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.webhook_allow_private = true;
        c.webhook_retry_base_ms = 100;
    })
    .await
    else {
        return;
    };
    let failing = Receiver::start(2).await;
    let (s, hook) =
        create_webhook(&app, json!({ "url": failing.url, "events": ["job.rolled-back"], "description": "ci" })).await;
    assert_eq!(s, 201, "{hook}");
    let (id, secret) = (hook["id"].as_str().unwrap().to_owned(), hook["secret"].as_str().unwrap().to_owned());
    assert!(secret.starts_with("whsec_"), "{hook}");
    // The secret is shown once: never in a read.
    let shown = app.get(&format!("/api/v1/webhooks/{id}")).await;
    assert_eq!(shown["url"], failing.url.as_str());
    assert!(shown.get("secret").is_none(), "{shown}");
    assert!(!app.get("/api/v1/webhooks").await.to_string().contains(&secret));
    // Another endpoint, for every type: it sees the rollout start too.
    let all = Receiver::start(0).await;
    let (s, _) = create_webhook(&app, json!({ "url": all.url })).await;
    assert_eq!(s, 201);

    let (rollout, agents) = app.one_wave_of("hooks", 1).await;
    let job = agents[0].next_job().await;
    agents[0].finish(&job, InstallOutcome::RolledBack).await;

    let deadline = Instant::now() + Duration::from_secs(30);
    let log = loop {
        let page = app.get(&format!("/api/v1/webhooks/{id}/deliveries")).await;
        if page["items"].as_array().unwrap().iter().any(|d| d["state"] == "delivered") {
            break page;
        }
        assert!(Instant::now() < deadline, "not delivered in time: {page}; received {:?}", failing.requests());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };

    // The receiver: three requests of one delivery, 500, 500, then 200.
    let got = failing.requests();
    assert_eq!(got.iter().map(|r| r.answered).collect::<Vec<_>>(), vec![500, 500, 200], "{got:?}");
    let now = chrono::Utc::now().timestamp();
    for (i, r) in got.iter().enumerate() {
        assert_eq!(header(r, "fleetup-event"), "job.rolled-back");
        assert_eq!(header(r, "fleetup-attempt"), (i + 1).to_string());
        assert_eq!(header(r, "fleetup-delivery"), header(&got[0], "fleetup-delivery"), "one delivery, retried");
        assert_eq!(r.body, got[0].body, "the same event each time");
        let timestamp = header(r, "fleetup-timestamp");
        let sent: i64 = timestamp.parse().unwrap();
        assert!((now - sent).abs() < 300, "the timestamp is now (a receiver refuses old ones): {sent} vs {now}");
        assert_eq!(header(r, "fleetup-signature"), expected_signature(&secret, timestamp, &r.body), "attempt {i}");
        assert_ne!(header(r, "fleetup-signature"), expected_signature("whsec_wrong", timestamp, &r.body));
    }
    let event: Value = serde_json::from_slice(&got[2].body).unwrap();
    assert_eq!(event["type"], "job.rolled-back", "{event}");
    assert_eq!((event["object_type"].as_str(), event["object_id"].as_str()), (Some("job"), Some(job.job_id.as_str())));
    assert_eq!(event["data"]["rollout_id"], rollout.as_str(), "{event}");
    assert_eq!(header(&got[2], "fleetup-event-id"), event["id"].to_string());

    // The delivery log over the API: the failed attempts and the one that worked.
    let items = log["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "only the subscribed type is delivered: {log}");
    let d = &items[0];
    assert_eq!((d["event_type"].as_str(), d["attempt_count"].as_u64()), (Some("job.rolled-back"), Some(3)), "{d}");
    let statuses: Vec<u64> = d["attempts"].as_array().unwrap().iter().map(|a| a["status"].as_u64().unwrap()).collect();
    assert_eq!(statuses, vec![500, 500, 200], "{d}");
    assert!(d["attempts"][0]["error"].as_str().unwrap().contains("500"), "{d}");
    assert_eq!(d["last_status"], 200);
    assert_eq!(d["id"].as_str(), Some(header(&got[0], "fleetup-delivery")));

    // The endpoint for every type got the rollout's start and its wave, as well.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let types: Vec<String> = all.requests().iter().map(|r| header(r, "fleetup-event").to_owned()).collect();
        if ["rollout.state-changed", "wave.opened", "job.rolled-back"].iter().all(|t| types.iter().any(|s| s == t)) {
            break;
        }
        assert!(Instant::now() < deadline, "the unfiltered endpoint got only {types:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (s, _) = app.call("DELETE", &format!("/api/v1/webhooks/{id}"), &app.operator, None).await;
    assert_eq!(s, 204);
    let (s, _) = app.call("GET", &format!("/api/v1/webhooks/{id}/deliveries"), &app.viewer, None).await;
    assert_eq!(s, 404);
}

/// An SSE client over reqwest: reads `id:`/`event:`/`data:` frames.
struct Sse {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<axum::body::Bytes>> + Send>>,
    buffer: String,
}

impl Sse {
    async fn open(app: &TestApp, query: &str, last_event_id: Option<u64>) -> Self {
        let mut req = app.client.get(format!("{}/api/v1/events{query}", app.base)).bearer_auth(&app.viewer);
        if let Some(id) = last_event_id {
            req = req.header("last-event-id", id.to_string());
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status().as_u16(), 200);
        assert!(resp.headers()["content-type"].to_str().unwrap().starts_with("text/event-stream"));
        Self { body: Box::pin(resp.bytes_stream()), buffer: String::new() }
    }

    /// The next event (comments skipped), within 20 s.
    async fn next(&mut self) -> Value {
        use futures_util::StreamExt as _;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let frame: String = self.buffer.drain(..end + 2).collect();
                let (mut id, mut event, mut data) = (None, None, None);
                for line in frame.lines() {
                    if let Some(v) = line.strip_prefix("id:") {
                        id = Some(v.trim().parse::<u64>().unwrap());
                    } else if let Some(v) = line.strip_prefix("event:") {
                        event = Some(v.trim().to_owned());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        data = Some(serde_json::from_str::<Value>(v.trim()).unwrap());
                    }
                }
                let Some(data) = data else { continue };
                assert_eq!(Some(data["id"].as_u64().unwrap()), id, "id: is the event's id");
                assert_eq!(event.as_deref(), data["type"].as_str(), "event: is its type");
                return data;
            }
            let chunk = tokio::time::timeout_at(deadline, self.body.next())
                .await
                .expect("no event within 20 s")
                .expect("the stream ended")
                .unwrap();
            self.buffer.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Events until `done` says the last one read is the last wanted.
    async fn until(&mut self, done: impl Fn(&Value) -> bool) -> Vec<Value> {
        let mut out = Vec::new();
        loop {
            let e = self.next().await;
            let last = done(&e);
            out.push(e);
            if last {
                return out;
            }
        }
    }
}

fn state_changed_to(e: &Value, state: &str) -> bool {
    e["type"] == "rollout.state-changed" && e["data"]["state"] == state
}

async fn the_event_stream_resumes_with_last_event_id(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    // From the start of the log (`?after=0`): the rollout starts, its first wave opens.
    let mut first = Sse::open(&app, "?after=0", None).await;
    let (rollout, _agents) = app.one_wave_of("stream", 2).await;
    let seen = first.until(|e| e["type"] == "wave.opened").await;
    assert!(seen.iter().any(|e| state_changed_to(e, "running") && e["object_id"] == rollout.as_str()), "{seen:?}");
    let last = seen.last().unwrap()["id"].as_u64().unwrap();
    drop(first);

    // Missed while away: a pause and a resume.
    app.post(&format!("/api/v1/rollouts/{rollout}/pause"), json!({})).await;
    app.post(&format!("/api/v1/rollouts/{rollout}/resume"), json!({})).await;

    let mut resumed = Sse::open(&app, "", Some(last)).await;
    let missed = resumed.until(|e| state_changed_to(e, "running")).await;
    assert!(state_changed_to(&missed[0], "paused"), "the first event after {last} is the pause: {missed:?}");
    assert!(missed[0]["id"].as_u64().unwrap() > last);
    // Exactly the missed ones: what the whole log holds after `last`, no more, no less.
    let mut whole = Sse::open(&app, "?after=0", None).await;
    let end = missed.last().unwrap()["id"].as_u64().unwrap();
    let log: Vec<Value> = whole
        .until(|e| e["id"].as_u64().unwrap() >= end)
        .await
        .into_iter()
        .filter(|e| e["id"].as_u64().unwrap() > last)
        .collect();
    assert_eq!(missed, log);
    let ids: Vec<u64> = whole_ids(&missed);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids increase: {ids:?}");

    // Live, after the replay, with a type filter.
    let mut waves = Sse::open(&app, "?types=rollout.state-changed", Some(end)).await;
    app.post(&format!("/api/v1/rollouts/{rollout}/pause"), json!({})).await;
    let live = waves.next().await;
    assert!(state_changed_to(&live, "paused"), "{live}");
    // Bad input is a 400 that says what to send.
    let (s, v) = app.call("GET", "/api/v1/events?types=job.exploded", &app.viewer, None).await;
    assert_eq!(s, 400, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("job.failed"), "{v}");
}

fn whole_ids(events: &[Value]) -> Vec<u64> {
    events.iter().map(|e| e["id"].as_u64().unwrap()).collect()
}

async fn private_webhook_urls_are_refused_without_the_flag(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    for url in [
        "http://127.0.0.1:9/hook",
        "http://[::1]:9/hook",
        "http://10.0.0.7/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://192.168.1.1/",
        "http://[::ffff:127.0.0.1]/",
    ] {
        let (s, v) = create_webhook(&app, json!({ "url": url })).await;
        assert_eq!(s, 422, "{url}: {v}");
        assert!(v["detail"].as_str().unwrap().contains("--webhook-allow-private"), "{url}: {v}");
    }
    for (body, says) in [
        (json!({ "url": "ftp://1.1.1.1/" }), "http"),
        (json!({ "url": "not a url" }), "not a URL"),
        (json!({ "url": "https://1.1.1.1/", "events": ["job.exploded"] }), "job.failed"),
    ] {
        let (s, v) = create_webhook(&app, body.clone()).await;
        assert_eq!(s, 422, "{body}: {v}");
        assert!(v["detail"].as_str().unwrap().contains(says), "{body}: {v}");
    }
    let (s, v) = app.call("POST", "/api/v1/webhooks", &app.viewer, Some(json!({ "url": "https://1.1.1.1/" }))).await;
    assert_eq!(s, 403, "{v}");
    assert!(app.get("/api/v1/webhooks").await.as_array().unwrap().is_empty(), "nothing was created");
    // A public address passes (disabled: this test sends nothing off the machine).
    let (s, v) = create_webhook(&app, json!({ "url": "https://1.1.1.1/hook", "enabled": false })).await;
    assert_eq!(s, 201, "{v}");
    let audit = app.get("/api/v1/audit?action=webhook.create").await;
    assert_eq!(audit["items"][0]["object_id"], v["id"], "{audit}");
    assert!(!audit.to_string().contains(v["secret"].as_str().unwrap()), "the secret is not audited");
}

async fn the_dashboard_lists_webhooks_and_their_deliveries(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.webhook_allow_private = true;
        c.webhook_retry_base_ms = 60_000;
    })
    .await
    else {
        return;
    };
    // Nothing listens on this port: the delivery fails and waits for its retry.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/gone", closed.local_addr().unwrap());
    drop(closed);
    let (s, hook) =
        create_webhook(&app, json!({ "url": url, "events": ["wave.opened"], "description": "pager" })).await;
    assert_eq!(s, 201, "{hook}");
    let id = hook["id"].as_str().unwrap();
    app.one_wave_of("dash", 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let page = app.get(&format!("/api/v1/webhooks/{id}/deliveries")).await;
        if page["items"][0]["attempt_count"].as_u64() == Some(1) && page["items"][0]["last_error"].is_string() {
            assert_eq!(page["items"][0]["state"], "pending", "{page}");
            assert!(page["items"][0]["next_attempt_at"].is_string(), "{page}");
            break;
        }
        assert!(Instant::now() < deadline, "no failed attempt recorded: {page}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let users = Users::new(&app).await;
    let (cookie, _) = users.session(Role::Viewer).await;
    let resp =
        reqwest::Client::new().get(format!("{}/webhooks", app.base)).header("cookie", cookie).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let html = resp.text().await.unwrap();
    for want in [url.as_str(), "wave.opened", "pager", "retrying", "aria-current=\"page\">Webhooks"] {
        assert!(html.contains(want), "the page lacks {want}: {html}");
    }
    assert!(!html.contains(hook["secret"].as_str().unwrap()), "the secret is not on the page");
}

async fn old_events_and_settled_deliveries_are_pruned(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| c.webhook_allow_private = true).await else { return };
    let receiver = Receiver::start(0).await;
    let (s, hook) = create_webhook(&app, json!({ "url": receiver.url, "events": ["wave.opened"] })).await;
    assert_eq!(s, 201, "{hook}");
    let id = hook["id"].as_str().unwrap();
    app.one_wave_of("prune", 1).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.get(&format!("/api/v1/webhooks/{id}/deliveries")).await["items"][0]["state"] != "delivered" {
        assert!(Instant::now() < deadline, "not delivered in time");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = fleetup_server::store::connect(&app.db_url).await.unwrap();
    assert_eq!(store.events_after(0, &[], 100).await.unwrap().len(), 2, "the start and its wave");
    // Everything is older than an hour from now: the delivered delivery and the events the
    // fan-out has passed go.
    let (events, deliveries) = store.prune_events(fleetup_server::model::now_ms() + 3_600_000).await.unwrap();
    assert_eq!((events, deliveries), (2, 1));
    assert!(store.events_after(0, &[], 100).await.unwrap().is_empty());
    let page = app.get(&format!("/api/v1/webhooks/{id}/deliveries")).await;
    assert!(page["items"].as_array().unwrap().is_empty(), "{page}");
}

/// A warning nobody answers, a failure, a rollback, an agent that goes silent and one that
/// never collects its job: each is an event naming its job, in the stream.
async fn each_kind_of_change_is_an_event_of_its_job(backend: Backend) {
    let Some(app) = spawn_app_with(backend, |c| {
        c.lease_secs = 3;
        c.delivery_timeout_secs = 3;
    })
    .await
    else {
        return;
    };
    let mut stream =
        Sse::open(&app, "?after=0&types=decision.needed,job.failed,job.rolled-back,job.lost,job.undeliverable", None)
            .await;
    let (rollout, agents) = app.one_wave_of("kinds", 4).await;
    let mut jobs = Vec::new();
    for agent in &agents[..3] {
        jobs.push(agent.next_job().await);
    }
    let (s, v) = agents[0].report(&jobs[0].job_id, jobs[0].fencing_token, vec![warning_ev(1, "w", "go on?")]).await;
    assert_eq!(s, 200, "{v}");
    for (i, outcome) in [(1, InstallOutcome::Failed), (2, InstallOutcome::RolledBack)] {
        let (s, v) = agents[i].report(&jobs[i].job_id, jobs[i].fencing_token, vec![final_ev(1, outcome)]).await;
        assert_eq!(s, 200, "{v}");
    }
    let undelivered = app.get(&format!("/api/v1/rollouts/{rollout}/jobs")).await["jobs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|j| j["agent_id"] == agents[3].id.as_str())
        .unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let want: Vec<(String, String)> = [
        ("decision.needed", jobs[0].job_id.clone()),
        ("job.failed", jobs[1].job_id.clone()),
        ("job.rolled-back", jobs[2].job_id.clone()),
        // Waiting for an answer it never sends a report again: its lease runs out.
        ("job.lost", jobs[0].job_id.clone()),
        ("job.undeliverable", undelivered),
    ]
    .into_iter()
    .map(|(t, j)| (t.to_owned(), j))
    .collect();
    let mut seen: Vec<(String, String)> = Vec::new();
    while !want.iter().all(|w| seen.contains(w)) {
        let e = stream.next().await;
        assert_eq!(e["object_type"], "job", "{e}");
        assert!(e["data"]["rollout_id"].is_string() && e["data"]["agent_id"].is_string(), "{e}");
        if e["type"] == "decision.needed" {
            assert_eq!(e["data"]["message"], "go on?", "{e}");
        }
        seen.push((e["type"].as_str().unwrap().to_owned(), e["object_id"].as_str().unwrap().to_owned()));
    }
    seen.sort();
    let mut sorted = want.clone();
    sorted.sort();
    assert_eq!(seen, sorted, "each change once, nothing else of these types");
}

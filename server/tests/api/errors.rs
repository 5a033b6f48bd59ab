//! Refusals: the right 4xx, a JSON error body, and nothing changed.

use crate::helpers::{Backend, spawn_app};
use serde_json::json;

crate::both_backends!(bad_requests_change_nothing, every_mutation_is_audited, framework_refusals_are_problems_too);

/// An RFC 9457 problem document answering with `want`: its members, and the sentence.
fn assert_problem(s: u16, v: &serde_json::Value, want: u16) {
    assert_eq!(s, want, "{v}");
    let code = v["code"].as_str().unwrap_or_else(|| panic!("no code: {v}"));
    assert_eq!(v["type"].as_str(), Some(format!("urn:fleetup:problem:{code}").as_str()), "{v}");
    assert_eq!(v["status"], want, "{v}");
    assert!(!v["title"].as_str().unwrap().is_empty() && !v["detail"].as_str().unwrap().is_empty(), "{v}");
}

/// A raw answer that must be a problem document: its media type, then its members.
async fn problem_of(res: reqwest::Response, want: u16) -> serde_json::Value {
    let s = res.status().as_u16();
    let media = res.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned());
    let text = res.text().await.unwrap();
    assert_eq!(media.as_deref(), Some("application/problem+json"), "{s}: {text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{s} {e}: {text}"));
    assert_problem(s, &v, want);
    v
}

async fn bad_requests_change_nothing(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("x", 2).await;
    let id = app.rollout(json!({ "package_id": package, "targets": { "agents": [agents[0].id] } }), true).await;
    let job = agents[0].next_job().await;
    let audit_before = app.audit_len().await;
    let rollouts_before = app.get("/api/v1/rollouts").await["items"].as_array().unwrap().len();

    let check = assert_problem;
    // Malformed JSON.
    let res = app
        .client
        .post(format!("{}/api/v1/rollouts", app.base))
        .bearer_auth(&app.operator)
        .header("content-type", "application/json")
        .body("{\"name\": ")
        .send()
        .await
        .unwrap();
    let s = res.status().as_u16();
    check(s, &res.json().await.unwrap(), 400);
    // Missing field / unknown package / bad wave.
    let (s, v) = app.call("POST", "/api/v1/rollouts", &app.operator, Some(json!({ "name": "x" }))).await;
    check(s, &v, 400);
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/rollouts",
            &app.operator,
            Some(json!({ "name": "x", "package_id": "nope", "targets": { "labels": {} } })),
        )
        .await;
    check(s, &v, 422);
    let (s, v) = app
        .call(
            "POST",
            "/api/v1/rollouts",
            &app.operator,
            Some(json!({ "name": "x", "package_id": package, "targets": { "labels": {} }, "waves": ["lots"] })),
        )
        .await;
    check(s, &v, 422);
    // Unknown ids.
    let (s, v) = app.call("GET", "/api/v1/rollouts/nope", &app.viewer, None).await;
    check(s, &v, 404);
    let (s, v) = app.call("POST", "/api/v1/jobs/nope/cancel", &app.operator, Some(json!({}))).await;
    check(s, &v, 404);
    // Wrong role, no token, bad token.
    let (s, v) = app.call("POST", &format!("/api/v1/rollouts/{id}/pause"), &app.viewer, Some(json!({}))).await;
    check(s, &v, 403);
    let (s, v) = app.call("POST", "/api/v1/enrollment-tokens", &app.operator, Some(json!({}))).await;
    check(s, &v, 403);
    // The refusal names the role the route needs (admin here), not the method's default.
    assert!(v["detail"].as_str().unwrap().contains("needs the admin role"), "{v}");
    let (s, v) = app.call("GET", "/api/v1/rollouts", "wrong", None).await;
    check(s, &v, 401);
    let res = app.client.get(format!("{}/api/v1/rollouts", app.base)).send().await.unwrap();
    check(res.status().as_u16(), &res.json().await.unwrap(), 401);
    // A state that does not allow the action.
    let (s, v) = app.call("POST", &format!("/api/v1/rollouts/{id}/start"), &app.operator, Some(json!({}))).await;
    check(s, &v, 409);
    // Another agent's job and package.
    let (s, v) = agents[1]
        .report(
            &job.job_id,
            job.fencing_token,
            vec![crate::helpers::ev(1, fleetup_proto::PhaseId::CheckSystem, fleetup_proto::PhaseStatus::Running)],
        )
        .await;
    check(s, &v, 403);
    let res = app
        .client
        .get(format!("{}{}", app.base, job.package.download_path))
        .bearer_auth(&agents[1].token)
        .send()
        .await
        .unwrap();
    check(res.status().as_u16(), &res.json().await.unwrap(), 403);
    // A tampered package.
    let mut bytes = std::fs::read(&crate::helpers::fixture().package).unwrap();
    let n = bytes.len();
    bytes[n - 600] ^= 0xff;
    let res = app
        .client
        .post(format!("{}/api/v1/packages", app.base))
        .bearer_auth(&app.operator)
        .body(bytes)
        .send()
        .await
        .unwrap();
    let s = res.status().as_u16();
    let v: serde_json::Value = res.json().await.unwrap();
    check(s, &v, 422);
    assert!(v["detail"].as_str().unwrap().contains("package refused"), "{v}");

    // Nothing changed.
    assert_eq!(app.audit_len().await, audit_before);
    assert_eq!(app.get("/api/v1/rollouts").await["items"].as_array().unwrap().len(), rollouts_before);
    let j = app.get(&format!("/api/v1/jobs/{}", job.job_id)).await;
    assert_eq!(j["state"], "dispatched");
    assert_eq!(app.get(&format!("/api/v1/jobs/{}/events", job.job_id)).await, json!([]));
}

async fn every_mutation_is_audited(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let package = app.upload_package().await;
    let agents = app.fleet("y", 1).await;
    let (s, _) = app
        .call(
            "PATCH",
            &format!("/api/v1/agents/{}", agents[0].id),
            &app.operator,
            Some(json!({ "labels": { "group": "y", "zone": "a" } })),
        )
        .await;
    assert_eq!(s, 200);
    let id = app.rollout(json!({ "package_id": package, "targets": { "labels": { "zone": "a" } } }), true).await;
    app.post(&format!("/api/v1/rollouts/{id}/pause"), json!({})).await;
    app.post(&format!("/api/v1/rollouts/{id}/cancel"), json!({})).await;
    let (s, _) = app.call("DELETE", &format!("/api/v1/agents/{}", agents[0].id), &app.admin, None).await;
    assert_eq!(s, 204);
    let audit = app.get("/api/v1/audit?limit=1000").await["items"].clone();
    let actions: Vec<&str> = audit.as_array().unwrap().iter().map(|a| a["action"].as_str().unwrap()).collect();
    for want in [
        "api-token.create",
        "package.upload",
        "enrollment-token.create",
        "agent.enroll",
        "agent.labels",
        "rollout.create",
        "rollout.start",
        "rollout.pause",
        "rollout.cancel",
        "agent.revoke",
    ] {
        assert!(actions.contains(&want), "{want} missing from {actions:?}");
    }
    let entry = audit.as_array().unwrap().iter().find(|a| a["action"] == "rollout.pause").unwrap();
    assert_eq!(entry["actor"], "token:operator");
    assert_eq!(entry["object_id"], id.as_str());
    // The operations endpoints.
    let doc = app
        .client
        .get(format!("{}/api/v1/openapi.json", app.base))
        .send()
        .await
        .unwrap()
        .json::<serde_json::Value>()
        .await
        .unwrap();
    assert_eq!(doc["paths"]["/api/v1/rollouts/{id}/{action}"]["post"]["operationId"], "actOnRollout");
    assert_eq!(app.client.get(format!("{}/healthz", app.base)).send().await.unwrap().status().as_u16(), 200);
    let metrics = app.client.get(format!("{}/metrics", app.base)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("fleetup_"), "{metrics}");
}

/// The framework's own refusals (no route, a method the route lacks, a body over the limit)
/// and the API's range checks answer in the same problem shape, with a sentence that says
/// what was wrong; the scheme of `Authorization` is case-insensitive; a NUL in an id is an
/// id refused as malformed on both stores (400, before any query), not a 500.
async fn framework_refusals_are_problems_too(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let url = |p: &str| format!("{}{p}", app.base);
    let v =
        problem_of(app.client.get(url("/api/v1/nowhere")).bearer_auth(&app.viewer).send().await.unwrap(), 404).await;
    assert!(v["detail"].as_str().unwrap().contains("/api/v1/nowhere"), "{v}");
    let res = app.client.put(url("/api/v1/rollouts")).bearer_auth(&app.operator).send().await.unwrap();
    let allow = res.headers().get("allow").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    let v = problem_of(res, 405).await;
    assert!(allow.contains("GET") && allow.contains("POST"), "Allow: {allow}");
    assert!(v["detail"].as_str().unwrap().contains("PUT is not allowed"), "{v}");
    let (status, media, body) = oversized_post(&app.base, "/api/v1/rollouts", &app.operator, 10 << 20).await;
    assert_eq!((status, media.as_str()), (413, "application/problem+json"), "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_problem(status, &v, 413);
    assert_eq!(v["code"], "too-large", "{v}");
    for bad in ["0", "5001"] {
        let res = app.client.get(url(&format!("/api/v1/audit?limit={bad}"))).bearer_auth(&app.viewer).send().await;
        let v = problem_of(res.unwrap(), 400).await;
        assert!(v["detail"].as_str().unwrap().contains("1 to 5000"), "limit={bad}: {v}");
    }
    for scheme in ["bearer", "BEARER"] {
        let res = app
            .client
            .get(url("/api/v1/rollouts"))
            .header("authorization", format!("{scheme} {}", app.viewer))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status().as_u16(), 200, "scheme {scheme}");
    }
    for path in ["/api/v1/jobs/%00", "/api/v1/rollouts/r%00x/jobs"] {
        let v = problem_of(app.client.get(url(path)).bearer_auth(&app.viewer).send().await.unwrap(), 400).await;
        assert!(v["detail"].as_str().unwrap().contains("is not a valid"), "{path}: {v}");
    }
}

/// POSTs a JSON body of `len` bytes over a raw connection and reads the answer, whether or
/// not the server stops reading the body first (it answers 413 and closes as soon as the
/// body passes the limit: a client still writing gets a broken pipe, not the answer).
/// Returns the status, the media type and the body.
async fn oversized_post(base: &str, path: &str, token: &str, len: usize) -> (u16, String, String) {
    use std::io::{Read as _, Write as _};
    let addr = base.trim_start_matches("http://").to_owned();
    let (path, token) = (path.to_owned(), token.to_owned());
    tokio::task::spawn_blocking(move || {
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        stream.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\
             Content-Type: application/json\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
        );
        stream.write_all(head.as_bytes()).unwrap();
        let mut writer = stream.try_clone().unwrap();
        let feeder = std::thread::spawn(move || {
            let chunk = vec![b' '; 64 * 1024];
            let mut left = len;
            while left > 0 {
                let n = left.min(chunk.len());
                if writer.write_all(&chunk[..n]).is_err() {
                    return; // the server stopped reading: its answer is on the way
                }
                left -= n;
            }
        });
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let _ = feeder.join();
        let text = String::from_utf8_lossy(&answer).into_owned();
        let (head, body) = text.split_once("\r\n\r\n").unwrap_or_else(|| panic!("no HTTP answer: {text:?}"));
        let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        let media = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("content-type")))
            .map(|(_, v)| v.trim().to_owned())
            .unwrap_or_default();
        (status, media, body.to_owned())
    })
    .await
    .unwrap()
}

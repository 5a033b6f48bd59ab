//! The API's contract: the OpenAPI document is valid, and every answer the API suite gets
//! agrees with it.
//!
//! [`observer`] is set on every server the suite starts (`helpers::spawn_app`): it sees each
//! answer of the HTTP API (`fleetup_server::api::observe`) and checks it against the
//! document: the operation must exist (or the answer is the framework's 404/405 problem),
//! the status must be declared for it, the content type must be the declared one, and the
//! body must match the declared schema (JSON Schema 2020-12, the dialect of OpenAPI 3.1).
//! An answer that disagrees is turned into a 500 `contract-violation` naming why, so the
//! test that got it fails whatever it asserts. Every test of this binary runs on SQLite and
//! on Postgres, so the contract holds over the whole suite on both stores.

use crate::helpers::{Backend, spawn_app};
use fleetup_server::api::observe::{Observer, Seen};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// The document as JSON, made once per test process.
fn document() -> &'static Value {
    static DOC: OnceLock<Value> = OnceLock::new();
    DOC.get_or_init(|| serde_json::to_value(fleetup_server::api::openapi::document()).unwrap())
}

/// A validator of `schema` whose `$ref`s resolve in the document's components.
fn compile(schema: &Value) -> Result<jsonschema::Validator, String> {
    let mut root = schema.clone();
    if let Value::Object(map) = &mut root {
        map.insert("components".into(), document()["components"].clone());
    } else {
        root = json!({ "allOf": [schema], "components": document()["components"] });
    }
    jsonschema::draft202012::new(&root).map_err(|e| format!("the declared schema does not compile: {e}"))
}

/// The check of one answer against the document (see the module's comment).
pub fn check(seen: &Seen<'_>) -> Result<(), String> {
    static CACHE: OnceLock<Mutex<HashMap<String, Arc<jsonschema::Validator>>>> = OnceLock::new();
    let api = seen.path.starts_with("/api/") || seen.path == "/healthz" || seen.path == "/metrics";
    if !api || seen.method == "HEAD" {
        return Ok(());
    }
    let doc = document();
    let operation = seen.route.and_then(|route| doc["paths"][route].get(seen.method.to_ascii_lowercase()));
    let Some(operation) = operation else {
        // No such operation: only the router's refusal, as a problem, may answer.
        if !matches!(seen.status, 404 | 405) {
            return Err(format!("no operation {} {:?} is declared, yet it answered", seen.method, seen.route));
        }
        return validate_body(seen, &json!({ "$ref": "#/components/schemas/Problem" }), "problem");
    };
    let status = seen.status.to_string();
    let Some(response) = operation["responses"].get(&status) else {
        return Err(format!("status {status} is not declared for this operation"));
    };
    let Some(content) = response.get("content").and_then(Value::as_object) else {
        return if seen.body.is_empty() {
            Ok(())
        } else {
            Err(format!("status {status} is declared without a body, yet {} bytes came", seen.body.len()))
        };
    };
    let Some(media) = content.get(seen.content_type) else {
        let declared: Vec<&String> = content.keys().collect();
        return Err(format!("content type {:?} is not among the declared {declared:?}", seen.content_type));
    };
    let Some(schema) = media.get("schema") else { return Ok(()) };
    if !seen.content_type.ends_with("json") {
        return Ok(());
    }
    let key = format!("{} {:?} {status} {}", seen.method, seen.route, seen.content_type);
    let validator = {
        let mut cache = CACHE.get_or_init(Default::default).lock().unwrap();
        if let Some(v) = cache.get(&key) {
            v.clone()
        } else {
            let v = Arc::new(compile(schema)?);
            cache.insert(key, v.clone());
            v
        }
    };
    let body: Value = serde_json::from_slice(seen.body).map_err(|e| format!("the body is not JSON: {e}"))?;
    let errors: Vec<String> =
        validator.iter_errors(&body).take(5).map(|e| format!("{} at {}", e, e.instance_path())).collect();
    if errors.is_empty() { Ok(()) } else { Err(format!("the body disagrees with the schema: {}", errors.join("; "))) }
}

fn validate_body(seen: &Seen<'_>, schema: &Value, what: &str) -> Result<(), String> {
    let body: Value = serde_json::from_slice(seen.body).map_err(|e| format!("the {what} body is not JSON: {e}"))?;
    let validator = compile(schema)?;
    let errors: Vec<String> = validator.iter_errors(&body).take(5).map(|e| e.to_string()).collect();
    if errors.is_empty() { Ok(()) } else { Err(format!("the {what} disagrees with the schema: {}", errors.join("; "))) }
}

/// The observer every server of the suite gets.
pub fn observer() -> Observer {
    Observer(Arc::new(check))
}

/// Every `$ref` of `v`.
fn refs<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("$ref", Value::String(r)) => out.push(r),
                    _ => refs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

/// The document is OpenAPI 3.1, every reference in it resolves,
/// every schema is a valid JSON Schema, every operation requiring credentials names a
/// declared security scheme, and every error answer is a problem document.
#[test]
fn the_document_is_valid_openapi_3_1() {
    let doc = document();
    assert_eq!(doc["openapi"], "3.1.0");
    let mut all = Vec::new();
    refs(doc, &mut all);
    assert!(all.len() > 50, "the document references its schemas ({} refs)", all.len());
    for r in all {
        let name = r.strip_prefix("#/components/schemas/").unwrap_or_else(|| panic!("{r} is not a component"));
        assert!(doc["components"]["schemas"].get(name).is_some(), "{r} does not resolve");
    }
    for (name, schema) in doc["components"]["schemas"].as_object().unwrap() {
        let mut with_dialect = schema.clone();
        with_dialect["$schema"] = json!("https://json-schema.org/draft/2020-12/schema");
        assert!(jsonschema::meta::is_valid(&with_dialect), "schema {name} is not a valid JSON Schema");
        compile(schema).unwrap_or_else(|e| panic!("schema {name}: {e}"));
    }
    let schemes = doc["components"]["securitySchemes"].as_object().unwrap();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            for requirement in op["security"].as_array().into_iter().flatten() {
                for scheme in requirement.as_object().unwrap().keys() {
                    assert!(schemes.contains_key(scheme), "{method} {path}: unknown scheme {scheme}");
                }
            }
            for (status, response) in op["responses"].as_object().unwrap() {
                if status.starts_with('4') || status.starts_with('5') {
                    let problem = &response["content"]["application/problem+json"]["schema"]["$ref"];
                    assert_eq!(problem, "#/components/schemas/Problem", "{method} {path} {status}");
                }
            }
        }
    }
}

/// The check refuses what disagrees: a body of the wrong shape, an undeclared status, an
/// undeclared content type, an answer from an undeclared operation.
#[test]
fn an_answer_that_disagrees_with_the_document_is_refused() {
    let agent = json!({ "id": "a1", "hostname": 7 }).to_string();
    let seen = |route: Option<&'static str>, path: &'static str, status: u16, ct: &'static str, body: &'static [u8]| {
        check(&Seen { method: "GET", route, path, status, content_type: ct, body })
    };
    let leaked: &'static [u8] = Box::leak(agent.into_bytes().into_boxed_slice());
    let e = seen(Some("/api/v1/agents/{id}"), "/api/v1/agents/a1", 200, "application/json", leaked).unwrap_err();
    assert!(e.contains("disagrees"), "{e}");
    let e = seen(Some("/api/v1/agents/{id}"), "/api/v1/agents/a1", 418, "application/json", b"{}").unwrap_err();
    assert!(e.contains("418 is not declared"), "{e}");
    let e = seen(Some("/api/v1/agents/{id}"), "/api/v1/agents/a1", 200, "text/plain", b"hi").unwrap_err();
    assert!(e.contains("content type"), "{e}");
    let e = seen(Some("/api/v1/nowhere"), "/api/v1/nowhere", 200, "application/json", b"{}").unwrap_err();
    assert!(e.contains("no operation"), "{e}");
    let problem = br#"{"type":"urn:fleetup:problem:not-found","title":"Not Found","status":404,"detail":"no","code":"not-found"}"#;
    seen(Some("/api/v1/agents/{id}"), "/api/v1/agents/a1", 404, "application/problem+json", problem).unwrap();
}

/// One operation of the document, found by its operationId: (method, path template).
fn operation(id: &str) -> (reqwest::Method, String) {
    for (path, item) in document()["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            if op["operationId"] == id {
                return (method.to_uppercase().parse().unwrap(), path.clone());
            }
        }
    }
    panic!("the document has no operation {id}");
}

/// A client that knows nothing of the API but the document: it calls operations by
/// operationId, fills the path's parameters and reads the answers as JSON (which the
/// observer has checked against the declared schemas before they arrive).
struct SchemaClient<'a> {
    app: &'a crate::helpers::TestApp,
}

impl SchemaClient<'_> {
    async fn call(&self, id: &str, params: &[(&str, &str)], token: &str, body: Option<Value>) -> (u16, Value) {
        let (method, mut path) = operation(id);
        for (name, value) in params {
            path = path.replace(&format!("{{{name}}}"), value);
        }
        assert!(!path.contains('{'), "{id}: a path parameter is missing: {path}");
        let mut req = self.app.client.request(method, format!("{}{path}", self.app.base)).bearer_auth(token);
        if let Some(body) = body {
            req = req.json(&body);
        }
        let res = req.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        assert_ne!(status, 500, "{id}: {text}");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }
}

/// A rollout driven from end to end by operationIds only, every answer checked against the
/// document on the way.
async fn a_schema_driven_client_round_trips_a_rollout(backend: Backend) {
    let Some(app) = spawn_app(backend).await else { return };
    let api = SchemaClient { app: &app };
    let package = app.upload_package().await;
    let (s, token) =
        api.call("createEnrollmentToken", &[], &app.admin, Some(json!({ "labels": { "group": "schema" } }))).await;
    assert_eq!(s, 201, "{token}");
    let agent = app.enroll(token["secret"].as_str().unwrap(), "schema-0").await;
    let (s, page) = api.call("listAgents", &[], &app.viewer, None).await;
    assert_eq!((s, page["items"][0]["hostname"].as_str()), (200, Some("schema-0")));
    let spec = json!({ "name": "by schema", "package_id": package, "targets": { "labels": { "group": "schema" } } });
    let (s, rollout) = api.call("createRollout", &[], &app.operator, Some(spec)).await;
    assert_eq!(s, 201, "{rollout}");
    let id = rollout["id"].as_str().unwrap().to_owned();
    let (s, started) = api.call("actOnRollout", &[("id", &id), ("action", "start")], &app.operator, None).await;
    assert_eq!((s, started["state"].as_str()), (200, Some("running")), "{started}");
    let job = agent.next_job().await;
    agent.finish(&job, fleetup_proto::InstallOutcome::Succeeded).await;
    let done = app.wait_rollout(&id, "the rollout to finish", |r| r["state"] == "finished").await;
    assert_eq!(done["counts"]["succeeded"], 1, "{done}");
    let (s, jobs) = api.call("listRolloutJobs", &[("id", &id)], &app.viewer, None).await;
    assert_eq!((s, jobs["jobs"][0]["state"].as_str()), (200, Some("succeeded")), "{jobs}");
    let (s, events) = api.call("listJobEvents", &[("id", job.job_id.as_str())], &app.viewer, None).await;
    assert_eq!(s, 200);
    assert!(events.as_array().is_some_and(|e| e.len() >= 3), "{events}");
    let (s, audit) = api.call("listAudit", &[], &app.viewer, None).await;
    assert_eq!(s, 200);
    assert!(audit["items"].as_array().unwrap().iter().any(|e| e["action"] == "rollout.start"), "{audit}");
    let (s, missing) = api.call("getRollout", &[("id", "no-such-rollout")], &app.viewer, None).await;
    assert_eq!((s, missing["code"].as_str()), (404, Some("not-found")));
}

crate::both_backends!(a_schema_driven_client_round_trips_a_rollout);

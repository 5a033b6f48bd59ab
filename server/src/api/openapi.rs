//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 document, generated from the code.
//!
//! Each handler describes itself with `#[utoipa::path]` (operationId, parameters, request
//! body, answers) next to its code, and every wire type carries its schema (the
//! `fleetup_proto` feature `openapi`, off in the agent's build). [`document`] gathers them
//! and then takes from the route table ([`crate::routes`]) what the table alone knows, so
//! it is said once: who may call each operation (`security`, `x-fleetup-access`) and the
//! problem answers every operation can give (RFC 9457, `application/problem+json`).
//!
//! The tests below hold the document and the route table to each other: every route is
//! described, every described operation is a route. `server/tests/api/contract.rs` checks
//! every answer of the API suite against the schema declared for it.

use crate::model::{
    Agent, AgentId, AuditEntry, Decision, EnrollmentToken, Job, JobId, JobSummary, Package, PackageId, Page, Role,
    Rollout, RolloutId,
};
use crate::routes::{Access, Routes, Rule};
use axum::Json;
use fleetup_proto::problem::{CONTENT_TYPE, Problem};
use utoipa::OpenApi as _;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, OpenApi, Ref, ResponseBuilder};

/// The operations, as the handlers describe them.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(
        title = "fleetup coordinator",
        description = "Roll software update packages out to fleets of Linux servers. Errors are RFC 9457 problem \
                       documents (`application/problem+json`) with a stable `code`. Lists are paged by cursor: \
                       `{items, next}`; pass `next` as `?cursor=`."
    ),
    paths(
        super::packages::upload,
        super::packages::list,
        super::packages::show,
        super::enrollment::create,
        super::enrollment::list,
        super::agents::list,
        super::agents::show,
        super::agents::update,
        super::agents::revoke,
        super::rollouts::list,
        super::rollouts::create,
        super::rollouts::show,
        super::rollouts::jobs,
        super::rollouts::act,
        super::rollouts::retry_failed,
        super::rollouts::decide_all,
        super::jobs::show,
        super::jobs::events,
        super::jobs::logs,
        super::jobs::decisions,
        super::jobs::decide,
        super::jobs::cancel,
        super::jobs::guide,
        super::audit::list,
        super::agent::enroll,
        super::agent::poll,
        super::agent::events,
        super::agent::logs,
        super::agent::download,
        super::healthz,
        super::metrics,
        openapi_json,
        super::access::list_tokens,
        super::access::create_token,
        super::access::revoke_token,
        super::access::revoke_enrollment_token,
        super::access::list_users,
        super::access::disable_user,
        super::access::enable_user,
        super::access::reset_password,
        super::webhooks::list,
        super::webhooks::create,
        super::webhooks::show,
        super::webhooks::delete,
        super::webhooks::deliveries,
        super::webhooks::events,
    ),
    components(schemas(Problem, Agent, AgentId, AuditEntry, Decision, EnrollmentToken, Job, JobId, JobSummary,
        Package, PackageId, Page<Rollout>, Role, Rollout, RolloutId))
)]
struct Described;

/// The document: the operations as described, with each one's access rule and problem
/// answers taken from the route table.
pub fn document() -> OpenApi {
    let mut doc = Described::openapi();
    let rules = crate::api::routes().rules().to_vec();
    for (path, item) in &mut doc.paths.paths {
        for (method, op) in operations(item) {
            let rule = rule_of(&rules, method, path);
            secure(op, rule.map(|r| r.access));
            problems(op, rule.map(|r| r.access));
        }
    }
    let components = doc.components.get_or_insert_with(Default::default);
    for scheme in ["api_token", "agent_token"] {
        components
            .security_schemes
            .insert(scheme.into(), SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)).into());
    }
    doc
}

/// This document.
#[utoipa::path(get, path = "/api/v1/openapi.json", operation_id = "openapi", tag = "ops",
    responses((status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object)))]
async fn openapi_json() -> Json<OpenApi> {
    Json(document())
}

pub fn routes() -> Routes {
    Routes::new().get("/openapi.json", Access::Public, openapi_json)
}

/// The operations of a path item, with their methods.
pub fn operations(item: &mut PathItem) -> impl Iterator<Item = (&'static str, &mut Operation)> {
    [
        ("GET", item.get.as_mut()),
        ("POST", item.post.as_mut()),
        ("PUT", item.put.as_mut()),
        ("PATCH", item.patch.as_mut()),
        ("DELETE", item.delete.as_mut()),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.map(|op| (m, op)))
}

/// The route-table rule that `method path` (a described path) is served by: the route whose
/// pattern matches it with the most literal segments, as the router prefers.
pub fn rule_of<'a>(rules: &'a [Rule], method: &str, path: &str) -> Option<&'a Rule> {
    rules
        .iter()
        .filter(|r| r.method.as_str() == method)
        .filter_map(|r| literal_match(&r.path, path).map(|n| (n, r)))
        .max_by_key(|(n, _)| *n)
        .map(|(_, r)| r)
}

/// Whether `path` is one `pattern` matches (the same segments, a `{param}` of the pattern
/// standing for any one); the number of literal segments if so.
fn literal_match(pattern: &str, path: &str) -> Option<usize> {
    let (p, q): (Vec<&str>, Vec<&str>) = (pattern.split('/').collect(), path.split('/').collect());
    if p.len() != q.len() {
        return None;
    }
    let mut literal = 0;
    for (a, b) in p.iter().zip(&q) {
        if a.starts_with('{') {
            continue;
        }
        if a != b {
            return None;
        }
        literal += 1;
    }
    Some(literal)
}

/// The operation's security and `x-fleetup-access` from its rule (no rule: nobody, as the
/// guard does).
fn secure(op: &mut Operation, access: Option<Access>) {
    let name = access.map_or_else(|| "none".to_owned(), Access::name);
    let scheme = match access {
        Some(Access::Token(_)) => Some("api_token"),
        Some(Access::Agent) => Some("agent_token"),
        _ => None,
    };
    if let Some(scheme) = scheme {
        op.security = Some(vec![SecurityRequirement::new(scheme, Vec::<String>::new())]);
    }
    let said = op.description.take().unwrap_or_default();
    op.description = Some(format!("{said}\n\nRequires: {name}.").trim().to_owned());
    let access = ExtensionsBuilder::new().add("x-fleetup-access", name).build();
    op.extensions.get_or_insert_with(Default::default).merge(access);
}

/// The problem answers every operation can give, added where the handler did not describe
/// its own: bad input, credentials, a missing object, a conflict with the object's state, a
/// refusal, too large a body, the server's own failures.
fn problems(op: &mut Operation, access: Option<Access>) {
    let guarded = !matches!(access, Some(Access::Public));
    let mut statuses = vec![
        ("400", "Bad input: a malformed body, parameter or cursor, or a value out of range"),
        ("404", "No such object, or no such route"),
        ("409", "The object's state does not allow it"),
        ("422", "Understood but refused: the detail says why"),
        ("500", "The coordinator failed; the detail names the cause"),
        ("503", "The database is unavailable; try again"),
    ];
    if guarded {
        statuses.push(("401", "No credentials, or unknown, expired or revoked ones"));
        statuses.push(("403", "The caller's role may not do this"));
        statuses.push(("429", "Too many requests from this caller; slow down"));
    }
    if op.request_body.is_some() {
        statuses.push(("413", "The body is larger than the limit"));
    }
    for (status, description) in statuses {
        op.responses.responses.entry(status.into()).or_insert_with(|| {
            ResponseBuilder::new()
                .description(description)
                .content(CONTENT_TYPE, ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build())
                .build()
                .into()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every route of the table is described, every described operation is a route, and
    /// the access the document names is the rule of the route that serves it.
    #[test]
    fn the_document_and_the_route_table_describe_the_same_routes() {
        let rules = crate::api::routes().rules().to_vec();
        let mut doc = document();
        let mut described = Vec::new();
        for (path, item) in &mut doc.paths.paths {
            for (method, op) in operations(item) {
                let rule = rule_of(&rules, method, path)
                    .unwrap_or_else(|| panic!("{method} {path} is described but has no route"));
                let access = op.extensions.as_ref().and_then(|e| e.get("x-fleetup-access")).cloned();
                assert_eq!(access, Some(serde_json::json!(rule.access.name())), "{method} {path}");
                described.push((method, path.clone()));
            }
        }
        for rule in &rules {
            assert!(
                described.iter().any(|(m, p)| *m == rule.method.as_str() && literal_match(&rule.path, p).is_some()),
                "{} {} is a route but the document does not describe it: add #[utoipa::path] to its handler \
                 and list it in `Described`",
                rule.method,
                rule.path
            );
        }
    }

    /// Every templated path declares its path parameters, every operation has a unique
    /// operationId and answers with at least one success.
    #[test]
    fn every_operation_is_complete() {
        let mut doc = document();
        let mut ids = std::collections::BTreeSet::new();
        for (path, item) in &mut doc.paths.paths {
            let templated: Vec<&str> =
                path.split('/').filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}'))).collect();
            for (method, op) in operations(item) {
                let id = op.operation_id.clone().unwrap_or_else(|| panic!("{method} {path} has no operationId"));
                assert!(ids.insert(id.clone()), "operationId {id} is used twice");
                let params: Vec<String> = op
                    .parameters
                    .iter()
                    .flatten()
                    .filter_map(|p| match p {
                        utoipa::openapi::RefOr::T(p) => Some(p.name.clone()),
                        utoipa::openapi::RefOr::Ref(_) => None,
                    })
                    .collect();
                for name in &templated {
                    assert!(params.iter().any(|p| p == name), "{method} {path} does not declare its parameter {name}");
                }
                assert!(
                    op.responses.responses.keys().any(|s| s.starts_with('2')),
                    "{method} {path} declares no success"
                );
            }
        }
    }
}

//! `GET /api/v1/openapi.json`: the API described from the route table below.
//!
//! The document is assembled with utoipa's builders rather than derived from handler
//! annotations: the routes, methods, roles and summaries are listed once here (and the
//! test suite checks every route it exercises appears, and that each role named here is
//! the rule of the route in the route table, [`crate::routes`]). Bodies are described in
//! docs/api.md and by the `fleetup_proto::agent_api` types.

use crate::routes::{Access, Routes};
use axum::Json;
use utoipa::openapi::path::{HttpMethod, OperationBuilder, ParameterBuilder, ParameterIn, PathItem, PathsBuilder};
use utoipa::openapi::security::{Http, HttpAuthScheme, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ComponentsBuilder, InfoBuilder, OpenApi, OpenApiBuilder, Required, ResponseBuilder};

/// (method, path, minimum role or `agent`/`public`, summary).
pub const ROUTES: &[(&str, &str, &str, &str)] = &[
    (
        "post",
        "/api/v1/packages",
        "operator",
        "Upload a signed package (body: the file); 422 with the reason if it fails verification",
    ),
    ("get", "/api/v1/packages", "viewer", "List packages"),
    ("get", "/api/v1/packages/{id}", "viewer", "One package with its manifest"),
    ("post", "/api/v1/enrollment-tokens", "admin", "Create an enrollment token (labels, expires_in_secs, max_uses)"),
    ("get", "/api/v1/enrollment-tokens", "admin", "List enrollment tokens"),
    ("get", "/api/v1/agents", "viewer", "List agents: labels, online, last seen, version, installed rollups"),
    ("get", "/api/v1/agents/{id}", "viewer", "One agent"),
    ("patch", "/api/v1/agents/{id}", "operator", "Replace an agent's labels"),
    ("delete", "/api/v1/agents/{id}", "admin", "Revoke an agent"),
    ("post", "/api/v1/rollouts", "operator", "Stage a rollout (draft)"),
    ("get", "/api/v1/rollouts", "viewer", "List rollouts"),
    ("get", "/api/v1/rollouts/{id}", "viewer", "A rollout: state, waves, counts per job state"),
    (
        "get",
        "/api/v1/rollouts/{id}/jobs",
        "viewer",
        "A page of a rollout's jobs in (wave, position) order: {\"jobs\": [...], \"next\": CURSOR|null} \
         (?state=&wave=&limit=1..5000 (500)&view=full|summary&cursor=NEXT; offset is refused, 400)",
    ),
    ("post", "/api/v1/rollouts/{id}/start", "operator", "Start a draft rollout"),
    ("post", "/api/v1/rollouts/{id}/pause", "operator", "Pause dispatching"),
    ("post", "/api/v1/rollouts/{id}/resume", "operator", "Resume (accepting failures so far)"),
    (
        "post",
        "/api/v1/rollouts/{id}/cancel",
        "operator",
        "Cancel: unstarted jobs cancelled, jobs in flight asked to cancel",
    ),
    ("post", "/api/v1/rollouts/{id}/approve", "operator", "Open the next wave of a rollout awaiting approval"),
    (
        "post",
        "/api/v1/rollouts/{id}/retry-failed",
        "operator",
        "A new draft rollout of the failed, rolled-back, lost and undeliverable servers",
    ),
    (
        "post",
        "/api/v1/rollouts/{id}/decisions",
        "operator",
        "Answer every open decision of a kind at once ({kind, code?, matching?, answer}) → {answered}; audited once",
    ),
    (
        "get",
        "/api/v1/jobs/{id}",
        "viewer",
        "A job: wave, state, current phase, every phase's status, warnings, error, outage",
    ),
    ("get", "/api/v1/jobs/{id}/events", "viewer", "A job's engine events (?after=SEQ&limit=)"),
    ("get", "/api/v1/jobs/{id}/logs", "viewer", "A job's phase log lines (?after=SEQ&limit=)"),
    ("get", "/api/v1/jobs/{id}/decisions", "viewer", "A job's decisions and their answers"),
    (
        "post",
        "/api/v1/jobs/{id}/decision",
        "operator",
        "Answer the open decision: {\"answer\": \"continue|cancel|retry|ignore|exit\"}",
    ),
    ("post", "/api/v1/jobs/{id}/cancel", "operator", "Cancel one job"),
    (
        "post",
        "/api/v1/jobs/{id}/retry",
        "operator",
        "Guided failure: try this server again now, as a new attempt (the answer is the new job)",
    ),
    ("post", "/api/v1/jobs/{id}/skip", "operator", "Guided failure: the job's failure no longer counts (skipped)"),
    (
        "post",
        "/api/v1/jobs/{id}/exclude",
        "operator",
        "Guided failure: take the server out of the rollout (excluded, counted nowhere)",
    ),
    ("get", "/api/v1/audit", "viewer", "Audit log (?limit=&object_id=)"),
    ("post", "/api/v1/agent/enroll", "public", "Agent enrollment with an enrollment token"),
    (
        "get",
        "/api/v1/agent/poll",
        "agent",
        "Long-poll for a job (?wait=SECS): 200 JobAssignment or 204; also the heartbeat",
    ),
    (
        "post",
        "/api/v1/agent/jobs/{id}/events",
        "agent",
        "Report engine events (EventBatch; ?wait=SECS holds while waiting for a decision)",
    ),
    ("post", "/api/v1/agent/jobs/{id}/logs", "agent", "Report log lines (LogBatch)"),
    ("get", "/api/v1/agent/packages/{id}", "agent", "Download a package (HTTP Range supported)"),
    ("get", "/healthz", "public", "Liveness and database check"),
    ("get", "/metrics", "public", "Prometheus metrics"),
    ("get", "/api/v1/openapi.json", "public", "This document"),
];

/// Query parameters of the routes that take some: (path, [(name, description)]).
pub const QUERY: &[(&str, &[(&str, &str)])] = &[(
    "/api/v1/rollouts/{id}/jobs",
    &[
        ("state", "Only jobs in this state (pending, queued, dispatched, running, waiting, succeeded, …)"),
        ("wave", "Only jobs of this wave (1-based)"),
        ("limit", "Page size, 1 to 5000; default 500"),
        (
            "view",
            "full (default: every phase with its time, warnings, error, lease) or summary (id, agent_id, hostname, \
             wave, state, current_phase, phase_status, outage_secs, warning_count)",
        ),
        (
            "cursor",
            "The next value of the previous page, unchanged (the filters may stay or change); omit for the first \
             page. An altered cursor or one of another rollout is a 400",
        ),
    ],
)];

/// Builds the document.
pub fn document() -> OpenApi {
    let mut paths = PathsBuilder::new();
    for (method, path, role, summary) in ROUTES {
        let method = match *method {
            "post" => HttpMethod::Post,
            "patch" => HttpMethod::Patch,
            "delete" => HttpMethod::Delete,
            _ => HttpMethod::Get,
        };
        let mut op = OperationBuilder::new()
            .summary(Some(*summary))
            .description(Some(format!("Requires: {role}.")))
            .tag(path.split('/').nth(3).unwrap_or("ops"))
            .response(
                "default",
                ResponseBuilder::new().description("JSON; errors are {\"error\": {\"code\", \"message\"}}").build(),
            );
        for (name, description) in QUERY.iter().filter(|(p, _)| p == path).flat_map(|(_, params)| params.iter()) {
            op = op.parameter(
                ParameterBuilder::new()
                    .name(*name)
                    .parameter_in(ParameterIn::Query)
                    .required(Required::False)
                    .description(Some(*description)),
            );
        }
        if *role != "public" {
            let scheme = if *role == "agent" { "agent_token" } else { "api_token" };
            op = op.security(SecurityRequirement::new(scheme, Vec::<String>::new()));
        }
        paths = paths.path(*path, PathItem::new(method, op.build()));
    }
    let components = ComponentsBuilder::new()
        .security_scheme("api_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)))
        .security_scheme("agent_token", SecurityScheme::Http(Http::new(HttpAuthScheme::Bearer)))
        .build();
    OpenApiBuilder::new()
        .info(InfoBuilder::new().title("fleetup coordinator").version(env!("CARGO_PKG_VERSION")).build())
        .paths(paths.build())
        .components(Some(components))
        .build()
}

pub fn routes() -> Routes {
    Routes::new().get("/openapi.json", Access::Public, || async { Json(document()) })
}

#[cfg(test)]
mod tests {
    /// Whether `path` (a described path, maybe with `{params}`) is one `pattern` matches: the
    /// same segments, a `{param}` of the pattern standing for any one. Returns the number of
    /// literal segments (routing prefers the most literal match).
    fn matches(pattern: &str, path: &str) -> Option<usize> {
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

    /// The description names, for every route, the rule the route table holds; and every
    /// route of the API is described.
    #[test]
    fn the_description_names_each_route_by_its_rule_in_the_table() {
        let routes = crate::api::routes();
        let table = routes.rules();
        for (method, path, role, _) in super::ROUTES {
            let rule = table
                .iter()
                .filter(|r| r.method.as_str().eq_ignore_ascii_case(method))
                .filter_map(|r| matches(&r.path, path).map(|n| (n, r)))
                .max_by_key(|(n, _)| *n)
                .map_or_else(|| panic!("{method} {path} is described but has no route"), |(_, r)| r);
            assert_eq!(rule.access.name(), *role, "{method} {path} (route {})", rule.path);
        }
        for rule in table {
            assert!(
                super::ROUTES.iter().any(
                    |(m, p, _, _)| rule.method.as_str().eq_ignore_ascii_case(m) && matches(&rule.path, p).is_some()
                ),
                "{} {} is not described in the API description",
                rule.method,
                rule.path
            );
        }
    }
}

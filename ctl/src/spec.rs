//! A rollout spec file, as kept in git: the fields of `POST /rollouts` (docs/api.md) in
//! TOML, YAML or JSON, with two conveniences for a file written by hand —
//! `package = "NAME@VERSION"` instead of a package id, and `targets.hosts = [...]`
//! (hostnames) beside `targets.labels` and `targets.agents`. Both are resolved against the
//! coordinator when the file is applied.
//!
//! The file is parsed once into typed values ([`SpecFile`]); every error names the file and
//! the field (`rollout.toml: waves[1]: '150%' is not a percentage …`), and the checks the
//! coordinator would make at staging are made here first, so a mistake is caught by
//! `--dry-run` (or in CI) without a round trip. The coordinator checks again: it is the
//! authority, this is the early warning.

use fleetup_proto::api::{RolloutSpec, Threshold, WaveSpec};
use fleetup_proto::id::{AgentId, PackageId};
use serde_json::{Map, Value};
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

/// One thing wrong with a spec file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field, as a path (`waves[1]`, `policies.files_in_use`); `None` for the whole file.
    pub field: Option<String>,
    /// What is wrong, and how to write it.
    pub message: String,
}

/// Everything wrong with a spec file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecError {
    /// The file as named on the command line.
    pub file: String,
    /// The problems, at least one.
    pub problems: Vec<Problem>,
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match &p.field {
                Some(field) => write!(f, "{}: {field}: {}", self.file, p.message)?,
                None => write!(f, "{}: {}", self.file, p.message)?,
            }
        }
        Ok(())
    }
}

/// The package a spec names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackageRef {
    /// By id (`package_id`).
    Id(PackageId),
    /// By rollup name and version (`package = "demo@1.1.0"`).
    Named {
        /// Rollup name.
        name: String,
        /// Version.
        version: String,
    },
}

impl fmt::Display for PackageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PackageRef::Id(id) => write!(f, "package {id}"),
            PackageRef::Named { name, version } => write!(f, "{name}@{version}"),
        }
    }
}

/// The servers a spec targets.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TargetRef {
    /// Every agent carrying all these labels.
    Labels(BTreeMap<String, String>),
    /// These agents.
    Agents(Vec<AgentId>),
    /// The agents with these hostnames.
    Hosts(Vec<String>),
}

/// A parsed, checked spec file. `spec.package_id` and `spec.targets` are placeholders
/// until [`SpecFile::resolved`] fills them from [`SpecFile::package`] and
/// [`SpecFile::targets`].
#[derive(Debug, Clone, PartialEq)]
pub struct SpecFile {
    /// The package.
    pub package: PackageRef,
    /// The targets.
    pub targets: TargetRef,
    /// Every other field, checked.
    pub spec: RolloutSpec,
}

impl SpecFile {
    /// The spec to send: the package id and the target agents (hosts resolved to ids).
    pub fn resolved(&self, package: PackageId, agents: Option<Vec<AgentId>>) -> RolloutSpec {
        let mut spec = self.spec.clone();
        spec.package_id = package;
        spec.targets = match (&self.targets, agents) {
            (TargetRef::Labels(l), _) => fleetup_proto::api::Targets { agents: None, labels: Some(l.clone()) },
            (TargetRef::Agents(a), None) => fleetup_proto::api::Targets { agents: Some(a.clone()), labels: None },
            (_, Some(ids)) => fleetup_proto::api::Targets { agents: Some(ids), labels: None },
            (TargetRef::Hosts(_), None) => unreachable!("hosts are resolved to agent ids before sending"),
        };
        spec
    }
}

/// The file formats, by extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// `.toml`.
    Toml,
    /// `.yaml`, `.yml`.
    Yaml,
    /// `.json`.
    Json,
}

impl Format {
    /// The format of `path`, by its extension.
    pub fn of(path: &Path) -> Option<Format> {
        match path.extension()?.to_str()?.to_ascii_lowercase().as_str() {
            "toml" => Some(Format::Toml),
            "yaml" | "yml" => Some(Format::Yaml),
            "json" => Some(Format::Json),
            _ => None,
        }
    }
}

/// Reads and checks the spec file at `path`.
pub fn load(path: &Path) -> Result<SpecFile, SpecError> {
    let file = path.display().to_string();
    let whole = |message: String| SpecError { file: file.clone(), problems: vec![Problem { field: None, message }] };
    let format = Format::of(path)
        .ok_or_else(|| whole("name the file .toml, .yaml (.yml) or .json: its extension says how to read it".into()))?;
    let text = std::fs::read_to_string(path).map_err(|e| whole(format!("cannot read it: {e}")))?;
    parse(&file, &text, format)
}

/// Parses and checks a spec file's `text`; `file` names it in errors.
pub fn parse(file: &str, text: &str, format: Format) -> Result<SpecFile, SpecError> {
    let fail = |field: Option<String>, message: String| SpecError {
        file: file.to_owned(),
        problems: vec![Problem { field, message }],
    };
    let value = match format {
        Format::Toml => toml::from_str::<toml::Value>(text).map(toml_to_json).map_err(|e| {
            let at = e
                .span()
                .map(|s| line_col(text, s.start))
                .map_or_else(String::new, |(l, c)| format!(" (line {l}, column {c})"));
            fail(None, format!("not valid TOML{at}: {}", e.message()))
        })?,
        Format::Yaml => yaml_to_json_doc(text).map_err(|m| fail(None, m))?,
        Format::Json => serde_json::from_str(text)
            .map_err(|e| fail(None, format!("not valid JSON (line {}, column {}): {e}", e.line(), e.column())))?,
    };
    from_value(value).map_err(|problems| SpecError { file: file.to_owned(), problems })
}

/// 1-based line and column of byte `at` of `text`.
fn line_col(text: &str, at: usize) -> (usize, usize) {
    let before = &text[..at.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

/// A placeholder id for the fields resolved later (never sent).
const PLACEHOLDER: &str = "resolved-on-apply";

fn problem(field: &str, message: impl Into<String>) -> Problem {
    Problem { field: Some(field.to_owned()), message: message.into() }
}

/// The spec from a file's value: conveniences unfolded, typed, then checked.
fn from_value(mut value: Value) -> Result<SpecFile, Vec<Problem>> {
    let Some(obj) = value.as_object_mut() else {
        return Err(vec![Problem {
            field: None,
            message: "must be a table of fields (name, package, targets, waves, …)".into(),
        }]);
    };
    let package = take_package(obj).map_err(|p| vec![p])?;
    let targets = take_targets(obj).map_err(|p| vec![p])?;
    // files_in_use = "ask" | "ignore" | "exit" is how one writes it by hand; the API's
    // form is a table with a mode.
    let mut files_in_use_word = false;
    if let Some(Value::Object(policies)) = obj.get_mut("policies")
        && let Some(Value::String(mode)) = policies.get("files_in_use").cloned()
    {
        policies.insert("files_in_use".into(), serde_json::json!({ "mode": mode }));
        files_in_use_word = true;
    }
    let spec: RolloutSpec = serde_path_to_error::deserialize(value).map_err(|e| {
        let mut path = e.path().to_string();
        if files_in_use_word && path == "policies.files_in_use.mode" {
            // The file said it as a word: name the field it wrote.
            path = "policies.files_in_use".into();
        }
        // A bad map key (`phase_timeouts = { nap = 3 }`) comes as `phase_timeouts.?`.
        if let Some(map) = path.strip_suffix(".?") {
            path = map.to_string();
        }
        let field = (path != ".").then_some(path);
        vec![Problem { field, message: e.into_inner().to_string() }]
    })?;
    let problems = check(&spec, &targets);
    if problems.is_empty() { Ok(SpecFile { package, targets, spec }) } else { Err(problems) }
}

/// Takes `package` (`NAME@VERSION` or `{name, version}`) or `package_id` out of the
/// file's fields, leaving a placeholder `package_id`.
fn take_package(obj: &mut Map<String, Value>) -> Result<PackageRef, Problem> {
    let by_name = obj.remove("package");
    let by_id = obj.remove("package_id");
    obj.insert("package_id".into(), Value::String(PLACEHOLDER.into()));
    let named = |name: &str, version: &str| {
        if name.trim().is_empty() || version.trim().is_empty() {
            Err(problem("package", "write NAME@VERSION, like \"demo@1.1.0\""))
        } else {
            Ok(PackageRef::Named { name: name.trim().to_owned(), version: version.trim().to_owned() })
        }
    };
    match (by_name, by_id) {
        (Some(_), Some(_)) => Err(problem("package", "give package (NAME@VERSION) or package_id, not both")),
        (None, None) => Err(problem(
            "package",
            "missing: name the package to install, like package = \"demo@1.1.0\" (or package_id)",
        )),
        (None, Some(Value::String(id))) => {
            id.parse::<PackageId>().map(PackageRef::Id).map_err(|e| problem("package_id", e.to_string()))
        }
        (None, Some(_)) => Err(problem("package_id", "must be a package id (text)")),
        (Some(Value::String(s)), None) => match s.rsplit_once('@') {
            Some((name, version)) => named(name, version),
            None => Err(problem("package", format!("'{s}' has no version: write NAME@VERSION, like \"{s}@1.1.0\""))),
        },
        (Some(Value::Object(t)), None) => match (t.get("name"), t.get("version")) {
            (Some(Value::String(n)), Some(Value::String(v))) if t.len() == 2 => named(n, v),
            _ => Err(problem("package", "a table needs exactly name and version, both text")),
        },
        (Some(_), None) => Err(problem("package", "write NAME@VERSION, like \"demo@1.1.0\"")),
    }
}

/// Takes `targets` out of the file's fields (exactly one of labels, agents, hosts),
/// leaving a placeholder the API type accepts.
fn take_targets(obj: &mut Map<String, Value>) -> Result<TargetRef, Problem> {
    let Some(t) = obj.remove("targets") else {
        return Err(problem(
            "targets",
            "missing: say which servers, with labels ({ role = \"web\" }), hosts ([\"web-1\", …]) or agents (ids)",
        ));
    };
    obj.insert("targets".into(), serde_json::json!({ "agents": [] }));
    let Value::Object(t) = t else {
        return Err(problem("targets", "must be a table with labels, hosts or agents"));
    };
    if let Some(unknown) = t.keys().find(|k| !["labels", "hosts", "agents"].contains(&k.as_str())) {
        return Err(problem(&format!("targets.{unknown}"), "unknown: targets takes labels, hosts or agents"));
    }
    if t.len() != 1 {
        return Err(problem("targets", "give exactly one of labels, hosts or agents"));
    }
    let (key, v) = t.into_iter().next().expect("one entry");
    let field = format!("targets.{key}");
    match key.as_str() {
        "labels" => {
            let labels: BTreeMap<String, String> = serde_json::from_value(v)
                .map_err(|_| problem(&field, "must be a table of text values, like { role = \"web\" }"))?;
            if labels.is_empty() {
                return Err(problem(&field, "is empty: it would select every agent; name at least one label"));
            }
            Ok(TargetRef::Labels(labels))
        }
        "hosts" => {
            let hosts: Vec<String> =
                serde_json::from_value(v).map_err(|_| problem(&field, "must be a list of hostnames"))?;
            if hosts.is_empty() {
                return Err(problem(&field, "is empty: name at least one host"));
            }
            let mut seen = std::collections::BTreeSet::new();
            for (i, h) in hosts.iter().enumerate() {
                if h.trim().is_empty() {
                    return Err(problem(&format!("{field}[{i}]"), "is empty"));
                }
                if !seen.insert(h) {
                    return Err(problem(&format!("{field}[{i}]"), format!("'{h}' is listed twice")));
                }
            }
            Ok(TargetRef::Hosts(hosts))
        }
        _ => {
            let ids: Vec<AgentId> = serde_path_to_error::deserialize(v).map_err(|e| {
                problem(&format!("{field}{}", e.path().to_string().trim_start_matches('.')), e.into_inner().to_string())
            })?;
            if ids.is_empty() {
                return Err(problem(&field, "is empty: name at least one agent"));
            }
            Ok(TargetRef::Agents(ids))
        }
    }
}

/// `"N%"` with 0 ≤ N ≤ 100, as the coordinator reads it.
pub fn percent(s: &str) -> Option<f64> {
    s.strip_suffix('%').and_then(|n| n.trim().parse::<f64>().ok()).filter(|n| (0.0..=100.0).contains(n))
}

const DAYS: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

fn hh_mm(s: &str) -> bool {
    s.split_once(':').is_some_and(|(h, m)| {
        h.len() == 2 && m.len() == 2 && h.parse::<u32>().is_ok_and(|h| h < 24) && m.parse::<u32>().is_ok_and(|m| m < 60)
    })
}

/// The coordinator's staging checks (its `Rules::parse`), each with its field.
fn check(spec: &RolloutSpec, targets: &TargetRef) -> Vec<Problem> {
    let mut out = Vec::new();
    if spec.name.trim().is_empty() {
        out.push(problem("name", "must not be empty: it names the rollout, and apply finds it again by it"));
    }
    if spec.concurrency == 0 {
        out.push(problem("concurrency", "must be at least 1"));
    }
    if spec.waves.is_empty() {
        out.push(problem("waves", "must list at least one wave, like [1, \"25%\", \"100%\"]"));
    }
    for (i, w) in spec.waves.iter().enumerate() {
        let field = format!("waves[{i}]");
        match w {
            WaveSpec::Count(0) => {
                out.push(problem(&field, "0 adds no server: a wave is at least 1 server or a share above 0%"));
            }
            WaveSpec::Count(_) => {}
            WaveSpec::Percent(p) => match percent(p) {
                None => out.push(problem(
                    &field,
                    format!("'{p}' is not a percentage: write a number from 0 to 100 followed by %, like \"25%\""),
                )),
                Some(n) if n <= 0.0 => out.push(problem(&field, "0% adds no server")),
                Some(_) => {}
            },
        }
    }
    for (field, t) in
        [("success_threshold", Some(&spec.success_threshold)), ("error_threshold", spec.error_threshold.as_ref())]
    {
        if let Some(Threshold::Percent(p)) = t
            && percent(p).is_none()
        {
            out.push(problem(field, format!("'{p}' is not a percentage: write a count (2) or a share (\"10%\")")));
        }
    }
    if spec.lease_secs == Some(0) {
        out.push(problem("lease_secs", "must be at least 1 (leave it out for the coordinator's default)"));
    }
    if spec.delivery_timeout_secs == Some(0) {
        out.push(problem("delivery_timeout_secs", "must be at least 1 (leave it out for the coordinator's default)"));
    }
    if spec.late_joiners && !matches!(targets, TargetRef::Labels(_)) {
        out.push(problem("late_joiners", "needs targets by labels: agents join when they come to match the selector"));
    }
    if spec.soak_secs > 86_400 * 30 {
        out.push(problem("soak_secs", "must be at most 2592000 (30 days)"));
    }
    for (phase, secs) in &spec.phase_timeouts {
        if *secs == 0 {
            out.push(problem(&format!("phase_timeouts.{phase}"), "must be at least 1 second"));
        }
    }
    if let Some(r) = &spec.retries {
        if r.times == 0 || r.times > 10 {
            out.push(problem("retries.times", "must be from 1 to 10 (leave retries out for none)"));
        }
        if r.backoff_secs == 0 || r.max_backoff_secs < r.backoff_secs {
            out.push(problem("retries.backoff_secs", "must be at least 1 and at most retries.max_backoff_secs"));
        }
    }
    if let Some(w) = &spec.maintenance_window {
        if w.ranges.is_empty() {
            out.push(problem(
                "maintenance_window.ranges",
                "must list at least one range (leave the window out for any time)",
            ));
        }
        for (i, r) in w.ranges.iter().enumerate() {
            for (name, t) in [("start", &r.start), ("end", &r.end)] {
                if !hh_mm(t) {
                    out.push(problem(
                        &format!("maintenance_window.ranges[{i}].{name}"),
                        format!("'{t}' is not HH:MM (24 h)"),
                    ));
                }
            }
            for (j, d) in r.days.iter().enumerate() {
                if !DAYS.contains(&d.as_str()) {
                    out.push(problem(
                        &format!("maintenance_window.ranges[{i}].days[{j}]"),
                        format!("'{d}' is not a day: use mon, tue, wed, thu, fri, sat or sun"),
                    ));
                }
            }
        }
    }
    out
}

/// A TOML value as JSON (dates as RFC 3339 text, as the API takes them).
fn toml_to_json(v: toml::Value) -> Value {
    match v {
        toml::Value::String(s) => Value::String(s),
        toml::Value::Integer(i) => Value::from(i),
        toml::Value::Float(f) => serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number),
        toml::Value::Boolean(b) => Value::Bool(b),
        toml::Value::Datetime(d) => Value::String(d.to_string()),
        toml::Value::Array(a) => Value::Array(a.into_iter().map(toml_to_json).collect()),
        toml::Value::Table(t) => Value::Object(t.into_iter().map(|(k, v)| (k, toml_to_json(v))).collect()),
    }
}

/// The one YAML document of `text` as JSON.
fn yaml_to_json_doc(text: &str) -> Result<Value, String> {
    let docs = yaml_rust2::YamlLoader::load_from_str(text).map_err(|e| {
        let m = e.marker();
        format!("not valid YAML (line {}, column {}): {}", m.line(), m.col() + 1, e.info())
    })?;
    match docs.len() {
        1 => yaml_to_json(&docs[0], ""),
        0 => Err("is empty".into()),
        n => Err(format!("holds {n} YAML documents: one rollout a file")),
    }
}

fn yaml_to_json(y: &yaml_rust2::Yaml, at: &str) -> Result<Value, String> {
    use yaml_rust2::Yaml;
    let here = || if at.is_empty() { String::new() } else { format!("{at}: ") };
    Ok(match y {
        Yaml::Real(s) => s
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Value::Number)
            .ok_or_else(|| format!("{}'{s}' is not a number", here()))?,
        Yaml::Integer(i) => Value::from(*i),
        Yaml::String(s) => Value::String(s.clone()),
        Yaml::Boolean(b) => Value::Bool(*b),
        Yaml::Null => Value::Null,
        Yaml::Array(a) => Value::Array(
            a.iter().enumerate().map(|(i, v)| yaml_to_json(v, &format!("{at}[{i}]"))).collect::<Result<_, _>>()?,
        ),
        Yaml::Hash(h) => {
            let mut m = Map::new();
            for (k, v) in h {
                let key = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    Yaml::Boolean(b) => b.to_string(),
                    _ => return Err(format!("{}keys must be text", here())),
                };
                let path = if at.is_empty() { key.clone() } else { format!("{at}.{key}") };
                m.insert(key, yaml_to_json(v, &path)?);
            }
            Value::Object(m)
        }
        Yaml::Alias(_) | Yaml::BadValue => return Err(format!("{}aliases and tags are not supported", here())),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetup_proto::agent_api::{CrlRemediation, FilesInUsePolicy, WarningPolicy};

    const TOML: &str = r#"
name = "demo 1.1 to web"
package = "demo@1.1.0"
targets = { labels = { role = "web" } }
waves = [1, "50%", "100%"]
concurrency = 2
error_threshold = 1
approval_required = true

[policies]
warning = "continue"
files_in_use = { mode = "retry", times = 3 }
crl_remediation = "hosts-file"

[phase_timeouts]
stop-services = 120
"#;

    fn toml(text: &str) -> Result<SpecFile, SpecError> {
        parse("rollout.toml", text, Format::Toml)
    }

    fn yaml(text: &str) -> Result<SpecFile, SpecError> {
        parse("rollout.yaml", text, Format::Yaml)
    }

    /// The one error line of a spec that must fail.
    fn error(r: Result<SpecFile, SpecError>) -> String {
        r.expect_err("the spec must be refused").to_string()
    }

    #[test]
    fn a_full_toml_spec_parses_into_typed_values() {
        let f = toml(TOML).unwrap();
        assert_eq!(f.package, PackageRef::Named { name: "demo".into(), version: "1.1.0".into() });
        assert_eq!(f.targets, TargetRef::Labels(BTreeMap::from([("role".into(), "web".into())])));
        assert_eq!(
            f.spec.waves,
            vec![WaveSpec::Count(1), WaveSpec::Percent("50%".into()), WaveSpec::Percent("100%".into())]
        );
        assert_eq!(f.spec.concurrency, 2);
        assert_eq!(f.spec.error_threshold, Some(Threshold::Count(1)));
        assert!(f.spec.approval_required);
        assert_eq!(f.spec.policies.warning, WarningPolicy::Continue);
        assert_eq!(f.spec.policies.files_in_use, FilesInUsePolicy::Retry { times: 3 });
        assert_eq!(f.spec.policies.crl_remediation, CrlRemediation::HostsFile);
        assert_eq!(f.spec.phase_timeouts.get(&fleetup_proto::PhaseId::StopServices), Some(&120));
        let id: PackageId = "p1".parse().unwrap();
        let sent = f.resolved(id.clone(), None);
        assert_eq!(sent.package_id, id);
        assert_eq!(sent.targets.labels.as_ref().map(BTreeMap::len), Some(1));
        assert_eq!(sent.targets.agents, None);
    }

    #[test]
    fn yaml_and_json_say_the_same_as_toml() {
        let y = yaml(
            "name: demo 1.1 to web\npackage: {name: demo, version: 1.1.0}\ntargets:\n  hosts: [web-1, web-2]\n\
             waves: [1, 100%]\npolicies:\n  files_in_use: ignore\nstart_at: 2026-12-24T22:00:00Z\n",
        )
        .unwrap();
        assert_eq!(y.package, PackageRef::Named { name: "demo".into(), version: "1.1.0".into() });
        assert_eq!(y.targets, TargetRef::Hosts(vec!["web-1".into(), "web-2".into()]));
        assert_eq!(y.spec.waves, vec![WaveSpec::Count(1), WaveSpec::Percent("100%".into())]);
        assert_eq!(y.spec.policies.files_in_use, FilesInUsePolicy::Ignore);
        assert!(y.spec.start_at.is_some());
        let ids = vec!["a1".parse().unwrap(), "a2".parse().unwrap()];
        assert_eq!(y.resolved("p".parse().unwrap(), Some(ids.clone())).targets.agents, Some(ids));
        let j =
            parse("r.json", r#"{"name": "x", "package_id": "0193abc", "targets": {"agents": ["a1"]}}"#, Format::Json)
                .unwrap();
        assert_eq!(j.package, PackageRef::Id("0193abc".parse().unwrap()));
        assert_eq!(j.spec.waves, vec![WaveSpec::Percent("100%".into())], "the API's default");
        // A TOML date literal is sent as RFC 3339 text.
        let t = toml("name = \"x\"\npackage = \"d@1\"\ntargets.hosts = [\"h\"]\nstart_at = 2026-12-24T22:00:00Z\n")
            .unwrap();
        assert_eq!(t.spec.start_at.unwrap().to_rfc3339(), "2026-12-24T22:00:00+00:00");
    }

    #[test]
    fn every_error_names_the_file_and_the_field() {
        let base = "name = \"x\"\npackage = \"demo@1.1.0\"\ntargets = { labels = { role = \"web\" } }\n";
        let cases: &[(&str, &str)] = &[
            ("waves = [1, \"150%\"]", "rollout.toml: waves[1]: '150%' is not a percentage"),
            ("waves = [0]", "rollout.toml: waves[0]: 0 adds no server"),
            ("waves = []", "rollout.toml: waves: must list at least one wave"),
            ("waves = [true]", "rollout.toml: waves[0]: "),
            ("concurrency = 0", "rollout.toml: concurrency: must be at least 1"),
            ("concurrency = -1", "rollout.toml: concurrency: "),
            ("colour = \"blue\"", "rollout.toml: colour: unknown field `colour`, expected one of `name`"),
            ("error_threshold = \"ten\"", "rollout.toml: error_threshold: 'ten' is not a percentage"),
            ("policies = { warning = \"shrug\" }", "rollout.toml: policies.warning: unknown variant `shrug`"),
            ("policies = { files_in_use = \"maybe\" }", "rollout.toml: policies.files_in_use: unknown variant `maybe`"),
            ("phase_timeouts = { nap = 3 }", "rollout.toml: phase_timeouts: "),
            (
                "phase_timeouts = { stop-services = 0 }",
                "rollout.toml: phase_timeouts.stop-services: must be at least 1",
            ),
            ("retries = { times = 11 }", "rollout.toml: retries.times: must be from 1 to 10"),
            ("lease_secs = 0", "rollout.toml: lease_secs: must be at least 1"),
            (
                "maintenance_window = { ranges = [{ start = \"25:00\", end = \"04:00\", days = [\"sat\", \"caturday\"] }] }",
                "rollout.toml: maintenance_window.ranges[0].start: '25:00' is not HH:MM",
            ),
        ];
        for (extra, want) in cases {
            let got = error(toml(&format!("{base}{extra}\n")));
            assert!(got.starts_with(want), "{extra}:\n got: {got}\nwant: {want}…");
        }
        let both = error(toml(&format!("{base}waves = [0, \"x%\"]\nconcurrency = 0\n")));
        assert_eq!(both.lines().count(), 3, "every problem at once: {both}");
        let day = error(toml(&format!(
            "{base}maintenance_window = {{ ranges = [{{ start = \"22:00\", end = \"04:00\", days = [\"caturday\"] }}] }}\n"
        )));
        assert!(day.contains("ranges[0].days[0]: 'caturday' is not a day"), "{day}");
    }

    #[test]
    fn package_and_targets_are_checked_with_their_conveniences() {
        let waves = "waves = [1]\n";
        let cases: &[(&str, &str)] = &[
            ("name = \"x\"\ntargets.hosts = [\"h\"]\n", "rollout.toml: package: missing"),
            (
                "name = \"x\"\npackage = \"demo\"\ntargets.hosts = [\"h\"]\n",
                "rollout.toml: package: 'demo' has no version",
            ),
            (
                "name = \"x\"\npackage = \"demo@\"\ntargets.hosts = [\"h\"]\n",
                "rollout.toml: package: write NAME@VERSION",
            ),
            (
                "name = \"x\"\npackage = \"d@1\"\npackage_id = \"p\"\ntargets.hosts = [\"h\"]\n",
                "rollout.toml: package: give package (NAME@VERSION) or package_id, not both",
            ),
            (
                "name = \"x\"\npackage_id = \"no/slash\"\ntargets.hosts = [\"h\"]\n",
                "rollout.toml: package_id: 'no/slash' is not a valid package id",
            ),
            ("name = \"x\"\npackage = \"d@1\"\n", "rollout.toml: targets: missing"),
            ("name = \"x\"\npackage = \"d@1\"\ntargets = {}\n", "rollout.toml: targets: give exactly one of"),
            (
                "name = \"x\"\npackage = \"d@1\"\ntargets = { hosts = [\"a\"], labels = { r = \"w\" } }\n",
                "rollout.toml: targets: give exactly one of",
            ),
            (
                "name = \"x\"\npackage = \"d@1\"\ntargets = { selector = \"r=w\" }\n",
                "rollout.toml: targets.selector: unknown",
            ),
            ("name = \"x\"\npackage = \"d@1\"\ntargets.hosts = []\n", "rollout.toml: targets.hosts: is empty"),
            (
                "name = \"x\"\npackage = \"d@1\"\ntargets.hosts = [\"a\", \"a\"]\n",
                "rollout.toml: targets.hosts[1]: 'a' is listed twice",
            ),
            ("name = \"x\"\npackage = \"d@1\"\ntargets.labels = {}\n", "rollout.toml: targets.labels: is empty"),
            (
                "name = \"x\"\npackage = \"d@1\"\ntargets.agents = [\"ok\", \"not ok\"]\n",
                "rollout.toml: targets.agents[1]: 'not ok' is not a valid agent id",
            ),
            (
                "name = \"x\"\npackage = \"d@1\"\ntargets.hosts = [\"a\"]\nlate_joiners = true\n",
                "rollout.toml: late_joiners: needs targets by labels",
            ),
            ("name = \" \"\npackage = \"d@1\"\ntargets.hosts = [\"a\"]\n", "rollout.toml: name: must not be empty"),
            ("package = \"d@1\"\ntargets.hosts = [\"a\"]\n", "rollout.toml: missing field `name`"),
        ];
        for (text, want) in cases {
            let got = error(toml(&format!("{text}{waves}")));
            assert!(got.starts_with(want), "{text}:\n got: {got}\nwant: {want}…");
        }
    }

    #[test]
    fn syntax_errors_say_where() {
        let t = error(toml("name = \"x\nwaves = [1]\n"));
        assert!(t.starts_with("rollout.toml: not valid TOML (line 1"), "{t}");
        let y = error(yaml("name: x\n  waves: [1\n"));
        assert!(y.starts_with("rollout.yaml: not valid YAML (line"), "{y}");
        let two = error(yaml("name: x\n---\nname: y\n"));
        assert!(two.contains("2 YAML documents"), "{two}");
        assert!(error(yaml("- 1\n- 2\n")).contains("must be a table of fields"));
        let dir = tempfile::tempdir().unwrap();
        let txt = dir.path().join("rollout.txt");
        std::fs::write(&txt, "name = 1").unwrap();
        assert!(load(&txt).unwrap_err().to_string().contains("name the file .toml, .yaml"));
        assert!(load(&dir.path().join("missing.toml")).unwrap_err().to_string().contains("cannot read it"));
    }
}

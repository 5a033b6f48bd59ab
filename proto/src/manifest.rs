//! The rollup manifest (`manifest.toml`): what a package installs and how.
//!
//! Documented field by field in `docs/manifest.md`. Every path in a manifest is relative:
//! install paths to the install root, sources to the package. [`Manifest::validate`]
//! rejects anything that could reach outside either, so the engine never has to.
//!
//! Strings that the engine runs or fetches (commands, health URLs) may use `${name}`
//! placeholders, filled by [`expand`] from the built-in variables (`root`, `staging`,
//! `state_dir`, `version`) and the host's own variables (`--var name=value`).

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Component, Path};

/// A parsed rollup manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Name and version of the rollup.
    pub rollup: Rollup,
    /// Which servers it is for.
    #[serde(default)]
    pub target: Target,
    /// Tunables of `check-system`.
    #[serde(default)]
    pub check: CheckSettings,
    /// Files added, replaced or removed under the install root.
    #[serde(default)]
    pub files: Vec<FileChange>,
    /// Services to stop before and start after the file update.
    #[serde(default)]
    pub services: Vec<Service>,
    /// Conditions checked in `check-system`.
    #[serde(default)]
    pub prerequisites: Vec<Prerequisite>,
    /// Certificate revocation list endpoints probed in `check-system`.
    #[serde(default)]
    pub crl: Option<CrlSettings>,
    /// Commands run before (on staging) and after (on the new files) the update.
    #[serde(default)]
    pub precompile: Precompile,
    /// Scripts shipped in the package, run as hooks.
    #[serde(default)]
    pub scripts: Scripts,
    /// Edits to configuration files under the install root.
    #[serde(default)]
    pub config_patches: Vec<ConfigPatch>,
    /// A web application deployed into a new versioned directory.
    #[serde(default)]
    pub webapp: Option<Webapp>,
}

/// `[rollup]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rollup {
    /// Product name, e.g. `demo-service`.
    pub name: String,
    /// Version this rollup installs, e.g. `1.1.0`.
    pub version: String,
    /// One line for the operator.
    #[serde(default)]
    pub description: String,
}

/// `[target]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Target {
    /// Operating system (`linux`); empty means any.
    #[serde(default)]
    pub os: String,
    /// Device class (matched against the agent's `device-class` label); empty means any.
    #[serde(default)]
    pub device_class: String,
}

/// `[check]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckSettings {
    /// Free space required beyond payload + backups, in MiB.
    #[serde(default = "default_margin_mb")]
    pub free_space_margin_mb: u64,
    /// The versions this rollup upgrades from; any other installed version stops the
    /// install in `check-system`, before anything changes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_version: Option<FromVersion>,
}

impl Default for CheckSettings {
    fn default() -> Self {
        Self { free_space_margin_mb: default_margin_mb(), from_version: None }
    }
}

/// `[check.from_version]`: where the installed version is written, and which it may be.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FromVersion {
    /// A file under the install root whose content (trimmed) is the installed version.
    pub file: String,
    /// The versions this rollup may be installed over.
    pub versions: Vec<String>,
}

fn default_margin_mb() -> u64 {
    16
}

/// What happens to one path under the install root.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileAction {
    /// The file must not exist yet; it is created.
    Add,
    /// The file exists and is replaced (backed up first).
    Replace,
    /// The file exists and is removed (backed up first).
    Remove,
    /// `path` is a directory that becomes, file by file, the package directory `source`
    /// (default `payload/<path>`): its files are added or replaced, files under `path`
    /// that are not in it are removed. The engine expands it into those changes in
    /// `check-system`; directories are created as needed and never removed.
    Tree,
}

/// `[[files]]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileChange {
    /// Path under the install root.
    pub path: String,
    /// What to do.
    pub action: FileAction,
    /// Path in the package (default `payload/<path>`); unused for `remove`.
    #[serde(default)]
    pub source: Option<String>,
    /// Unix permission bits as an octal string (default: those of the packed file).
    #[serde(default)]
    pub mode: Option<String>,
}

impl FileChange {
    /// The path inside the package that holds this file's new content.
    pub fn source_path(&self) -> String {
        self.source.clone().unwrap_or_else(|| format!("payload/{}", self.path))
    }
}

/// `[[services]]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Service {
    /// Service name, used in logs and the dashboard.
    pub name: String,
    /// systemd unit (default `<name>.service`) for the `systemd` backend.
    #[serde(default)]
    pub systemd_unit: Option<String>,
    /// How the `exec` backend runs the service.
    #[serde(default)]
    pub exec: Option<ExecService>,
    /// Deadline for the service to stop, in seconds.
    #[serde(default = "default_service_deadline")]
    pub stop_deadline_secs: u64,
    /// Deadline for the service to start, in seconds.
    #[serde(default = "default_service_deadline")]
    pub start_deadline_secs: u64,
    /// How to tell the started service is healthy.
    #[serde(default)]
    pub health: Option<HealthCheck>,
}

fn default_service_deadline() -> u64 {
    30
}

/// `[services.exec]`: a service run by the agent itself, for hosts without systemd.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecService {
    /// Foreground command that is the service (run detached with `sh -c`).
    pub start: String,
    /// Command that stops it (default: SIGTERM to the pid in `pidfile`, then SIGKILL at the deadline).
    #[serde(default)]
    pub stop: Option<String>,
    /// Command whose exit status 0 means running (default: the pid in `pidfile` is alive).
    #[serde(default)]
    pub status: Option<String>,
    /// Pid file, relative to the install root.
    pub pidfile: String,
}

/// `[services.health]`: exactly one of `http` or `command`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheck {
    /// URL answered with 2xx when healthy.
    #[serde(default)]
    pub http: Option<String>,
    /// Command that exits 0 when healthy.
    #[serde(default)]
    pub command: Option<String>,
    /// Text the HTTP body must contain (e.g. the new version).
    #[serde(default)]
    pub expect: Option<String>,
    /// How long to keep trying, in seconds.
    #[serde(default = "default_health_deadline")]
    pub deadline_secs: u64,
}

fn default_health_deadline() -> u64 {
    20
}

/// How bad a failed prerequisite is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Severity {
    /// The install stops in `check-system`.
    Fatal,
    /// A decision is asked: continue or cancel.
    Warning,
}

/// What a prerequisite checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PrerequisiteCheck {
    /// An absolute path, or one relative to the install root, exists.
    FileExists {
        /// The path.
        path: String,
    },
    /// A command exits 0.
    CommandSucceeds {
        /// The command (`sh -c`).
        command: String,
    },
    /// A Debian package is installed at `min_version` or later (dpkg).
    PackageVersion {
        /// The dpkg package name.
        package: String,
        /// Lowest acceptable version (dpkg version ordering).
        min_version: String,
    },
}

/// `[[prerequisites]]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prerequisite {
    /// What is checked.
    #[serde(flatten)]
    pub check: PrerequisiteCheck,
    /// Fatal or warning.
    pub severity: Severity,
    /// What the operator is told when it fails, ideally with how to fix it.
    pub message: String,
}

/// `[crl]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CrlSettings {
    /// Whether certificate revocation checking is on for this software; when off,
    /// the endpoints are not probed.
    #[serde(default = "yes")]
    pub revocation_checking: bool,
    /// CRL URLs that the software contacts while installing or starting.
    pub endpoints: Vec<String>,
    /// Deadline of each probe (all run in parallel), in seconds.
    #[serde(default = "default_crl_deadline")]
    pub probe_deadline_secs: u64,
}

fn yes() -> bool {
    true
}

fn default_crl_deadline() -> u64 {
    3
}

/// `[precompile]`
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Precompile {
    /// Run in `pre-precompile`, on the staged files, while services still run.
    #[serde(default)]
    pub before: Vec<Command>,
    /// Run in `post-precompile`, on the installed files.
    #[serde(default)]
    pub after: Vec<Command>,
}

/// A command with a deadline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Command {
    /// Run with `sh -c`, working directory the install root (or staging for `before`).
    pub command: String,
    /// Killed (with its process group) after this many seconds.
    #[serde(default = "default_command_deadline")]
    pub deadline_secs: u64,
    /// (`precompile.after` only) Run once the services have started and are healthy,
    /// outside the outage, instead of in `post-precompile` before they start.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub after_start: bool,
}

fn default_command_deadline() -> u64 {
    300
}

/// `[scripts]`: hook scripts shipped in the package (paths in the package).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scripts {
    /// Run in `pre-hooks`, after the host's `pre-install.d` scripts.
    #[serde(default)]
    pub pre_install: Vec<String>,
    /// Run in `post-hooks`, after the host's `post-install.d` scripts.
    #[serde(default)]
    pub post_install: Vec<String>,
    /// Run during `rollback`, after files are restored and before services start.
    #[serde(default)]
    pub rollback: Vec<String>,
    /// Run at the end of `post-hooks`, once the services are healthy and the other
    /// post-install hooks passed: the point of commit (Mender's ArtifactCommit). A
    /// failure still rolls back.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub commit: Vec<String>,
    /// Run when an install ends without success, after any rollback (Mender's `_Error`
    /// states): to alert or clean up. Their own failure is reported, never changes the
    /// outcome.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub error: Vec<String>,
    /// Deadline of each script, in seconds.
    #[serde(default = "default_command_deadline")]
    pub deadline_secs: u64,
}

/// How a config file is edited.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "format", rename_all = "kebab-case", deny_unknown_fields)]
pub enum PatchEdit {
    /// `key=value` lines: set `key` (added at the end if absent).
    KeyValue {
        /// The key.
        key: String,
    },
    /// A JSON document: set the value at an RFC 6901 pointer (parents must exist).
    Json {
        /// e.g. `/cache/size_mb`.
        pointer: String,
    },
    /// An INI file: set `key` in `[section]` (keys before any section when absent); the
    /// section is added at the end if missing.
    Ini {
        /// The section name, without brackets.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        section: Option<String>,
        /// The key.
        key: String,
    },
    /// An XML document: set an attribute on the element at a `/`-separated path of names.
    Xml {
        /// e.g. `configuration/runtime/generatePublisherEvidence`.
        element: String,
        /// The attribute name, e.g. `enabled`.
        attribute: String,
    },
}

/// `[[config_patches]]`
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigPatch {
    /// Path under the install root.
    pub file: String,
    /// Format and location of the edit.
    #[serde(flatten)]
    pub edit: PatchEdit,
    /// The new value (for JSON: any JSON value; otherwise a string). Absent with `remove`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<toml::Value>,
    /// Remove the key (key-value, INI) or the member (JSON) instead of setting it;
    /// already absent is fine.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub remove: bool,
}

/// `[webapp]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webapp {
    /// Directory in the package holding the web app.
    pub source: String,
    /// Directory under the install root that holds `releases/<version>/` and the
    /// `current` symlink that is switched atomically.
    pub web_root: String,
    /// How many releases to keep in `releases/`, the new current one included; older
    /// ones are removed in `cleanup`. None: keep them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_releases: Option<u32>,
}

/// A manifest that cannot be used, with what is wrong and where.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    /// Not valid TOML or not the schema.
    #[error("manifest.toml is not valid: {0}")]
    Parse(String),
    /// A field has a value that is not allowed.
    #[error("manifest.toml: {field}: {problem}")]
    Invalid {
        /// Which field, e.g. `files[2].path`.
        field: String,
        /// What is wrong and what to do.
        problem: String,
    },
}

fn invalid(field: impl Into<String>, problem: impl Into<String>) -> ManifestError {
    ManifestError::Invalid { field: field.into(), problem: problem.into() }
}

impl Manifest {
    /// Parses and validates a manifest.
    pub fn from_toml(text: &str) -> Result<Self, ManifestError> {
        let m: Manifest = toml::from_str(text).map_err(|e| ManifestError::Parse(e.to_string()))?;
        m.validate()?;
        Ok(m)
    }

    /// Serialises to TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a manifest always serialises")
    }

    /// Checks everything serde cannot: relative safe paths, no duplicates, exactly one
    /// health probe, parsable modes, absolute URLs.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.rollup.name.trim().is_empty() {
            return Err(invalid("rollup.name", "must not be empty"));
        }
        check_version(&self.rollup.version)?;
        // Compared in normal form: `./lib/x` and `lib//x` are `lib/x`. A second entry for
        // a path, or a second use of one staged source, would fail mid-outage.
        let mut paths: BTreeMap<String, usize> = BTreeMap::new();
        let mut sources: BTreeMap<String, usize> = BTreeMap::new();
        for (i, f) in self.files.iter().enumerate() {
            check_relative(&format!("files[{i}].path"), &f.path)?;
            check_relative(&format!("files[{i}].source"), &f.source_path())?;
            if let Some(j) = paths.insert(normal_path(&f.path), i) {
                return Err(invalid(
                    format!("files[{i}].path"),
                    format!(
                        "'{}' is the same path as files[{j}] ('{}'): list each path once",
                        f.path, self.files[j].path
                    ),
                ));
            }
            if f.action != FileAction::Remove
                && let Some(j) = sources.insert(normal_path(&f.source_path()), i)
            {
                return Err(invalid(
                    format!("files[{i}].source"),
                    format!(
                        "'{}' (for '{}') is also the source of files[{j}] ('{}'): each staged file is moved into \
                         place once, so give each entry its own source",
                        f.source_path(),
                        f.path,
                        self.files[j].path
                    ),
                ));
            }
            if let Some(mode) = &f.mode {
                parse_mode(mode).map_err(|p| invalid(format!("files[{i}].mode"), p))?;
            }
        }
        for (i, t) in self.files.iter().enumerate().filter(|(_, f)| f.action == FileAction::Tree) {
            let tree = format!("{}/", normal_path(&t.path));
            if let Some(j) = self.files.iter().position(|f| normal_path(&f.path).starts_with(&tree)) {
                return Err(invalid(
                    format!("files[{j}].path"),
                    format!(
                        "'{}' lies inside the tree files[{i}] ('{}'): the tree decides it",
                        self.files[j].path, t.path
                    ),
                ));
            }
        }
        let mut names = BTreeSet::new();
        for (i, s) in self.services.iter().enumerate() {
            if !names.insert(s.name.as_str()) {
                return Err(invalid(format!("services[{i}].name"), format!("'{}' is listed twice", s.name)));
            }
            if let Some(exec) = &s.exec {
                check_relative(&format!("services[{i}].exec.pidfile"), &exec.pidfile)?;
            }
            if let Some(h) = &s.health
                && h.http.is_some() == h.command.is_some()
            {
                return Err(invalid(format!("services[{i}].health"), "give exactly one of `http` or `command`"));
            }
        }
        if let Some(crl) = &self.crl {
            for (i, url) in crl.endpoints.iter().enumerate() {
                // A placeholder may supply the scheme; the engine checks again after expansion.
                if !(url.starts_with("http://") || url.starts_with("https://") || url.starts_with("${")) {
                    return Err(invalid(format!("crl.endpoints[{i}]"), format!("'{url}' is not an http(s) URL")));
                }
            }
            if crl.probe_deadline_secs == 0 || crl.probe_deadline_secs > 60 {
                return Err(invalid("crl.probe_deadline_secs", "must be between 1 and 60 seconds"));
            }
        }
        if let Some(i) = self.precompile.before.iter().position(|c| c.after_start) {
            return Err(invalid(
                format!("precompile.before[{i}].after_start"),
                "only a `precompile.after` command can run after the start",
            ));
        }
        let sc = &self.scripts;
        for (i, s) in sc
            .pre_install
            .iter()
            .chain(&sc.post_install)
            .chain(&sc.rollback)
            .chain(&sc.commit)
            .chain(&sc.error)
            .enumerate()
        {
            check_relative(&format!("scripts[{i}]"), s)?;
        }
        for (i, p) in self.config_patches.iter().enumerate() {
            check_relative(&format!("config_patches[{i}].file"), &p.file)?;
            if let PatchEdit::Json { pointer } = &p.edit
                && !pointer.starts_with('/')
            {
                return Err(invalid(format!("config_patches[{i}].pointer"), "a JSON pointer starts with '/'"));
            }
            match (&p.value, p.remove) {
                (Some(_), true) => {
                    return Err(invalid(format!("config_patches[{i}]"), "give `value` or `remove = true`, not both"));
                }
                (None, false) => {
                    return Err(invalid(format!("config_patches[{i}].value"), "missing (or say remove = true)"));
                }
                (None, true) if matches!(p.edit, PatchEdit::Xml { .. }) => {
                    return Err(invalid(
                        format!("config_patches[{i}].remove"),
                        "an XML attribute cannot be removed, only set",
                    ));
                }
                _ => {}
            }
        }
        if let Some(f) = &self.check.from_version {
            check_relative("check.from_version.file", &f.file)?;
            if f.versions.is_empty() {
                return Err(invalid("check.from_version.versions", "list at least one version to upgrade from"));
            }
        }
        if let Some(w) = &self.webapp {
            check_relative("webapp.source", &w.source)?;
            check_relative("webapp.web_root", &w.web_root)?;
            if w.keep_releases == Some(0) {
                return Err(invalid("webapp.keep_releases", "keep at least 1 release (the current one)"));
            }
        }
        Ok(())
    }

    /// The package directories of `tree` entries.
    pub fn referenced_package_dirs(&self) -> Vec<String> {
        self.files.iter().filter(|f| f.action == FileAction::Tree).map(FileChange::source_path).collect()
    }

    /// Every path inside the package that the manifest refers to (payload sources,
    /// scripts, the web app directory prefix is not included).
    pub fn referenced_package_files(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .files
            .iter()
            .filter(|f| matches!(f.action, FileAction::Add | FileAction::Replace))
            .map(FileChange::source_path)
            .collect();
        out.extend(self.scripts.pre_install.iter().cloned());
        out.extend(self.scripts.post_install.iter().cloned());
        out.extend(self.scripts.rollback.iter().cloned());
        out.extend(self.scripts.commit.iter().cloned());
        out.extend(self.scripts.error.iter().cloned());
        out
    }
}

/// Parses an octal mode string such as `0755`; setuid/setgid/sticky bits are refused.
pub fn parse_mode(text: &str) -> Result<u32, String> {
    let mode = u32::from_str_radix(text.trim_start_matches("0o"), 8)
        .map_err(|_| format!("'{text}' is not an octal mode such as 0644"))?;
    if mode > 0o777 {
        return Err(format!("'{text}': only permission bits (up to 0777) are allowed, no setuid/setgid/sticky"));
    }
    Ok(mode)
}

/// A version names a directory (`<web_root>/releases/<version>`) and is shown
/// everywhere: letters, digits and `.` `_` `+` `~` `-`, starting with a letter or digit,
/// at most 64 characters. `../../..` or `1.0/x` would put the web app elsewhere.
pub fn check_version(version: &str) -> Result<(), ManifestError> {
    let field = "rollup.version";
    if version.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    let first_ok = version.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let chars_ok = version.chars().all(|c| c.is_ascii_alphanumeric() || "._+~-".contains(c));
    if !first_ok || !chars_ok || version.len() > 64 {
        return Err(invalid(
            field,
            format!(
                "'{version}' is not a version: use letters, digits and . _ + ~ - (starting with a letter or digit, \
                 at most 64 characters), e.g. 1.1.0"
            ),
        ));
    }
    Ok(())
}

/// A relative path in normal form: no `.` and no empty components (`./lib//x` → `lib/x`).
pub fn normal_path(path: &str) -> String {
    path.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
}

/// Refuses empty, absolute and `..`-containing paths.
pub fn check_relative(field: &str, path: &str) -> Result<(), ManifestError> {
    if path.is_empty() {
        return Err(invalid(field, "must not be empty"));
    }
    let p = Path::new(path);
    for c in p.components() {
        match c {
            Component::Normal(_) | Component::CurDir => {}
            _ => {
                return Err(invalid(field, format!("'{path}' must be a relative path without '..'")));
            }
        }
    }
    Ok(())
}

/// Fills `${name}` placeholders from `vars`. An unknown name is an error naming it, so
/// a typo fails in `check-system` instead of running a wrong command.
pub fn expand(template: &str, vars: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let end = after.find('}').ok_or_else(|| format!("unclosed '${{' in '{template}'"))?;
        let name = &after[..end];
        let value = vars.get(name).ok_or_else(|| {
            format!(
                "unknown variable '${{{name}}}' in '{template}'; known: {} (set host variables with --var {name}=VALUE)",
                vars.keys().cloned().collect::<Vec<_>>().join(", ")
            )
        })?;
        out.push_str(value);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = include_str!("../../examples/sample-rollup/manifest.toml");

    #[test]
    fn sample_manifest_parses_and_uses_every_feature() {
        let m = Manifest::from_toml(SAMPLE).unwrap();
        assert!(m.files.iter().any(|f| f.action == FileAction::Add));
        assert!(m.files.iter().any(|f| f.action == FileAction::Replace));
        assert!(m.files.iter().any(|f| f.action == FileAction::Remove));
        assert!(!m.services.is_empty() && m.services[0].health.is_some());
        assert!(m.prerequisites.iter().any(|p| p.severity == Severity::Warning));
        assert!(!m.crl.as_ref().unwrap().endpoints.is_empty());
        assert!(!m.precompile.before.is_empty() && !m.precompile.after.is_empty());
        let formats: BTreeSet<_> = m
            .config_patches
            .iter()
            .map(|p| match p.edit {
                PatchEdit::KeyValue { .. } => "kv",
                PatchEdit::Ini { .. } => "ini",
                PatchEdit::Json { .. } => "json",
                PatchEdit::Xml { .. } => "xml",
            })
            .collect();
        assert_eq!(formats.len(), 3);
        assert!(m.webapp.is_some());
        assert!(!m.scripts.rollback.is_empty());
        // Round trip.
        assert_eq!(Manifest::from_toml(&m.to_toml()).unwrap(), m);
    }

    #[test]
    fn unsafe_paths_are_refused_with_the_field_named() {
        let bad = SAMPLE.replacen("path = \"lib/demo/VERSION\"", "path = \"../etc/passwd\"", 1);
        let err = Manifest::from_toml(&bad).unwrap_err().to_string();
        assert!(err.contains("files[") && err.contains("../etc/passwd"), "{err}");
        let bad = SAMPLE.replacen("path = \"lib/demo/VERSION\"", "path = \"/etc/passwd\"", 1);
        assert!(Manifest::from_toml(&bad).is_err());
    }

    #[test]
    fn versions_that_are_not_one_directory_name_are_refused() {
        for bad in ["../../..", "1.0/x", ".hidden", "", "1 0", "-1"] {
            let text = SAMPLE.replacen("version = \"1.1.0\"", &format!("version = {bad:?}"), 1);
            let err = Manifest::from_toml(&text).unwrap_err().to_string();
            assert!(err.contains("rollup.version"), "{bad}: {err}");
        }
        for good in ["1.1.0", "2.0.0-rc.1", "1.0+build.7", "1.0~beta"] {
            let text = SAMPLE.replacen("version = \"1.1.0\"", &format!("version = {good:?}"), 1);
            assert!(Manifest::from_toml(&text).is_ok(), "{good}");
        }
    }

    #[test]
    fn duplicate_entries_are_refused_naming_both() {
        let dot = SAMPLE.to_owned() + "\n[[files]]\npath = \"./lib/demo/VERSION\"\naction = \"replace\"\n";
        let err = Manifest::from_toml(&dot).unwrap_err().to_string();
        assert!(
            err.contains("files[4].path") && err.contains("./lib/demo/VERSION") && err.contains("files[0]"),
            "{err}"
        );
        let shared = SAMPLE.to_owned()
            + "\n[[files]]\npath = \"lib/demo/copy.txt\"\naction = \"add\"\nsource = \"payload/lib/demo/feature-x.txt\"\n";
        let err = Manifest::from_toml(&shared).unwrap_err().to_string();
        assert!(
            err.contains("files[4].source")
                && err.contains("lib/demo/copy.txt")
                && err.contains("lib/demo/feature-x.txt"),
            "{err}"
        );
    }

    #[test]
    fn an_entry_inside_a_tree_is_refused() {
        let text = SAMPLE.to_owned() + "\n[[files]]\npath = \"lib\"\naction = \"tree\"\n";
        let err = Manifest::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("files[0].path") && err.contains("inside the tree files[4] ('lib')"), "{err}");
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = Manifest::from_toml(&format!("{SAMPLE}\n[surprise]\nx = 1\n")).unwrap_err();
        assert!(err.to_string().contains("surprise"), "{err}");
    }

    #[test]
    fn setuid_modes_are_refused() {
        assert_eq!(parse_mode("0755"), Ok(0o755));
        assert!(parse_mode("4755").unwrap_err().contains("setuid"));
        assert!(parse_mode("rwx").is_err());
    }

    #[test]
    fn expand_fills_and_names_unknown_variables() {
        let vars = BTreeMap::from([("port".to_owned(), "8081".to_owned())]);
        assert_eq!(expand("http://127.0.0.1:${port}/health", &vars).unwrap(), "http://127.0.0.1:8081/health");
        let err = expand("x ${prot}", &vars).unwrap_err();
        assert!(err.contains("prot") && err.contains("--var"), "{err}");
        assert!(expand("x ${port", &vars).is_err());
    }
}

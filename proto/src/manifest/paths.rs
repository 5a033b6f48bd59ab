//! Paths and placeholders: every manifest path is relative and `..`-free, compared in
//! normal form; `${name}` placeholders are filled from the host's variables.

use super::{ManifestError, invalid};
use std::collections::BTreeMap;
use std::path::{Component, Path};

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

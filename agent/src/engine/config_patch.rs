//! Config file edits: key = value lines, INI sections, a JSON pointer, a YAML key path,
//! an XML attribute; each sets a value or (except XML) removes the key.
//!
//! Each edit is a pure function from old text to new text, so applying it twice gives
//! the same file: recovery can redo a patch after a crash without harm.

use fleetup_proto::manifest::{ConfigPatch, PatchEdit};

/// Applies one patch to a file's text.
pub fn apply(text: &str, patch: &ConfigPatch) -> Result<String, String> {
    let value = patch.value.as_ref();
    let set = |v: Option<&toml::Value>| v.map(scalar);
    match &patch.edit {
        PatchEdit::KeyValue { key } => Ok(lines_edit(text, None, key, set(value).as_deref())),
        PatchEdit::Ini { section, key } => {
            Ok(lines_edit(text, Some(section.as_deref().unwrap_or("")), key, set(value).as_deref()))
        }
        PatchEdit::Json { pointer } => json(text, pointer, value),
        PatchEdit::Yaml { key } => yaml(text, key, value),
        PatchEdit::Xml { element, attribute } => {
            let v = value.ok_or("an XML attribute cannot be removed")?;
            xml(text, element, attribute, &scalar(v))
        }
    }
}

/// `key = value` lines, optionally inside INI `[section]`s (`Some("")`: the keys before the
/// first section). `Some(value)` sets the key (in place, or appended to its section, the
/// section added at the end if missing); `None` removes it. Other lines are kept.
fn lines_edit(text: &str, section: Option<&str>, key: &str, value: Option<&str>) -> String {
    let header = |line: &str| {
        let t = line.trim();
        (t.starts_with('[') && t.ends_with(']')).then(|| t[1..t.len() - 1].trim().to_owned())
    };
    let is_key = |line: &str| {
        let t = line.trim_start();
        !t.starts_with('#') && !t.starts_with(';') && t.split_once('=').is_some_and(|(k, _)| k.trim() == key)
    };
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new(); // the section of the line being read ("" before any)
    let mut found = false;
    let mut end_of_section: Option<usize> = None; // where to append in the wanted section
    let wanted = |cur: &str| section.is_none_or(|s| s == cur);
    for line in text.lines() {
        if section.is_some()
            && let Some(name) = header(line)
        {
            current = name;
            out.push(line.to_owned());
            if wanted(&current) {
                end_of_section = Some(out.len());
            }
            continue;
        }
        if wanted(&current) && is_key(line) {
            found = true;
            if let Some(v) = value {
                let sep = if line.contains(" = ") { " = " } else { "=" };
                out.push(format!("{key}{sep}{v}"));
                end_of_section = Some(out.len());
            }
            continue;
        }
        out.push(line.to_owned());
        if wanted(&current) && !line.trim().is_empty() {
            end_of_section = Some(out.len());
        }
    }
    if !found && let Some(v) = value {
        let line = format!("{key} = {v}");
        match (section, end_of_section) {
            (None, _) => out.push(line),
            (Some(_), Some(at)) => out.insert(at, line),
            (Some(""), None) => out.insert(0, line),
            (Some(s), None) => {
                out.push(format!("[{s}]"));
                out.push(line);
            }
        }
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn scalar(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Sets (`Some`) or removes (`None`) the member at `pointer`.
fn json(text: &str, pointer: &str, value: Option<&toml::Value>) -> Result<String, String> {
    let mut doc: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let new = value.map(serde_json::to_value).transpose().map_err(|e| e.to_string())?;
    let (parent, last) = pointer.rsplit_once('/').ok_or_else(|| format!("'{pointer}' is not a JSON pointer"))?;
    let last = last.replace("~1", "/").replace("~0", "~");
    let target = doc.pointer_mut(parent).ok_or_else(|| format!("{parent} does not exist (parents must exist)"))?;
    match (target, new) {
        (serde_json::Value::Object(map), Some(new)) => {
            map.insert(last, new);
        }
        (serde_json::Value::Object(map), None) => {
            map.remove(&last);
        }
        (serde_json::Value::Array(items), Some(new)) => {
            let i: usize = last.parse().map_err(|_| format!("{pointer}: '{last}' is not an array index"))?;
            *items.get_mut(i).ok_or_else(|| format!("{pointer}: index {i} is out of range"))? = new;
        }
        (serde_json::Value::Array(_), None) => return Err(format!("{pointer}: array items are not removed")),
        _ => return Err(format!("{parent} is not an object or array")),
    }
    let mut s = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    s.push('\n');
    Ok(s)
}

/// Sets (`Some`) or removes (`None`) the mapping entry at the `.`-separated `key` path of a
/// YAML document (one document; parents must exist). yaml-rust2 re-emits the whole
/// document, so comments are not kept: said in `docs/manifest.md`.
fn yaml(text: &str, key: &str, value: Option<&toml::Value>) -> Result<String, String> {
    use yaml_rust2::{Yaml, YamlEmitter, YamlLoader};
    let mut docs = YamlLoader::load_from_str(text).map_err(|e| format!("not valid YAML: {e}"))?;
    let mut doc = match docs.len() {
        0 => Yaml::Hash(yaml_rust2::yaml::Hash::new()),
        1 => docs.remove(0),
        n => return Err(format!("holds {n} YAML documents; only a single document can be patched")),
    };
    let (parents, last) = key.rsplit_once('.').map_or((None, key), |(p, l)| (Some(p), l));
    let mut node = &mut doc;
    let mut walked = Vec::new();
    for part in parents.into_iter().flat_map(|p| p.split('.')) {
        walked.push(part);
        let Yaml::Hash(map) = node else {
            return Err(format!("{} is not a mapping", walked[..walked.len() - 1].join(".")));
        };
        node = map
            .get_mut(&Yaml::String(part.to_owned()))
            .ok_or_else(|| format!("{} does not exist (parents must exist)", walked.join(".")))?;
    }
    let Yaml::Hash(map) = node else {
        return Err(format!("{} is not a mapping", parents.unwrap_or("the document")));
    };
    let k = Yaml::String(last.to_owned());
    match value {
        Some(v) => {
            let new = to_yaml(v);
            match map.get_mut(&k) {
                Some(slot) => *slot = new,
                None => {
                    map.insert(k, new);
                }
            }
        }
        None => {
            map.remove(&k);
        }
    }
    let mut out = String::new();
    YamlEmitter::new(&mut out).dump(&doc).map_err(|e| format!("writing YAML: {e}"))?;
    // The emitter starts with a `---` line and ends without a newline.
    let body = out.strip_prefix("---\n").unwrap_or(&out);
    Ok(format!("{body}\n"))
}

fn to_yaml(v: &toml::Value) -> yaml_rust2::Yaml {
    use yaml_rust2::Yaml;
    match v {
        toml::Value::String(s) => Yaml::String(s.clone()),
        toml::Value::Integer(i) => Yaml::Integer(*i),
        toml::Value::Float(f) => Yaml::Real(f.to_string()),
        toml::Value::Boolean(b) => Yaml::Boolean(*b),
        toml::Value::Datetime(d) => Yaml::String(d.to_string()),
        toml::Value::Array(a) => Yaml::Array(a.iter().map(to_yaml).collect()),
        toml::Value::Table(t) => Yaml::Hash(t.iter().map(|(k, v)| (Yaml::String(k.clone()), to_yaml(v))).collect()),
    }
}

/// Sets `attribute` on the element at the `/`-separated path. A small scanner rather
/// than a DOM: the rest of the document (comments, spacing, declaration) is untouched.
pub fn xml(text: &str, element: &str, attribute: &str, value: &str) -> Result<String, String> {
    let want: Vec<&str> = element.split('/').filter(|s| !s.is_empty()).collect();
    let mut stack: Vec<String> = Vec::new();
    let mut i = 0;
    while let Some(off) = text[i..].find('<') {
        let start = i + off;
        if text[start..].starts_with("<!--") {
            i = start + text[start..].find("-->").ok_or("unclosed comment")? + 3;
            continue;
        }
        let end = start + text[start..].find('>').ok_or("unclosed tag")?;
        let tag = &text[start + 1..end];
        i = end + 1;
        if tag.starts_with('?') || tag.starts_with('!') {
            continue;
        }
        if let Some(name) = tag.strip_prefix('/') {
            if stack.last().map(String::as_str) == Some(name.trim()) {
                stack.pop();
            }
            continue;
        }
        let self_closing = tag.ends_with('/');
        let name: String = tag.chars().take_while(|c| !c.is_whitespace() && *c != '/').collect();
        stack.push(name);
        if stack.iter().map(String::as_str).eq(want.iter().copied()) {
            let escaped = value.replace('&', "&amp;").replace('"', "&quot;").replace('<', "&lt;");
            let new_tag = set_attr(tag, attribute, &escaped);
            return Ok(format!("{}<{}>{}", &text[..start], new_tag, &text[end + 1..]));
        }
        if self_closing {
            stack.pop();
        }
    }
    Err(format!("element {element} not found"))
}

fn set_attr(tag: &str, attribute: &str, value: &str) -> String {
    let needle = format!("{attribute}=");
    let mut search = 0;
    while let Some(pos) = tag[search..].find(&needle) {
        let at = search + pos;
        let before_ok = at == 0 || tag[..at].ends_with(char::is_whitespace);
        let q = tag[at + needle.len()..].chars().next();
        if before_ok && let Some(q @ ('"' | '\'')) = q {
            let vstart = at + needle.len() + 1;
            if let Some(len) = tag[vstart..].find(q) {
                return format!("{}{}{}", &tag[..vstart], value, &tag[vstart + len..]);
            }
        }
        search = at + needle.len();
    }
    let (body, tail) = match tag.strip_suffix('/') {
        Some(b) => (b.trim_end(), "/"),
        None => (tag.trim_end(), ""),
    };
    format!("{body} {attribute}=\"{value}\"{tail}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_value_sets_and_appends_idempotently() {
        let t = "# c\ncache_mb = 64\nlog = info\n";
        let once = lines_edit(t, None, "cache_mb", Some("256"));
        assert_eq!(once, "# c\ncache_mb = 256\nlog = info\n");
        assert_eq!(lines_edit(&once, None, "cache_mb", Some("256")), once);
        assert_eq!(lines_edit(t, None, "x", Some("1")), "# c\ncache_mb = 64\nlog = info\nx = 1\n");
    }

    #[test]
    fn json_pointer_sets_value() {
        let t = "{\"features\":{\"fast_start\":false}}";
        let v = json(t, "/features/fast_start", Some(&toml::Value::Boolean(true))).unwrap();
        assert!(v.contains("\"fast_start\": true"), "{v}");
        assert!(json(t, "/nope/x", Some(&toml::Value::Boolean(true))).is_err());
        let removed = json(&v, "/features/fast_start", None).unwrap();
        assert!(!removed.contains("fast_start"), "{removed}");
        assert_eq!(json(&removed, "/features/fast_start", None).unwrap(), removed);
    }

    #[test]
    fn key_value_and_ini_keys_are_removed_idempotently() {
        let t = "# c\ncache_mb = 64\nlog = info\n";
        let once = lines_edit(t, None, "cache_mb", None);
        assert_eq!(once, "# c\nlog = info\n");
        assert_eq!(lines_edit(&once, None, "cache_mb", None), once);
        let ini = "top = 1\n\n[db]\nhost = a\nport = 5432\n\n[cache]\nport = 6379\n";
        assert_eq!(lines_edit(ini, Some("cache"), "port", None), "top = 1\n\n[db]\nhost = a\nport = 5432\n\n[cache]\n");
    }

    #[test]
    fn ini_sets_a_key_in_its_section_only() {
        let ini = "top = 1\n\n[db]\nhost = a\nport = 5432\n\n[cache]\nport = 6379\n";
        let v = lines_edit(ini, Some("cache"), "port", Some("6380"));
        assert_eq!(v, "top = 1\n\n[db]\nhost = a\nport = 5432\n\n[cache]\nport = 6380\n");
        assert_eq!(lines_edit(&v, Some("cache"), "port", Some("6380")), v);
        let added = lines_edit(ini, Some("db"), "user", Some("app"));
        assert_eq!(added, "top = 1\n\n[db]\nhost = a\nport = 5432\nuser = app\n\n[cache]\nport = 6379\n");
        let new_section = lines_edit(ini, Some("log"), "level", Some("warn"));
        assert!(new_section.ends_with("port = 6379\n[log]\nlevel = warn\n"), "{new_section}");
        assert_eq!(lines_edit(ini, Some(""), "top", Some("2")), ini.replacen("top = 1", "top = 2", 1));
    }

    #[test]
    fn yaml_keys_are_set_added_and_removed_idempotently() {
        let t = "server:\n  port: 8080\n  host: 127.0.0.1\ncache:\n  size_mb: 64\n";
        let set = yaml(t, "server.port", Some(&toml::Value::Integer(9090))).unwrap();
        assert_eq!(set, "server:\n  port: 9090\n  host: 127.0.0.1\ncache:\n  size_mb: 64\n");
        assert_eq!(yaml(&set, "server.port", Some(&toml::Value::Integer(9090))).unwrap(), set);
        let added = yaml(t, "cache.enabled", Some(&toml::Value::Boolean(true))).unwrap();
        assert!(added.contains("  size_mb: 64\n  enabled: true\n"), "{added}");
        let removed = yaml(t, "cache.size_mb", None).unwrap();
        assert!(!removed.contains("size_mb"), "{removed}");
        assert_eq!(yaml(&removed, "cache.size_mb", None).unwrap(), removed);
        let err = yaml(t, "nope.x", Some(&toml::Value::Integer(1))).unwrap_err();
        assert!(err.contains("nope does not exist"), "{err}");
        let err = yaml(t, "server.port.x", Some(&toml::Value::Integer(1))).unwrap_err();
        assert!(err.contains("server.port is not a mapping"), "{err}");
        assert!(yaml("a: [", "a", None).unwrap_err().contains("not valid YAML"));
    }

    #[test]
    fn xml_attribute_is_replaced_or_added() {
        let t = "<?xml version=\"1.0\"?>\n<configuration>\n  <!-- <runtime> -->\n  <runtime>\n    <generatePublisherEvidence enabled=\"true\"/>\n  </runtime>\n</configuration>\n";
        let v = xml(t, "configuration/runtime/generatePublisherEvidence", "enabled", "false").unwrap();
        assert!(v.contains("<generatePublisherEvidence enabled=\"false\"/>"), "{v}");
        assert_eq!(xml(&v, "configuration/runtime/generatePublisherEvidence", "enabled", "false").unwrap(), v);
        let v = xml(t, "configuration/runtime", "mode", "x").unwrap();
        assert!(v.contains("<runtime mode=\"x\">"), "{v}");
        assert!(xml(t, "configuration/other", "a", "b").is_err());
    }
}

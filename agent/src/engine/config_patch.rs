//! Config file edits: key = value lines, a JSON pointer, an XML attribute.
//!
//! Each edit is a pure function from old text to new text, so applying it twice gives
//! the same file: recovery can redo a patch after a crash without harm.

use fleetup_proto::manifest::PatchEdit;

/// Applies one edit to a file's text.
pub fn apply(text: &str, edit: &PatchEdit, value: &toml::Value) -> Result<String, String> {
    match edit {
        PatchEdit::KeyValue { key } => Ok(key_value(text, key, &scalar(value))),
        PatchEdit::Json { pointer } => json(text, pointer, value),
        PatchEdit::Xml { element, attribute } => xml(text, element, attribute, &scalar(value)),
    }
}

fn scalar(v: &toml::Value) -> String {
    match v {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Sets `key` in `key = value` lines, keeping comments and the other lines; appends if absent.
pub fn key_value(text: &str, key: &str, value: &str) -> String {
    let mut found = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|line| {
            let t = line.trim_start();
            if !t.starts_with('#')
                && let Some((k, _)) = t.split_once('=')
                && k.trim() == key
            {
                found = true;
                let sep = if line.contains(" = ") { " = " } else { "=" };
                return format!("{key}{sep}{value}");
            }
            line.to_owned()
        })
        .collect();
    if !found {
        out.push(format!("{key} = {value}"));
    }
    let mut s = out.join("\n");
    s.push('\n');
    s
}

fn json(text: &str, pointer: &str, value: &toml::Value) -> Result<String, String> {
    let mut doc: serde_json::Value = serde_json::from_str(text).map_err(|e| format!("not valid JSON: {e}"))?;
    let new = serde_json::to_value(value).map_err(|e| e.to_string())?;
    let (parent, last) = pointer.rsplit_once('/').ok_or_else(|| format!("'{pointer}' is not a JSON pointer"))?;
    let last = last.replace("~1", "/").replace("~0", "~");
    let target = doc.pointer_mut(parent).ok_or_else(|| format!("{parent} does not exist (parents must exist)"))?;
    match target {
        serde_json::Value::Object(map) => {
            map.insert(last, new);
        }
        serde_json::Value::Array(items) => {
            let i: usize = last.parse().map_err(|_| format!("{pointer}: '{last}' is not an array index"))?;
            *items.get_mut(i).ok_or_else(|| format!("{pointer}: index {i} is out of range"))? = new;
        }
        _ => return Err(format!("{parent} is not an object or array")),
    }
    let mut s = serde_json::to_string_pretty(&doc).map_err(|e| e.to_string())?;
    s.push('\n');
    Ok(s)
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
        let once = key_value(t, "cache_mb", "256");
        assert_eq!(once, "# c\ncache_mb = 256\nlog = info\n");
        assert_eq!(key_value(&once, "cache_mb", "256"), once);
        assert_eq!(key_value(t, "x", "1"), "# c\ncache_mb = 64\nlog = info\nx = 1\n");
    }

    #[test]
    fn json_pointer_sets_value() {
        let t = "{\"features\":{\"fast_start\":false}}";
        let v = json(t, "/features/fast_start", &toml::Value::Boolean(true)).unwrap();
        assert!(v.contains("\"fast_start\": true"), "{v}");
        assert!(json(t, "/nope/x", &toml::Value::Boolean(true)).is_err());
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

//! `[[config_patches]]`: edits to configuration files, one format each.

use super::{ManifestError, check_relative, invalid};
use serde::{Deserialize, Serialize};

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
    /// A YAML document: set the value at a `.`-separated path of mapping keys (parents must
    /// exist). The document is re-emitted: its comments and layout are not kept.
    Yaml {
        /// e.g. `cache.size_mb`.
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

/// Files inside the root; `value` or `remove`, never both; what each format can do.
pub(super) fn validate(patches: &[ConfigPatch]) -> Result<(), ManifestError> {
    for (i, p) in patches.iter().enumerate() {
        check_relative(&format!("config_patches[{i}].file"), &p.file)?;
        if let PatchEdit::Json { pointer } = &p.edit
            && !pointer.starts_with('/')
        {
            return Err(invalid(format!("config_patches[{i}].pointer"), "a JSON pointer starts with '/'"));
        }
        if let PatchEdit::Yaml { key } = &p.edit
            && key.split('.').any(str::is_empty)
        {
            return Err(invalid(
                format!("config_patches[{i}].key"),
                format!("'{key}' is not a `.`-separated path of YAML keys such as cache.size_mb"),
            ));
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
    Ok(())
}

//! The manifest's own rules, checked on the sample and variations of it.

use super::*;
use std::collections::{BTreeMap, BTreeSet};

const SAMPLE: &str = include_str!("../../../examples/sample-rollup/manifest.toml");

#[test]
fn sample_manifest_parses_and_uses_every_feature() {
    let m = Manifest::from_toml(SAMPLE).unwrap();
    // The directory form: one entry for the whole of lib/demo.
    assert_eq!(m.files.len(), 1);
    assert_eq!(m.files[0].action, FileAction::Tree);
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
            PatchEdit::Yaml { .. } => "yaml",
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
    let bad = SAMPLE.replacen("path = \"lib/demo\"", "path = \"../etc/passwd\"", 1);
    let err = Manifest::from_toml(&bad).unwrap_err().to_string();
    assert!(err.contains("files[") && err.contains("../etc/passwd"), "{err}");
    let bad = SAMPLE.replacen("path = \"lib/demo\"", "path = \"/etc/passwd\"", 1);
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
    let dot = SAMPLE.to_owned() + "\n[[files]]\npath = \"./lib/demo\"\naction = \"tree\"\n";
    let err = Manifest::from_toml(&dot).unwrap_err().to_string();
    assert!(
        err.contains("files[1].path") && err.contains("'./lib/demo'") && err.contains("files[0] ('lib/demo')"),
        "{err}"
    );
    let shared = SAMPLE.to_owned()
        + "\n[[files]]\npath = \"etc/a.txt\"\naction = \"add\"\nsource = \"payload/x.txt\"\n"
        + "\n[[files]]\npath = \"etc/b.txt\"\naction = \"add\"\nsource = \"payload/x.txt\"\n";
    let err = Manifest::from_toml(&shared).unwrap_err().to_string();
    assert!(
        err.contains("files[2].source") && err.contains("etc/b.txt") && err.contains("files[1] ('etc/a.txt')"),
        "{err}"
    );
}

#[test]
fn an_entry_inside_a_tree_is_refused() {
    let text = SAMPLE.to_owned() + "\n[[files]]\npath = \"lib\"\naction = \"tree\"\n";
    let err = Manifest::from_toml(&text).unwrap_err().to_string();
    assert!(err.contains("files[0].path") && err.contains("inside the tree files[1] ('lib')"), "{err}");
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

//! Printing: human tables and sentences, or (`--output json`) the API's own objects, one
//! compact JSON document per line so a script reads them with `jq` or line by line.

use crate::cli::Output;
use crate::fail::{Failure, Outcome};
use fleetup_proto::api::JobState;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Where results go, and in which form.
#[derive(Debug, Clone, Copy)]
pub struct Out {
    /// `--output`.
    pub mode: Output,
}

impl Out {
    /// True with `--output json`.
    pub fn is_json(self) -> bool {
        self.mode == Output::Json
    }

    /// Prints `v` as JSON, or `human()` for people.
    pub fn show<T: Serialize + ?Sized>(self, v: &T, human: impl FnOnce() -> String) {
        if self.is_json() {
            json(v);
        } else {
            let text = human();
            if !text.is_empty() {
                println!("{}", text.trim_end_matches('\n'));
            }
        }
    }

    /// Prints a failure on stderr: a sentence, or a JSON object with the exit code and
    /// the API's error code.
    pub fn failure(self, f: &Failure) {
        if self.is_json() {
            let v = serde_json::json!({ "error": { "message": f.message, "code": f.api_code, "exit": f.exit } });
            eprintln!("{v}");
        } else {
            eprintln!("fleetupctl: {}", f.message);
        }
    }
}

/// Prints `v` as one JSON line (any mode).
pub fn json<T: Serialize + ?Sized>(v: &T) {
    println!("{}", serde_json::to_string(v).unwrap_or_else(|e| format!("{{\"error\":\"encoding: {e}\"}}")));
}

/// Rows under headers, columns padded to their widest cell.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                let _ = write!(s, "{c:<w$}  ", w = widths[i]);
            }
        }
        s.trim_end().to_owned()
    };
    let mut out = line(headers.to_vec());
    for r in rows {
        out.push('\n');
        out.push_str(&line(r.iter().map(String::as_str).collect()));
    }
    out
}

/// `k=v,k2=v2`.
pub fn labels(map: &BTreeMap<String, String>) -> String {
    map.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
}

/// `K=V` arguments as a map; `what` names the option in the error.
pub fn parse_labels(args: &[String], what: &str) -> Outcome<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for a in args {
        match a.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => {
                out.insert(k.trim().to_owned(), v.trim().to_owned());
            }
            _ => return Err(Failure::usage(format!("{what} '{a}': write KEY=VALUE"))),
        }
    }
    Ok(out)
}

/// Job counts for people, non-zero only, in life-cycle order: `succeeded 3, running 1`.
pub fn counts(map: &BTreeMap<JobState, u64>) -> String {
    let parts: Vec<String> = JobState::ALL
        .iter()
        .filter_map(|s| map.get(s).filter(|n| **n > 0).map(|n| format!("{} {n}", s.as_str())))
        .collect();
    if parts.is_empty() { "no jobs".into() } else { parts.join(", ") }
}

/// `1 server`, `3 servers`.
pub fn servers(n: u64) -> String {
    if n == 1 { "1 server".into() } else { format!("{n} servers") }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align_and_labels_parse() {
        let t = table(&["ID", "NAME"], &[vec!["1".into(), "a".into()], vec!["long-id".into(), "b".into()]]);
        assert_eq!(t, "ID       NAME\n1        a\nlong-id  b");
        let l = parse_labels(&["role=web".into(), "env = prod".into()], "--label").unwrap();
        assert_eq!(labels(&l), "env=prod,role=web");
        assert!(parse_labels(&["role".into()], "--label").is_err());
        assert_eq!(
            counts(&BTreeMap::from([(JobState::Running, 1), (JobState::Succeeded, 2), (JobState::Failed, 0)])),
            "running 1, succeeded 2"
        );
        assert_eq!(servers(1), "1 server");
    }
}

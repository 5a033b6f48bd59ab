//! Warnings, failures and open decisions grouped by cause, so that 3,334 servers with the
//! same unreachable CRL endpoint are one line with a count, one remediation and one bulk
//! answer, not 3,334 copies of it.
//!
//! A group's cause is what an operator would fix once:
//! - a decision: its kind, its warning code and its question (the question names the CRL
//!   endpoint and what the probe found, or the prerequisite). Files-in-use decisions group
//!   by who holds what, pids aside (`tail: etc/demo.conf`: the pids differ on every server,
//!   the cause and the fix do not); each server of the group lists its own holders with
//!   their pids. The bulk answer of a group is the API's [`DecisionFilter`] with exactly
//!   that kind, code and question (or holders), so it answers the servers the group counts
//!   and no other.
//! - a warning: its code and subject (the CRL endpoint and probe result, or the message,
//!   pids left out);
//! - a failure: the failing phase and the error.
//!
//! Pure functions over the rows `store::views` reads; the keys are short hashes of the
//! cause, stable across renders, used in URLs for a group's page of servers.

use crate::domain::decide::{DecisionFilter, holders_signature};
use crate::model::{JobId, JobState};
use crate::store::{FailedJob, OpenDecision, WarnedJob};
use fleetup_proto::{DecisionAnswer, DecisionKind, HoldingProcess};
use sha2::Digest as _;
use std::collections::HashMap;

/// Which panel a group belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Panel {
    /// Open decisions.
    Decisions,
    /// Warnings of jobs not waiting.
    Warnings,
    /// Failed, rolled-back and lost jobs.
    Failures,
}

impl Panel {
    /// URL segment.
    pub const fn as_str(self) -> &'static str {
        match self {
            Panel::Decisions => "decisions",
            Panel::Warnings => "warnings",
            Panel::Failures => "failures",
        }
    }

    /// From a URL segment.
    pub fn parse(s: &str) -> Option<Self> {
        [Panel::Decisions, Panel::Warnings, Panel::Failures].into_iter().find(|p| p.as_str() == s)
    }
}

/// A server in a group.
#[derive(Debug, Clone)]
pub struct Member {
    /// Its job.
    pub job_id: JobId,
    /// Its host name.
    pub hostname: String,
    /// Its job's state.
    pub state: &'static str,
    /// Files-in-use decisions: the processes holding the files on this server.
    pub holders: Vec<HoldingProcess>,
}

/// A remediation text split into what to read and what to copy: the engine's CRL text is
/// prose with the hosts-file lines indented inside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Remediation {
    /// What to read (the endpoints, why it matters, the fix), without the lines to copy.
    pub prose: String,
    /// The lines to add to the hosts file, when the fix has them.
    pub hosts_lines: Vec<String>,
    /// The hosts file they go to.
    pub hosts_file: Option<String>,
}

impl Remediation {
    /// Splits `text`: indented `127.0.0.1 host` lines are the ones to copy.
    pub fn of(text: &str) -> Self {
        let mut prose = Vec::new();
        let mut hosts_lines = Vec::new();
        for line in text.lines() {
            let t = line.trim();
            if line.starts_with(char::is_whitespace) && t.starts_with("127.0.0.1 ") {
                hosts_lines.push(t.to_owned());
            } else {
                prose.push(line);
            }
        }
        let hosts_file = text
            .split_once("adding these lines to ")
            .and_then(|(_, rest)| rest.split_once(" (remove"))
            .map(|(file, _)| file.to_owned());
        Self { prose: prose.join("\n"), hosts_lines, hosts_file }
    }
}

/// One cause and the servers it hit.
#[derive(Debug, Clone)]
pub struct Group {
    /// Stable id of the cause (URLs).
    pub key: String,
    /// The panel.
    pub panel: Panel,
    /// `crl-unreachable`, `prerequisite`, `files-in-use`, a job state for failures.
    pub code: String,
    /// The phase it happened in.
    pub phase: String,
    /// The cause, in a sentence.
    pub title: String,
    /// Every server, in dispatch order.
    pub members: Vec<Member>,
    /// How to fix it (one per group).
    pub remediation: Option<Remediation>,
    /// The engine applied the hosts-file workaround on some of them.
    pub applied: Option<String>,
    /// Decisions: the bulk answer's filter.
    pub filter: Option<DecisionFilter>,
    /// Decisions: the answers allowed.
    pub options: Vec<DecisionAnswer>,
}

impl Group {
    fn new(panel: Panel, code: &str, phase: &str, title: String) -> Self {
        let hash = sha2::Sha256::digest(format!("{}|{code}|{phase}|{title}", panel.as_str()).as_bytes());
        Self {
            key: hex::encode(&hash[..6]),
            panel,
            code: code.to_owned(),
            phase: phase.to_owned(),
            title,
            members: Vec::new(),
            remediation: None,
            applied: None,
            filter: None,
            options: Vec::new(),
        }
    }

    /// How many servers.
    pub fn count(&self) -> u64 {
        self.members.len() as u64
    }

    fn add(&mut self, job_id: &JobId, hostname: &str, state: JobState) {
        self.add_holding(job_id, hostname, state, &[]);
    }

    fn add_holding(&mut self, job_id: &JobId, hostname: &str, state: JobState, holders: &[HoldingProcess]) {
        if self.members.last().is_none_or(|m| &m.job_id != job_id) {
            self.members.push(Member {
                job_id: job_id.clone(),
                hostname: hostname.to_owned(),
                state: state.as_str(),
                holders: holders.to_vec(),
            });
        }
    }

    /// A files-in-use group (its servers list their holders).
    pub fn is_files_in_use(&self) -> bool {
        self.code == "files-in-use"
    }
}

/// Groups in first-seen order, found by cause: a hash map, so grouping 10,000 servers is
/// one lookup per row, and a group's key is hashed once, when the group is new.
#[derive(Debug, Default)]
struct Groups {
    list: Vec<Group>,
    by_cause: HashMap<(Panel, String, String, String), usize>,
}

impl Groups {
    /// The group of this cause, new (and empty) the first time.
    fn entry(&mut self, panel: Panel, code: &str, phase: &str, title: String) -> &mut Group {
        let cause = (panel, code.to_owned(), phase.to_owned(), title);
        if let Some(&i) = self.by_cause.get(&cause) {
            return &mut self.list[i];
        }
        let (panel, code, phase, title) = cause;
        self.list.push(Group::new(panel, &code, &phase, title.clone()));
        self.by_cause.insert((panel, code, phase, title), self.list.len() - 1);
        self.list.last_mut().expect("just pushed")
    }

    /// Biggest first (ties: first seen first).
    fn done(mut self) -> Vec<Group> {
        self.list.sort_by_key(|g| std::cmp::Reverse(g.members.len()));
        self.list
    }
}

/// Open decisions grouped by kind, code and question.
pub fn decision_groups(open: &[OpenDecision]) -> Vec<Group> {
    let mut groups = Groups::default();
    for d in open {
        let req = &d.request;
        let phase = req.phase.as_str();
        let g = match &req.kind {
            DecisionKind::Warning { code, remediation } => {
                let g = groups.entry(Panel::Decisions, code, phase, req.message.clone());
                if g.filter.is_none() {
                    g.filter = Some(DecisionFilter {
                        kind: "warning".into(),
                        code: Some(code.clone()),
                        matching: Some(req.message.clone()),
                        holders: None,
                    });
                    g.remediation = remediation.as_deref().map(Remediation::of);
                }
                g
            }
            DecisionKind::FilesInUse { processes } => {
                let holders = holders_signature(processes);
                let title = format!("files to replace are in use: {}", holding_text(&holders));
                let g = groups.entry(Panel::Decisions, "files-in-use", "", title);
                if g.filter.is_none() {
                    g.filter = Some(DecisionFilter {
                        kind: "files-in-use".into(),
                        holders: Some(holders),
                        ..DecisionFilter::default()
                    });
                }
                g
            }
        };
        if g.options.is_empty() {
            g.options.clone_from(&req.options);
        }
        let holders = match &req.kind {
            DecisionKind::FilesInUse { processes } => processes.as_slice(),
            DecisionKind::Warning { .. } => &[],
        };
        g.add_holding(&d.job_id, &d.hostname, JobState::Waiting, holders);
    }
    groups.done()
}

/// `tail: etc/demo.conf; java: lib/a.jar` as a sentence: `tail holds etc/demo.conf; java holds lib/a.jar`.
fn holding_text(signature: &str) -> String {
    signature.split("; ").map(|part| part.replacen(": ", " holds ", 1)).collect::<Vec<_>>().join("; ")
}

/// `text` without its ` (pid N)` parts: a warning about files in use names per-server pids.
fn without_pids(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(" (pid ") {
        let after = &rest[at + 6..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 && after[digits..].starts_with(')') {
            out.push_str(&rest[..at]);
            rest = &after[digits + 1..];
        } else {
            out.push_str(&rest[..at + 6]);
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// What a stored warning is about: the CRL endpoint and the probe's result, or the
/// message without its per-server pids. "CRL endpoint URL is unreachable: PROBLEM[; what
/// the workaround does]": the subject leaves out the workaround's sentence (it names
/// per-server paths).
fn warning_subject(message: &str) -> String {
    match message.strip_prefix("CRL endpoint ").and_then(|m| m.split_once(" is unreachable: ")) {
        Some((url, rest)) => format!("CRL endpoint {url} is unreachable: {}", rest.split("; ").next().unwrap_or(rest)),
        None => without_pids(message),
    }
}

/// Warnings grouped by code, phase and subject; a server counts once per group.
pub fn warning_groups(jobs: &[WarnedJob]) -> Vec<Group> {
    let mut groups = Groups::default();
    for job in jobs {
        for w in &job.warnings {
            let detail = &w.detail;
            let code = detail.code.as_deref().unwrap_or("warning");
            let g = groups.entry(Panel::Warnings, code, &w.phase, warning_subject(&w.message));
            if g.remediation.is_none() {
                g.remediation = detail.remediation.as_deref().map(Remediation::of);
            }
            if g.applied.is_none() {
                g.applied.clone_from(&detail.applied);
            }
            g.add(&job.job_id, &job.hostname, job.state);
        }
    }
    groups.done()
}

/// Failures grouped by failing phase (the first failed one, else the latest) and error.
pub fn failure_groups(jobs: &[FailedJob]) -> Vec<Group> {
    let mut groups = Groups::default();
    for job in jobs {
        let phase = job.failed_phase.or(job.current_phase);
        let title = match (&job.error, phase) {
            (Some(e), _) if !e.is_empty() => e.clone(),
            (_, Some(p)) => format!("failed in {}", p.title()),
            _ => "failed before any phase ran".to_owned(),
        };
        let phase = phase.map_or_else(|| "—".to_owned(), |p| format!("{} ({})", p.title(), p.as_str()));
        let g = groups.entry(Panel::Failures, "failure", &phase, title);
        g.add(&job.job_id, &job.hostname, job.state);
    }
    groups.done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetup_proto::{DecisionRequest, PhaseId};

    fn crl(id: u32, url: &str) -> DecisionRequest {
        let kind = DecisionKind::Warning {
            code: "crl-unreachable".into(),
            remediation: Some(format!(
                "These certificate revocation list endpoints cannot be reached from this server:\n    {url} (connection refused)\n\
                 Fix: allow this server to reach crl.test through the firewall or proxy,\nor, for this install only, make the \
                 lookup fail fast by adding these lines to /etc/hosts (remove them afterwards):\n    127.0.0.1 crl.test\nfleetup can do this"
            )),
        };
        DecisionRequest {
            id,
            phase: PhaseId::CheckSystem,
            message: format!("CRL endpoint {url} (connection refused) is unreachable"),
            options: DecisionRequest::options_for(&kind),
            kind,
        }
    }

    fn open(i: usize, request: DecisionRequest) -> OpenDecision {
        OpenDecision {
            job_id: format!("job_{i:026}").parse().unwrap(),
            hostname: format!("web-{i}"),
            request: std::sync::Arc::new(request),
        }
    }

    #[test]
    fn decisions_group_by_question_and_the_filter_covers_exactly_the_group() {
        let mut open_list: Vec<OpenDecision> = (0..5).map(|i| open(i, crl(1, "http://a.test/x.crl"))).collect();
        open_list.push(open(9, crl(1, "http://b.test/y.crl")));
        let groups = decision_groups(&open_list);
        assert_eq!(groups.iter().map(Group::count).collect::<Vec<_>>(), [5, 1]);
        let (big, small) = (&groups[0], &groups[1]);
        assert_ne!(big.key, small.key);
        let filter = big.filter.as_ref().unwrap();
        assert!(open_list.iter().filter(|d| filter.covers(&d.request)).count() == 5, "the answer covers the group");
        assert!(!filter.covers(&small.request_of(&open_list)));
        let rem = big.remediation.as_ref().unwrap();
        assert_eq!(rem.hosts_lines, ["127.0.0.1 crl.test"]);
        assert_eq!(rem.hosts_file.as_deref(), Some("/etc/hosts"));
        assert!(!rem.prose.contains("127.0.0.1"), "the lines to copy are not repeated in the prose");
        assert!(rem.prose.contains("http://a.test/x.crl (connection refused)"));
    }

    impl Group {
        fn request_of(&self, open: &[OpenDecision]) -> DecisionRequest {
            (*open.iter().find(|d| d.job_id == self.members[0].job_id).unwrap().request).clone()
        }
    }

    fn holding(i: usize, pid: u32, name: &str) -> OpenDecision {
        let kind = DecisionKind::FilesInUse {
            processes: vec![HoldingProcess { pid, name: name.into(), files: vec!["etc/demo.conf".into()] }],
        };
        let request = DecisionRequest {
            id: 2,
            phase: PhaseId::StopServices,
            message: format!("files in use (services still running): {name} (pid {pid}) holds etc/demo.conf"),
            options: DecisionRequest::options_for(&kind),
            kind,
        };
        open(i, request)
    }

    #[test]
    fn files_in_use_group_by_holders_and_each_server_keeps_its_pids() {
        let open_list = vec![holding(1, 100, "tail"), holding(2, 200, "tail"), holding(3, 300, "java")];
        let groups = decision_groups(&open_list);
        assert_eq!(
            groups.iter().map(|g| (g.count(), g.title.as_str())).collect::<Vec<_>>(),
            [
                (2, "files to replace are in use: tail holds etc/demo.conf"),
                (1, "files to replace are in use: java holds etc/demo.conf")
            ]
        );
        let tails = &groups[0];
        assert!(tails.is_files_in_use());
        assert_eq!(tails.members.iter().map(|m| m.holders[0].pid).collect::<Vec<_>>(), [100, 200]);
        let filter = tails.filter.as_ref().unwrap();
        let covered: Vec<bool> = open_list.iter().map(|d| filter.covers(&d.request)).collect();
        assert_eq!(covered, [true, true, false], "the group's answer covers its servers only");
    }

    #[test]
    fn a_files_in_use_warning_groups_without_its_pids() {
        assert_eq!(
            without_pids("files in use ignored: restart required (tail (pid 42) holds a; x (pid 7) holds b (pid ?)"),
            "files in use ignored: restart required (tail holds a; x holds b (pid ?)"
        );
    }

    #[test]
    fn warnings_group_by_endpoint_and_count_a_server_once() {
        let w = |url: &str| {
            serde_json::json!({ "phase": "check-system", "message": format!("CRL endpoint {url} is unreachable: timed out; /srv/{url}/hosts will map"),
                "data": { "warning": { "code": "crl-unreachable", "remediation": "r", "applied": "hosts-file" } } })
        };
        let job = |i: usize, ws: Vec<serde_json::Value>| WarnedJob {
            job_id: format!("job_{i:026}").parse().unwrap(),
            hostname: format!("web-{i}"),
            state: JobState::Succeeded,
            warnings: ws.iter().map(crate::store::StoredWarning::of).collect(),
        };
        let jobs =
            vec![job(1, vec![w("http://a"), w("http://a")]), job(2, vec![w("http://a")]), job(3, vec![w("http://b")])];
        let groups = warning_groups(&jobs);
        assert_eq!(
            groups.iter().map(|g| (g.count(), g.title.as_str())).collect::<Vec<_>>(),
            [
                (2, "CRL endpoint http://a is unreachable: timed out"),
                (1, "CRL endpoint http://b is unreachable: timed out")
            ]
        );
        assert_eq!(groups[0].applied.as_deref(), Some("hosts-file"));
    }
}

//! Bulk answers: which open decisions of a rollout one operator answer covers. At 10,000
//! servers a fleet-wide CRL warning is thousands of identical questions; one call answers
//! every one of a kind (optionally narrowed to one warning code and one endpoint or
//! prerequisite named in the question).

use fleetup_proto::{DecisionAnswer, DecisionKind, DecisionRequest, HoldingProcess};
use serde::{Deserialize, Serialize};

/// Which open decisions an answer covers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecisionFilter {
    /// `warning` or `files-in-use`.
    pub kind: String,
    /// Only warnings with this code (`crl-unreachable`, `prerequisite`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    /// Only questions whose text names this (a CRL endpoint URL, a prerequisite).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matching: Option<String>,
    /// Only files-in-use questions whose holders are exactly these, pids aside (the
    /// [`holders_signature`] of their processes: `tail: etc/demo.conf; java: lib/a.jar`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub holders: Option<String>,
}

/// Who holds what, without the pids (which differ on every server): process names and the
/// files each holds, sorted, so that the same cause on two servers reads the same.
pub fn holders_signature(processes: &[HoldingProcess]) -> String {
    let mut parts: Vec<String> = processes.iter().map(|p| format!("{}: {}", p.name, p.files.join(", "))).collect();
    parts.sort();
    parts.dedup();
    parts.join("; ")
}

impl DecisionFilter {
    /// Checks the filter against the answer it is given with; the error is for the operator.
    pub fn check(&self, answer: DecisionAnswer) -> Result<(), String> {
        let allowed: &[DecisionAnswer] = match self.kind.as_str() {
            "warning" => {
                if self.holders.is_some() {
                    return Err("holders narrows files-in-use decisions only; leave it out for warnings".into());
                }
                &[DecisionAnswer::Continue, DecisionAnswer::Cancel]
            }
            "files-in-use" => {
                if self.code.is_some() {
                    return Err("code narrows warnings only; leave it out for files-in-use".into());
                }
                &[DecisionAnswer::Retry, DecisionAnswer::Ignore, DecisionAnswer::Exit]
            }
            other => return Err(format!("unknown decision kind '{other}': use \"warning\" or \"files-in-use\"")),
        };
        if allowed.contains(&answer) {
            Ok(())
        } else {
            let names: Vec<&str> = allowed.iter().map(|a| a.as_str()).collect();
            Err(format!("'{answer}' does not answer a {} decision; allowed: {}", self.kind, names.join(", ")))
        }
    }

    /// True when the question is one this filter covers.
    pub fn covers(&self, req: &DecisionRequest) -> bool {
        let kind_ok = match (&req.kind, self.kind.as_str()) {
            (DecisionKind::Warning { code, .. }, "warning") => self.code.as_ref().is_none_or(|c| c == code),
            (DecisionKind::FilesInUse { processes }, "files-in-use") => {
                self.holders.as_ref().is_none_or(|h| *h == holders_signature(processes))
            }
            _ => false,
        };
        kind_ok && self.matching.as_ref().is_none_or(|m| req.message.contains(m.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetup_proto::PhaseId;

    fn warning(code: &str, message: &str) -> DecisionRequest {
        let kind = DecisionKind::Warning { code: code.into(), remediation: None };
        DecisionRequest {
            id: 1,
            phase: PhaseId::CheckSystem,
            message: message.into(),
            options: DecisionRequest::options_for(&kind),
            kind,
        }
    }

    #[test]
    fn filters_cover_their_kind_code_and_text() {
        let crl = warning("crl-unreachable", "CRL endpoint http://crl.a.test/x is unreachable: refused");
        let prereq = warning("prerequisite", "libfoo 2 is missing");
        let all = DecisionFilter { kind: "warning".into(), ..DecisionFilter::default() };
        let by_code = DecisionFilter { code: Some("crl-unreachable".into()), ..all.clone() };
        let by_host = DecisionFilter { matching: Some("crl.b.test".into()), ..by_code.clone() };
        let fiu = DecisionFilter { kind: "files-in-use".into(), ..DecisionFilter::default() };
        let table = [
            (&all, &crl, true),
            (&all, &prereq, true),
            (&by_code, &crl, true),
            (&by_code, &prereq, false),
            (&by_host, &crl, false),
            (&fiu, &crl, false),
        ];
        for (filter, req, want) in table {
            assert_eq!(filter.covers(req), want, "{filter:?} over {}", req.message);
        }
    }

    fn holding(list: &[(u32, &str, &str)]) -> Vec<HoldingProcess> {
        list.iter()
            .map(|(pid, name, file)| HoldingProcess { pid: *pid, name: (*name).into(), files: vec![(*file).into()] })
            .collect()
    }

    fn files_in_use(processes: Vec<HoldingProcess>) -> DecisionRequest {
        let kind = DecisionKind::FilesInUse { processes };
        DecisionRequest {
            id: 1,
            phase: PhaseId::StopServices,
            message: "files in use".into(),
            options: DecisionRequest::options_for(&kind),
            kind,
        }
    }

    #[test]
    fn a_holders_filter_covers_the_same_holders_whatever_their_pids() {
        let here = holding(&[(10, "tail", "etc/demo.conf"), (11, "java", "lib/a.jar")]);
        let filter = DecisionFilter {
            kind: "files-in-use".into(),
            holders: Some(holders_signature(&here)),
            ..DecisionFilter::default()
        };
        assert_eq!(filter.holders.as_deref(), Some("java: lib/a.jar; tail: etc/demo.conf"));
        let there = files_in_use(holding(&[(77, "java", "lib/a.jar"), (78, "tail", "etc/demo.conf")]));
        assert!(filter.covers(&files_in_use(here)) && filter.covers(&there), "same holders, other pids");
        assert!(!filter.covers(&files_in_use(holding(&[(10, "tail", "etc/demo.conf")]))), "other holders");
        let warn =
            DecisionFilter { kind: "warning".into(), holders: filter.holders.clone(), ..DecisionFilter::default() };
        assert!(warn.check(DecisionAnswer::Continue).unwrap_err().contains("files-in-use decisions only"));
    }

    #[test]
    fn answers_must_fit_the_kind() {
        let all = DecisionFilter { kind: "warning".into(), ..DecisionFilter::default() };
        assert_eq!(all.check(DecisionAnswer::Continue), Ok(()));
        assert!(all.check(DecisionAnswer::Retry).unwrap_err().contains("allowed: continue, cancel"));
        let odd = DecisionFilter { kind: "maybe".into(), ..DecisionFilter::default() };
        assert!(odd.check(DecisionAnswer::Continue).unwrap_err().contains("unknown decision kind"));
    }
}

//! Label selectors as people type them: `key=value, key2=value2` (every pair must match).

use std::collections::BTreeMap;

/// Parses `k=v, k2=v2` (blank: no condition); a pair without `=` is refused with a sentence.
pub fn parse_selector(s: &str) -> Result<Vec<(String, String)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            p.split_once('=')
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .ok_or_else(|| format!("label filter '{p}': write key=value, separated by commas"))
        })
        .collect()
}

/// Do `labels` carry every pair of `selector`?
pub fn matches(selector: &[(String, String)], labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_selector_is_pairs_and_every_pair_must_match() {
        let s = parse_selector(" env=prod, zone = a ,").unwrap();
        assert_eq!(s, vec![("env".into(), "prod".into()), ("zone".into(), "a".into())]);
        let labels: BTreeMap<String, String> = [("env".into(), "prod".into()), ("zone".into(), "a".into())].into();
        assert!(matches(&s, &labels) && matches(&[], &labels));
        assert!(!matches(&[("env".into(), "test".into())], &labels));
        assert!(parse_selector("env").unwrap_err().contains("key=value"));
    }
}

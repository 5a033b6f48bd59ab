//! The order of rollup versions, used by the agent (its high-water mark refuses an
//! older version unless a downgrade is allowed) and by the coordinator (a rollout that
//! would downgrade is refused at staging): one function, so both sides agree.
//!
//! The rule: when both versions are semantic versions (`1.2.3`, `2.0.0-rc.1`, `1.0.0+b7`),
//! semver precedence decides (build metadata ignored, a pre-release before its release).
//! Otherwise both are split into runs of digits and runs of other characters, compared
//! run by run: digit runs as numbers, other runs byte by byte, a text run before a
//! digit run at the same place; a version that is a prefix of the other is the older (`1.2` < `1.2.1`,
//! `2024.10` < `2024.9.1` is false: 10 > 9). The same text is always `Equal`.

use std::cmp::Ordering;

/// Compares two rollup versions by the rule above.
pub fn compare(a: &str, b: &str) -> Ordering {
    if a == b {
        return Ordering::Equal;
    }
    match (semver::Version::parse(a), semver::Version::parse(b)) {
        (Ok(x), Ok(y)) => x.cmp_precedence(&y),
        _ => natural(a, b),
    }
}

/// Whether installing `new` over a host that has had `mark` would go back in time.
pub fn is_downgrade(new: &str, mark: &str) -> bool {
    compare(new, mark) == Ordering::Less
}

#[derive(PartialEq, Eq, PartialOrd, Ord)]
enum Run<'a> {
    // Declared first: where one version has text and the other a number at the same
    // place, the text sorts first. Any fixed choice gives a total order; this is it.
    Text(&'a str),
    Number(u128, &'a str),
}

fn runs(v: &str) -> Vec<Run<'_>> {
    let mut out = Vec::new();
    let mut rest = v;
    while let Some(c) = rest.chars().next() {
        let digits = c.is_ascii_digit();
        let end = rest.find(|ch: char| ch.is_ascii_digit() != digits).unwrap_or(rest.len());
        let (run, tail) = rest.split_at(end);
        out.push(if digits {
            // Leading zeros and huge numbers: the value first, then the text.
            // (All zeros is 0: "0" trimmed is empty, which is no number.)
            let value = run.trim_start_matches('0');
            Run::Number(if value.is_empty() { 0 } else { value.parse().unwrap_or(u128::MAX) }, run)
        } else {
            Run::Text(run)
        });
        rest = tail;
    }
    out
}

fn natural(a: &str, b: &str) -> Ordering {
    runs(a).cmp(&runs(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semver_where_both_parse() {
        assert_eq!(compare("1.0.0", "2.0.0"), Ordering::Less);
        assert_eq!(compare("1.10.0", "1.9.0"), Ordering::Greater);
        assert_eq!(compare("2.0.0-rc.1", "2.0.0"), Ordering::Less);
        assert_eq!(compare("1.0.0+b7", "1.0.0"), Ordering::Equal);
        assert!(is_downgrade("1.5.0", "2.0.0"));
        assert!(!is_downgrade("2.0.0", "2.0.0"));
        assert!(!is_downgrade("2.0.1", "2.0.0"));
    }

    #[test]
    fn natural_order_otherwise() {
        assert_eq!(compare("1.2", "1.2.1"), Ordering::Less);
        assert_eq!(compare("2024.10", "2024.9.1"), Ordering::Greater);
        assert_eq!(compare("1.0~beta", "1.0~beta2"), Ordering::Less);
        assert_eq!(compare("r10", "r9"), Ordering::Greater);
        assert_eq!(compare("1.0", "1.1"), Ordering::Less, "a zero is 0, not a huge number");
        assert_eq!(compare("1.00", "1.0"), Ordering::Greater, "same value: the text decides, consistently");
        assert_ne!(compare("1.01", "1.1"), Ordering::Equal, "different text is never equal");
    }
}

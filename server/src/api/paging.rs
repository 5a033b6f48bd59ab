//! Cursor paging of the operator API's listings (`/rollouts`, `/agents`, `/packages`,
//! `/audit`, a rollout's jobs): a stable order, a page size (`?limit=`, 1 to 5000), and an opaque cursor
//! holding the sort key of the last item shown.
//!
//! A cursor is bound by a checksum to its listing and to its scope (the filters it was made
//! with; for a rollout's jobs, the rollout): an
//! altered or truncated cursor, or one reused with other filters, is a 400 that says so,
//! never a silently wrong page. It is not a secret (a forged one only picks where a listing
//! the caller may read anyway starts).

use crate::error::AppError;
use fleetup_proto::api::Page;
use sha2::{Digest as _, Sha256};

/// A cursor-paged listing: its name (bound into every cursor's checksum) and what its
/// cursors are bound to, as a refusal says it.
#[derive(Debug)]
pub struct Listing {
    name: &'static str,
    bound: &'static str,
}

/// `GET /rollouts`.
pub const ROLLOUTS: Listing = Listing { name: "rollouts", bound: "this listing of rollouts, with the same filters" };
/// `GET /agents`.
pub const AGENTS: Listing = Listing { name: "agents", bound: "this listing of agents, with the same filters" };
/// `GET /packages`.
pub const PACKAGES: Listing = Listing { name: "packages", bound: "this listing of packages, with the same filters" };
/// `GET /audit`.
pub const AUDIT: Listing = Listing { name: "audit", bound: "this listing of the audit log, with the same filters" };
/// `GET /rollouts/{id}/jobs`: bound to the rollout only (filters and view may change
/// between pages: the cursor only says where to start).
pub const JOBS: Listing = Listing { name: "jobs", bound: "this rollout's jobs" };
/// `GET /tokens`.
pub const TOKENS: Listing = Listing { name: "tokens", bound: "this listing of API tokens" };
/// `GET /users`.
pub const USERS: Listing = Listing { name: "users", bound: "this listing of users" };
/// `GET /webhooks/{id}/deliveries`: bound to the endpoint.
pub const DELIVERIES: Listing = Listing { name: "deliveries", bound: "this webhook's deliveries" };

fn checksum(listing: &Listing, scope: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("fleetup cursor|{}|{scope}|{key}", listing.name).as_bytes());
    hex::encode(&digest[..8])
}

/// The cursor after the item whose sort key is `key`, in `listing` under `scope` (the
/// filters, or the parent object).
pub fn encode(listing: &Listing, scope: &str, key: &[String]) -> String {
    let key = serde_json::to_string(key).expect("strings serialize");
    hex::encode(format!("{}.{key}", checksum(listing, scope, &key)))
}

/// Where a page starts: the sort key the `cursor` names (`None`: the first page). Offset
/// paging is refused with what to do instead; a cursor that is not one of this listing's
/// under this scope is a 400 with a sentence.
pub fn after(
    listing: &Listing,
    scope: &str,
    cursor: Option<&str>,
    offset: Option<&str>,
) -> Result<Option<Vec<String>>, AppError> {
    if offset.is_some() {
        return Err(AppError::BadRequest(
            "offset paging is not supported: this listing pages by cursor; pass the \"next\" value of the previous \
             page as ?cursor= (omit it for the first page)"
                .into(),
        ));
    }
    cursor.map(|c| decode(listing, scope, c)).transpose()
}

fn decode(listing: &Listing, scope: &str, cursor: &str) -> Result<Vec<String>, AppError> {
    let bad = || {
        AppError::BadRequest(format!(
            "invalid cursor '{cursor}': pass the \"next\" value of the previous page of {} unchanged, or omit \
             cursor to start from the first page",
            listing.bound
        ))
    };
    let text = hex::decode(cursor).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad)?;
    let (sum, key) = text.split_once('.').ok_or_else(bad)?;
    if sum != checksum(listing, scope, key) {
        return Err(bad());
    }
    serde_json::from_str(key).map_err(|_| bad())
}

/// A two-part sort key, each part parsed: (time in ms, id) of the newest-first listings,
/// (wave, position) of a rollout's jobs.
pub fn pair<A: std::str::FromStr, B: std::str::FromStr>(key: &[String]) -> Result<(A, B), AppError> {
    let bad = || AppError::BadRequest("invalid cursor: pass the \"next\" value of the previous page unchanged".into());
    match key {
        [a, b] => Ok((a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?)),
        _ => Err(bad()),
    }
}

/// A page of `items` already filtered and in order, read with one more than `limit`:
/// the extra one only says that there is a next page.
pub fn page<T>(
    mut items: Vec<T>,
    limit: u64,
    listing: &Listing,
    scope: &str,
    key: impl Fn(&T) -> Vec<String>,
) -> Page<T> {
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let more = items.len() > limit;
    items.truncate(limit);
    let next = if more { items.last().map(|last| encode(listing, scope, &key(last))) } else { None };
    Page { items, next }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cursor_round_trips_and_refuses_tampering_or_other_filters() {
        let key = vec!["web-1.example".to_owned(), "a_1".to_owned()];
        let c = encode(&AGENTS, "online=true", &key);
        assert_eq!(decode(&AGENTS, "online=true", &c).unwrap(), key);
        assert!(decode(&AGENTS, "online=false", &c).is_err(), "other filters");
        assert!(decode(&ROLLOUTS, "online=true", &c).is_err(), "another listing");
        let mut tampered = c.clone();
        tampered.replace_range(0..2, if &c[0..2] == "30" { "31" } else { "30" });
        assert!(decode(&AGENTS, "online=true", &tampered).is_err());
        assert!(after(&AGENTS, "", None, Some("10")).is_err(), "offsets are refused");
        let p = page(vec![1, 2, 3], 2, &PACKAGES, "", |n| vec![n.to_string()]);
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(after(&PACKAGES, "", p.next.as_deref(), None).unwrap(), Some(vec!["2".to_owned()]));
        assert_eq!(page(vec![1, 2], 2, &PACKAGES, "", |n| vec![n.to_string()]).next, None);
    }
}

//! Cursor paging of the operator API's listings (`/rollouts`, `/agents`, `/packages`,
//! `/audit`): a stable order, a page size (`?limit=`, 1 to 5000), and an opaque cursor
//! holding the sort key of the last item shown.
//!
//! A cursor is bound by a checksum to its listing and to the filters it was made with: an
//! altered or truncated cursor, or one reused with other filters, is a 400 that says so,
//! never a silently wrong page. It is not a secret (a forged one only picks where a listing
//! the caller may read anyway starts).

use crate::error::AppError;
use fleetup_proto::api::Page;
use sha2::{Digest as _, Sha256};

/// Offset paging is refused, with what to do instead.
pub fn refuse_offset(offset: Option<&str>) -> Result<(), AppError> {
    match offset {
        None => Ok(()),
        Some(_) => Err(AppError::BadRequest(
            "offset paging is not supported: this listing pages by cursor; pass the \"next\" value of the previous \
             page as ?cursor= (omit it for the first page)"
                .into(),
        )),
    }
}

fn checksum(listing: &str, scope: &str, key: &str) -> String {
    let digest = Sha256::digest(format!("fleetup cursor|{listing}|{scope}|{key}").as_bytes());
    hex::encode(&digest[..8])
}

/// The cursor after the item whose sort key is `key`, in `listing` under `scope` (the
/// filters, or the parent object).
pub fn encode(listing: &str, scope: &str, key: &[String]) -> String {
    let key = serde_json::to_string(key).expect("strings serialize");
    hex::encode(format!("{}.{key}", checksum(listing, scope, &key)))
}

/// The sort key a cursor starts after; a 400 with a sentence when it is not one of this
/// listing's under these filters.
pub fn decode(listing: &str, scope: &str, cursor: &str) -> Result<Vec<String>, AppError> {
    let bad = || {
        AppError::BadRequest(format!(
            "invalid cursor '{cursor}': pass the \"next\" value of the previous page of this {listing} listing \
             unchanged and with the same filters, or omit cursor to start from the first page"
        ))
    };
    let text = hex::decode(cursor).ok().and_then(|b| String::from_utf8(b).ok()).ok_or_else(bad)?;
    let (sum, key) = text.split_once('.').ok_or_else(bad)?;
    if sum != checksum(listing, scope, key) {
        return Err(bad());
    }
    serde_json::from_str(key).map_err(|_| bad())
}

/// The (time in ms, id) keyset of a listing ordered newest first (rollouts, audit).
pub fn time_and_id(key: &[String]) -> Result<(i64, String), AppError> {
    let bad = || AppError::BadRequest("invalid cursor: pass the \"next\" value of the previous page unchanged".into());
    match key {
        [at, id] => Ok((at.parse().map_err(|_| bad())?, id.clone())),
        _ => Err(bad()),
    }
}

/// A page of `items` already filtered and in order, read with one more than `limit`:
/// the extra one only says that there is a next page.
pub fn page<T>(mut items: Vec<T>, limit: u64, listing: &str, scope: &str, key: impl Fn(&T) -> Vec<String>) -> Page<T> {
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
        let c = encode("agents", "online=true", &key);
        assert_eq!(decode("agents", "online=true", &c).unwrap(), key);
        assert!(decode("agents", "online=false", &c).is_err(), "other filters");
        assert!(decode("rollouts", "online=true", &c).is_err(), "another listing");
        let mut tampered = c.clone();
        tampered.replace_range(0..2, if &c[0..2] == "30" { "31" } else { "30" });
        assert!(decode("agents", "online=true", &tampered).is_err());
        let p = page(vec![1, 2, 3], 2, "x", "", |n| vec![n.to_string()]);
        assert_eq!(p.items, vec![1, 2]);
        assert_eq!(decode("x", "", p.next.as_deref().unwrap()).unwrap(), vec!["2".to_owned()]);
        assert_eq!(page(vec![1, 2], 2, "x", "", |n| vec![n.to_string()]).next, None);
    }
}

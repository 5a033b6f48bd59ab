//! `[webapp]`: a web application deployed into `releases/<version>/` and switched
//! atomically.

use super::{ManifestError, check_relative, invalid};
use serde::{Deserialize, Serialize};

/// `[webapp]`
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Webapp {
    /// Directory in the package holding the web app.
    pub source: String,
    /// Directory under the install root that holds `releases/<version>/` and the
    /// `current` symlink that is switched atomically.
    pub web_root: String,
    /// How many releases to keep in `releases/`, the new current one included; older
    /// ones are removed in `cleanup`. None: keep them all.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keep_releases: Option<u32>,
}

/// Both directories relative; at least the current release kept.
pub(super) fn validate(w: &Webapp) -> Result<(), ManifestError> {
    check_relative("webapp.source", &w.source)?;
    check_relative("webapp.web_root", &w.web_root)?;
    if w.keep_releases == Some(0) {
        return Err(invalid("webapp.keep_releases", "keep at least 1 release (the current one)"));
    }
    Ok(())
}

//! Typed ids: one newtype per kind of object, and one id generator.
//!
//! Every id the coordinator makes is a UUIDv7 (time-ordered, so ids sort by creation and
//! index well). Parsing is strict but not UUID-only: an id is 1 to 64 characters of ASCII
//! letters, digits, `-` and `_`. That keeps every id safe as a path component or a file name
//! (no `/`, no `.`, no NUL) wherever it comes from: a URL path, a JSON body, the
//! coordinator's answer to an agent. A string that does not parse names no object, so the
//! coordinator answers it as "not found" and the agent refuses it.

use serde::{Deserialize, Deserializer, Serialize};
use std::fmt;
use std::str::FromStr;

/// Longest id accepted.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not an id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{shown}' is not a valid {kind} id: ids are 1 to {MAX_ID_LEN} letters, digits, '-' or '_'")]
pub struct IdError {
    /// The kind of object (`job`, `rollout`, …).
    pub kind: &'static str,
    /// The refused text, cut to a readable length.
    pub shown: String,
}

/// Checks the id syntax shared by every kind.
pub fn check_id(kind: &'static str, s: &str) -> Result<(), IdError> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        let shown: String = s.chars().take(80).map(|c| if c.is_control() { '\u{fffd}' } else { c }).collect();
        Err(IdError { kind, shown })
    }
}

/// A fresh time-ordered id (UUIDv7), the one generator every id kind uses.
pub fn new_id() -> String {
    uuid::Uuid::now_v7().to_string()
}

/// The schema every id kind shares in the OpenAPI document: the syntax [`check_id`] accepts.
#[cfg(feature = "openapi")]
fn id_schema(kind: &str) -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
    use utoipa::openapi::schema::{ObjectBuilder, Type};
    ObjectBuilder::new()
        .schema_type(Type::String)
        .min_length(Some(1))
        .max_length(Some(MAX_ID_LEN))
        .pattern(Some("^[A-Za-z0-9_-]+$"))
        .description(Some(format!("A {kind} id (UUIDv7 when the coordinator made it)")))
        .into()
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
        #[serde(transparent)]
        pub struct $name(String);

        impl $name {
            /// The kind of object, as error messages name it.
            pub const KIND: &'static str = $kind;

            /// A fresh id.
            #[allow(clippy::new_without_default)]
            pub fn new() -> Self {
                Self(new_id())
            }

            /// The id as text.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                check_id($kind, s)?;
                Ok(Self(s.to_owned()))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                check_id($kind, &s)?;
                Ok(Self(s))
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::try_from(s).map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::PartialSchema for $name {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                id_schema($kind)
            }
        }

        #[cfg(feature = "openapi")]
        impl utoipa::ToSchema for $name {}

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }
    };
}

id_type!(
    /// An enrolled agent (one server).
    AgentId,
    "agent"
);
id_type!(
    /// One server's install within a rollout.
    JobId,
    "job"
);
id_type!(
    /// A rollout.
    RolloutId,
    "rollout"
);
id_type!(
    /// An uploaded package.
    PackageId,
    "package"
);
id_type!(
    /// A dashboard user.
    UserId,
    "user"
);
id_type!(
    /// An API token or an enrollment token.
    TokenId,
    "token"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_parse_strictly() {
        let id = JobId::new();
        assert_eq!(id.as_str().len(), 36);
        assert_eq!(id.as_str().parse::<JobId>().unwrap(), id);
        for bad in ["", "../../../x", "a/b", "a.b", "x\0y", "@127.0.0.2:80", &"a".repeat(65)] {
            let err = bad.parse::<JobId>().unwrap_err();
            assert_eq!(err.kind, "job", "{bad}");
        }
        assert!("nope".parse::<RolloutId>().is_ok());
        let json: Result<JobId, _> = serde_json::from_str("\"../x\"");
        assert!(json.unwrap_err().to_string().contains("not a valid job id"));
        assert_eq!(serde_json::to_string(&id).unwrap(), format!("\"{id}\""));
    }
}

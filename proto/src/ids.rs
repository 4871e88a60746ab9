//! Checked identifiers, at the bottom of proto: every other module may use them,
//! and they use nothing of proto.
//!
//! - [`RegionId`], [`TenantId`]: lowercase ids from the configuration.
//! - [`check_name`]: subjects, assets and output names chosen by clients.

use std::fmt;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Identifier of a region, such as `eu`: lowercase letters, digits and `-`.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct RegionId(String);

/// Identifier of a tenant, such as `demo-eu`: lowercase letters, digits and `-`.
#[derive(
    Debug,
    Clone,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    utoipa::ToSchema,
)]
#[serde(try_from = "String", into = "String")]
pub struct TenantId(String);

fn check_identifier(kind: &str, value: &str, max_len: usize) -> Result<(), String> {
    let ok_chars = value
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if value.is_empty() || value.len() > max_len || !ok_chars || value.starts_with('-') {
        return Err(format!(
            "{kind} id {value:?} must be 1 to {max_len} characters of a-z, 0-9 and '-', not starting with '-'"
        ));
    }
    Ok(())
}

macro_rules! identifier {
    ($type:ident, $kind:literal, $max:literal) => {
        impl $type {
            pub fn new(value: impl Into<String>) -> Result<Self, String> {
                let value = value.into();
                check_identifier($kind, &value, $max)?;
                Ok(Self(value))
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $type {
            type Error = String;
            fn try_from(value: String) -> Result<Self, String> {
                Self::new(value)
            }
        }
        impl From<$type> for String {
            fn from(id: $type) -> String {
                id.0
            }
        }
        impl fmt::Display for $type {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}
identifier!(RegionId, "region", 32);
identifier!(TenantId, "tenant", 63);

/// Stands in for the subject of images that are about no one in particular.
pub const NO_SUBJECT: &str = "_";

/// Longest subject, asset or output name.
pub const MAX_NAME_LEN: usize = 64;

/// Checks a subject, asset or output name: `[A-Za-z0-9_-]{1,64}`, not `_` alone.
pub fn check_name(value: &str) -> Result<(), String> {
    let ok = !value.is_empty()
        && value.len() <= MAX_NAME_LEN
        && value != NO_SUBJECT
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{value:?} must be 1 to 64 characters of A-Z a-z 0-9 - _ (and not \"_\" alone)"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_lowercase_and_bounded() {
        assert!(TenantId::new("demo-eu").is_ok());
        for bad in ["", "Demo", "-eu", "a b", &"x".repeat(64)] {
            assert!(TenantId::new(bad).is_err(), "{bad:?}");
        }
        assert!(RegionId::new("r".repeat(33)).is_err());
    }

    #[test]
    fn names_exclude_separators_and_the_no_subject_marker() {
        assert!(check_name("user-42_a").is_ok());
        for bad in ["", "_", "a/b", "a.b", &"n".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }
}

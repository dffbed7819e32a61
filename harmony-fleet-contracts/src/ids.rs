//! Validated identifiers: [`DeviceId`] and [`DeploymentName`].
//!
//! Both end up inside NATS subjects and KV keys as a **single token**, and on the device as
//! parts of container names and file names, so they are validated wherever they enter the
//! program: [`FromStr`], [`TryFrom<String>`] and serde deserialisation all run the same check.
//! A value of these types is therefore always safe to splice into a subject.

use std::borrow::Borrow;
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use serde::{Deserialize, Serialize, Serializer};

/// Longest device id: an RFC 1123 label.
pub const DEVICE_ID_MAX_LEN: usize = 63;

/// Longest deployment name, in bytes.
pub const DEPLOYMENT_NAME_MAX_LEN: usize = 253;

/// How much of a rejected value an error message quotes (the rest is elided).
const QUOTE_MAX: usize = 80;

/// Which identifier an [`IdError`] is about; selects the rule and the fix in its message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum IdKind {
    /// A [`DeviceId`].
    DeviceId,
    /// A [`DeploymentName`].
    DeploymentName,
}

impl IdKind {
    fn rule(self) -> &'static str {
        match self {
            IdKind::DeviceId => {
                "device ids are RFC 1123 labels: lowercase letters a-z, digits 0-9 and '-', \
                 starting and ending with a letter or digit, at most 63 bytes"
            }
            IdKind::DeploymentName => {
                "deployment names use ASCII letters, digits, '-' and '_', start with a letter or \
                 digit, and are at most 253 bytes"
            }
        }
    }

    fn fix_for(self, ch: char) -> &'static str {
        match (self, ch) {
            (IdKind::DeviceId, 'A'..='Z') => "use lowercase letters",
            (_, '.') => "replace '.' with '-': a dot would split the NATS subject token",
            (_, '*' | '>') => "remove it: NATS treats '*' and '>' as wildcards",
            (_, c) if c.is_whitespace() => "remove the whitespace or replace it with '-'",
            (IdKind::DeviceId, '_') => "replace '_' with '-'",
            (_, c) if !c.is_ascii() => "use ASCII characters only",
            _ => "remove or replace that character",
        }
    }
}

impl fmt::Display for IdKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IdKind::DeviceId => "device id",
            IdKind::DeploymentName => "deployment name",
        })
    }
}

/// Why a string is not a valid [`DeviceId`] or [`DeploymentName`]; the message states the rule
/// that was broken and how to fix the value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdError {
    /// The value is empty.
    #[error("{kind} must not be empty ({rule})", rule = kind.rule())]
    Empty {
        /// Which identifier.
        kind: IdKind,
    },
    /// The value is longer than the limit.
    #[error(
        "{kind} {value:?} is {len} bytes long but at most {max} are allowed: shorten it \
         ({rule})",
        rule = kind.rule()
    )]
    TooLong {
        /// Which identifier.
        kind: IdKind,
        /// The (possibly elided) rejected value.
        value: String,
        /// Its length in bytes.
        len: usize,
        /// The limit in bytes.
        max: usize,
    },
    /// The value contains a character outside the allowed set.
    #[error(
        "{kind} {value:?} contains {ch:?} at byte {index}: {fix} ({rule})",
        fix = kind.fix_for(*ch),
        rule = kind.rule()
    )]
    InvalidChar {
        /// Which identifier.
        kind: IdKind,
        /// The (possibly elided) rejected value.
        value: String,
        /// The first offending character.
        ch: char,
        /// Its byte offset.
        index: usize,
    },
    /// The first character is not a letter or digit.
    #[error(
        "{kind} {value:?} must start with a letter or digit: remove the leading {ch:?} ({rule})",
        rule = kind.rule()
    )]
    BadStart {
        /// Which identifier.
        kind: IdKind,
        /// The (possibly elided) rejected value.
        value: String,
        /// The offending first character.
        ch: char,
    },
    /// The last character is not a letter or digit.
    #[error(
        "{kind} {value:?} must end with a letter or digit: remove the trailing {ch:?} ({rule})",
        rule = kind.rule()
    )]
    BadEnd {
        /// Which identifier.
        kind: IdKind,
        /// The (possibly elided) rejected value.
        value: String,
        /// The offending last character.
        ch: char,
    },
}

impl IdError {
    /// Which identifier the error is about.
    pub fn kind(&self) -> IdKind {
        match self {
            IdError::Empty { kind }
            | IdError::TooLong { kind, .. }
            | IdError::InvalidChar { kind, .. }
            | IdError::BadStart { kind, .. }
            | IdError::BadEnd { kind, .. } => *kind,
        }
    }
}

/// Shortens `value` for an error message, on a char boundary.
fn quote(value: &str) -> String {
    if value.len() <= QUOTE_MAX {
        return value.to_owned();
    }
    let mut end = QUOTE_MAX;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &value[..end])
}

fn validate_device_id(value: &str) -> Result<(), IdError> {
    let kind = IdKind::DeviceId;
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if let Some((index, ch)) = value
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(IdError::InvalidChar {
            kind,
            value: quote(value),
            ch,
            index,
        });
    }
    if value.len() > DEVICE_ID_MAX_LEN {
        return Err(IdError::TooLong {
            kind,
            value: quote(value),
            len: value.len(),
            max: DEVICE_ID_MAX_LEN,
        });
    }
    // Only ASCII is left at this point, so byte indexing is char indexing.
    let bytes = value.as_bytes();
    if bytes[0] == b'-' {
        return Err(IdError::BadStart {
            kind,
            value: quote(value),
            ch: '-',
        });
    }
    if bytes[bytes.len() - 1] == b'-' {
        return Err(IdError::BadEnd {
            kind,
            value: quote(value),
            ch: '-',
        });
    }
    Ok(())
}

fn validate_deployment_name(value: &str) -> Result<(), IdError> {
    let kind = IdKind::DeploymentName;
    if value.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if let Some((index, ch)) = value
        .char_indices()
        .find(|(_, c)| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(IdError::InvalidChar {
            kind,
            value: quote(value),
            ch,
            index,
        });
    }
    if value.len() > DEPLOYMENT_NAME_MAX_LEN {
        return Err(IdError::TooLong {
            kind,
            value: quote(value),
            len: value.len(),
            max: DEPLOYMENT_NAME_MAX_LEN,
        });
    }
    let first = value.as_bytes()[0];
    if !first.is_ascii_alphanumeric() {
        return Err(IdError::BadStart {
            kind,
            value: quote(value),
            ch: char::from(first),
        });
    }
    Ok(())
}

macro_rules! validated_string {
    ($(#[$meta:meta])* $name:ident, $validate:ident) => {
        $(#[$meta])*
        ///
        /// Held as a shared `Arc<str>`: a clone is a reference count, so the operator's many
        /// copies of one id (in its indexes, per `(deployment, device)` pair) share one string,
        /// and two copies of one string compare equal without reading it.
        #[derive(Debug, Clone, Deserialize)]
        #[serde(try_from = "String")]
        pub struct $name(Arc<str>);

        impl PartialEq for $name {
            fn eq(&self, other: &Self) -> bool {
                Arc::ptr_eq(&self.0, &other.0) || self.0 == other.0
            }
        }

        impl Eq for $name {}

        impl Ord for $name {
            fn cmp(&self, other: &Self) -> std::cmp::Ordering {
                if Arc::ptr_eq(&self.0, &other.0) {
                    std::cmp::Ordering::Equal
                } else {
                    self.0.cmp(&other.0)
                }
            }
        }

        impl PartialOrd for $name {
            fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
                Some(self.cmp(other))
            }
        }

        impl std::hash::Hash for $name {
            /// The string's hash, as `str` hashes (so maps keyed by it are searched by `&str`).
            fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
                self.0.hash(state)
            }
        }

        impl $name {
            /// Whether another copy of this value shares its string (an interner drops the
            /// ids nothing else holds).
            pub fn is_shared(&self) -> bool {
                Arc::strong_count(&self.0) > 1
            }

            /// Validates `value` and wraps it.
            pub fn new(value: impl Into<String>) -> Result<Self, IdError> {
                let value = value.into();
                $validate(&value)?;
                Ok(Self(Arc::from(value)))
            }

            /// The validated string.
            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// Gives back the owned string.
            pub fn into_inner(self) -> String {
                self.0.to_string()
            }
        }

        impl FromStr for $name {
            type Err = IdError;

            fn from_str(value: &str) -> Result<Self, IdError> {
                $validate(value)?;
                Ok(Self(Arc::from(value)))
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;

            fn try_from(value: String) -> Result<Self, IdError> {
                Self::new(value)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = IdError;

            fn try_from(value: &str) -> Result<Self, IdError> {
                value.parse()
            }
        }

        impl From<$name> for String {
            fn from(value: $name) -> String {
                value.0.to_string()
            }
        }

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

        impl Borrow<str> for $name {
            fn borrow(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
                serializer.serialize_str(&self.0)
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                *self.0 == *other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                *self.0 == **other
            }
        }
    };
}

validated_string!(
    /// A device's identity: an RFC 1123 *label* (lowercase `a-z`, `0-9`, `-`; starts and ends
    /// with a letter or digit; 1–63 bytes).
    ///
    /// It is the name of the cluster-scoped `Device` resource and one NATS subject token in
    /// every key and subject of that device, which is why dots are not allowed even though
    /// RFC 1123 *subdomains* would allow them.
    DeviceId,
    validate_device_id
);

validated_string!(
    /// The name of a deployment on a device: 1–253 bytes of ASCII letters, digits, `-` and
    /// `_`, starting with a letter or digit.
    ///
    /// MISSION.md requires non-empty, ≤ 253 bytes, and no `.`, `*`, `>` or whitespace (one
    /// NATS subject token). This type is stricter, on purpose:
    /// - JetStream KV keys only allow `[-/_=.a-zA-Z0-9]`, so anything else (`$`, `:`, non-ASCII,
    ///   control characters) would be refused by the client library at write time;
    /// - `/` is refused because the agent derives file names from the deployment name (a `/`
    ///   would escape its data directory), and `=` because podman container names (which the
    ///   agent derives from it) do not allow it;
    /// - a leading `-` or `_` is refused because a name starting with `-` reads as a flag on a
    ///   `podman` command line and podman names must start with a letter or digit.
    ///
    /// Upper case is allowed: the published design does not forbid it.
    DeploymentName,
    validate_deployment_name
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_typical_device_ids() {
        for id in ["pi-1", "a", "0", "rpi5-plant-3-line-12", &"a".repeat(63)] {
            assert!(DeviceId::new(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn rejects_device_id_with_uppercase_and_says_use_lowercase() {
        let err = DeviceId::new("Pi-1").unwrap_err();
        assert!(matches!(
            err,
            IdError::InvalidChar {
                ch: 'P',
                index: 0,
                ..
            }
        ));
        assert!(err.to_string().contains("use lowercase"), "{err}");
        assert!(err.to_string().contains("RFC 1123"), "{err}");
    }

    #[test]
    fn rejects_device_id_with_dot_and_explains_the_subject_token() {
        let err = DeviceId::new("pi.1").unwrap_err();
        assert!(err.to_string().contains("NATS subject token"), "{err}");
    }

    #[test]
    fn rejects_device_id_with_leading_or_trailing_dash() {
        assert!(matches!(
            DeviceId::new("-pi").unwrap_err(),
            IdError::BadStart { .. }
        ));
        assert!(matches!(
            DeviceId::new("pi-").unwrap_err(),
            IdError::BadEnd { .. }
        ));
    }

    #[test]
    fn rejects_too_long_device_id_with_its_length() {
        let err = DeviceId::new("a".repeat(64)).unwrap_err();
        assert!(matches!(
            err,
            IdError::TooLong {
                len: 64,
                max: 63,
                ..
            }
        ));
    }

    #[test]
    fn rejects_empty_ids() {
        assert_eq!(
            DeviceId::new("").unwrap_err(),
            IdError::Empty {
                kind: IdKind::DeviceId
            }
        );
        assert_eq!(
            DeploymentName::new("").unwrap_err(),
            IdError::Empty {
                kind: IdKind::DeploymentName
            }
        );
    }

    #[test]
    fn deployment_name_allows_upper_case_and_underscore() {
        assert!(DeploymentName::new("Web_Frontend-2").is_ok());
        assert!(DeploymentName::new("x".repeat(253)).is_ok());
    }

    #[test]
    fn rejects_deployment_name_with_slash_or_leading_dash() {
        assert!(matches!(
            DeploymentName::new("a/b").unwrap_err(),
            IdError::InvalidChar { ch: '/', .. }
        ));
        assert!(matches!(
            DeploymentName::new("-rm").unwrap_err(),
            IdError::BadStart { ch: '-', .. }
        ));
        assert!(matches!(
            DeploymentName::new("x".repeat(254)).unwrap_err(),
            IdError::TooLong { .. }
        ));
    }

    #[test]
    fn error_quotes_at_most_a_prefix_of_huge_values() {
        let err = DeviceId::new("a".repeat(10_000)).unwrap_err();
        assert!(err.to_string().len() < 400, "{err}");
    }

    #[test]
    fn ids_serialize_as_plain_strings() {
        let id = DeviceId::new("pi-1").unwrap();
        assert_eq!(serde_json::to_string(&id).unwrap(), "\"pi-1\"");
    }
}

//! Deterministic JSON encoding and the content hash built on it.
//!
//! The operator must write *identical bytes for identical input* (so a restart rewrites
//! nothing and "unchanged" can be detected by comparing bytes), and the agent labels
//! containers with a hash of what it was asked to run. Both rest on [`to_canonical_json`]:
//! object keys sorted bytewise at every depth, no insignificant whitespace, serde_json's
//! number and string formatting. Key order is imposed here rather than relying on struct field
//! order or on `serde_json`'s map type (its `preserve_order` feature, which another crate in
//! the build could switch on, would change it).
//!
//! **Hash the bytes you received, do not re-encode first**: an agent older than the operator
//! drops fields it does not know, so its re-encoding would hash differently.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The value could not be encoded as canonical JSON.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot encode the value as canonical JSON: {0} (maps must have string keys and \
     Serialize impls must not fail)"
)]
pub struct CanonicalError(#[from] serde_json::Error);

/// Encodes `value` as canonical JSON: sorted object keys, compact. Equal values give equal
/// bytes, whatever the field order of their types or the order maps were filled in.
pub fn to_canonical_json<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, CanonicalError> {
    let value = serde_json::to_value(value)?;
    let mut out = Vec::with_capacity(256);
    write_canonical(&value, &mut out)?;
    Ok(out)
}

fn write_canonical(value: &Value, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
    match value {
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out)?;
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut entries: Vec<(&String, &Value)> = map.iter().collect();
            entries.sort_unstable_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
            out.push(b'{');
            for (i, (key, item)) in entries.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                serde_json::to_writer(&mut *out, key)?;
                out.push(b':');
                write_canonical(item, out)?;
            }
            out.push(b'}');
        }
        scalar => serde_json::to_writer(&mut *out, scalar)?,
    }
    Ok(())
}

/// SHA-256 of some bytes, as 64 lowercase hex characters. Used as the payload revision in
/// `DeploymentState` and as a container label on the device.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct ContentHash(String);

/// Length of a [`ContentHash`] in hex characters.
pub const CONTENT_HASH_LEN: usize = 64;

/// A string that is not 64 lowercase hex characters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "content hash {value:?} is invalid: expected {CONTENT_HASH_LEN} lowercase hex characters \
     (a SHA-256 digest as produced by ContentHash::of_bytes)"
)]
pub struct ContentHashError {
    /// The rejected value, elided to 80 characters.
    pub value: String,
}

impl ContentHash {
    /// Hashes `bytes` (for a payload: the exact bytes stored in KV).
    pub fn of_bytes(bytes: &[u8]) -> Self {
        Self(hex::encode(Sha256::digest(bytes)))
    }

    /// Hashes the canonical JSON encoding of `value`.
    pub fn of_value<T: Serialize + ?Sized>(value: &T) -> Result<Self, CanonicalError> {
        Ok(Self::of_bytes(&to_canonical_json(value)?))
    }

    /// The hex digest.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The first 12 hex characters: short enough for a container name suffix, long enough
    /// to tell revisions apart on one device.
    pub fn short(&self) -> &str {
        &self.0[..12]
    }
}

impl FromStr for ContentHash {
    type Err = ContentHashError;

    fn from_str(value: &str) -> Result<Self, ContentHashError> {
        if value.len() == CONTENT_HASH_LEN
            && value
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            Ok(Self(value.to_owned()))
        } else {
            Err(ContentHashError {
                value: value.chars().take(80).collect(),
            })
        }
    }
}

impl TryFrom<String> for ContentHash {
    type Error = ContentHashError;

    fn try_from(value: String) -> Result<Self, ContentHashError> {
        value.parse()
    }
}

impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", self.0)
    }
}

impl AsRef<str> for ContentHash {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sorts_keys_at_every_depth_and_drops_whitespace() {
        let value = json!({"b": 1, "a": {"z": [3, {"y": true, "x": null}], "c": "s"}});
        let bytes = to_canonical_json(&value).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"a":{"c":"s","z":[3,{"x":null,"y":true}]},"b":1}"#
        );
    }

    #[test]
    fn escapes_strings_like_serde_json() {
        let bytes = to_canonical_json(&json!({"k\"": "line\nbreak\u{1}"})).unwrap();
        assert_eq!(
            String::from_utf8(bytes).unwrap(),
            r#"{"k\"":"line\nbreak\u0001"}"#
        );
    }

    #[test]
    fn hash_of_empty_input_is_the_sha256_test_vector() {
        assert_eq!(
            ContentHash::of_bytes(b"").as_str(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn content_hash_parses_only_lowercase_sha256_hex() {
        let hash = ContentHash::of_bytes(b"x");
        assert_eq!(hash.as_str().parse::<ContentHash>().unwrap(), hash);
        assert!(hash.as_str().to_uppercase().parse::<ContentHash>().is_err());
        assert!("abc".parse::<ContentHash>().is_err());
        assert!(serde_json::from_str::<ContentHash>("\"zz\"").is_err());
        assert_eq!(hash.short().len(), 12);
    }
}

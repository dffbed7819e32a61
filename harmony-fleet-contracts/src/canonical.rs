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

/// SHA-256 of some bytes. Written as 64 lowercase hex characters (on the wire, in container
/// labels, in logs) and held as the 32 digest bytes: the operator keeps a few per
/// `(deployment, device)` pair, so an inline `Copy` value instead of a heap string is most of
/// its memory at a million keys. Ordered like its hex text.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct ContentHash([u8; 32]);

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
        Self(Sha256::digest(bytes).into())
    }

    /// Hashes the canonical JSON encoding of `value`.
    pub fn of_value<T: Serialize + ?Sized>(value: &T) -> Result<Self, CanonicalError> {
        Ok(Self::of_bytes(&to_canonical_json(value)?))
    }

    /// The hex digest (64 lowercase characters), without a heap allocation.
    pub fn hex(&self) -> HexDigest {
        let mut out = [0u8; CONTENT_HASH_LEN];
        for (pair, byte) in out.chunks_exact_mut(2).zip(self.0) {
            pair[0] = HEX[usize::from(byte >> 4)];
            pair[1] = HEX[usize::from(byte & 0x0f)];
        }
        HexDigest(out)
    }

    /// The first 12 hex characters: short enough for a container name suffix, long enough
    /// to tell revisions apart on one device.
    pub fn short(&self) -> String {
        self.hex()[..12].to_owned()
    }

    /// The 32 digest bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A digest from its 32 bytes (as [`Self::as_bytes`] gives them).
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// A [`ContentHash`] as its 64 lowercase hex characters; dereferences to `str`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HexDigest([u8; CONTENT_HASH_LEN]);

impl std::ops::Deref for HexDigest {
    type Target = str;

    fn deref(&self) -> &str {
        // Only ASCII hex digits are ever written into it.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl fmt::Display for HexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self)
    }
}

impl fmt::Debug for HexDigest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self, f)
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

impl FromStr for ContentHash {
    type Err = ContentHashError;

    fn from_str(value: &str) -> Result<Self, ContentHashError> {
        let invalid = || ContentHashError {
            value: value.chars().take(80).collect(),
        };
        if value.len() != CONTENT_HASH_LEN {
            return Err(invalid());
        }
        let mut out = [0u8; 32];
        for (byte, pair) in out.iter_mut().zip(value.as_bytes().chunks_exact(2)) {
            let (Some(hi), Some(lo)) = (hex_value(pair[0]), hex_value(pair[1])) else {
                return Err(invalid());
            };
            *byte = (hi << 4) | lo;
        }
        Ok(Self(out))
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
        f.write_str(&self.hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({})", &*self.hex())
    }
}

impl Serialize for ContentHash {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.hex())
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
            &*ContentHash::of_bytes(b"").hex(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn content_hash_parses_only_lowercase_sha256_hex() {
        let hash = ContentHash::of_bytes(b"x");
        assert_eq!(hash.hex().parse::<ContentHash>().unwrap(), hash);
        assert!(hash.hex().to_uppercase().parse::<ContentHash>().is_err());
        assert!("abc".parse::<ContentHash>().is_err());
        assert!(serde_json::from_str::<ContentHash>("\"zz\"").is_err());
        assert_eq!(hash.short().len(), 12);
    }

    #[test]
    fn content_hash_is_written_as_hex_and_ordered_like_it() {
        let hashes: Vec<ContentHash> = (0u8..32).map(|i| ContentHash::of_bytes(&[i])).collect();
        for h in &hashes {
            let json = serde_json::to_string(h).unwrap();
            assert_eq!(json, format!("\"{}\"", &*h.hex()));
            assert_eq!(serde_json::from_str::<ContentHash>(&json).unwrap(), *h);
            assert_eq!(h.to_string(), &*h.hex());
        }
        let mut by_bytes = hashes.clone();
        by_bytes.sort();
        let mut by_text: Vec<String> = hashes.iter().map(ToString::to_string).collect();
        by_text.sort();
        let sorted: Vec<String> = by_bytes.iter().map(ToString::to_string).collect();
        assert_eq!(sorted, by_text);
        assert_eq!(size_of::<ContentHash>(), 32);
    }
}

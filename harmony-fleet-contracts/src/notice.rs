//! How a device learns its desired state without a JetStream consumer (adr/0013, amended by
//! adr/0014): a per-device **index** in `desired-state` and a core-NATS **notice** after every
//! change.
//!
//! | name | where | written by | what |
//! |---|---|---|---|
//! | index | `desired-state` key `<device>` ([`index_key`]) | operator | [`DesiredIndex`]: every deployment of the device and the content hash of its payload |
//! | notice | subject `desired-notify.<device>` ([`notify_subject`]) | operator | empty payload: "list again" |
//! | checkpoint | `desired-state` key `_operator.checkpoint` ([`CHECKPOINT_KEY`]) | operator | the operator's own: up to its stream sequence every key is named by its device's latest index (adr/0051); devices cannot read it |
//!
//! The index key is a single token, so it can never collide with a deployment key
//! `<device>.<deployment>`, and agents that still watch `<device>.>` never see it. A device
//! reads it with one exact-subject direct get, then direct-gets only the keys whose hash
//! differs from what it holds: every read is scoped by a subject permission naming the device
//! (a batch direct get carries its filter in the body and cannot be scoped).
//!
//! The operator writes a device's keys first, then its index, then publishes the notice. A
//! notice lost while the device was away is repaired by the listing the agent does on every
//! (re)connect and on a jittered timer. A device that holds nothing has an **empty** index; a
//! missing index only means "not written yet" (a new device, a recreated bucket), and the
//! agent then keeps what it runs.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::canonical::ContentHash;
use crate::ids::{DeploymentName, DeviceId};

/// Prefix of the notice subjects.
pub const NOTIFY_PREFIX: &str = "desired-notify";

/// Every notice subject (`desired-notify.*`), for the operator's publish permission.
pub const NOTIFY_ALL: &str = "desired-notify.*";

/// The subject the operator publishes a notice on after changing `device`'s desired state:
/// `desired-notify.<device>`.
pub fn notify_subject(device: &DeviceId) -> String {
    format!("{NOTIFY_PREFIX}.{device}")
}

/// The `desired-state` key of `device`'s index: `<device>` (one token).
pub fn index_key(device: &DeviceId) -> String {
    device.to_string()
}

/// The `desired-state` key of the operator's checkpoint (adr/0051): every deployment key
/// written before it is named, with its hash, by the latest index of its device, so a
/// restarted operator reads the indexes and only the keys written after it. `_` is not
/// allowed in device ids, so no device's key or permission can name it.
pub const CHECKPOINT_KEY: &str = "_operator.checkpoint";

/// Whether a `desired-state` key is an index key (one token) rather than a deployment key
/// (`<device>.<deployment>`).
pub fn is_index_key(key: &str) -> bool {
    !key.is_empty() && !key.contains('.')
}

/// The index of one device's desired state: each deployment assigned to it and the
/// [`ContentHash`] of the exact payload bytes stored under its key.
///
/// JSON: `{"deployments":{"<deployment>":"<sha256 hex>",…}}`, serialised canonically, so the
/// bytes depend only on the assignments (a restarted operator computes the same bytes and
/// rewrites nothing). Unknown fields are ignored: later versions may add some.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesiredIndex {
    /// Deployment → hash of its payload bytes.
    pub deployments: BTreeMap<DeploymentName, ContentHash>,
}

/// An index value that does not decode.
#[derive(Debug, thiserror::Error)]
#[error(
    "desired-state index is not a valid {{\"deployments\":{{name: sha256}}}} document: {source}"
)]
pub struct IndexError {
    #[source]
    source: serde_json::Error,
}

impl DesiredIndex {
    /// The canonical bytes stored in KV: what [`to_canonical_json`](crate::canonical::to_canonical_json) gives for the index,
    /// written directly (the operator encodes one per device it writes, 100k in a fan-out;
    /// through a JSON value tree that was a tenth of its CPU).
    pub fn to_bytes(&self) -> Vec<u8> {
        const HEAD: &[u8] = br#"{"deployments":{"#;
        // A name, the quotes and separators, a hash: 64 hex digits.
        let mut out = Vec::with_capacity(HEAD.len() + 2 + self.deployments.len() * 100);
        out.extend_from_slice(HEAD);
        for (i, (deployment, hash)) in self.deployments.iter().enumerate() {
            if i > 0 {
                out.push(b',');
            }
            // Map keys sort as their bytes, as canonical JSON orders them; a validated name
            // needs no escaping, and JSON-escaping it anyway cannot fail.
            let _ = serde_json::to_writer(&mut out, deployment.as_str());
            out.extend_from_slice(b":\"");
            out.extend_from_slice(hash.hex().as_bytes());
            out.push(b'"');
        }
        out.extend_from_slice(b"}}");
        out
    }

    /// Decodes stored bytes; an empty value (no key) is an empty index.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, IndexError> {
        if bytes.is_empty() {
            return Ok(Self::default());
        }
        serde_json::from_slice(bytes).map_err(|source| IndexError { source })
    }

    /// Whether no deployment is assigned.
    pub fn is_empty(&self) -> bool {
        self.deployments.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::canonical::to_canonical_json;

    #[test]
    fn index_bytes_are_its_canonical_json() {
        let hash = |s: &str| ContentHash::of_bytes(s.as_bytes());
        let name = |s: &str| -> DeploymentName { s.parse().expect("name") };
        let indexes = [
            DesiredIndex::default(),
            DesiredIndex {
                deployments: [(name("web"), hash("a"))].into(),
            },
            DesiredIndex {
                deployments: [
                    (name("web"), hash("a")),
                    (name("api-2"), hash("b")),
                    (name("api"), hash("c")),
                    (name("a1"), hash("a")),
                ]
                .into(),
            },
        ];
        for index in indexes {
            let canonical = to_canonical_json(&index).expect("encodes");
            assert_eq!(
                String::from_utf8_lossy(&index.to_bytes()),
                String::from_utf8_lossy(&canonical)
            );
            assert_eq!(
                DesiredIndex::from_bytes(&index.to_bytes()).expect("decodes"),
                index
            );
        }
    }

    #[test]
    fn index_keys_are_one_token_and_deployment_keys_are_not() {
        let device: DeviceId = "pi-1".parse().expect("id");
        assert_eq!(index_key(&device), "pi-1");
        assert!(is_index_key("pi-1"));
        assert!(!is_index_key("pi-1.web"));
        assert!(!is_index_key(""));
        assert_eq!(notify_subject(&device), "desired-notify.pi-1");
    }

    #[test]
    fn index_bytes_are_canonical_and_round_trip() {
        let mut a = DesiredIndex::default();
        a.deployments.insert(
            "web".parse().expect("name"),
            ContentHash::of_bytes(b"payload-1"),
        );
        a.deployments.insert(
            "api".parse().expect("name"),
            ContentHash::of_bytes(b"payload-2"),
        );
        let bytes = a.to_bytes();
        let text = String::from_utf8(bytes.clone()).expect("utf-8");
        assert!(text.starts_with(r#"{"deployments":{"api":""#), "{text}");
        assert_eq!(DesiredIndex::from_bytes(&bytes).expect("decodes"), a);
        assert_eq!(
            DesiredIndex::from_bytes(b"").expect("empty"),
            DesiredIndex::default()
        );
        let err =
            DesiredIndex::from_bytes(br#"{"deployments":{"web":"nothex"}}"#).expect_err("bad hash");
        assert!(err.to_string().contains("sha256"), "{err}");
    }
}

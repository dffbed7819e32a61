//! What a device reports about itself: [`DeviceInfo`] (bucket `device-info`, key
//! `info.<device>`), its [`Inventory`], the [`AgentVersion`] string, and the Kubernetes label
//! rules the reported labels must follow.
//!
//! The operator turns a `DeviceInfo` into a cluster-scoped `Device` resource whose labels are
//! the reported labels, so labels are checked against Kubernetes' rules here
//! ([`validate_labels`]) — the agent refuses bad labels at start-up instead of the operator
//! failing to apply them later.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize, Serializer};

use crate::ids::DeviceId;
use crate::validation::{Collector, ValidationErrors};

/// Longest agent version string. Keeps the heartbeat under its size budget.
pub const AGENT_VERSION_MAX_LEN: usize = 32;

/// Version string of an agent: 1–32 bytes of `[0-9A-Za-z.+_-]` (semver with build metadata
/// fits). Restricted so it never needs JSON escaping and keeps heartbeats small.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(try_from = "String")]
pub struct AgentVersion(String);

/// Why a string is not an [`AgentVersion`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "agent version {value:?} is invalid: use 1 to {AGENT_VERSION_MAX_LEN} characters from \
     [0-9A-Za-z.+_-] (for example \"0.1.0+abc123\"), or build it with AgentVersion::lossy"
)]
pub struct AgentVersionError {
    /// The rejected value, elided to 64 characters.
    pub value: String,
}

fn is_version_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '+' | '_' | '-')
}

impl AgentVersion {
    /// Validates `value`.
    pub fn new(value: impl Into<String>) -> Result<Self, AgentVersionError> {
        let value = value.into();
        if value.is_empty()
            || value.len() > AGENT_VERSION_MAX_LEN
            || !value.chars().all(is_version_char)
        {
            return Err(AgentVersionError {
                value: value.chars().take(64).collect(),
            });
        }
        Ok(Self(value))
    }

    /// Builds a version from anything: characters outside the allowed set become `-`, the
    /// result is cut to [`AGENT_VERSION_MAX_LEN`], and an empty input becomes `unknown`. For
    /// agents whose build version (e.g. `git describe`) may not fit.
    pub fn lossy(value: &str) -> Self {
        let cleaned: String = value
            .chars()
            .map(|c| if is_version_char(c) { c } else { '-' })
            .take(AGENT_VERSION_MAX_LEN)
            .collect();
        if cleaned.is_empty() {
            Self("unknown".to_owned())
        } else {
            Self(cleaned)
        }
    }

    /// The version string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for AgentVersion {
    type Error = AgentVersionError;

    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl FromStr for AgentVersion {
    type Err = AgentVersionError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        Self::new(value)
    }
}

impl fmt::Display for AgentVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AgentVersion {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Serialize for AgentVersion {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.0)
    }
}

/// Hardware and OS facts about a device; becomes the `Device` resource's spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// Host name as the OS reports it.
    pub hostname: String,
    /// CPU architecture as Rust names it (`std::env::consts::ARCH`: `aarch64`, `x86_64`, …).
    pub arch: String,
    /// Operating system as Rust names it (`std::env::consts::OS`: `linux`, …).
    pub os: String,
    /// Distribution name and version (`PRETTY_NAME` of `/etc/os-release`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_release: Option<String>,
    /// Kernel release (`uname -r`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// Logical CPUs.
    pub cpu_count: u32,
    /// Physical memory in bytes.
    pub memory_bytes: u64,
}

/// Value of `device-info` / `info.<device>`: labels and inventory, written by the agent on
/// start and whenever a fact changes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceInfo {
    /// The reporting device (also in the key; repeated so a value is self-describing).
    pub device_id: DeviceId,
    /// Labels used by `Deployment` target selectors. Kubernetes label syntax
    /// ([`validate_labels`]).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Hardware and OS facts.
    pub inventory: Inventory,
    /// Version of the agent.
    pub agent_version: AgentVersion,
    /// When the device last booted, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_time: Option<Timestamp>,
    /// When the agent gathered these facts.
    pub observed_at: Timestamp,
}

impl DeviceInfo {
    /// Checks the labels ([`validate_labels`]); the rest is valid by construction.
    pub fn validate(&self) -> Result<(), ValidationErrors> {
        validate_labels(&self.labels)
    }
}

/// Label key prefixes a device may not claim: a reported label whose key starts with one of
/// these is ignored by the operator (and said so on the `Device`). Admins set them on the
/// `Device` resource (`kubectl label fleetdev pi-1 fleet.nationtech.io/zone=cold-room`) to
/// target devices on labels no device can forge.
pub const PROTECTED_LABEL_PREFIXES: &[&str] =
    &["fleet.nationtech.io/", "kubernetes.io/", "k8s.io/"];

/// The label the operator gives every device: its id. Protected like the rest of
/// `fleet.nationtech.io/`, but derived from the identity the device connects with (it can only
/// write its own `info.<device>` key), so selecting on it cannot be forged either.
pub const DEVICE_ID_LABEL: &str = "fleet.nationtech.io/device";

/// Whether `key` is under a [`PROTECTED_LABEL_PREFIXES`] prefix (or a subdomain of one, such
/// as `node.kubernetes.io/`).
pub fn is_protected_label(key: &str) -> bool {
    let Some((prefix, _)) = key.split_once('/') else {
        return false;
    };
    PROTECTED_LABEL_PREFIXES.iter().any(|p| {
        let p = p.trim_end_matches('/');
        prefix == p || prefix.ends_with(&format!(".{p}"))
    })
}

/// Longest label name (the part after an optional `prefix/`) and label value.
pub const LABEL_NAME_MAX_LEN: usize = 63;
/// Longest label key prefix (a DNS subdomain).
pub const LABEL_PREFIX_MAX_LEN: usize = 253;

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 bytes.
fn is_label_name(s: &str) -> bool {
    let bytes = s.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= LABEL_NAME_MAX_LEN
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
        && bytes
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A DNS subdomain (RFC 1123): lowercase labels joined by dots, at most 253 bytes.
fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= LABEL_PREFIX_MAX_LEN
        && s.split('.').all(|label| {
            let b = label.as_bytes();
            !b.is_empty()
                && b.len() <= 63
                && b[0].is_ascii_alphanumeric()
                && b[b.len() - 1].is_ascii_alphanumeric()
                && b.iter()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        })
}

/// Checks labels against Kubernetes' rules: key `[prefix/]name` with `prefix` a DNS
/// subdomain and `name` 1–63 characters of `[A-Za-z0-9_.-]` starting and ending
/// alphanumerically; value empty or following the same rule as `name`.
pub fn validate_labels(labels: &BTreeMap<String, String>) -> Result<(), ValidationErrors> {
    let mut errors = Collector::default();
    for (key, value) in labels {
        let (prefix, name) = match key.split_once('/') {
            Some((prefix, name)) => (Some(prefix), name),
            None => (None, key.as_str()),
        };
        if let Some(prefix) = prefix {
            errors.check(
                is_dns_subdomain(prefix),
                || format!("labels[{key:?}]"),
                || {
                    format!(
                        "key prefix {prefix:?} must be a DNS subdomain (lowercase a-z, 0-9, '-' \
                         and '.', at most {LABEL_PREFIX_MAX_LEN} bytes), e.g. \"example.com\""
                    )
                },
            );
        }
        errors.check(
            is_label_name(name),
            || format!("labels[{key:?}]"),
            || {
                format!(
                    "key name {name:?} must be 1-{LABEL_NAME_MAX_LEN} characters of [A-Za-z0-9_.-] \
                     starting and ending with a letter or digit, e.g. \"site\""
                )
            },
        );
        errors.check(
            value.is_empty() || is_label_name(value),
            || format!("labels[{key:?}]"),
            || {
                format!(
                    "value {value:?} must be empty or 1-{LABEL_NAME_MAX_LEN} characters of \
                     [A-Za-z0-9_.-] starting and ending with a letter or digit, e.g. \"plant-3\""
                )
            },
        );
    }
    errors.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn protected_prefixes_and_their_subdomains_are_recognised() {
        for key in [
            "fleet.nationtech.io/zone",
            "kubernetes.io/hostname",
            "node.kubernetes.io/instance-type",
            "k8s.io/x",
        ] {
            assert!(is_protected_label(key), "{key}");
        }
        for key in [
            "site",
            "example.com/zone",
            "notkubernetes.io/x",
            "fleet.nationtech.io",
        ] {
            assert!(!is_protected_label(key), "{key}");
        }
    }

    #[test]
    fn accepts_kubernetes_style_labels() {
        let ok = labels(&[
            ("site", "plant-3"),
            ("fleet.nationtech.io/role", "edge"),
            ("empty", ""),
            ("a.b_c-d", "X.y_z-1"),
        ]);
        assert_eq!(validate_labels(&ok), Ok(()));
    }

    #[test]
    fn rejects_bad_label_keys_and_values_naming_each() {
        let bad = labels(&[
            ("-site", "x"),
            ("Bad_Prefix/x", "y"),
            ("ok", "has space"),
            ("long", &"v".repeat(64)),
        ]);
        let err = validate_labels(&bad).unwrap_err();
        assert_eq!(err.errors.len(), 4, "{err}");
        assert!(err.has_path("labels[\"-site\"]"));
        assert!(err.to_string().contains("DNS subdomain"), "{err}");
    }

    #[test]
    fn agent_version_rejects_what_would_need_escaping_or_overflow() {
        assert!(AgentVersion::new("0.1.0+git.abc123").is_ok());
        assert!(AgentVersion::new("").is_err());
        assert!(AgentVersion::new("1.0 beta").is_err());
        assert!(AgentVersion::new("1\"").is_err());
        assert!(AgentVersion::new("x".repeat(33)).is_err());
        assert!(
            serde_json::from_str::<AgentVersion>("\"a b\"")
                .unwrap_err()
                .to_string()
                .contains("AgentVersion::lossy")
        );
    }

    #[test]
    fn lossy_agent_version_always_fits() {
        assert_eq!(AgentVersion::lossy("").as_str(), "unknown");
        assert_eq!(AgentVersion::lossy("v1 (dirty)").as_str(), "v1--dirty-");
        assert_eq!(
            AgentVersion::lossy(&"é".repeat(100)).as_str().len(),
            AGENT_VERSION_MAX_LEN
        );
    }
}

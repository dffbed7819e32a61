//! KV keys, watch patterns and command subjects: builders and parsers.
//!
//! | bucket | key | built by | parsed by |
//! |---|---|---|---|
//! | `desired-state` | `<device>.<deployment>` | [`DesiredKey`] | [`DesiredKey::parse`] |
//! | `device-info` | `info.<device>` | [`InfoKey`] | [`InfoKey::parse`] |
//! | `device-state` | `state.<device>.<deployment>` | [`StateKey`] | [`StateKey::parse`] |
//! | `device-heartbeat` | `heartbeat.<device>` | [`HeartbeatKey`] | [`HeartbeatKey::parse`] |
//!
//! Commands travel on core NATS subjects `device-commands.<device>.<verb>` ([`CommandSubject`]).
//! Parsers never panic: a key that is not ours yields a [`KeyError`] saying what was expected.

use std::fmt;
use std::str::FromStr;

use crate::commands::Verb;
use crate::ids::{DeploymentName, DeviceId, IdError};

/// First token of every `device-info` key.
pub const INFO_PREFIX: &str = "info";
/// First token of every `device-state` key.
pub const STATE_PREFIX: &str = "state";
/// First token of every `device-heartbeat` key.
pub const HEARTBEAT_PREFIX: &str = "heartbeat";
/// First token of every command subject.
pub const COMMANDS_PREFIX: &str = "device-commands";

/// Watch pattern for every key of `desired-state` (the operator's view).
pub const DESIRED_ALL: &str = ">";
/// Watch pattern for every key of `device-info`.
pub const INFO_ALL: &str = "info.*";
/// Watch pattern for every key of `device-state`.
pub const STATE_ALL: &str = "state.>";
/// Watch pattern for every key of `device-heartbeat`.
pub const HEARTBEAT_ALL: &str = "heartbeat.*";
/// Every command subject of every device (the operator's publish permission).
pub const COMMANDS_ALL: &str = "device-commands.>";

/// Why a key or subject could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key does not have the expected shape (wrong prefix or number of tokens): it is
    /// not a key of this kind, and the caller should skip it.
    #[error("{key:?} is not a {kind} key: expected the form {expected}")]
    Foreign {
        /// The rejected key or subject.
        key: String,
        /// What kind of key was expected.
        kind: &'static str,
        /// The expected layout.
        expected: &'static str,
    },
    /// The key has the right shape but a token is not a valid id.
    #[error("{kind} key {key:?} is malformed: {source}")]
    InvalidId {
        /// The rejected key or subject.
        key: String,
        /// What kind of key it is.
        kind: &'static str,
        /// The id validation error.
        #[source]
        source: IdError,
    },
    /// A command subject names a verb this build does not know.
    #[error(
        "command subject {subject:?} names unknown verb {verb:?}: known verbs are {known}",
        known = Verb::ALL.iter().map(|v| v.as_str()).collect::<Vec<_>>().join(", ")
    )]
    UnknownVerb {
        /// The rejected subject.
        subject: String,
        /// Its verb token.
        verb: String,
    },
}

fn split_exact<'a, const N: usize>(
    key: &'a str,
    kind: &'static str,
    expected: &'static str,
) -> Result<[&'a str; N], KeyError> {
    let foreign = || KeyError::Foreign {
        key: key.to_owned(),
        kind,
        expected,
    };
    let mut out = [""; N];
    let mut tokens = key.split('.');
    for slot in &mut out {
        *slot = tokens.next().ok_or_else(foreign)?;
    }
    if tokens.next().is_some() {
        return Err(foreign());
    }
    Ok(out)
}

fn device(key: &str, kind: &'static str, token: &str) -> Result<DeviceId, KeyError> {
    token.parse().map_err(|source| KeyError::InvalidId {
        key: key.to_owned(),
        kind,
        source,
    })
}

fn deployment(key: &str, kind: &'static str, token: &str) -> Result<DeploymentName, KeyError> {
    token.parse().map_err(|source| KeyError::InvalidId {
        key: key.to_owned(),
        kind,
        source,
    })
}

/// Key of `desired-state`: `<device>.<deployment>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DesiredKey {
    /// Target device.
    pub device: DeviceId,
    /// Deployment on that device.
    pub deployment: DeploymentName,
}

impl DesiredKey {
    const KIND: &'static str = "desired-state";
    const EXPECTED: &'static str = "<device>.<deployment>";

    /// Builds the key for `deployment` on `device`.
    pub fn new(device: DeviceId, deployment: DeploymentName) -> Self {
        Self { device, deployment }
    }

    /// Parses a `desired-state` key.
    pub fn parse(key: &str) -> Result<Self, KeyError> {
        let [d, n] = split_exact::<2>(key, Self::KIND, Self::EXPECTED)?;
        Ok(Self {
            device: device(key, Self::KIND, d)?,
            deployment: deployment(key, Self::KIND, n)?,
        })
    }

    /// The matching key in `device-state`.
    pub fn state_key(&self) -> StateKey {
        StateKey::new(self.device.clone(), self.deployment.clone())
    }
}

/// Key of `device-info`: `info.<device>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InfoKey {
    /// The device.
    pub device: DeviceId,
}

impl InfoKey {
    const KIND: &'static str = "device-info";
    const EXPECTED: &'static str = "info.<device>";

    /// Builds the key of `device`.
    pub fn new(device: DeviceId) -> Self {
        Self { device }
    }

    /// Parses a `device-info` key.
    pub fn parse(key: &str) -> Result<Self, KeyError> {
        let [prefix, d] = split_exact::<2>(key, Self::KIND, Self::EXPECTED)?;
        if prefix != INFO_PREFIX {
            return Err(KeyError::Foreign {
                key: key.to_owned(),
                kind: Self::KIND,
                expected: Self::EXPECTED,
            });
        }
        Ok(Self {
            device: device(key, Self::KIND, d)?,
        })
    }
}

/// Key of `device-state`: `state.<device>.<deployment>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StateKey {
    /// The reporting device.
    pub device: DeviceId,
    /// The deployment reported on.
    pub deployment: DeploymentName,
}

impl StateKey {
    const KIND: &'static str = "device-state";
    const EXPECTED: &'static str = "state.<device>.<deployment>";

    /// Builds the key for `deployment` on `device`.
    pub fn new(device: DeviceId, deployment: DeploymentName) -> Self {
        Self { device, deployment }
    }

    /// Parses a `device-state` key.
    pub fn parse(key: &str) -> Result<Self, KeyError> {
        let [prefix, d, n] = split_exact::<3>(key, Self::KIND, Self::EXPECTED)?;
        if prefix != STATE_PREFIX {
            return Err(KeyError::Foreign {
                key: key.to_owned(),
                kind: Self::KIND,
                expected: Self::EXPECTED,
            });
        }
        Ok(Self {
            device: device(key, Self::KIND, d)?,
            deployment: deployment(key, Self::KIND, n)?,
        })
    }

    /// The matching key in `desired-state`.
    pub fn desired_key(&self) -> DesiredKey {
        DesiredKey::new(self.device.clone(), self.deployment.clone())
    }
}

/// Key of `device-heartbeat`: `heartbeat.<device>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HeartbeatKey {
    /// The device.
    pub device: DeviceId,
}

impl HeartbeatKey {
    const KIND: &'static str = "device-heartbeat";
    const EXPECTED: &'static str = "heartbeat.<device>";

    /// Builds the key of `device`.
    pub fn new(device: DeviceId) -> Self {
        Self { device }
    }

    /// Parses a `device-heartbeat` key.
    pub fn parse(key: &str) -> Result<Self, KeyError> {
        let [prefix, d] = split_exact::<2>(key, Self::KIND, Self::EXPECTED)?;
        if prefix != HEARTBEAT_PREFIX {
            return Err(KeyError::Foreign {
                key: key.to_owned(),
                kind: Self::KIND,
                expected: Self::EXPECTED,
            });
        }
        Ok(Self {
            device: device(key, Self::KIND, d)?,
        })
    }
}

/// A command subject: `device-commands.<device>.<verb>`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CommandSubject {
    /// The device that serves the command.
    pub device: DeviceId,
    /// What is asked.
    pub verb: Verb,
}

impl CommandSubject {
    const KIND: &'static str = "command";
    const EXPECTED: &'static str = "device-commands.<device>.<verb>";

    /// Builds the subject for `verb` on `device`.
    pub fn new(device: DeviceId, verb: Verb) -> Self {
        Self { device, verb }
    }

    /// Parses a command subject. An unknown verb is [`KeyError::UnknownVerb`], so the agent
    /// can answer "unsupported" instead of staying silent.
    pub fn parse(subject: &str) -> Result<Self, KeyError> {
        let [prefix, d, v] = split_exact::<3>(subject, Self::KIND, Self::EXPECTED)?;
        if prefix != COMMANDS_PREFIX {
            return Err(KeyError::Foreign {
                key: subject.to_owned(),
                kind: Self::KIND,
                expected: Self::EXPECTED,
            });
        }
        let device = device(subject, Self::KIND, d)?;
        let verb = v.parse().map_err(|_| KeyError::UnknownVerb {
            subject: subject.to_owned(),
            verb: v.to_owned(),
        })?;
        Ok(Self { device, verb })
    }
}

impl fmt::Display for DesiredKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.device, self.deployment)
    }
}

impl fmt::Display for InfoKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{INFO_PREFIX}.{}", self.device)
    }
}

impl fmt::Display for StateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{STATE_PREFIX}.{}.{}", self.device, self.deployment)
    }
}

impl fmt::Display for HeartbeatKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{HEARTBEAT_PREFIX}.{}", self.device)
    }
}

impl fmt::Display for CommandSubject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{COMMANDS_PREFIX}.{}.{}", self.device, self.verb)
    }
}

macro_rules! from_str_via_parse {
    ($($ty:ty),*) => {$(
        impl FromStr for $ty {
            type Err = KeyError;

            fn from_str(s: &str) -> Result<Self, KeyError> {
                Self::parse(s)
            }
        }
    )*};
}

from_str_via_parse!(DesiredKey, InfoKey, StateKey, HeartbeatKey, CommandSubject);

/// `desired-state` key of `deployment` on `device`: `<device>.<deployment>`.
pub fn desired_key(device: &DeviceId, deployment: &DeploymentName) -> String {
    format!("{device}.{deployment}")
}

/// `device-info` key of `device`: `info.<device>`.
pub fn info_key(device: &DeviceId) -> String {
    format!("{INFO_PREFIX}.{device}")
}

/// `device-state` key of `deployment` on `device`: `state.<device>.<deployment>`.
pub fn state_key(device: &DeviceId, deployment: &DeploymentName) -> String {
    format!("{STATE_PREFIX}.{device}.{deployment}")
}

/// `device-heartbeat` key of `device`: `heartbeat.<device>`.
pub fn heartbeat_key(device: &DeviceId) -> String {
    format!("{HEARTBEAT_PREFIX}.{device}")
}

/// The agent's watch on `desired-state`: every deployment of `device` (`<device>.>`).
pub fn desired_device_pattern(device: &DeviceId) -> String {
    format!("{device}.>")
}

/// Every `device-state` key of `device` (`state.<device>.>`).
pub fn state_device_pattern(device: &DeviceId) -> String {
    format!("{STATE_PREFIX}.{device}.>")
}

/// Subject of `verb` on `device`: `device-commands.<device>.<verb>`.
pub fn command_subject(device: &DeviceId, verb: Verb) -> String {
    format!("{COMMANDS_PREFIX}.{device}.{verb}")
}

/// What the agent of `device` subscribes to: `device-commands.<device>.>`.
pub fn command_serve_pattern(device: &DeviceId) -> String {
    format!("{COMMANDS_PREFIX}.{device}.>")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> DeviceId {
        s.parse().unwrap()
    }

    fn dep(s: &str) -> DeploymentName {
        s.parse().unwrap()
    }

    #[test]
    fn builders_and_display_agree() {
        let (d, n) = (dev("pi-1"), dep("web"));
        assert_eq!(
            DesiredKey::new(d.clone(), n.clone()).to_string(),
            desired_key(&d, &n)
        );
        assert_eq!(InfoKey::new(d.clone()).to_string(), info_key(&d));
        assert_eq!(
            StateKey::new(d.clone(), n.clone()).to_string(),
            state_key(&d, &n)
        );
        assert_eq!(HeartbeatKey::new(d.clone()).to_string(), heartbeat_key(&d));
        assert_eq!(
            CommandSubject::new(d.clone(), Verb::Exec).to_string(),
            command_subject(&d, Verb::Exec)
        );
    }

    #[test]
    fn parsers_reject_foreign_keys_without_panicking() {
        for key in [
            "",
            ".",
            "..",
            "a.",
            ".a",
            "pi-1",
            "pi-1.web.x",
            "info",
            "info.",
            "state.pi-1",
            "heartbeat.pi-1.x",
            "nope.pi-1",
            "\u{0}",
            "é.é",
        ] {
            if key.split('.').count() != 2 {
                assert!(DesiredKey::parse(key).is_err(), "{key:?}");
            }
            assert!(InfoKey::parse(key).is_err(), "{key:?}");
            assert!(StateKey::parse(key).is_err(), "{key:?}");
            assert!(HeartbeatKey::parse(key).is_err(), "{key:?}");
            assert!(CommandSubject::parse(key).is_err(), "{key:?}");
        }
    }

    #[test]
    fn parsers_name_the_broken_token() {
        let err = StateKey::parse("state.Pi-1.web").unwrap_err();
        assert!(matches!(err, KeyError::InvalidId { .. }));
        assert!(err.to_string().contains("use lowercase"), "{err}");

        let err = InfoKey::parse("state.pi-1").unwrap_err();
        assert!(err.to_string().contains("info.<device>"), "{err}");
    }

    #[test]
    fn info_key_is_not_a_desired_key_of_a_device_named_info() {
        // `info.pi-1` has the shape of a desired key (device "info", deployment "pi-1"); the
        // buckets are separate so this is fine, but the parsers must each accept only theirs.
        assert!(DesiredKey::parse("info.pi-1").is_ok());
        assert!(InfoKey::parse("info.pi-1").is_ok());
        assert!(HeartbeatKey::parse("info.pi-1").is_err());
    }

    #[test]
    fn unknown_verb_is_reported_with_the_known_ones() {
        let err = CommandSubject::parse("device-commands.pi-1.reboot").unwrap_err();
        assert_eq!(
            err,
            KeyError::UnknownVerb {
                subject: "device-commands.pi-1.reboot".into(),
                verb: "reboot".into()
            }
        );
        assert!(err.to_string().contains("ping, exec, logs"), "{err}");
    }
}

//! Pure: the fleet buckets as the operator reads them, once for the controller and the
//! dashboard alike. One decoder per bucket (key checked, value parsed and validated), one
//! liveness rule ([`is_online`]) and one blacklist check ([`is_blacklisted`]), so the two
//! never disagree about what a device said, whether it is online, or whether it is barred.
//!
//! The decoders run in each watch's own task (adr/0049): parsing keys and values, and hashing
//! payloads, happens next to the reconcile loop instead of in it.

use std::time::Duration;

use bytes::Bytes;
use harmony_fleet_contracts::canonical::ContentHash;
use harmony_fleet_contracts::device::DeviceInfo;
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::keys::{self, DesiredKey, HeartbeatKey, InfoKey, StateKey};
use harmony_fleet_contracts::notice::{self, DesiredIndex};
use harmony_fleet_contracts::state::DeploymentState;
use jiff::Timestamp;
use kube::core::ObjectMeta;

use crate::crd::device::BLACKLIST_ANNOTATION;
use crate::kv::KvEvent;

/// One `device-info` event, decoded.
#[derive(Debug, PartialEq)]
pub enum InfoEvent {
    /// A device's info, its key and `deviceId` agreeing and its labels valid.
    Put(Box<DeviceInfo>),
    /// The device's info was deleted.
    Delete(DeviceId),
    /// The backlog is read.
    CaughtUp,
    /// A value that is not taken (the previous one stays), and why.
    Rejected {
        /// The key.
        key: String,
        /// Why, for the log.
        reason: String,
    },
    /// A key that is not a device's (not written by the fleet).
    Foreign(String),
}

/// Decodes a `device-info` event.
pub fn decode_info(event: KvEvent) -> InfoEvent {
    let (key, value) = match event {
        KvEvent::CaughtUp => return InfoEvent::CaughtUp,
        KvEvent::Delete { key } => {
            return match InfoKey::parse(&key) {
                Ok(k) => InfoEvent::Delete(k.device),
                Err(_) => InfoEvent::Foreign(key),
            };
        }
        KvEvent::Put { key, value, .. } => (key, value),
    };
    let Ok(k) = InfoKey::parse(&key) else {
        return InfoEvent::Foreign(key);
    };
    let info: DeviceInfo = match serde_json::from_slice(&value) {
        Ok(info) => info,
        Err(e) => {
            return InfoEvent::Rejected {
                key,
                reason: format!("unreadable device-info: {e}"),
            };
        }
    };
    if info.device_id != k.device {
        let reason = format!(
            "deviceId {} differs from the key's device {}",
            info.device_id, k.device
        );
        return InfoEvent::Rejected { key, reason };
    }
    if let Err(e) = info.validate() {
        return InfoEvent::Rejected {
            key,
            reason: format!("invalid labels: {e}"),
        };
    }
    InfoEvent::Put(Box::new(info))
}

/// One `device-state` event, decoded.
#[derive(Debug, PartialEq)]
pub enum StateEvent {
    /// A device's report for one deployment.
    Put {
        /// Device and deployment.
        key: StateKey,
        /// The report.
        state: Box<DeploymentState>,
    },
    /// The report was deleted.
    Delete(StateKey),
    /// The backlog is read.
    CaughtUp,
    /// A value that does not parse as a report, under a well-formed key.
    Unreadable {
        /// Device and deployment.
        key: StateKey,
        /// The key as written.
        raw: String,
        /// The parser's message.
        reason: String,
    },
    /// A key of the shape a device may write (`state.<device>.<token>`) whose token is not a
    /// deployment name: as stray as a report for a deployment the device lacks.
    Stray {
        /// The device that wrote it.
        device: DeviceId,
        /// The key.
        key: String,
    },
    /// A key no device could have written.
    Foreign(String),
}

/// Decodes a `device-state` event.
pub fn decode_state(event: KvEvent) -> StateEvent {
    let (key, value) = match event {
        KvEvent::CaughtUp => return StateEvent::CaughtUp,
        KvEvent::Delete { key } => {
            return match StateKey::parse(&key) {
                Ok(k) => StateEvent::Delete(k),
                Err(_) => StateEvent::Foreign(key),
            };
        }
        KvEvent::Put { key, value, .. } => (key, value),
    };
    let k = match StateKey::parse(&key) {
        Ok(k) => k,
        Err(_) => {
            return match stray_state_device(&key) {
                Some(device) => StateEvent::Stray { device, key },
                None => StateEvent::Foreign(key),
            };
        }
    };
    match serde_json::from_slice::<DeploymentState>(&value) {
        Ok(state) => StateEvent::Put {
            key: k,
            state: Box::new(state),
        },
        Err(e) => StateEvent::Unreadable {
            key: k,
            raw: key,
            reason: e.to_string(),
        },
    }
}

/// The device a `device-state` key names, when it has the shape a device may write
/// (`state.<device>.<one token>`) without being a valid [`StateKey`].
pub fn stray_state_device(key: &str) -> Option<DeviceId> {
    let mut parts = key.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(keys::STATE_PREFIX), Some(device), Some(rest)) if !rest.is_empty() => {
            device.parse().ok()
        }
        _ => None,
    }
}

/// One `device-heartbeat` event, decoded.
#[derive(Debug, PartialEq, Eq)]
pub enum HeartbeatEvent {
    /// A heartbeat, at the server's time of the write.
    Beat {
        /// The device.
        device: DeviceId,
        /// When the server stored it.
        at: Timestamp,
    },
    /// The device's heartbeat key was deleted.
    Gone(DeviceId),
    /// The backlog is read.
    CaughtUp,
    /// A key that is not a device's.
    Foreign(String),
}

/// Decodes a `device-heartbeat` event (the value carries nothing the operator needs: the
/// server's time of the write is the heartbeat).
pub fn decode_heartbeat(event: KvEvent) -> HeartbeatEvent {
    match event {
        KvEvent::CaughtUp => HeartbeatEvent::CaughtUp,
        KvEvent::Put { key, at, .. } => match HeartbeatKey::parse(&key) {
            Ok(k) => HeartbeatEvent::Beat {
                device: k.device,
                at,
            },
            Err(_) => HeartbeatEvent::Foreign(key),
        },
        KvEvent::Delete { key } => match HeartbeatKey::parse(&key) {
            Ok(k) => HeartbeatEvent::Gone(k.device),
            Err(_) => HeartbeatEvent::Foreign(key),
        },
    }
}

/// One `desired-state` event, decoded: the operator's own writes, read back at a cold start
/// and followed by a standby.
#[derive(Debug, PartialEq, Eq)]
pub enum DesiredEvent {
    /// A deployment's key on a device: its payload and the payload's [`ContentHash`]
    /// (`None`: deleted).
    Key {
        /// Device and deployment.
        key: DesiredKey,
        /// The payload and its hash.
        value: Option<(ContentHash, Bytes)>,
    },
    /// A device's index (adr/0014) as stored (`None`: deleted).
    Index {
        /// The device.
        device: DeviceId,
        /// Hash of the stored bytes.
        stored: Option<ContentHash>,
    },
    /// A device's index read from a checkpoint (adr/0051): the keys it names, with their
    /// hashes, are what `desired-state` holds for every pair no later event changes.
    Listed {
        /// The device.
        device: DeviceId,
        /// Hash of the stored bytes.
        stored: ContentHash,
        /// What they say (or why they do not decode).
        index: Result<DesiredIndex, String>,
    },
    /// The operator's checkpoint (adr/0051): read before the rest, nothing to load.
    Checkpoint,
    /// The backlog is read.
    CaughtUp,
    /// A key the operator does not write, and why it is not one.
    Foreign {
        /// The key.
        key: String,
        /// Why it is not a fleet key.
        reason: String,
    },
}

/// Decodes a `desired-state` event (hashing a payload or an index is the costly part: done
/// here, in the watch's task, rather than in the reconcile loop).
pub fn decode_desired(event: KvEvent) -> DesiredEvent {
    let (key, value) = match event {
        KvEvent::CaughtUp => return DesiredEvent::CaughtUp,
        KvEvent::Put { key, value, .. } => (key, Some(value)),
        KvEvent::Delete { key } => (key, None),
    };
    if key == notice::CHECKPOINT_KEY {
        return DesiredEvent::Checkpoint;
    }
    if notice::is_index_key(&key) {
        return match key.parse::<DeviceId>() {
            Ok(device) => DesiredEvent::Index {
                device,
                stored: value.map(|v| ContentHash::of_bytes(&v)),
            },
            Err(e) => DesiredEvent::Foreign {
                key,
                reason: e.to_string(),
            },
        };
    }
    match DesiredKey::parse(&key) {
        Ok(key) => DesiredEvent::Key {
            key,
            value: value.map(|v| (ContentHash::of_bytes(&v), v)),
        },
        Err(e) => DesiredEvent::Foreign {
            key,
            reason: e.to_string(),
        },
    }
}

/// Decodes an index read from a checkpoint (adr/0051); anything else as [`decode_desired`].
pub fn decode_listed(event: KvEvent) -> DesiredEvent {
    if let KvEvent::Put { key, value, .. } = &event
        && key != notice::CHECKPOINT_KEY
        && notice::is_index_key(key)
        && let Ok(device) = key.parse::<DeviceId>()
    {
        return DesiredEvent::Listed {
            device,
            stored: ContentHash::of_bytes(value),
            index: DesiredIndex::from_bytes(value).map_err(|e| e.to_string()),
        };
    }
    decode_desired(event)
}

/// The liveness rule: a device is online while its last heartbeat is younger than `timeout`
/// at `now` (server times; a heartbeat from the future counts as fresh).
pub fn is_online(last_heartbeat: Option<Timestamp>, now: Timestamp, timeout: Duration) -> bool {
    last_heartbeat.is_some_and(|at| {
        let age: Duration = now.duration_since(at).try_into().unwrap_or(Duration::ZERO);
        age < timeout
    })
}

/// The blacklist check: the `Device` resource carries [`BLACKLIST_ANNOTATION`]`=true`.
pub fn is_blacklisted(meta: &ObjectMeta) -> bool {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(BLACKLIST_ANNOTATION))
        .is_some_and(|v| v == "true")
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use harmony_fleet_contracts::device::{AgentVersion, Inventory};

    use super::*;

    fn ts(secs: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + secs).expect("valid")
    }

    fn info_value(device: &str, label: (&str, &str)) -> Bytes {
        let info = DeviceInfo {
            device_id: device.parse().expect("id"),
            labels: [(label.0.to_owned(), label.1.to_owned())].into(),
            inventory: Inventory {
                hostname: device.into(),
                arch: "aarch64".into(),
                os: "linux".into(),
                os_release: None,
                kernel_version: None,
                cpu_count: 1,
                memory_bytes: 1,
            },
            agent_version: AgentVersion::new("0.1.0").expect("version"),
            boot_time: None,
            observed_at: ts(0),
        };
        Bytes::from(serde_json::to_vec(&info).expect("serialises"))
    }

    fn put(key: &str, value: Bytes) -> KvEvent {
        KvEvent::Put {
            key: key.into(),
            value,
            at: ts(0),
        }
    }

    #[test]
    fn device_info_is_taken_only_when_key_id_and_labels_agree() {
        assert!(matches!(
            decode_info(put("info.pi-1", info_value("pi-1", ("site", "a")))),
            InfoEvent::Put(i) if i.device_id.as_str() == "pi-1"
        ));
        assert!(matches!(
            decode_info(put("info.pi-1", info_value("pi-2", ("site", "a")))),
            InfoEvent::Rejected { reason, .. } if reason.contains("differs")
        ));
        assert!(matches!(
            decode_info(put("info.pi-1", info_value("pi-1", ("bad key!", "a")))),
            InfoEvent::Rejected { reason, .. } if reason.contains("labels")
        ));
        assert!(matches!(
            decode_info(put("info.pi-1", Bytes::from_static(b"{"))),
            InfoEvent::Rejected { .. }
        ));
        assert_eq!(
            decode_info(put("other", Bytes::new())),
            InfoEvent::Foreign("other".into())
        );
        assert_eq!(
            decode_info(KvEvent::Delete {
                key: "info.pi-1".into()
            }),
            InfoEvent::Delete("pi-1".parse().expect("id"))
        );
    }

    #[test]
    fn state_keys_a_device_may_write_but_no_deployment_has_are_stray() {
        assert!(matches!(
            decode_state(put("state.pi-1.not.a.name", Bytes::new())),
            StateEvent::Stray { device, .. } if device.as_str() == "pi-1"
        ));
        assert!(matches!(
            decode_state(put("state.pi-1.web", Bytes::from_static(b"nope"))),
            StateEvent::Unreadable { raw, .. } if raw == "state.pi-1.web"
        ));
        assert!(matches!(
            decode_state(put("state.pi-1", Bytes::new())),
            StateEvent::Foreign(_)
        ));
        assert_eq!(stray_state_device("state.pi-1."), None);
        assert_eq!(stray_state_device("info.pi-1.x"), None);
        assert_eq!(stray_state_device("state.Not_A_Device.x"), None);
    }

    #[test]
    fn heartbeats_carry_the_server_time() {
        assert_eq!(
            decode_heartbeat(put("heartbeat.pi-1", Bytes::new())),
            HeartbeatEvent::Beat {
                device: "pi-1".parse().expect("id"),
                at: ts(0)
            }
        );
    }

    #[test]
    fn desired_state_keys_are_decoded_with_their_payload_hash() {
        let put = |key: &str, value: &'static [u8]| {
            decode_desired(KvEvent::Put {
                key: key.to_owned(),
                value: Bytes::from_static(value),
                at: ts(0),
            })
        };
        let key = DesiredKey::parse("pi-1.web").expect("key");
        assert_eq!(
            put("pi-1.web", b"payload"),
            DesiredEvent::Key {
                key: key.clone(),
                value: Some((
                    ContentHash::of_bytes(b"payload"),
                    Bytes::from_static(b"payload")
                )),
            }
        );
        assert_eq!(
            decode_desired(KvEvent::Delete {
                key: "pi-1.web".into()
            }),
            DesiredEvent::Key { key, value: None }
        );
        assert_eq!(
            put("pi-1", b"{}"),
            DesiredEvent::Index {
                device: "pi-1".parse().expect("id"),
                stored: Some(ContentHash::of_bytes(b"{}")),
            }
        );
        assert!(matches!(
            put("Not_A_Device", b"{}"),
            DesiredEvent::Foreign { key, .. } if key == "Not_A_Device"
        ));
        assert!(matches!(
            put("pi-1.web.extra", b"{}"),
            DesiredEvent::Foreign { .. }
        ));
        assert_eq!(decode_desired(KvEvent::CaughtUp), DesiredEvent::CaughtUp);
    }

    #[test]
    fn the_checkpoint_is_not_a_foreign_key_and_listed_indexes_decode() {
        let event = |key: &str, value: &'static [u8]| KvEvent::Put {
            key: key.into(),
            value: Bytes::from_static(value),
            at: ts(0),
        };
        assert_eq!(
            decode_desired(event(notice::CHECKPOINT_KEY, b"{}")),
            DesiredEvent::Checkpoint
        );
        let listed = decode_listed(event("pi-1", br#"{"deployments":{}}"#));
        assert!(
            matches!(&listed, DesiredEvent::Listed { device, index: Ok(i), .. } if device.as_str() == "pi-1" && i.is_empty()),
            "{listed:?}"
        );
        let unreadable = decode_listed(event("pi-1", b"not json"));
        assert!(
            matches!(unreadable, DesiredEvent::Listed { index: Err(_), .. }),
            "kept, with why"
        );
        assert!(
            matches!(
                decode_listed(event("pi-1.web", b"x")),
                DesiredEvent::Key { .. }
            ),
            "a deployment key decodes as one"
        );
    }

    #[test]
    fn online_means_a_heartbeat_younger_than_the_timeout() {
        let timeout = Duration::from_secs(30);
        assert!(is_online(Some(ts(0)), ts(29), timeout));
        assert!(!is_online(Some(ts(0)), ts(30), timeout));
        assert!(!is_online(None, ts(0), timeout));
        assert!(
            is_online(Some(ts(5)), ts(0), timeout),
            "a clock ahead is fresh"
        );
    }

    #[test]
    fn only_the_annotation_set_to_true_blacklists() {
        let meta = |v: Option<&str>| ObjectMeta {
            annotations: v.map(|v| [(BLACKLIST_ANNOTATION.to_owned(), v.to_owned())].into()),
            ..ObjectMeta::default()
        };
        assert!(is_blacklisted(&meta(Some("true"))));
        assert!(!is_blacklisted(&meta(Some("false"))));
        assert!(!is_blacklisted(&meta(None)));
    }
}

//! The four JetStream KV buckets of the fleet and how each should be created.
//!
//! [`BucketSpec`] is plain data: deploy code turns it into an `async_nats` bucket/stream
//! configuration (this crate does not depend on a NATS client). Replica count is not part of
//! the spec: it depends on the NATS cluster size, so deploy code chooses it explicitly.

/// Bucket holding the desired state: key `<device>.<deployment>`, value a
/// [`ReconcileScore`](crate::payload::ReconcileScore). Written by the operator.
pub const DESIRED_STATE: &str = "desired-state";

/// Bucket holding what each device reports about itself: key `info.<device>`, value a
/// [`DeviceInfo`](crate::device::DeviceInfo). Written by the agent.
pub const DEVICE_INFO: &str = "device-info";

/// Bucket holding what actually runs: key `state.<device>.<deployment>`, value a
/// [`DeploymentState`](crate::state::DeploymentState). Written by the agent.
pub const DEVICE_STATE: &str = "device-state";

/// Bucket holding liveness: key `heartbeat.<device>`, value a
/// [`Heartbeat`](crate::heartbeat::Heartbeat). Written by the agent.
pub const DEVICE_HEARTBEAT: &str = "device-heartbeat";

/// Who writes a bucket. The other side only reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Writer {
    /// The operator (in Kubernetes) writes; agents read their own keys.
    Operator,
    /// Each agent writes its own keys; the operator reads all of them.
    Agent,
}

/// How a fleet bucket is meant to be created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct BucketSpec {
    /// Bucket name (the JetStream stream is `KV_<name>`).
    pub name: &'static str,
    /// Human description, stored on the stream.
    pub description: &'static str,
    /// Who writes it.
    pub writer: Writer,
    /// Key layout, for documentation and error messages.
    pub key_format: &'static str,
    /// Values kept per key (`max_messages_per_subject`). The fleet's buckets hold *current*
    /// state, so 1 everywhere: history would multiply storage by the fleet size, and the
    /// audit trail of changes lives in Kubernetes (the `Deployment` resources), not in KV.
    pub history: i64,
    /// Largest value accepted by the server (`max_value_size`, bytes). Bounds what a
    /// misbehaving writer can store per key.
    pub max_value_size: i32,
    /// Must be `true`: reads go through direct get (`$JS.API.DIRECT.GET.<stream>.<subject>`),
    /// the only read path whose permission can be scoped to a device's own keys. The legacy
    /// `STREAM.MSG.GET` carries the subject in its payload and cannot be scoped.
    pub allow_direct: bool,
    /// Whether `Nats-Rollup` headers are honoured. `false` on agent-written buckets: with
    /// rollups allowed, a device publishing to its *own* key with `Nats-Rollup: all` would
    /// wipe every device's entries. Consequence: keys there are removed with KV *delete*
    /// (a tombstone), never *purge* (which is a rollup). `async_nats::create_key_value`
    /// always enables rollups, so deploy code must create or update these streams with
    /// rollups off.
    pub allow_rollup: bool,
}

/// `desired-state`: what the operator wants each device to run.
pub const DESIRED_STATE_SPEC: BucketSpec = BucketSpec {
    name: DESIRED_STATE,
    description: "harmony fleet: desired state per device and deployment (written by the operator)",
    writer: Writer::Operator,
    key_format: "<device>.<deployment>",
    history: 1,
    max_value_size: 256 * 1024,
    allow_direct: true,
    allow_rollup: true,
};

/// `device-info`: labels and inventory per device.
pub const DEVICE_INFO_SPEC: BucketSpec = BucketSpec {
    name: DEVICE_INFO,
    description: "harmony fleet: labels and inventory per device (written by agents)",
    writer: Writer::Agent,
    key_format: "info.<device>",
    history: 1,
    max_value_size: 64 * 1024,
    allow_direct: true,
    allow_rollup: false,
};

/// `device-state`: phase of each deployment on each device.
pub const DEVICE_STATE_SPEC: BucketSpec = BucketSpec {
    name: DEVICE_STATE,
    description: "harmony fleet: observed state per device and deployment (written by agents)",
    writer: Writer::Agent,
    key_format: "state.<device>.<deployment>",
    history: 1,
    max_value_size: 16 * 1024,
    allow_direct: true,
    allow_rollup: false,
};

/// `device-heartbeat`: liveness per device.
pub const DEVICE_HEARTBEAT_SPEC: BucketSpec = BucketSpec {
    name: DEVICE_HEARTBEAT,
    description: "harmony fleet: liveness per device (written by agents)",
    writer: Writer::Agent,
    key_format: "heartbeat.<device>",
    history: 1,
    max_value_size: 256,
    allow_direct: true,
    allow_rollup: false,
};

/// Every fleet bucket, in a stable order.
pub const ALL: [BucketSpec; 4] = [
    DESIRED_STATE_SPEC,
    DEVICE_INFO_SPEC,
    DEVICE_STATE_SPEC,
    DEVICE_HEARTBEAT_SPEC,
];

/// Name of the JetStream stream backing KV bucket `bucket` (`KV_<bucket>`).
pub fn stream_name(bucket: &str) -> String {
    format!("KV_{bucket}")
}

/// The subject a KV operation on `bucket`/`key` is published to (`$KV.<bucket>.<key>`).
pub fn kv_subject(bucket: &str, key: &str) -> String {
    format!("$KV.{bucket}.{key}")
}

/// Looks a bucket spec up by name.
pub fn spec(name: &str) -> Option<&'static BucketSpec> {
    ALL.iter().find(|spec| spec.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_written_buckets_refuse_rollups() {
        for spec in ALL {
            assert!(spec.allow_direct, "{}", spec.name);
            assert_eq!(
                spec.allow_rollup,
                spec.writer == Writer::Operator,
                "{}",
                spec.name
            );
        }
    }

    #[test]
    fn bucket_names_are_valid_kv_bucket_names() {
        for spec in ALL {
            assert!(
                spec.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
                "{}",
                spec.name
            );
        }
    }

    #[test]
    fn heartbeat_bucket_fits_the_heartbeat_budget() {
        assert!(
            DEVICE_HEARTBEAT_SPEC.max_value_size as usize > crate::heartbeat::MAX_SERIALIZED_LEN
        );
    }

    #[test]
    fn finds_specs_by_name() {
        assert_eq!(spec("device-state"), Some(&DEVICE_STATE_SPEC));
        assert_eq!(spec("nope"), None);
    }
}

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

/// The operator's own object store (stream `OBJ_fleet-operator`): what it saves to start
/// faster, the snapshot of the reports it holds (adr/0052). Written and read by the operator
/// only; no device permission names it. No byte limit, like the other operator-written
/// streams: it holds one object, replaced as a whole.
pub const OPERATOR_STORE: &str = "fleet-operator";

/// The stream behind [`OPERATOR_STORE`].
pub fn operator_store_stream() -> String {
    format!("OBJ_{OPERATOR_STORE}")
}

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
    /// Keys one device may hold in an agent-written bucket. 0 on operator-written buckets,
    /// which have no byte limit, so device writes never compete with the operator's.
    pub keys_per_device: u32,
    /// What the bucket's byte limit budgets per key on average (bytes; see
    /// [`Self::max_bytes`]). One value may be as large as [`Self::max_value_size`], but every
    /// device holding all its keys at that size is not a fleet anyone runs: budgeting for it
    /// reserved ~1 MiB per device, more JetStream storage than small servers have.
    pub budget_value_size: i32,
}

/// Devices a fleet's buckets are sized for when the installer does not say (the stream byte
/// limits of agent-written buckets scale with it; see [`BucketSpec::max_bytes`]).
pub const DEFAULT_FLEET_CAPACITY: u64 = 10_000;

/// Deployments one device may report on at once: the `device-state` budget per device.
pub const MAX_DEPLOYMENTS_PER_DEVICE: u32 = 64;

/// What JetStream stores besides a value: subject, headers and its own framing (a bound,
/// generous for the fleet's keys of at most ~330 bytes and KV headers).
pub const STORED_OVERHEAD_BYTES: i64 = 512;

/// Room [`jetstream_storage_bytes`] leaves per device for the operator's `desired-state`
/// (no byte limit of its own): 32 deployments of ~1 KiB each.
pub const DESIRED_STATE_ROOM_PER_DEVICE: u64 = 32 * 1024;

const GIB: u64 = 1024 * 1024 * 1024;

/// What the agent-written buckets of a fleet of `capacity` devices reserve on each server
/// holding a replica (the sum of their [`BucketSpec::max_bytes`]). JetStream refuses to create
/// a stream whose limit does not fit the server's file storage (`max_file_store`) next to
/// what other streams reserve.
pub fn device_reservation_bytes(capacity: u64) -> u64 {
    ALL.iter()
        .map(|spec| u64::try_from(spec.max_bytes(capacity)).unwrap_or(0))
        .fold(0, u64::saturating_add)
}

/// The JetStream file storage (`max_file_store`, and a cluster's volume size) a server needs for
/// a fleet of `capacity` devices: the device buckets' reservation, the agent builds' bucket
/// ([`crate::binaries::BUCKET_MAX_BYTES`]) and [`DESIRED_STATE_ROOM_PER_DEVICE`], rounded up
/// to whole GiB. 10,000 devices: 2 GiB.
pub fn jetstream_storage_bytes(capacity: u64) -> u64 {
    let binaries = u64::try_from(crate::binaries::BUCKET_MAX_BYTES).unwrap_or(0);
    let wanted = device_reservation_bytes(capacity)
        .saturating_add(binaries)
        .saturating_add(capacity.saturating_mul(DESIRED_STATE_ROOM_PER_DEVICE));
    wanted.div_ceil(GIB).max(1).saturating_mul(GIB)
}

impl BucketSpec {
    /// The stream's byte limit (`max_bytes`) for a fleet of `capacity` devices: every device
    /// holding its whole budget ([`Self::keys_per_device`] values of
    /// [`Self::budget_value_size`] on average, plus JetStream's overhead) fits, and nothing
    /// beyond. `-1` (no limit) on operator-written buckets: they are a
    /// separate stream, so a device filling its buckets never blocks the operator's writes.
    pub fn max_bytes(&self, capacity: u64) -> i64 {
        if self.writer == Writer::Operator || self.keys_per_device == 0 {
            return -1;
        }
        let per_device = i64::from(self.keys_per_device)
            * (i64::from(self.budget_value_size) + STORED_OVERHEAD_BYTES);
        i64::try_from(capacity.max(1))
            .unwrap_or(i64::MAX)
            .saturating_mul(per_device)
    }
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
    keys_per_device: 0,
    budget_value_size: 0,
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
    keys_per_device: 1,
    budget_value_size: 4 * 1024,
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
    keys_per_device: MAX_DEPLOYMENTS_PER_DEVICE,
    budget_value_size: 1024,
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
    keys_per_device: 1,
    budget_value_size: 256,
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
    fn only_agent_written_buckets_have_a_byte_limit_that_scales_with_the_fleet() {
        assert_eq!(DESIRED_STATE_SPEC.max_bytes(100_000), -1);
        // One heartbeat key per device: 256 B + overhead, times the fleet.
        assert_eq!(DEVICE_HEARTBEAT_SPEC.max_bytes(1_000), 1_000 * (256 + 512));
        let state = DEVICE_STATE_SPEC.max_bytes(10);
        assert_eq!(state, 10 * 64 * (1024 + 512));
        assert_eq!(DEVICE_STATE_SPEC.max_bytes(20), 2 * state);
        // A zero capacity still lets one device in; a huge one saturates.
        assert_eq!(DEVICE_INFO_SPEC.max_bytes(0), DEVICE_INFO_SPEC.max_bytes(1));
        assert_eq!(DEVICE_INFO_SPEC.max_bytes(u64::MAX), i64::MAX);
    }

    #[test]
    fn a_default_fleet_fits_a_small_server() {
        // 10,000 devices reserve ~1 GB for their buckets and ask 2 GiB of JetStream storage:
        // a Pi-class server or a 2 GiB volume holds it, whatever the disk's free space.
        let reserved = device_reservation_bytes(DEFAULT_FLEET_CAPACITY);
        assert!(reserved < 1_100_000_000, "{reserved}");
        assert_eq!(jetstream_storage_bytes(DEFAULT_FLEET_CAPACITY), 2 * GIB);
        assert_eq!(jetstream_storage_bytes(0), GIB);
        assert!(
            jetstream_storage_bytes(DEFAULT_FLEET_CAPACITY)
                > reserved + crate::binaries::BUCKET_MAX_BYTES as u64
        );
        // Storage grows with the fleet and always holds the reservation.
        for capacity in [1, 100, 100_000, 1_000_000] {
            assert!(jetstream_storage_bytes(capacity) > device_reservation_bytes(capacity));
        }
        assert_eq!(jetstream_storage_bytes(u64::MAX), u64::MAX);
    }

    #[test]
    fn budgets_never_exceed_the_largest_value() {
        for spec in ALL {
            assert!(
                spec.budget_value_size <= spec.max_value_size,
                "{}",
                spec.name
            );
            assert_eq!(
                spec.budget_value_size == 0,
                spec.keys_per_device == 0,
                "{}",
                spec.name
            );
        }
    }

    #[test]
    fn finds_specs_by_name() {
        assert_eq!(spec("device-state"), Some(&DEVICE_STATE_SPEC));
        assert_eq!(spec("nope"), None);
    }
}

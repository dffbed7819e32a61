//! The JetStream subjects behind the fleet's KV operations, as async-nats 0.51 and
//! nats-server 2.10+ spell them. Pure string builders, used by [`crate::permissions`] and by
//! its tests; no client in here.
//!
//! | operation | subject |
//! |---|---|
//! | bind a bucket (`get_key_value`) | `$JS.API.STREAM.INFO.KV_<bucket>` |
//! | put / delete a key | `$KV.<bucket>.<key>` (reply on the caller's inbox) |
//! | get a key (bucket has `allow_direct`) | `$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>` |
//! | watch, consumer **with a name** | `$JS.API.CONSUMER.CREATE.KV_<bucket>.<name>.<filter>` |
//! | watch, consumer without a name | `$JS.API.CONSUMER.CREATE.KV_<bucket>` |
//! | flow-control reply of an ordered consumer | `$JS.FC.KV_<bucket>.<consumer>.<id>` |
//!
//! Only the *extended* consumer-create subject carries the filter, so only it can be
//! restricted per device: nats-server rejects a request whose configured filter differs from
//! the one in the subject. `async_nats::jetstream::kv::Store::watch*` creates its consumer
//! *without* a name (the unfiltered subject), so the agent must create its ordered consumer
//! itself with `OrderedConfig { name: Some(..), filter_subject: desired_watch_filter(..), .. }`.

use crate::buckets::{self, DESIRED_STATE};
use crate::ids::DeviceId;
use crate::keys::desired_device_pattern;

/// Prefix of the JetStream API.
pub const API_PREFIX: &str = "$JS.API";

/// `$JS.API.STREAM.INFO.KV_<bucket>`: what binding a bucket asks.
pub fn stream_info(bucket: &str) -> String {
    format!("{API_PREFIX}.STREAM.INFO.{}", buckets::stream_name(bucket))
}

/// `$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<key>`: a direct get of the last value of
/// `key` (`key` may be a pattern when used in a permission).
pub fn direct_get(bucket: &str, key: &str) -> String {
    format!(
        "{API_PREFIX}.DIRECT.GET.{}.{}",
        buckets::stream_name(bucket),
        buckets::kv_subject(bucket, key)
    )
}

/// `$JS.API.CONSUMER.CREATE.KV_<bucket>.<consumer>.<filter>`: creating a named consumer whose
/// filter subject is `filter` (a full `$KV.<bucket>.…` subject).
pub fn consumer_create(bucket: &str, consumer: &str, filter: &str) -> String {
    format!(
        "{API_PREFIX}.CONSUMER.CREATE.{}.{consumer}.{filter}",
        buckets::stream_name(bucket)
    )
}

/// `$JS.API.CONSUMER.CREATE.KV_<bucket>`: creating a consumer without a name; its filter is
/// only in the payload, so this subject cannot be scoped to a device.
pub fn consumer_create_unfiltered(bucket: &str) -> String {
    format!(
        "{API_PREFIX}.CONSUMER.CREATE.{}",
        buckets::stream_name(bucket)
    )
}

/// `$JS.FC.KV_<bucket>.>`: flow-control replies of consumers on `bucket`.
pub fn flow_control(bucket: &str) -> String {
    format!("$JS.FC.{}.>", buckets::stream_name(bucket))
}

/// `$JS.ACK.KV_<bucket>.>`: acknowledgements of consumers on `bucket`.
pub fn ack(bucket: &str) -> String {
    format!("$JS.ACK.{}.>", buckets::stream_name(bucket))
}

/// The filter subject of the agent's watch: `$KV.desired-state.<device>.>`.
pub fn desired_watch_filter(device: &DeviceId) -> String {
    buckets::kv_subject(DESIRED_STATE, &desired_device_pattern(device))
}

/// A consumer name for the agent's desired-state watch: `<device>_<instance>`, where
/// `instance` is unique per process start (e.g. a random suffix). Names are one subject token:
/// `instance` must not contain `.`, `*`, `>` or whitespace. The device id in the name only
/// helps operators reading `nats consumer ls`; permissions do not depend on it.
pub fn watch_consumer_name(device: &DeviceId, instance: &str) -> String {
    format!("{device}_{instance}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_the_subjects_async_nats_uses() {
        let device: DeviceId = "pi-1".parse().unwrap();
        assert_eq!(
            stream_info("desired-state"),
            "$JS.API.STREAM.INFO.KV_desired-state"
        );
        assert_eq!(
            direct_get("desired-state", "pi-1.web"),
            "$JS.API.DIRECT.GET.KV_desired-state.$KV.desired-state.pi-1.web"
        );
        assert_eq!(
            consumer_create("desired-state", "pi-1_x", &desired_watch_filter(&device)),
            "$JS.API.CONSUMER.CREATE.KV_desired-state.pi-1_x.$KV.desired-state.pi-1.>"
        );
        assert_eq!(
            consumer_create_unfiltered("device-state"),
            "$JS.API.CONSUMER.CREATE.KV_device-state"
        );
        assert_eq!(flow_control("desired-state"), "$JS.FC.KV_desired-state.>");
        assert_eq!(ack("device-state"), "$JS.ACK.KV_device-state.>");
        assert_eq!(watch_consumer_name(&device, "a1b2"), "pi-1_a1b2");
    }
}

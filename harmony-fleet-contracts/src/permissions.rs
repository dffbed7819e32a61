//! NATS permission templates derived from the contract: one per device, one for the operator.
//!
//! A device may touch only its own keys and subjects. [`device_permissions`] lists exactly
//! what an agent needs — nothing with another device's id, and no subject whose scope hides in
//! a payload:
//!
//! | need | publish allow |
//! |---|---|
//! | write its info, states, heartbeat | `$KV.device-info.info.<d>`, `$KV.device-state.state.<d>.>`, `$KV.device-heartbeat.heartbeat.<d>` |
//! | read its desired-state index | `$JS.API.DIRECT.GET.KV_desired-state.$KV.desired-state.<d>` ([`crate::notice`]) |
//! | read its own keys | `$JS.API.DIRECT.GET.KV_<bucket>.$KV.<bucket>.<own key or pattern>` |
//! | answer commands | `allow_responses` |
//! | renew its credential | `device-identity.<d>.renew` ([`crate::identity`]) |
//! | read agent builds (self-upgrade) | `$JS.API.DIRECT.GET.OBJ_agent-binaries` and its `.$O.agent-binaries.M.>` ([`crate::binaries`]; shared by all devices, read-only) |
//!
//! Subscribe: its own inbox prefix `_INBOX_<d>.>` ([`device_inbox_prefix`]; the agent sets
//! `ConnectOptions::custom_inbox_prefix`), `device-commands.<d>.>`, and its change notices
//! `desired-notify.<d>`.
//!
//! Deliberately **not** allowed, and why:
//! - `$JS.API.CONSUMER.CREATE.*` in any form: even the named form, whose subject carries the
//!   filter, lets the request body name any `deliver_subject` (another device's command
//!   subject, say), and nothing limits how many consumers a user creates. Devices learn about
//!   changes from notices instead (adr/0013, adr/0014).
//! - `$JS.API.STREAM.INFO.*`, `STREAM.NAMES`, `STREAM.LIST`: with a `subjects_filter`, stream
//!   info lists every key of a bucket (other devices' ids and deployment names). Agents write
//!   by publishing to the KV subject and read by direct get, so they never bind a bucket.
//! - `$JS.API.STREAM.MSG.GET.*` and the batch form `$JS.API.DIRECT.GET.KV_<bucket>`: the
//!   subject to read is in the payload, so either would let a device read every key.
//!   The one exception is `OBJ_agent-binaries`, whose every message all devices may read.
//! - `$JS.FC.>`, `$JS.ACK.>`: only consumers need them.
//! - `_INBOX.>`: other clients' replies (e.g. the operator's) arrive there.

use serde::Serialize;

use crate::binaries;
use crate::buckets::{self, DESIRED_STATE, DEVICE_HEARTBEAT, DEVICE_INFO, DEVICE_STATE};
use crate::identity;
use crate::ids::{DeploymentName, DeviceId};
use crate::jetstream;
use crate::keys;
use crate::notice;
use crate::subject;

/// Inbox prefix of the operator and other trusted clients (async-nats' default).
pub const DEFAULT_INBOX_PREFIX: &str = "_INBOX";

/// The inbox prefix a device must use: `_INBOX_<device>`. A single token distinct from
/// `_INBOX`, so no other client's inbox (`_INBOX.…`) falls under the device's subscribe
/// permission `_INBOX_<device>.>`.
pub fn device_inbox_prefix(device: &DeviceId) -> String {
    format!("{DEFAULT_INBOX_PREFIX}_{device}")
}

/// A list of allowed subjects (patterns with `*` / `>`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SubjectList {
    /// Allowed subjects; everything else is denied.
    pub allow: Vec<String>,
}

impl SubjectList {
    /// `true` when some allowed pattern covers `subject` (see [`subject::matches`]).
    pub fn allows(&self, subject: &str) -> bool {
        self.allow
            .iter()
            .any(|pattern| subject::matches(pattern, subject))
    }
}

/// A user's permissions, serialising to the shape of a nats-server `permissions` block:
/// `{"publish": {"allow": […]}, "subscribe": {"allow": […]}, "allow_responses": true}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Permissions {
    /// Subjects the user may publish to.
    pub publish: SubjectList,
    /// Subjects the user may subscribe to.
    pub subscribe: SubjectList,
    /// May publish to the reply subject of a request it received (once per request).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub allow_responses: bool,
}

impl Permissions {
    /// `true` when publishing to `subject` is allowed by the allow list (replies under
    /// `allow_responses` are not modelled: they depend on the request received).
    pub fn allows_publish(&self, subject: &str) -> bool {
        self.publish.allows(subject)
    }

    /// `true` when subscribing to `subject` (which may contain wildcards) is allowed.
    pub fn allows_subscribe(&self, subject: &str) -> bool {
        self.subscribe.allows(subject)
    }
}

/// The permission template of `device`; see the module documentation for each entry.
pub fn device_permissions(device: &DeviceId) -> Permissions {
    let own_desired = keys::desired_device_pattern(device);
    let own_info = keys::info_key(device);
    let own_states = keys::state_device_pattern(device);
    let own_heartbeat = keys::heartbeat_key(device);

    let publish = vec![
        buckets::kv_subject(DEVICE_INFO, &own_info),
        buckets::kv_subject(DEVICE_STATE, &own_states),
        buckets::kv_subject(DEVICE_HEARTBEAT, &own_heartbeat),
        jetstream::direct_get(DESIRED_STATE, &notice::index_key(device)),
        jetstream::direct_get(DESIRED_STATE, &own_desired),
        jetstream::direct_get(DEVICE_INFO, &own_info),
        jetstream::direct_get(DEVICE_STATE, &own_states),
        jetstream::direct_get(DEVICE_HEARTBEAT, &own_heartbeat),
        identity::renew_subject(device),
        binaries::meta_direct_get_pattern(),
        binaries::chunk_direct_get(),
    ];

    Permissions {
        publish: SubjectList { allow: publish },
        subscribe: SubjectList {
            allow: vec![
                format!("{}.>", device_inbox_prefix(device)),
                keys::command_serve_pattern(device),
                notice::notify_subject(device),
            ],
        },
        allow_responses: true,
    }
}

/// The operator's template (also fit for deploy tooling that creates the buckets): full use
/// of the four fleet buckets — create/update/inspect/purge their streams, read, write, watch —
/// and every command subject. Deleting a bucket is left to the server's admin user.
pub fn operator_permissions() -> Permissions {
    let mut publish = Vec::new();
    for spec in buckets::ALL {
        let bucket = spec.name;
        let stream = buckets::stream_name(bucket);
        publish.push(buckets::kv_subject(bucket, ">"));
        for op in ["CREATE", "UPDATE", "INFO", "PURGE", "MSG.GET"] {
            publish.push(format!("{}.STREAM.{op}.{stream}", jetstream::API_PREFIX));
        }
        publish.push(format!("{}.DIRECT.GET.{stream}", jetstream::API_PREFIX));
        publish.push(format!("{}.DIRECT.GET.{stream}.>", jetstream::API_PREFIX));
        publish.push(jetstream::consumer_create_unfiltered(bucket));
        publish.push(format!(
            "{}.>",
            jetstream::consumer_create_unfiltered(bucket)
        ));
        for op in ["DELETE", "INFO", "MSG.NEXT"] {
            publish.push(format!(
                "{}.CONSUMER.{op}.{stream}.*",
                jetstream::API_PREFIX
            ));
        }
        publish.push(jetstream::flow_control(bucket));
        publish.push(jetstream::ack(bucket));
    }
    // The agent-binaries object store: publish builds, read them back (adr/0043).
    publish.extend(object_store_publish(
        binaries::AGENT_BINARIES,
        &binaries::stream_name(),
    ));
    // Its own object store: the reports snapshot (adr/0052).
    publish.extend(object_store_publish(
        buckets::OPERATOR_STORE,
        &buckets::operator_store_stream(),
    ));
    publish.extend([
        format!("{}.INFO", jetstream::API_PREFIX),
        format!("{}.STREAM.NAMES", jetstream::API_PREFIX),
        format!("{}.STREAM.LIST", jetstream::API_PREFIX),
        keys::COMMANDS_ALL.to_owned(),
        notice::NOTIFY_ALL.to_owned(),
    ]);
    Permissions {
        publish: SubjectList { allow: publish },
        subscribe: SubjectList {
            allow: vec![
                format!("{DEFAULT_INBOX_PREFIX}.>"),
                identity::ENROLL_SUBJECT.to_owned(),
                identity::RENEW_ALL.to_owned(),
            ],
        },
        // Answers enrollment and renewal requests (their reply subjects are the requesters'
        // inboxes, which the operator may not publish to otherwise).
        allow_responses: true,
    }
}

/// What the operator publishes to create, write and read the object store `bucket` (stream
/// `stream`): its stream's management, its chunk and metadata subjects, direct gets, and the
/// ordered consumer an object read uses.
fn object_store_publish(bucket: &str, stream: &str) -> Vec<String> {
    let api = jetstream::API_PREFIX;
    let mut publish: Vec<String> = ["CREATE", "UPDATE", "INFO", "PURGE", "MSG.GET"]
        .iter()
        .map(|op| format!("{api}.STREAM.{op}.{stream}"))
        .collect();
    publish.extend([
        format!("$O.{bucket}.>"),
        format!("{api}.DIRECT.GET.{stream}"),
        format!("{api}.DIRECT.GET.{stream}.>"),
        format!("{api}.CONSUMER.CREATE.{stream}"),
        format!("{api}.CONSUMER.CREATE.{stream}.>"),
        format!("{api}.CONSUMER.DELETE.{stream}.*"),
        format!("$JS.FC.{stream}.>"),
    ]);
    publish
}

/// Publish or subscribe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    /// Publish (including requests).
    Publish,
    /// Subscribe.
    Subscribe,
}

/// Whether a subject belongs to one device or is shared by all agents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// Carries the device's id: no other device may use it.
    Own,
    /// Same for every agent (binding a bucket, flow control): granted to all.
    Shared,
}

/// One subject an agent uses, with why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubjectUse {
    /// Publish or subscribe.
    pub action: Action,
    /// Concrete subject (or the subscription pattern).
    pub subject: String,
    /// Own or shared.
    pub scope: Scope,
    /// What the agent does with it.
    pub purpose: &'static str,
}

/// Every subject the agent of `device` uses for `deployment`, built with the same key and
/// subject builders the agent uses — the list [`device_permissions`] is checked against.
/// `inbox` is one inbox token.
pub fn agent_subject_uses(
    device: &DeviceId,
    deployment: &DeploymentName,
    inbox: &str,
) -> Vec<SubjectUse> {
    use Action::{Publish, Subscribe};
    let own = |action, subject, purpose| SubjectUse {
        action,
        subject,
        scope: Scope::Own,
        purpose,
    };
    let desired_key = keys::desired_key(device, deployment);
    let info_key = keys::info_key(device);
    let state_key = keys::state_key(device, deployment);
    let heartbeat_key = keys::heartbeat_key(device);
    let inbox_prefix = device_inbox_prefix(device);

    vec![
        own(
            Publish,
            buckets::kv_subject(DEVICE_INFO, &info_key),
            "put device-info",
        ),
        own(
            Publish,
            buckets::kv_subject(DEVICE_STATE, &state_key),
            "put or delete device-state",
        ),
        own(
            Publish,
            buckets::kv_subject(DEVICE_HEARTBEAT, &heartbeat_key),
            "put heartbeat",
        ),
        own(
            Publish,
            jetstream::direct_get(DESIRED_STATE, &notice::index_key(device)),
            "get the desired-state index",
        ),
        own(
            Publish,
            jetstream::direct_get(DESIRED_STATE, &desired_key),
            "get desired state",
        ),
        own(
            Publish,
            jetstream::direct_get(DEVICE_INFO, &info_key),
            "get own device-info",
        ),
        own(
            Publish,
            jetstream::direct_get(DEVICE_STATE, &state_key),
            "get own device-state",
        ),
        own(
            Publish,
            jetstream::direct_get(DEVICE_HEARTBEAT, &heartbeat_key),
            "get own heartbeat",
        ),
        own(
            Publish,
            identity::renew_subject(device),
            "renew its credential",
        ),
        SubjectUse {
            action: Publish,
            subject: binaries::meta_direct_get(&"0".repeat(64)),
            scope: Scope::Shared,
            purpose: "read an agent build's metadata",
        },
        SubjectUse {
            action: Publish,
            subject: binaries::chunk_direct_get(),
            scope: Scope::Shared,
            purpose: "read an agent build's chunks",
        },
        own(
            Subscribe,
            format!("{inbox_prefix}.>"),
            "receive replies (wildcard inbox subscription)",
        ),
        own(
            Subscribe,
            format!("{inbox_prefix}.{inbox}.*"),
            "receive replies (async-nats request multiplexer)",
        ),
        own(
            Subscribe,
            keys::command_serve_pattern(device),
            "serve commands",
        ),
        own(
            Subscribe,
            notice::notify_subject(device),
            "hear about desired-state changes",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_inbox_prefix_is_one_token_apart_from_the_default() {
        let device: DeviceId = "pi-1".parse().unwrap();
        assert_eq!(device_inbox_prefix(&device), "_INBOX_pi-1");
        let perms = device_permissions(&device);
        assert!(!perms.allows_subscribe("_INBOX.abc.*"));
        assert!(!perms.allows_subscribe("_INBOX.>"));
    }

    #[test]
    fn serialises_as_a_nats_server_permissions_block() {
        let json = serde_json::to_value(device_permissions(&"pi-1".parse().unwrap())).unwrap();
        assert!(json["publish"]["allow"].is_array());
        assert!(json["subscribe"]["allow"].is_array());
        assert_eq!(json["allow_responses"], true);
        let json = serde_json::to_value(identity::bootstrap_permissions()).unwrap();
        assert!(json.get("allow_responses").is_none());
    }

    #[test]
    fn every_template_entry_is_a_valid_subject() {
        let perms = [
            device_permissions(&"pi-1".parse().unwrap()),
            operator_permissions(),
        ];
        for p in perms {
            for s in p.publish.allow.iter().chain(&p.subscribe.allow) {
                assert!(subject::is_valid_subject(s), "{s}");
            }
        }
    }
}

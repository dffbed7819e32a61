//! Wire contract of harmony fleet: every name and shape that crosses NATS between the
//! operator, the agents and the tools (MISSION.md §5).
//!
//! Pure types and functions — no async runtime, no NATS client, no Kubernetes client — so
//! every side of the wire can depend on it, and everything here is tested without a server.
//!
//! | module | holds |
//! |---|---|
//! | [`buckets`] | the four KV bucket names and how to create them ([`BucketSpec`]) |
//! | [`identity`] | device credentials (JWT claims from the permission template) and enrollment |
//! | [`ids`] | [`DeviceId`], [`DeploymentName`]: validated at every entry point, serde included |
//! | [`jwt`] | NATS JWT v2: operator, account and user claims, signed and verified with nkeys |
//! | [`keys`] | key builders/parsers, watch patterns, command subjects |
//! | [`payload`] | the Score payload [`ReconcileScore`] (`PodmanV0`) and its validation |
//! | [`canonical`] | deterministic JSON and the [`ContentHash`] of a payload |
//! | [`device`] | [`DeviceInfo`], [`Inventory`], [`AgentVersion`], label rules |
//! | [`state`] | [`DeploymentState`] and [`Phase`] |
//! | [`heartbeat`] | [`Heartbeat`], the < 96-byte liveness record |
//! | [`commands`] | the request/reply command protocol: verbs, requests, replies, caps |
//! | [`sessions`] | live log tail and interactive shell: long-poll sessions over `logs-stream` / `shell` |
//! | [`notice`] | change notices and the per-device desired-state index (no consumer per device) |
//! | [`permissions`] | per-device and operator NATS permission templates |
//! | [`jetstream`] | the JetStream API subjects behind KV operations |
//! | [`subject`] | NATS subject syntax and the `*`/`>` matcher |
//! | [`trust`] | the operator-mode chain of trust: operator, system and fleet accounts, their JWTs |
//! | [`validation`] | field-path validation errors |
//!
//! Compatibility rule: names are frozen (golden tests pin them); payloads evolve additively,
//! with new optional fields that are omitted when at their default (see [`payload`]).

#![deny(missing_docs)]

pub mod binaries;
pub mod bootstrap_token;
pub mod buckets;
pub mod canonical;
pub mod commands;
pub mod device;
pub mod heartbeat;
pub mod identity;
pub mod ids;
pub mod jetstream;
pub mod jwt;
pub mod keys;
pub mod notice;
pub mod payload;
pub mod permissions;
pub mod sessions;
pub mod state;
pub mod subject;
pub mod trust;
pub mod validation;

pub use buckets::{BucketSpec, Writer};
pub use canonical::{CanonicalError, ContentHash, to_canonical_json};
pub use commands::{CommandError, CommandReply, ErrorKind, Verb};
pub use device::{AgentVersion, DeviceInfo, Inventory};
pub use heartbeat::Heartbeat;
pub use ids::{DeploymentName, DeviceId, IdError};
pub use keys::{CommandSubject, DesiredKey, HeartbeatKey, InfoKey, KeyError, StateKey};
pub use notice::DesiredIndex;
pub use payload::{AgentV0, PayloadError, PodmanV0, ReconcileScore};
pub use permissions::{Permissions, device_inbox_prefix, device_permissions, operator_permissions};
pub use state::{DeploymentState, Phase};
pub use validation::{FieldError, ValidationErrors};

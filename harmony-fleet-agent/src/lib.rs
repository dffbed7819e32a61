//! The harmony fleet device agent: makes podman on one device match the desired state the
//! operator writes to NATS KV, keeps working while NATS is unreachable, and reports back.
//!
//! Layers, from the wire inwards (MISSION.md §7):
//!
//! | module | holds |
//! |---|---|
//! | [`config`] | the TOML configuration and its validation |
//! | [`connection`] | the NATS client, link state, KV writes |
//! | [`identity`] | the device key, its credential, enrollment and renewal |
//! | [`watch`] | the desired-state watch (ordered consumer, re-created on every reconnect) |
//! | [`deployments`] | held desired state (by KV revision), one worker per deployment |
//! | [`reconcile`] | desired payload vs observed containers ⇒ plan ⇒ runtime calls |
//! | [`runtime`] | the `ContainerRuntime` trait and the podman CLI implementation |
//! | [`store`] | the offline copy of the desired state (atomic writes) |
//! | [`reports`] | device-info, device-state and heartbeats |
//! | [`commands`] | the `ping`, `exec` and `logs` verbs, and dispatch of the session verbs |
//! | [`sessions`] | open log tails and shells, their output buffers, idle reaping |
//! | [`logs_stream`] | the `logs-stream` verb: follow a deployment's containers live |
//! | [`shell`] | the `shell` verb: an interactive shell on a pseudo-terminal |
//! | [`inventory`] | what the device is (from `/proc`) |
//! | [`metrics`] | Prometheus counters and the local `/metrics` endpoint |
//! | [`agent`] | [`Agent`], wiring the loops together |
//!
//! It depends on neither `harmony` nor kube.

pub mod agent;
pub mod commands;
pub mod config;
pub mod connection;
pub mod deployments;
pub mod error;
pub mod identity;
pub mod inventory;
pub mod logs_stream;
pub mod metrics;
pub mod reconcile;
pub mod reports;
pub mod runtime;
pub mod sessions;
pub mod shell;
pub mod store;
pub mod watch;

pub use agent::{Agent, agent_version};
pub use config::{Config, ConfigError};
pub use error::Error;

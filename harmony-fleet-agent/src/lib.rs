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
//! | [`upgrade`] | self-upgrade (`AgentV0`): plan, fetch, install, probation, the start guard |
//! | [`version`] | the version this binary reports, and stamping it into a build |
//! | [`agent`] | [`Agent`], wiring the loops together |
//!
//! It depends on neither `harmony` nor kube.
//!
//! ## Self-upgrade
//!
//! An `AgentV0` deployment makes the agent replace its own binary (see [`upgrade`] for the
//! whole sequence). Under `<data_dir>/upgrade/`: `staged-<sha>` (a downloaded, checked build),
//! `previous` (the binary that ran before the last swap; systemd runs it as
//! `ExecStartPre=-<data_dir>/upgrade/previous upgrade-guard --config ...`), `pending.json`
//! (an upgrade on probation until the new binary's first heartbeat) and `failed.json` (the
//! last reverted build, not tried again). Fetch → self-test → swap → exit
//! [`EXIT_RESTART`] → systemd restarts → the guard counts starts → the new binary confirms
//! on its first heartbeat, or exits [`EXIT_UNCONFIRMED`] at its deadline and the guard
//! puts `previous` back.

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
pub mod upgrade;
pub mod version;
pub mod watch;

pub use agent::{Agent, agent_version};
pub use config::{Config, ConfigError};
pub use error::Error;
pub use upgrade::{EXIT_RESTART, EXIT_UNCONFIRMED, Exit, guard_binary};
pub use version::{StampError, stamp};

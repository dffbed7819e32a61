//! Scores that install harmony fleet, one per component, and what the `harmony-fleet-deploy`
//! command runs.
//!
//! | Score | what it makes real | smoke test it blocks on |
//! |---|---|---|
//! | [`FleetNatsScore`] | NATS with JetStream over TLS in operator mode, the four fleet buckets, the chain of trust, the operator's and the agents' bootstrap identities | locally: KV round trip as the operator, a device denied another device's key; cluster: the StatefulSet ready |
//! | [`FleetOperatorScore`] | CRDs, service account, RBAC and the operator workload (with the identity service that enrolls devices) | `/readyz` says `Converged` |
//! | [`FleetAgentScore`] | one device agent, as a local process ([`FleetAgentTarget::Local`]), a Pod, or a systemd service on a host over SSH ([`FleetAgentTarget::Host`]) | a heartbeat from that device |
//! | [`FleetServerScore`] | NATS + operator, composed | both of the above |
//! | [`FleetDeploymentScore`] | one fleet `Deployment` (selector, payload, rollout), typed | `Ready` for the generation and revision it wrote |
//!
//! Each Score is implemented for every topology it supports — `LocalTopology` (this host:
//! local control plane, components as supervised processes) and `K8sAnywhereTopology` (a real
//! cluster) — and for no other: running one elsewhere does not compile.
//! [`FleetDeploymentScore`] needs only a Kubernetes API, so it is implemented for every
//! topology with `K8sClient`.
//!
//! Modules: [`nats`], [`operator`], [`agent`], [`server`], [`fleet_deployment`] hold the Scores; [`trust`] the
//! fleet's JWT chain of trust and TLS CA (kept in files locally, in Secrets on a cluster);
//! [`devices`] enrollment approval; [`files`] private files; [`binaries`] where the fleet
//! binaries are found; [`wait`] the
//! deadline polling every smoke test uses; [`k8s`] applying and checking cluster objects;
//! [`error`] what goes wrong; [`local`] the local fleet `local up`/`down`/`status` manage.

#![deny(missing_docs)]

pub mod agent;
pub mod binaries;
pub mod devices;
pub mod error;
pub mod files;
pub mod fleet_deployment;
pub mod k8s;
pub mod local;
pub mod nats;
pub mod operator;
pub mod server;
pub mod tokens;
pub mod trust;
pub mod wait;

pub use agent::{FleetAgentScore, FleetAgentTarget, HostAgent, LocalAgent, PodAgent};
pub use error::DeployError;
pub use fleet_deployment::FleetDeploymentScore;
pub use nats::{FleetNatsScore, NatsEndpoint};
pub use operator::FleetOperatorScore;
pub use server::FleetServerScore;

/// The namespace fleet components live in on a cluster (and where their RBAC objects go on
/// `LocalTopology`).
pub const DEFAULT_NAMESPACE: &str = "fleet-system";

/// The field manager of every server-side apply these Scores make.
pub const FIELD_MANAGER: &str = "harmony-fleet-deploy";

/// The label every object and process of a fleet installation carries
/// (`app.kubernetes.io/part-of`).
pub const PART_OF: &str = "harmony-fleet";

//! Harmony core: typed desired state (Scores) made real (Interprets) on a place that runs
//! things (Topologies), where a Score only compiles against a Topology that offers the
//! capabilities it needs.
//!
//! - [`score`], [`interpret`], [`topology`], [`inventory`], [`maestro`]: the framework.
//! - [`capability`]: capability traits a Topology may implement (e.g. `K8sClient`).
//! - [`topologies`]: the Topologies shipped with harmony (e.g. `K8sAnywhereTopology`).
//! - [`scores`]: generic Scores (server-side apply of any object, CRD installation).
//! - [`local`]: harnesses that run the real upstream servers on this host (control plane,
//!   nats-server, podman) for `LocalTopology` and integration tests.

#![deny(missing_docs)]

pub mod capability;
pub mod interpret;
pub mod inventory;
pub mod local;
pub mod maestro;
pub mod score;
pub mod scores;
pub mod topologies;
pub mod topology;

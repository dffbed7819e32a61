//! Harnesses that run the real upstream servers on this host, like controller-runtime's envtest:
//! a Kubernetes control plane (etcd, kube-apiserver, kube-controller-manager), nats-server with
//! JetStream, and podman. They serve `LocalTopology` and every integration test; nothing here is
//! a fake.
//!
//! - [`bins`] — where the upstream binaries built by `scripts/install-deps.sh` are found.
//! - [`ports`] — free loopback ports.
//! - [`process`] — a supervised child process (own process group, log file, killed on drop and
//!   when the test process dies) — reusable for any local server.
//! - [`probe`] — minimal HTTP probes and deadline polling used while waiting for readiness.
//! - [`certs`] — the certificates and keys a local control plane needs.
//! - [`control_plane`] — [`LocalControlPlane`].
//! - [`nats`] — [`LocalNats`], [`LocalNatsCluster`] and the generated server configuration.
//! - [`podman`] — the [`Podman`] CLI handle and the `localhost/fleet-demo` image.
//! - [`netns`] — [`netns::DeviceNetwork`]: a network namespace per simulated device.
//! - [`node`] — [`node::LocalNode`]: a kubelet + containerd node in a network namespace of its
//!   own, with kube-proxy and CoreDNS.
//! - [`supervisor`] — [`LocalSupervisor`]: named processes that die with their owner (tests) or
//!   outlive it (a deploy tool's `up`), recognised again by the next run.
//!
//! Every process binds 127.0.0.1 on a free-picked port and every data directory is private to one
//! harness, so any number of harnesses can run side by side.

pub mod bins;
pub mod certs;
pub mod control_plane;
mod data_dir;
mod error;
pub mod nats;
pub mod netns;
pub mod node;
pub mod podman;
pub mod ports;
pub mod probe;
pub mod process;
pub mod supervisor;

pub use control_plane::{ControlPlaneOptions, LocalControlPlane};
pub use data_dir::DataDir;
pub use error::{LocalError, Result};
pub use nats::{LocalNats, LocalNatsCluster, NatsOptions};
pub use podman::{Podman, PodmanError};
pub use process::{ProcessSpec, SupervisedProcess};
pub use supervisor::{LocalSupervisor, ProcessChange, ProcessStatus, SupervisionMode};

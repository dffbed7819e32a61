//! The topologies shipped with harmony.
//!
//! - [`K8sAnywhereTopology`]: an existing Kubernetes cluster, found through `KUBECONFIG`, the
//!   in-cluster service account, or an explicit kubeconfig file.

//! - [`LocalTopology`]: this host — a local control plane from cached upstream binaries and
//!   components as supervised processes.

mod k8s_anywhere;
mod local;

pub use k8s_anywhere::K8sAnywhereTopology;
pub use local::LocalTopology;

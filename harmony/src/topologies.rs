//! The topologies shipped with harmony.
//!
//! - [`K8sAnywhereTopology`]: an existing Kubernetes cluster, found through `KUBECONFIG`, the
//!   in-cluster service account, or an explicit kubeconfig file.

mod k8s_anywhere;

pub use k8s_anywhere::K8sAnywhereTopology;

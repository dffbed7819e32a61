//! Capability traits a [`Topology`](crate::topology::Topology) may implement.
//!
//! Capabilities are named for industry concepts, not for the tool underneath (swap test:
//! replacing the tool must not break a Score). A Score states the capabilities it needs in the
//! bounds of its `impl Score<T>`, which is how a mismatch becomes a compile error.

use async_trait::async_trait;

use crate::interpret::InterpretError;

/// Access to a Kubernetes API server.
///
/// Returns a [`kube::Client`] (cheap to clone) authenticated for the topology's cluster. The
/// client may be built lazily on first use, hence async and fallible.
#[diagnostic::on_unimplemented(
    message = "topology `{Self}` offers no Kubernetes API: it does not implement `K8sClient`",
    label = "this Score needs a topology with the `K8sClient` capability",
    note = "run the Score on a topology with a Kubernetes API (e.g. `K8sAnywhereTopology`), or implement `K8sClient` for `{Self}`"
)]
#[async_trait]
pub trait K8sClient: Send + Sync {
    /// A client for this topology's cluster.
    async fn k8s_client(&self) -> Result<kube::Client, InterpretError>;
}

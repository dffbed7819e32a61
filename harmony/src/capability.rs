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

/// Running and supervising long-lived processes on the host a topology manages (what systemd
/// or a process supervisor gives a machine).
///
/// Processes are known by name: [`ensure_process`](ProcessSupervisor::ensure_process) is
/// idempotent (same spec: left alone; changed spec: restarted), which is what makes the Scores
/// built on it safe to run twice. Readiness is the Score's concern: it knows what "working"
/// means for its component.
#[diagnostic::on_unimplemented(
    message = "topology `{Self}` cannot run local processes: it does not implement `ProcessSupervisor`",
    label = "this Score needs a topology with the `ProcessSupervisor` capability",
    note = "run the Score on a topology that supervises host processes (e.g. `LocalTopology`)"
)]
#[async_trait]
pub trait ProcessSupervisor: Send + Sync {
    /// Makes sure the process `spec.name` runs with exactly `spec`.
    async fn ensure_process(
        &self,
        spec: crate::local::ProcessSpec,
    ) -> Result<crate::local::ProcessChange, InterpretError>;

    /// Stops the named process; `Ok(false)` when it was not running.
    async fn stop_process(&self, name: &str) -> Result<bool, InterpretError>;

    /// Stops the named process and starts it again with the same spec (same ports, same data).
    async fn restart_process(&self, name: &str) -> Result<(), InterpretError>;

    /// What runs under `name`, if it was ever started.
    fn process_status(&self, name: &str) -> Option<crate::local::ProcessStatus>;

    /// Where components keep their data, configuration and logs (one directory per topology).
    fn state_dir(&self) -> &std::path::Path;

    /// A loopback port reserved for `name`, stable across runs; fails with a message naming the
    /// fix when another program holds it.
    fn reserve_port(&self, name: &str) -> Result<u16, InterpretError>;
}

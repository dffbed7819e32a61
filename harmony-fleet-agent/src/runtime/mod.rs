//! The container runtime seen by the agent: the [`ContainerRuntime`] trait, the plain data it
//! speaks in ([`ContainerSpec`], [`ContainerSummary`]) and its error type.
//!
//! The trait is the seam between reconciliation (pure decisions) and podman (side effects):
//! [`podman::PodmanCli`] drives the podman CLI with `--format json` (adr/0011), and a fake
//! in-memory runtime (unit tests only) lets the reconcile logic be tested without podman.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
pub use harmony_fleet_contracts::payload::RestartPolicy;

#[cfg(test)]
pub(crate) mod fake;
pub mod podman;

pub use podman::{PodmanCli, PodmanOptions};

/// Label naming the fleet deployment a container belongs to; how the agent finds (and adopts)
/// its containers after a restart.
pub const LABEL_DEPLOYMENT: &str = "io.nationtech.fleet.deployment";
/// Label naming the service (or init container) inside the deployment.
pub const LABEL_SERVICE: &str = "io.nationtech.fleet.service";
/// Label holding the content hash of the payload the container was created from; a container
/// whose hash differs from the desired payload's is replaced.
pub const LABEL_PAYLOAD_HASH: &str = "io.nationtech.fleet.payload-hash";
/// Label marking init containers (value `"true"`), which run to completion and are removed.
pub const LABEL_INIT: &str = "io.nationtech.fleet.init";
/// Label holding the stop grace period in seconds, so a container is stopped with the policy
/// it was started with even after its payload is gone.
pub const LABEL_STOP_GRACE: &str = "io.nationtech.fleet.stop-grace-seconds";

/// Everything needed to create one container. Built by reconciliation from a payload service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSpec {
    /// Container name (unique on this runtime).
    pub name: String,
    /// Image reference.
    pub image: String,
    /// Entrypoint override; empty keeps the image's entrypoint.
    pub command: Vec<String>,
    /// Arguments (the image's `CMD` when empty).
    pub args: Vec<String>,
    /// Environment variables.
    pub env: BTreeMap<String, String>,
    /// Published ports.
    pub ports: Vec<PortMapping>,
    /// Mounted volumes.
    pub volumes: Vec<VolumeMount>,
    /// Labels (always include the fleet labels above).
    pub labels: BTreeMap<String, String>,
    /// What the runtime does when the process exits.
    pub restart: RestartPolicy,
    /// How the container is stopped.
    pub stop: StopPolicy,
}

/// One published port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortMapping {
    /// Host address to bind (`None`: all addresses).
    pub host_ip: Option<String>,
    /// Port on the host.
    pub host_port: u16,
    /// Port inside the container.
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
}

/// One mounted volume: a host path or a named podman volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeMount {
    /// Host path (absolute) or named volume.
    pub source: String,
    /// Path inside the container.
    pub target: String,
    /// Mount read-only.
    pub read_only: bool,
}

/// How a container is stopped: `signal`, wait `grace`, then SIGKILL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopPolicy {
    /// Signal name sent first (`SIGTERM`).
    pub signal: String,
    /// Time the process has to exit before it is killed.
    pub grace: Duration,
}

impl Default for StopPolicy {
    fn default() -> Self {
        Self {
            signal: "SIGTERM".to_owned(),
            grace: Duration::from_secs(30),
        }
    }
}

/// What the runtime reports about one of the agent's containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerSummary {
    /// Full container id.
    pub id: String,
    /// Container name.
    pub name: String,
    /// Image reference it was created from.
    pub image: String,
    /// Current state.
    pub state: ContainerState,
    /// Labels, including the fleet labels.
    pub labels: BTreeMap<String, String>,
}

impl ContainerSummary {
    /// The value of one label, if set.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels.get(key).map(String::as_str)
    }
}

/// Lifecycle state of a container, reduced to what reconciliation needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContainerState {
    /// Process running.
    Running,
    /// Created or being started, not yet running.
    Created,
    /// Process exited with this code.
    Exited(i32),
    /// Paused, stopping, or any state the agent does not act on.
    Other,
}

/// How an init container ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Completion {
    /// Exit code of the process.
    pub exit_code: i32,
    /// The last lines of its output, for the error message when it failed.
    pub output_tail: String,
}

/// Output of `logs` for one container: stdout and stderr interleaved as they were written.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Logs {
    /// The log text, oldest line first.
    pub text: String,
}

/// Failure of a runtime operation. The message carries the runtime's own error text, because it
/// ends up in `Phase::Failed` where an operator reads it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RuntimeError {
    /// The runtime binary could not be started.
    #[error(
        "cannot run `{program}`: {source}; install podman or set [podman] binary in the agent config"
    )]
    Spawn {
        /// Program that was started.
        program: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The runtime ran and reported an error.
    #[error("`{command}` failed ({status}): {stderr}")]
    Failed {
        /// The command line (program and arguments).
        command: String,
        /// Exit status description.
        status: String,
        /// The runtime's standard error, trimmed.
        stderr: String,
    },
    /// The runtime did not answer in time.
    #[error("`{command}` did not finish within {timeout:?}; is podman hanging on a lock?")]
    Timeout {
        /// The command line.
        command: String,
        /// The deadline that passed.
        timeout: Duration,
    },
    /// The runtime answered something the agent cannot read.
    #[error("cannot parse the output of `{command}`: {message}")]
    Parse {
        /// The command line.
        command: String,
        /// What was wrong.
        message: String,
    },
    /// An image is missing and the pull policy forbids pulling it.
    #[error(
        "image {image} is not present on the device and pullPolicy is Never; load it with `podman load` or change the pull policy"
    )]
    ImageMissing {
        /// The image reference.
        image: String,
    },
}

/// A container engine the agent can drive. Implementations only execute; all decisions are
/// made by reconciliation, so the trait stays small and a fake is easy to write.
#[async_trait]
pub trait ContainerRuntime: Send + Sync + 'static {
    /// All containers carrying the [`LABEL_DEPLOYMENT`] label, running or not.
    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError>;
    /// Whether the image is present locally.
    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError>;
    /// Pull the image from its registry.
    async fn pull(&self, image: &str) -> Result<(), RuntimeError>;
    /// Create and start a container in the background; returns its id. Never pulls.
    async fn run(&self, spec: &ContainerSpec) -> Result<String, RuntimeError>;
    /// Run a container to completion (init containers), killing it after `timeout`; the
    /// container is removed afterwards in every case.
    async fn run_to_completion(
        &self,
        spec: &ContainerSpec,
        timeout: Duration,
    ) -> Result<Completion, RuntimeError>;
    /// Start an existing, stopped container.
    async fn start(&self, id: &str) -> Result<(), RuntimeError>;
    /// Stop a container: its stop signal, `grace`, then SIGKILL.
    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError>;
    /// Remove a (stopped) container; removing a missing container is not an error.
    async fn remove(&self, id: &str) -> Result<(), RuntimeError>;
    /// The last `tail` lines of a container's output.
    async fn logs(&self, id: &str, tail: u32) -> Result<Logs, RuntimeError>;
    /// Follows a container's output: the last `tail` lines, then new lines as they are
    /// written, until the container stops or the returned follower is dropped. Runtimes
    /// that cannot follow answer an error (the default).
    async fn follow_logs(&self, id: &str, tail: u32) -> Result<LogFollower, RuntimeError> {
        let _ = tail;
        Err(RuntimeError::Failed {
            command: format!("follow logs of {id}"),
            status: "unsupported".into(),
            stderr: "this container runtime cannot follow logs".into(),
        })
    }
}

/// A followed container output: lines arrive on `lines` until the container stops (the
/// channel closes). Dropping it stops following (the runtime's process is killed).
#[derive(Debug)]
pub struct LogFollower {
    /// Lines, without their newline.
    pub lines: tokio::sync::mpsc::Receiver<String>,
}

//! What goes wrong while deploying fleet components, with what to do about it.

use std::path::PathBuf;

use harmony::interpret::InterpretError;

/// Why a fleet Score could not be made real.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    /// A fleet binary (operator, agent) was not found.
    #[error(
        "the `{name}` binary was not found (looked in: {searched}); build it with \
         `cargo build --release -p {package}` or set {env} to its path"
    )]
    MissingBinary {
        /// Binary name.
        name: &'static str,
        /// Cargo package that builds it.
        package: &'static str,
        /// Environment variable that overrides the lookup.
        env: &'static str,
        /// Where we looked.
        searched: String,
    },

    /// A file under the state directory could not be read or written.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A state file exists but is not what this version wrote.
    #[error(
        "{path} is unreadable ({reason}); fix or delete it (`harmony-fleet-deploy local down` removes all local state)"
    )]
    CorruptState {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },

    /// NATS was not deployed before a component that needs it.
    #[error(
        "NATS is not deployed on this topology yet ({path} is missing); run FleetNatsScore \
         first (`harmony-fleet-deploy local up` runs every Score in order)"
    )]
    NatsNotDeployed {
        /// The endpoint file that was expected.
        path: PathBuf,
    },

    /// A cluster component was deployed before the NATS install issued its identity.
    #[error(
        "Secret {namespace}/{secret} does not exist: FleetNatsScore issues it (the NATS \
         identities of the operator and agents); run it first (`harmony-fleet-deploy cluster \
         deploy` runs every Score in order)"
    )]
    NatsIdentityMissing {
        /// The namespace looked in.
        namespace: String,
        /// The Secret expected.
        secret: &'static str,
    },

    /// The fleet's chain of trust (NATS JWTs, adr/0016) could not be made or read.
    #[error(
        "fleet trust: {reason}; `harmony-fleet-deploy local down` and `local up` create a new one"
    )]
    Trust {
        /// What failed.
        reason: String,
    },

    /// A local harness operation (processes, device networks, state files) failed.
    #[error(transparent)]
    Local(#[from] harmony::local::LocalError),

    /// The local topology (control plane, node) did not come up.
    #[error("the local topology did not come up: {0}; see the logs under the state directory")]
    Topology(#[source] Box<InterpretError>),

    /// A Kubernetes request failed.
    #[error("Kubernetes API: {action}: {source}; check KUBECONFIG")]
    Kube {
        /// What was being done.
        action: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },

    /// A device cannot be approved as asked.
    #[error("cannot approve device {device}: {reason}")]
    Approval {
        /// The device.
        device: String,
        /// Why, and what to do.
        reason: String,
    },

    /// A bootstrap token cannot be created as asked.
    #[error("token create: {flag} {reason}")]
    Token {
        /// The flag at fault.
        flag: &'static str,
        /// What is wrong and what to give instead.
        reason: String,
    },

    /// A fleet `Deployment` could not be applied or did not become ready.
    #[error("fleet Deployment {deployment}: {reason}")]
    FleetDeployment {
        /// `namespace/name`.
        deployment: String,
        /// What went wrong and what to do.
        reason: String,
    },

    /// A command on a host reached over SSH failed.
    #[error(transparent)]
    Ssh(#[from] crate::agent::ssh::SshError),

    /// An agent build cannot be published as given.
    #[error("agent build {path}: {reason}")]
    AgentBuild {
        /// The file given.
        path: PathBuf,
        /// What is wrong with it and what to give instead.
        reason: String,
    },

    /// A NATS operation failed.
    #[error("NATS: {context}: {message}")]
    Nats {
        /// What was being done.
        context: String,
        /// The client's error text.
        message: String,
    },
}

impl DeployError {
    /// Wraps an I/O error with what was being done.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        DeployError::Io {
            context: context.into(),
            source,
        }
    }

    /// Wraps a NATS client error with what was being done.
    pub fn nats(context: impl Into<String>, error: impl std::fmt::Display) -> Self {
        DeployError::Nats {
            context: context.into(),
            message: error.to_string(),
        }
    }
}

impl From<DeployError> for InterpretError {
    fn from(error: DeployError) -> Self {
        InterpretError::Failed {
            message: error.to_string(),
            source: None,
        }
    }
}

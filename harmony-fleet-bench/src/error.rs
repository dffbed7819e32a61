//! The bench's error type: what failed, while doing what.

use std::time::Duration;

/// Result alias of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a bench step failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A deadline passed; `what` names what was awaited.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The deadline.
        after: Duration,
    },
    /// A NATS operation failed.
    #[error("NATS: {context}: {source}")]
    Nats {
        /// What was being done.
        context: String,
        /// The client's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {context}: {source}")]
    Kube {
        /// What was being done.
        context: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A local server harness failed (nats-server, control plane, a child process).
    #[error("local server: {0}")]
    Local(#[from] harmony::local::LocalError),
    /// The operator library failed.
    #[error("operator: {0}")]
    Operator(#[from] harmony_fleet_operator::Error),
    /// A file or `/proc` read or write failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being read or written.
        context: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Encoding or decoding JSON failed.
    #[error("JSON: {context}: {source}")]
    Json {
        /// What was encoded or decoded.
        context: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// Bringing the local stack up, or a step on it, failed (`apply-latency`).
    #[error("local stack: {0}")]
    Stack(String),
    /// A setting is unusable; the message says which and why.
    #[error("invalid setting: {0}")]
    Config(String),
    /// Drawing the plot failed.
    #[error("plot {path}: {message}")]
    Plot {
        /// The PNG being written.
        path: String,
        /// What went wrong.
        message: String,
    },
}

impl Error {
    /// A NATS error with context.
    pub fn nats(
        context: impl Into<String>,
        err: impl Into<Box<dyn std::error::Error + Send + Sync + 'static>>,
    ) -> Self {
        Error::Nats {
            context: context.into(),
            source: err.into(),
        }
    }

    /// A Kubernetes error with context.
    pub fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Error::Kube {
            context: context.into(),
            source,
        }
    }

    /// An I/O error with context.
    pub fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// A JSON error with context.
    pub fn json(context: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Json {
            context: context.into(),
            source,
        }
    }
}

//! The operator's error type. Messages say what failed and what to do about it.

use std::time::Duration;

/// Everything that can go wrong in the operator library.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The Kubernetes API refused or failed a request.
    #[error("Kubernetes API: {context}: {source}")]
    Kube {
        /// What the operator was doing.
        context: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// A NATS or JetStream operation failed.
    #[error(
        "NATS: {context}: {message}; check that nats-server is reachable and JetStream is enabled"
    )]
    Nats {
        /// What the operator was doing.
        context: String,
        /// The client's message.
        message: String,
    },
    /// A fleet KV bucket is missing.
    #[error(
        "KV bucket `{bucket}` does not exist: install NATS with harmony-fleet-deploy (FleetNatsScore) or start the operator with --create-buckets"
    )]
    MissingBucket {
        /// The bucket name.
        bucket: String,
    },
    /// A NATS watch ended although it should run forever.
    #[error("NATS watch on `{bucket}` ended: {message}")]
    WatchEnded {
        /// The bucket watched.
        bucket: String,
        /// Why.
        message: String,
    },
    /// Serialising a value failed (a bug: our types always serialise).
    #[error("serialising {what}: {message}")]
    Serialize {
        /// What was serialised.
        what: &'static str,
        /// The serializer's message.
        message: String,
    },
    /// Rendering YAML failed.
    #[error("rendering CRD YAML: {0}")]
    Yaml(String),
    /// The configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// Binding the HTTP listener failed.
    #[error("binding {addr}: {source}; pick a free address with --listen")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Signing or reading a NATS credential (JWT) failed.
    #[error("NATS credential: {context}: {source}")]
    Credential {
        /// What the operator was doing.
        context: String,
        /// The JWT error.
        #[source]
        source: harmony_fleet_contracts::jwt::JwtError,
    },
    /// A deadline passed.
    #[error("{what} did not finish within {after:?}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// The deadline.
        after: Duration,
    },
}

impl Error {
    /// Wraps a kube error with what the operator was doing.
    pub fn kube(context: impl Into<String>, source: kube::Error) -> Self {
        Self::Kube {
            context: context.into(),
            source,
        }
    }

    /// Wraps a JWT error with what the operator was doing.
    pub fn credential(
        context: impl Into<String>,
        source: harmony_fleet_contracts::jwt::JwtError,
    ) -> Self {
        Self::Credential {
            context: context.into(),
            source,
        }
    }

    /// Wraps a NATS error with what the operator was doing.
    pub fn nats(context: impl Into<String>, source: impl std::fmt::Display) -> Self {
        Self::Nats {
            context: context.into(),
            message: source.to_string(),
        }
    }
}

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

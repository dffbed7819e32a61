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
        "NATS: {context}: {source}; check that nats-server is reachable and JetStream is enabled"
    )]
    Nats {
        /// What the operator was doing.
        context: String,
        /// The client's error.
        #[source]
        source: BoxError,
    },
    /// nats-server refused a bucket's byte limit: it does not fit the server's JetStream file
    /// storage next to what other streams reserve.
    #[error(
        "NATS refused to reserve {reserved} bytes for bucket `{bucket}` (sized for a fleet of {capacity} devices): its JetStream file storage is full of reservations; give nats-server more (`max_file_store`; FleetNatsScore `storage`, the volume on a cluster; {wanted} bytes fit this fleet) or lower the fleet capacity (--fleet-capacity)"
    )]
    Storage {
        /// The bucket.
        bucket: String,
        /// Its stream's byte limit.
        reserved: i64,
        /// The fleet capacity it was sized for.
        capacity: u64,
        /// The storage the fleet's buckets need ([`harmony_fleet_contracts::buckets::jetstream_storage_bytes`]).
        wanted: u64,
        /// The server's answer.
        #[source]
        source: BoxError,
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
    /// A task the operator runs ended or panicked; the operator stops and `/readyz` fails.
    #[error("the operator's {task} task {how}; restart the operator (the logs above say why)")]
    TaskEnded {
        /// Which task.
        task: &'static str,
        /// `ended` or `panicked: <message>`.
        how: String,
    },
    /// This replica lost the leader Lease; it stops so that it never writes beside the new
    /// leader (restarted, it comes back as a standby).
    #[error("lost the leader Lease `{lease}`: {why}; stopping (a standby takes over)")]
    LostLease {
        /// The Lease name.
        lease: String,
        /// Why.
        why: String,
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
    pub fn nats(context: impl Into<String>, source: impl Into<BoxError>) -> Self {
        Self::Nats {
            context: context.into(),
            source: source.into(),
        }
    }

    /// A short name of the error's kind, for the `errors_total{kind}` metric.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Kube { .. } => "kube",
            Self::Nats { .. }
            | Self::Storage { .. }
            | Self::MissingBucket { .. }
            | Self::WatchEnded { .. } => "nats",
            Self::Serialize { .. } | Self::Yaml(_) => "serialize",
            Self::Config(_) | Self::Bind { .. } => "config",
            Self::Credential { .. } => "credential",
            Self::TaskEnded { .. } => "task",
            Self::LostLease { .. } => "lease",
            Self::Timeout { .. } => "timeout",
        }
    }
}

/// Any error, boxed: the source of an error from a client whose error types vary by call.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Result with the operator's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

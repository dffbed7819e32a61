//! Interprets: the code that makes a Score real on a Topology, what they report back
//! ([`Outcome`]) and how they fail ([`InterpretError`]).
//!
//! A Score is plain data; its Interpret does the work. Keeping the two apart means a Score can be
//! printed, compared and serialized, while the Interpret holds whatever the work needs (clients,
//! progress). Interprets are idempotent: running one twice reports [`OutcomeStatus::Noop`] the
//! second time.

use std::fmt;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use crate::inventory::Inventory;
use crate::topology::Topology;

/// Makes one Score real on a topology of type `T`.
///
/// Object safe so that a list of different Scores can be run in order
/// (`Vec<Box<dyn Interpret<T>>>`).
#[async_trait]
pub trait Interpret<T: Topology>: Send + Sync {
    /// Brings the world to the state the Score describes, or reports that it already is.
    ///
    /// Must be idempotent: a second run with nothing changed returns an [`Outcome`] whose
    /// status is [`OutcomeStatus::Noop`].
    async fn execute(&self, inventory: &Inventory, topology: &T)
    -> Result<Outcome, InterpretError>;

    /// A human name for logs and progress lines (usually the Score's name).
    fn name(&self) -> String;

    /// Where this interpret stands: queued before [`execute`](Interpret::execute), then running,
    /// then done or failed. [`StatusCell`] keeps this for you.
    fn status(&self) -> InterpretStatus;

    /// The interprets this one runs as steps, for composite Scores (e.g. a server made of a
    /// message bus and an operator). Leaf interprets have none.
    fn children(&self) -> Vec<&dyn Interpret<T>> {
        Vec::new()
    }
}

/// Whether a successful run changed anything.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum OutcomeStatus {
    /// The world was changed to match the Score.
    Success,
    /// The world already matched the Score; nothing was changed.
    Noop,
}

impl fmt::Display for OutcomeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            OutcomeStatus::Success => "success",
            OutcomeStatus::Noop => "no change",
        })
    }
}

/// What a successful run did, in words a person can act on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Outcome {
    /// Whether anything changed.
    pub status: OutcomeStatus,
    /// One line saying what happened (e.g. `created ConfigMap default/settings`).
    pub message: String,
    /// Optional extra lines (e.g. one per object touched).
    pub details: Vec<String>,
}

impl Outcome {
    /// Something was changed.
    pub fn success(message: impl Into<String>) -> Self {
        Self {
            status: OutcomeStatus::Success,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// Nothing needed changing.
    pub fn noop(message: impl Into<String>) -> Self {
        Self {
            status: OutcomeStatus::Noop,
            message: message.into(),
            details: Vec::new(),
        }
    }

    /// Adds detail lines.
    #[must_use]
    pub fn with_details(mut self, details: impl IntoIterator<Item = impl Into<String>>) -> Self {
        self.details.extend(details.into_iter().map(Into::into));
        self
    }

    /// True when the run changed something.
    pub fn changed(&self) -> bool {
        self.status == OutcomeStatus::Success
    }
}

/// The lifecycle of one interpret, as reported by [`Interpret::status`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum InterpretStatus {
    /// Not started yet.
    Queued,
    /// `execute` is in progress.
    Running,
    /// The last run succeeded, with this result.
    Done(OutcomeStatus),
    /// The last run returned an error.
    Failed,
}

impl fmt::Display for InterpretStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            InterpretStatus::Queued => f.write_str("queued"),
            InterpretStatus::Running => f.write_str("running"),
            InterpretStatus::Done(status) => status.fmt(f),
            InterpretStatus::Failed => f.write_str("failed"),
        }
    }
}

/// Keeps an interpret's [`InterpretStatus`] so that implementing [`Interpret::status`] is one
/// line: wrap the body of `execute` in [`StatusCell::track`] and return
/// [`StatusCell::get`] from `status`.
#[derive(Debug)]
pub struct StatusCell(Mutex<InterpretStatus>);

impl Default for StatusCell {
    fn default() -> Self {
        Self(Mutex::new(InterpretStatus::Queued))
    }
}

impl StatusCell {
    /// The current status.
    pub fn get(&self) -> InterpretStatus {
        // A poisoned lock only means a panic happened while setting a Copy value; the value
        // is still meaningful.
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets the status.
    pub fn set(&self, status: InterpretStatus) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = status;
    }

    /// Marks the interpret running, awaits `work`, then records done or failed.
    pub async fn track<F>(&self, work: F) -> Result<Outcome, InterpretError>
    where
        F: Future<Output = Result<Outcome, InterpretError>>,
    {
        self.set(InterpretStatus::Running);
        let result = work.await;
        self.set(match &result {
            Ok(outcome) => InterpretStatus::Done(outcome.status),
            Err(_) => InterpretStatus::Failed,
        });
        result
    }
}

/// Boxed source of an error coming from a library we do not want in our public API.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why an interpret (or a topology's preparation) failed. Each variant names the object, field
/// or deadline involved so that the message says what to look at.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InterpretError {
    /// A Kubernetes API call failed.
    #[error(
        "{action} {object} failed; check that the API server answers and that the credentials allow it (`kubectl auth can-i`)"
    )]
    Kube {
        /// What was attempted, e.g. `server-side apply of`, `get of`.
        action: String,
        /// The object, e.g. `ConfigMap default/settings`.
        object: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },

    /// Watching an object while waiting for a condition failed (not a timeout).
    #[error(
        "watching {awaited} failed; check the API server and that the credentials may list and watch it"
    )]
    Watch {
        /// What was being waited for.
        awaited: String,
        /// The watcher error.
        #[source]
        source: kube::runtime::wait::Error,
    },

    /// Something did not happen before its deadline.
    #[error("timed out after {deadline:?} waiting for {awaited}")]
    Timeout {
        /// What was awaited, e.g. `CRD foos.example.com to be Established`.
        awaited: String,
        /// How long we waited.
        deadline: Duration,
    },

    /// A Score carries a value that cannot work.
    #[error("invalid input: `{field}` {reason}")]
    InvalidInput {
        /// The field, as a path (e.g. `metadata.namespace`).
        field: String,
        /// What is wrong and what would be right.
        reason: String,
    },

    /// The topology could not be prepared or does not answer.
    #[error("topology {topology} is not ready: {reason}")]
    TopologyNotReady {
        /// The topology's name.
        topology: String,
        /// What failed and what to do about it.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// A capability the Score relies on could not be provided right now.
    #[error("capability {capability} is unavailable on topology {topology}: {reason}")]
    CapabilityUnavailable {
        /// The capability trait's name, e.g. `K8sClient`.
        capability: &'static str,
        /// The topology's name.
        topology: String,
        /// What failed and what to do about it.
        reason: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },

    /// The work itself failed for a reason specific to the Score.
    #[error("{message}")]
    Failed {
        /// What failed and what to do about it.
        message: String,
        /// The underlying error, if any.
        #[source]
        source: Option<BoxError>,
    },
}

impl InterpretError {
    /// A Score-specific failure with a message saying what to do.
    pub fn failed(message: impl Into<String>) -> Self {
        InterpretError::Failed {
            message: message.into(),
            source: None,
        }
    }

    /// An invalid field in a Score.
    pub fn invalid_input(field: impl Into<String>, reason: impl Into<String>) -> Self {
        InterpretError::InvalidInput {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The whole chain of causes on one line (`outer: inner: innermost`), for summaries and
    /// logs where `{:#}`-style chains are not available.
    pub fn chain(&self) -> String {
        let mut line = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            line.push_str(": ");
            line.push_str(&cause.to_string());
            source = cause.source();
        }
        line
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn status_cell_tracks_success_and_failure() {
        let cell = StatusCell::default();
        assert_eq!(cell.get(), InterpretStatus::Queued);
        let ok = cell
            .track(async { Ok(Outcome::noop("already there")) })
            .await;
        assert!(ok.is_ok());
        assert_eq!(cell.get(), InterpretStatus::Done(OutcomeStatus::Noop));
        let err = cell
            .track(async { Err(InterpretError::failed("disk full")) })
            .await;
        assert!(err.is_err());
        assert_eq!(cell.get(), InterpretStatus::Failed);
    }

    #[test]
    fn error_chain_includes_every_cause() {
        let inner = std::io::Error::other("connection refused");
        let err = InterpretError::TopologyNotReady {
            topology: "K8sAnywhereTopology".into(),
            reason: "API server did not answer".into(),
            source: Some(Box::new(inner)),
        };
        assert_eq!(
            err.chain(),
            "topology K8sAnywhereTopology is not ready: API server did not answer: connection refused"
        );
    }

    #[test]
    fn timeout_names_what_was_awaited_and_the_deadline() {
        let err = InterpretError::Timeout {
            awaited: "CRD foos.example.com to be Established".into(),
            deadline: Duration::from_secs(30),
        };
        assert_eq!(
            err.to_string(),
            "timed out after 30s waiting for CRD foos.example.com to be Established"
        );
    }
}

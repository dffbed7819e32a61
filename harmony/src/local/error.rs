//! The error type of the local harnesses: every variant says what went wrong and what to do.

use std::path::PathBuf;

/// Result of a local-harness operation.
pub type Result<T, E = LocalError> = std::result::Result<T, E>;

/// Why a local harness could not start, answer or stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    /// An upstream binary is not installed where the harness looks for it.
    #[error(
        "the upstream binary `{name}` was not found (looked in: {searched}); \
         run scripts/install-deps.sh to build and cache it"
    )]
    MissingBinary {
        /// The binary's file name, e.g. `kube-apiserver`.
        name: String,
        /// The directories searched, in order, joined for display.
        searched: String,
    },

    /// A file-system or socket operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, e.g. "writing the kubeconfig to /tmp/x/kubeconfig".
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A process could not be spawned at all (exec failed).
    #[error("could not start `{name}` ({program}): {source}")]
    Spawn {
        /// The harness's name for the process, e.g. `etcd`.
        name: String,
        /// The program path.
        program: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A process started but did not become ready; the log tail usually says why.
    #[error("`{name}` did not become ready: {reason}\n--- last lines of {log} ---\n{log_tail}")]
    NotReady {
        /// The harness's name for the process.
        name: String,
        /// What was observed (exited with a status, deadline passed, …).
        reason: String,
        /// The process's log file.
        log: PathBuf,
        /// The last lines of that log.
        log_tail: String,
    },

    /// An operation needs a running process, but it is stopped or has exited.
    #[error("`{name}` is not running; start (or restart) it first")]
    NotRunning {
        /// The harness's name for the process.
        name: String,
    },

    /// Certificates or keys could not be generated.
    #[error("generating certificates for the local control plane failed: {0}")]
    Certs(#[from] rcgen::Error),

    /// The written kubeconfig could not be turned into a client.
    #[error("the local kubeconfig {path} is not usable by kube-rs: {message}")]
    Kubeconfig {
        /// The kubeconfig file.
        path: PathBuf,
        /// Why kube-rs rejected it.
        message: String,
    },

    /// A request to the local kube-apiserver failed.
    #[error("request to the local kube-apiserver failed: {0}")]
    Kube(#[from] kube::Error),

    /// A generated configuration was invalid (e.g. a NATS user without a name).
    #[error("invalid local server configuration: {0}")]
    Config(String),

    /// A port reserved for a component is held by a process the harness did not start.
    #[error(
        "port {port} (reserved for `{name}`) is in use by another program; stop that program, \
         or run `harmony-fleet-deploy local down` if an earlier run left it behind, or delete \
         {ports_file} to pick new ports"
    )]
    PortBusy {
        /// The component the port is reserved for.
        name: String,
        /// The busy port.
        port: u16,
        /// The file holding the reservations.
        ports_file: PathBuf,
    },

    /// A podman command failed.
    #[error(transparent)]
    Podman(#[from] crate::local::podman::PodmanError),
}

impl LocalError {
    /// Wraps an I/O error with what was being done.
    pub(crate) fn io(context: impl Into<String>, source: std::io::Error) -> Self {
        LocalError::Io {
            context: context.into(),
            source,
        }
    }
}

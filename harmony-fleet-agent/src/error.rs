//! The crate's top-level error: why the agent could not start. Once running, the agent does
//! not stop on errors — it logs them, reports them in `device-state`, and retries.

use crate::config::ConfigError;
use crate::connection::ConnectError;
use crate::store::StoreError;

/// Why [`Agent::run`](crate::Agent::run) (or loading its config) failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The data dir cannot be used.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The device key or credential cannot be used.
    #[error(transparent)]
    Identity(#[from] crate::identity::IdentityError),
    /// The NATS client cannot be set up.
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

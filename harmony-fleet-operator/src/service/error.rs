//! Why a [`FleetService`](super::FleetService) call failed, in terms the dashboard can map
//! to an HTTP status and a sentence for the user.

use harmony_fleet_contracts::ids::DeviceId;

use crate::commands::CommandError;

/// A failed [`FleetService`](super::FleetService) call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The device or deployment does not exist.
    #[error("{what} not found")]
    NotFound {
        /// What was looked up (`device pi-1`, `deployment default/web`).
        what: String,
    },
    /// The device's agent is not connected.
    #[error("device {device} is offline: its agent does not answer; check its network and agent")]
    Offline {
        /// The device.
        device: DeviceId,
    },
    /// The request is invalid.
    #[error("{0}")]
    BadRequest(String),
    /// A device command failed.
    #[error(transparent)]
    Command(CommandError),
    /// The Kubernetes API failed.
    #[error("Kubernetes API: {context}: {source}")]
    Kube {
        /// What the service was doing.
        context: String,
        /// The client error.
        #[source]
        source: kube::Error,
    },
    /// NATS failed.
    #[error("NATS: {context}: {source}")]
    Nats {
        /// What the service was doing.
        context: String,
        /// The operator library's error.
        #[source]
        source: crate::Error,
    },
    /// The fleet view is still loading after start.
    #[error("the fleet view is still loading from NATS and Kubernetes; retry in a few seconds")]
    NotReady,
}

impl From<CommandError> for ServiceError {
    fn from(e: CommandError) -> Self {
        match e {
            CommandError::DeviceOffline { device } => ServiceError::Offline { device },
            other => ServiceError::Command(other),
        }
    }
}

impl ServiceError {
    /// A `NotFound` for a device.
    pub fn no_device(id: &DeviceId) -> Self {
        Self::NotFound {
            what: format!("device {id}"),
        }
    }
}

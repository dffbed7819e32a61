//! The dashboard's only door to the fleet: the [`FleetService`] trait, what it returns
//! ([`model`]), and its two implementations — [`mock::MockFleetService`] (seeded, in memory,
//! for `serve-web --mock`, handler tests and browser tests) and [`real::RealFleetService`]
//! (NATS KV, the Kubernetes API and the device command verbs).
//!
//! The presentation layer ([`crate::web`]) never reaches past this trait, so every page can
//! be exercised without a server and the real implementation is tested on its own against
//! real servers.

pub mod attention;
pub mod audit;
pub mod bridge;
pub mod device_list;
pub mod error;
pub mod mock;
pub mod model;
pub mod real;
pub mod sessions;
pub mod view;

use async_trait::async_trait;
use harmony_fleet_contracts::commands::ServiceLogs;
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};

pub use audit::{AuditAction, AuditEntry};
pub use error::ServiceError;
pub use model::*;
pub use sessions::{LogEvent, LogStream, ShellEvent, ShellInput, ShellSession};

/// Result of a [`FleetService`] call.
pub type ServiceResult<T> = Result<T, ServiceError>;

/// Everything the dashboard can ask of the fleet.
#[async_trait]
pub trait FleetService: Send + Sync + 'static {
    /// What needs attention: offline devices, and every deployment with an
    /// [`Attention`] item (counts over the whole fleet, however large).
    async fn overview(&self) -> ServiceResult<Overview>;
    /// Devices matching `query`, by id, one page (filtered and cut on the server).
    async fn list_devices(&self, query: &DeviceQuery) -> ServiceResult<DevicePage>;
    /// One device with its inventory and deployments.
    async fn device(&self, id: &DeviceId) -> ServiceResult<DeviceDetail>;
    /// Every deployment with its rollout progress.
    async fn list_deployments(&self) -> ServiceResult<Vec<DeploymentSummary>>;
    /// One deployment with its waves and per-device phase.
    async fn deployment(&self, id: &DeploymentRef) -> ServiceResult<DeploymentDetail>;
    /// Blacklists (or releases) a device: a blacklisted device receives no desired state.
    /// Returns the updated row.
    async fn set_blacklisted(
        &self,
        id: &DeviceId,
        blacklisted: bool,
    ) -> ServiceResult<DeviceSummary>;
    /// Runs `sh -c <command>` on the device.
    async fn run_command(&self, id: &DeviceId, command: &str) -> ServiceResult<CommandOutput>;
    /// The last `lines` lines of a deployment's containers on the device.
    async fn tail_logs(
        &self,
        id: &DeviceId,
        deployment: &DeploymentName,
        lines: u64,
    ) -> ServiceResult<Vec<ServiceLogs>>;
    /// Follows a deployment's logs on the device; the stream ends when the containers stop
    /// or the device goes away. Dropping the stream closes the session on the device.
    async fn stream_logs(
        &self,
        id: &DeviceId,
        deployment: &DeploymentName,
    ) -> ServiceResult<LogStream>;
    /// Opens an interactive shell on the device's pseudo-terminal of `cols`×`rows`.
    async fn open_shell(&self, id: &DeviceId, cols: u16, rows: u16) -> ServiceResult<ShellSession>;
    /// Records what a person did to a device (see [`audit`]). Never fails the action: an
    /// entry that cannot be stored is logged as a warning (the log line is always written).
    async fn audit(&self, entry: AuditEntry);
}

//! What the dashboard shows, independent of where it comes from: devices, deployments,
//! rollout waves and the overview. [`FleetService`](super::FleetService) implementations fill
//! these; the presentation layer renders them and nothing else.

use harmony_fleet_types::crd::deployment::RolloutPhase;
use std::collections::BTreeMap;

use harmony_fleet_contracts::device::Inventory;
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};
use harmony_fleet_contracts::state::Phase;
use jiff::Timestamp;

pub use super::attention::{Attention, AttentionKind};
use crate::index::Selector;

/// Deployment phases on one device, counted.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PhaseCounts {
    /// `Running`.
    pub running: u32,
    /// `Failed`.
    pub failed: u32,
    /// Anything else that is not removed.
    pub pending: u32,
}

impl PhaseCounts {
    /// Counts one phase (`Removed` counts as absent).
    pub fn add(&mut self, phase: Phase) {
        match phase {
            Phase::Running => self.running += 1,
            Phase::Failed => self.failed += 1,
            Phase::Removed => {}
            _ => self.pending += 1,
        }
    }
}

/// One row of the devices page.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceSummary {
    /// Device id.
    pub id: DeviceId,
    /// Labels the agent reports.
    pub labels: BTreeMap<String, String>,
    /// A heartbeat arrived within the heartbeat timeout.
    pub online: bool,
    /// Server time of the last heartbeat.
    pub last_seen: Option<Timestamp>,
    /// The operator writes no desired state for it.
    pub blacklisted: bool,
    /// Agent version.
    pub agent_version: String,
    /// CPU architecture.
    pub arch: String,
    /// Its deployments by phase.
    pub deployments: PhaseCounts,
}

/// A deployment as one device runs it.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceDeployment {
    /// The deployment.
    pub deployment: DeploymentName,
    /// What the device reports.
    pub phase: Phase,
    /// Why it fails, if it does.
    pub last_error: Option<String>,
    /// When the phase last changed.
    pub last_change: Option<Timestamp>,
    /// Service names (for the log tail's service choice).
    pub services: Vec<String>,
}

/// The device detail page.
#[derive(Clone, Debug, PartialEq)]
pub struct DeviceDetail {
    /// The row of the devices page.
    pub summary: DeviceSummary,
    /// Hardware and OS.
    pub inventory: Inventory,
    /// What it runs.
    pub deployments: Vec<DeviceDeployment>,
}

/// Device status a list can be filtered by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StatusFilter {
    /// Online devices.
    Online,
    /// Offline devices.
    Offline,
    /// Blacklisted devices.
    Blacklisted,
    /// Devices with at least one failed deployment.
    Failing,
}

impl StatusFilter {
    /// Every filter, in menu order.
    pub const ALL: [StatusFilter; 4] = [
        StatusFilter::Online,
        StatusFilter::Offline,
        StatusFilter::Blacklisted,
        StatusFilter::Failing,
    ];

    /// Query-string token.
    pub fn as_str(self) -> &'static str {
        match self {
            StatusFilter::Online => "online",
            StatusFilter::Offline => "offline",
            StatusFilter::Blacklisted => "blacklisted",
            StatusFilter::Failing => "failing",
        }
    }

    /// Parses a query-string token; unknown tokens are no filter.
    pub fn parse(token: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == token)
    }
}

/// Which devices to list: filters and the page (see [`super::device_list`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceQuery {
    /// Label selector (`kubectl -l` syntax, read by
    /// [`parse_selector`](super::device_list::parse_selector)); empty selects every device.
    pub labels: Selector,
    /// Only devices in this status.
    pub status: Option<StatusFilter>,
    /// Free text found in the id, a label key or value, the architecture or agent version
    /// (ASCII case ignored; blank: no text filter).
    pub text: String,
    /// 1-based page (0 counts as 1; past the end shows the last page).
    pub page: usize,
    /// Rows per page (0: [`DeviceQuery::DEFAULT_PER_PAGE`]; capped at
    /// [`DeviceQuery::MAX_PER_PAGE`]).
    pub per_page: usize,
}

impl DeviceQuery {
    /// Default page size: a page renders in well under 100 ms at any fleet size.
    pub const DEFAULT_PER_PAGE: usize = 100;
    /// Largest page a request may ask for.
    pub const MAX_PER_PAGE: usize = 500;

    /// The effective page size.
    pub fn effective_per_page(&self) -> usize {
        match self.per_page {
            0 => Self::DEFAULT_PER_PAGE,
            n => n.min(Self::MAX_PER_PAGE),
        }
    }
}

/// A page of devices.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DevicePage {
    /// The devices, by id.
    pub devices: Vec<DeviceSummary>,
    /// How many matched in total (the page holds at most `per_page`).
    pub total_matched: usize,
    /// 1-based page shown.
    pub page: usize,
    /// Pages in total (at least 1).
    pub pages: usize,
    /// Rows per page.
    pub per_page: usize,
}

impl DevicePage {
    /// The page of `selection`, its rows turned into summaries by `summary`.
    pub fn of<T>(
        selection: super::device_list::Selection<T>,
        summary: impl FnMut(T) -> DeviceSummary,
    ) -> Self {
        Self {
            devices: selection.items.into_iter().map(summary).collect(),
            total_matched: selection.total_matched,
            page: selection.page,
            pages: selection.pages,
            per_page: selection.per_page,
        }
    }
}

/// Identity of a `Deployment` resource.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DeploymentRef {
    /// Namespace.
    pub namespace: String,
    /// Name (also the deployment name on the wire).
    pub name: String,
}

/// Where a rollout stands (from `status.rollout`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RolloutView {
    /// `Progressing`, `Complete`, `Paused`, `RolledBack`.
    pub phase: RolloutPhase,
    /// Why it stopped, when it did.
    pub reason: Option<String>,
    /// 1-based batch being released.
    pub current_batch: u32,
    /// Batches in total (including the implicit last one).
    pub total_batches: u32,
    /// Devices that hold the target revision.
    pub updated: u64,
    /// Target revision (content hash).
    pub revision: String,
}

impl RolloutView {
    /// Stopped by the failure criteria.
    pub fn is_stopped(&self) -> bool {
        self.phase.is_stopped()
    }
}

/// One row of the deployments page.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentSummary {
    /// Which resource.
    pub id: DeploymentRef,
    /// Devices matched by the selector.
    pub matched: u64,
    /// Devices running the target.
    pub succeeded: u64,
    /// Devices failing.
    pub failed: u64,
    /// Devices not there yet.
    pub pending: u64,
    /// Rollout progress, once the operator wrote it.
    pub rollout: Option<RolloutView>,
    /// Matched devices that are offline (counted above by their last report).
    pub offline: u64,
    /// A recent error from a failing device.
    pub last_error: Option<String>,
    /// What needs attention, from the status the operator wrote (see
    /// [`deployment_attention`](super::attention::deployment_attention)).
    pub attention: Vec<Attention>,
    /// Images of its services.
    pub images: Vec<String>,
    /// Human form of the target selector.
    pub selector: String,
}

/// One wave (batch) of a rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wave {
    /// 1-based.
    pub number: u32,
    /// What the wave takes (`2 devices`, `25%`, `site=plant-3`, `the rest`).
    pub size: String,
    /// Done, releasing, or waiting.
    pub state: WaveState,
}

/// State of one wave.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaveState {
    /// Released and past its success threshold.
    Done,
    /// Being released now.
    Active,
    /// Not released yet (or the rollout stopped before it).
    Waiting,
}

impl WaveState {
    /// Display name.
    pub fn as_str(self) -> &'static str {
        match self {
            WaveState::Done => "done",
            WaveState::Active => "in progress",
            WaveState::Waiting => "waiting",
        }
    }
}

/// A deployment as one device runs it, for the deployment page.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentDevice {
    /// The device.
    pub device: DeviceId,
    /// What the device reports (`None`: nothing yet).
    pub phase: Option<Phase>,
    /// The report is about the rollout's target revision.
    pub on_target: bool,
    /// Why it fails, if it does.
    pub last_error: Option<String>,
    /// When the phase last changed.
    pub last_change: Option<Timestamp>,
}

/// The deployment detail page.
#[derive(Clone, Debug, PartialEq)]
pub struct DeploymentDetail {
    /// The row of the deployments page.
    pub summary: DeploymentSummary,
    /// Waves, in order.
    pub waves: Vec<Wave>,
    /// Per-device phase (capped at [`DeviceQuery::MAX_PER_PAGE`] rows).
    pub devices: Vec<DeploymentDevice>,
}

/// What needs attention.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Overview {
    /// Devices known.
    pub devices_total: usize,
    /// Devices online.
    pub devices_online: usize,
    /// Devices blacklisted.
    pub devices_blacklisted: usize,
    /// Offline devices (the first few, by id).
    pub offline: Vec<DeviceSummary>,
    /// How many are offline in total.
    pub offline_total: usize,
    /// Deployments known.
    pub deployments_total: usize,
    /// Deployments with at least one [`Attention`] item (refused, name conflict, stopped,
    /// failing, matching nothing, offline devices), by namespace and name.
    pub attention: Vec<DeploymentSummary>,
}

/// How many offline devices the overview lists.
pub const OVERVIEW_OFFLINE_LIMIT: usize = 20;

/// Output of a command run through the dashboard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CommandOutput {
    /// Exit status (`None`: killed or timed out).
    pub exit_code: Option<i32>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
    /// Output was cut at the cap.
    pub truncated: bool,
    /// The deadline killed it.
    pub timed_out: bool,
    /// Run time in milliseconds.
    pub duration_ms: u64,
}

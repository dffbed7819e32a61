//! The namespaced `Deployment` resource (`fleet.nationtech.io/v1alpha1`, short name
//! `fleetdep`): which devices run which payload, how it rolls out, and how it went.
//!
//! Admission-time validation lives in the generated schema: required fields, enums, ranges,
//! and CEL rules (`x-kubernetes-validations`) for what shape alone cannot say (the name must
//! be a valid deployment name of the wire contract; `In`/`NotIn` need values; batch
//! percentages add up to at most 100; ...). Every rule carries a message naming the field.

// The kube derive's repeated `printcolumn(type_ = ...)` arguments are not duplicates.
#![allow(clippy::duplicated_attributes)]

use std::collections::BTreeMap;

use harmony_fleet_contracts::payload::ReconcileScore;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a fleet `Deployment`: run `score` on every device matched by
/// `targetSelector`, rolled out as `rollout` says.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "fleet.nationtech.io",
    version = "v1alpha1",
    kind = "Deployment",
    namespaced,
    shortname = "fleetdep",
    status = "DeploymentStatus",
    derive = "PartialEq",
    doc = "A workload for every device whose labels match targetSelector.",
    printcolumn(
        name = "Matched",
        type_ = "integer",
        json_path = ".status.aggregate.matchedDeviceCount"
    ),
    printcolumn(
        name = "Succeeded",
        type_ = "integer",
        json_path = ".status.aggregate.succeeded"
    ),
    printcolumn(name = "Failed", type_ = "integer", json_path = ".status.aggregate.failed"),
    printcolumn(name = "Pending", type_ = "integer", json_path = ".status.aggregate.pending"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!self.metadata.name.contains('.')")
        .message("metadata.name must not contain '.': the name is a token of the desired-state key <device>.<deployment>"),
)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentSpec {
    /// Devices to run the payload on: a standard label selector over the labels agents report.
    /// `{}` selects every device.
    pub target_selector: TargetSelector,
    /// The payload every matched device runs: `{"type": "PodmanV0", "data": {"services":
    /// [...]}}` for containers, `{"type": "AgentV0", "data": {"version": ..., "binaries":
    /// {...}}}` for a new agent build (adr/0043).
    #[schemars(with = "ScoreSchema")]
    #[x_kube(validation = Rule::new("self.type != 'PodmanV0' || has(self.data.services)").message("score.data.services is required for a PodmanV0 score: list at least one service"))]
    #[x_kube(validation = Rule::new("self.type != 'AgentV0' || (has(self.data.version) && has(self.data.binaries))").message("score.data.version and score.data.binaries are required for an AgentV0 score (the version and the SHA-256 per architecture that `harmony-fleet-deploy agent publish` prints)"))]
    pub score: ReconcileScore,
    /// How a change of `score` reaches the devices.
    #[serde(default)]
    pub rollout: RolloutSpec,
}

/// The schema of `spec.score`. Kubernetes wants one schema per property, and each payload type
/// has its own `data`: the CRD lists every type's fields under `data` (none of them required
/// there; the operator validates the payload and names the field).
#[derive(JsonSchema)]
#[allow(dead_code)]
struct ScoreSchema {
    /// The payload type.
    #[serde(rename = "type")]
    kind: ScoreType,
    /// The payload itself; its fields depend on `type`.
    data: ScoreData,
}

/// Payload types this version of the CRD knows.
#[derive(JsonSchema)]
#[allow(dead_code)]
enum ScoreType {
    PodmanV0,
    AgentV0,
}

/// Every payload type's fields.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct ScoreData {
    #[serde(flatten)]
    podman: Option<harmony_fleet_contracts::payload::PodmanV0>,
    #[serde(flatten)]
    agent: Option<harmony_fleet_contracts::payload::AgentV0>,
}

/// A label selector (`matchLabels` AND `matchExpressions`), like `metav1.LabelSelector` but
/// with the operator as an enum so that typos are rejected at admission.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TargetSelector {
    /// Labels a device must carry with exactly these values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements, all of which must hold.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<SelectorRequirement>,
}

/// One set-based requirement.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "(self.operator == 'In' || self.operator == 'NotIn') ? (has(self.values) && size(self.values) > 0) : (!has(self.values) || size(self.values) == 0)"
).message("values must be non-empty for operator In or NotIn, and empty for Exists or DoesNotExist").field_path(".values"))]
pub struct SelectorRequirement {
    /// Label key.
    #[schemars(length(min = 1, max = 317))]
    pub key: String,
    /// How `key` and `values` are compared.
    pub operator: SelectorOperator,
    /// Values for `In` and `NotIn`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// Selector operators (Kubernetes semantics).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SelectorOperator {
    /// Label present with one of the values.
    In,
    /// Label absent or with none of the values.
    NotIn,
    /// Label present.
    Exists,
    /// Label absent.
    DoesNotExist,
}

/// Rollout parameters. Defaults: `AllAtOnce`, stop (`Pause`) at the first failed device.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "self.strategy == 'Batches' ? (has(self.batches) && size(self.batches) > 0) : (!has(self.batches) || size(self.batches) == 0)"
).message("rollout.batches must list at least one batch when strategy is Batches, and must be empty for AllAtOnce").field_path(".batches"))]
#[x_kube(validation = Rule::new(
    "!has(self.batches) || self.batches.map(b, has(b.percent) ? b.percent : 0).sum() <= 100"
).message("rollout.batches[*].percent must add up to at most 100").field_path(".batches"))]
pub struct RolloutSpec {
    /// `AllAtOnce` or `Batches`.
    #[serde(default)]
    pub strategy: RolloutStrategy,
    /// Batches, in order; an implicit last batch takes every remaining device.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 100))]
    pub batches: Vec<BatchSpec>,
    /// Percentage (1-100) of released devices that must succeed before the next batch starts.
    #[serde(default = "default_success_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub success_threshold: u32,
    /// Disruption budget: most devices that may hold the new revision without having
    /// succeeded on it. Unlimited when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub max_unavailable: Option<u32>,
    /// Devices that must have finished (succeeded or failed) before the failure share is judged.
    #[serde(default = "default_min_completed")]
    #[schemars(range(min = 1))]
    pub min_completed: u32,
    /// Failed share (0-100) of finished devices above which the rollout stops.
    #[serde(default)]
    #[schemars(range(max = 100))]
    pub max_failed_percent: u32,
    /// `Pause` (default: roll forward only) or `RollBack`.
    #[serde(default)]
    pub on_failure: OnFailure,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            strategy: RolloutStrategy::default(),
            batches: Vec::new(),
            success_threshold: default_success_threshold(),
            max_unavailable: None,
            min_completed: default_min_completed(),
            max_failed_percent: 0,
            on_failure: OnFailure::default(),
        }
    }
}

fn default_success_threshold() -> u32 {
    100
}

fn default_min_completed() -> u32 {
    1
}

/// Rollout strategy.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RolloutStrategy {
    /// Every device at once (bounded by `maxUnavailable`).
    #[default]
    AllAtOnce,
    /// Batch after batch.
    Batches,
}

/// What to do when the failure criteria are exceeded.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop releasing; devices keep what they have.
    #[default]
    Pause,
    /// Devices go back to the last payload that succeeded on them.
    RollBack,
}

/// One batch: `count` devices, or `percent` of the matched devices, optionally only devices
/// carrying the `pick` labels; with only `pick`, every remaining device carrying them.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "has(self.count) ? !has(self.percent) : (has(self.percent) || (has(self.pick) && size(self.pick) > 0))"
).message("a batch sets exactly one of count or percent, or only pick (every remaining device with those labels)"))]
pub struct BatchSpec {
    /// Devices this batch adds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub count: Option<u32>,
    /// Percentage (1-100) of matched devices this batch adds, rounded up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub percent: Option<u32>,
    /// Only devices carrying all these labels are picked for this batch.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pick: BTreeMap<String, String>,
}

/// Observed state of a `Deployment`. Bounded in size at any fleet size: counts, the rollout's
/// progress and at most [`MAX_FAILING_DEVICES`] failing devices.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeploymentStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `Progressing`, `Paused`, `Degraded`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// Counts over the matched devices.
    #[serde(default)]
    pub aggregate: Aggregate,
    /// The current rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStatus>,
    /// Up to ten failing devices, in device-id order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub failing_devices: Vec<FailingDevice>,
}

/// Most failing devices listed in a status.
pub const MAX_FAILING_DEVICES: usize = 10;

/// Counts over the matched devices, against the revision assigned to each.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Aggregate {
    /// Devices the selector matches.
    pub matched_device_count: u64,
    /// Devices running their assigned payload.
    pub succeeded: u64,
    /// Devices that failed their assigned payload.
    pub failed: u64,
    /// Devices still converging (or not reporting).
    pub pending: u64,
    /// Matched devices whose heartbeat expired. They also count above, by their last report:
    /// an offline device's workload keeps running without its agent (adr/0015).
    #[serde(default)]
    pub offline: u64,
    /// The most recent error among failing devices, as `<device>: <message>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Progress of the current rollout.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// Content hash of the target payload.
    pub revision: String,
    /// Content hash of the last payload whose rollout completed, if known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_revision: Option<String>,
    /// `Progressing`, `Complete`, `Paused` or `RolledBack`.
    pub phase: RolloutPhase,
    /// Current batch, 1-based.
    pub current_batch: u32,
    /// Number of batches, counting the implicit last one.
    pub total_batches: u32,
    /// Devices holding the target revision.
    pub updated: u64,
    /// Why the rollout stopped, when it did.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Where a rollout stands (`status.rollout.phase`).
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RolloutPhase {
    /// Releasing devices to the target revision.
    #[default]
    Progressing,
    /// Every matched device holds the target and succeeded on it at least once.
    Complete,
    /// Stopped by the failure criteria; nothing more is released.
    Paused,
    /// Stopped by the failure criteria; devices went back to their last good revision.
    RolledBack,
    /// A phase written by a newer operator (read as such, never written).
    #[serde(other)]
    #[schemars(skip)]
    Unknown,
}

impl RolloutPhase {
    /// The name as written in the status.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Progressing => "Progressing",
            Self::Complete => "Complete",
            Self::Paused => "Paused",
            Self::RolledBack => "RolledBack",
            Self::Unknown => "Unknown",
        }
    }

    /// Whether the failure criteria stopped the rollout (`Paused` or `RolledBack`).
    pub fn is_stopped(self) -> bool {
        matches!(self, Self::Paused | Self::RolledBack)
    }
}

impl std::fmt::Display for RolloutPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A failing device and its error.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct FailingDevice {
    /// Device id.
    pub device: String,
    /// What the device reported.
    pub error: String,
}

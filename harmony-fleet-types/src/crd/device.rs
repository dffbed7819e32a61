//! The cluster-scoped `Device` resource (`fleetdev`), one per device that ever reported
//! `device-info`: name = device id, labels = the labels the agent reports plus the ones people
//! set, `spec` = its inventory, `status` = agent version, last heartbeat, online/offline, and
//! whether its reported labels were accepted.
//!
//! The operator writes these objects by server-side apply; people read them
//! (`kubectl get fleetdev -l site=plant-3`) and may label them
//! (`kubectl label fleetdev pi-1 site=plant-3`): a label someone else set wins over a reported
//! one for targeting, and the operator never removes or overwrites it (the operator's `labels` module).

// The kube derive's repeated `printcolumn(type_ = ...)` arguments are not duplicates.
#![allow(clippy::duplicated_attributes)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};

/// Annotation that blacklists a device: with value `"true"` the operator writes no
/// `desired-state` key for it (existing keys are deleted, so its workloads stop) until the
/// annotation is removed. Set by the dashboard or by hand:
/// `kubectl annotate fleetdev pi-1 fleet.nationtech.io/blacklisted=true`.
///
/// An annotation rather than a label: labels mirror what the agent reports, and a device must
/// not be able to lift its own blacklist by reporting a label.
pub const BLACKLIST_ANNOTATION: &str = "fleet.nationtech.io/blacklisted";

/// Why the operator blacklisted a device itself (e.g. it flooded `device-state`), next to
/// [`BLACKLIST_ANNOTATION`]. Informational: removing the blacklist annotation lifts it.
pub const BLACKLIST_REASON_ANNOTATION: &str = "fleet.nationtech.io/blacklist-reason";
use serde::{Deserialize, Serialize};

/// What a device is: its inventory, as its agent reports it.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[kube(
    group = "fleet.nationtech.io",
    version = "v1alpha1",
    kind = "Device",
    shortname = "fleetdev",
    status = "DeviceStatus",
    derive = "PartialEq",
    doc = "A device of the fleet, as its agent reports it. Written by the operator.",
    printcolumn(name = "Online", type_ = "boolean", json_path = ".status.online"),
    printcolumn(
        name = "Enrollment",
        type_ = "string",
        json_path = ".status.enrollment.phase"
    ),
    printcolumn(
        name = "Requested Key",
        type_ = "string",
        json_path = ".status.enrollment.requestedKey"
    ),
    printcolumn(
        name = "Agent Version",
        type_ = "string",
        json_path = ".status.agentVersion"
    ),
    printcolumn(
        name = "Last Seen",
        type_ = "date",
        json_path = ".status.lastHeartbeat"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSpec {
    /// Hardware and OS facts.
    #[serde(default)]
    pub inventory: Inventory,
    /// The device's approved NATS public key (`U…`, as `fleet-agent identity` prints
    /// on the device). Set by an admin to approve an enrollment — the key is shown as
    /// `status.enrollment.requestedKey` — or to re-key a device; the operator then issues a
    /// credential for this key only, and revokes the one it issued for any earlier key:
    /// `kubectl patch fleetdev pi-1 --type merge -p '{"spec":{"publicKey":"U…"}}'`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.size() == 56 && self.startsWith('U')").message("publicKey must be a NATS user public key: 56 characters starting with U, as `fleet-agent identity` prints"))]
    pub public_key: Option<String>,
}

/// Hardware and OS facts of a device (the `inventory` of its `device-info`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Inventory {
    /// Host name.
    #[serde(default)]
    pub hostname: String,
    /// CPU architecture (`aarch64`, `x86_64`).
    #[serde(default)]
    pub arch: String,
    /// Operating system.
    #[serde(default)]
    pub os: String,
    /// OS release (`PRETTY_NAME` of os-release).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub os_release: Option<String>,
    /// Kernel version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_version: Option<String>,
    /// Logical CPUs.
    #[serde(default)]
    pub cpu_count: u32,
    /// Memory in bytes.
    #[serde(default)]
    pub memory_bytes: u64,
}

impl From<&harmony_fleet_contracts::device::Inventory> for Inventory {
    fn from(i: &harmony_fleet_contracts::device::Inventory) -> Self {
        Self {
            hostname: i.hostname.clone(),
            arch: i.arch.clone(),
            os: i.os.clone(),
            os_release: i.os_release.clone(),
            kernel_version: i.kernel_version.clone(),
            cpu_count: i.cpu_count,
            memory_bytes: i.memory_bytes,
        }
    }
}

/// Liveness of a device.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DeviceStatus {
    /// Agent version the device reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_version: Option<String>,
    /// Last heartbeat seen (RFC 3339). Refreshed at most every few minutes while the device
    /// stays online, to keep API server writes bounded at fleet scale.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat: Option<String>,
    /// Whether a heartbeat arrived within the operator's heartbeat timeout.
    #[serde(default)]
    pub online: bool,
    /// `LabelsAccepted`: `False` (reason `ProtectedPrefix`) when the device reported labels
    /// under a prefix devices may not claim (`fleet.nationtech.io/`, `kubernetes.io/`,
    /// `k8s.io/`); they are ignored for targeting. Set such labels with `kubectl label`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
    /// The device's credential: requested, issued, revoked. Written by the operator's identity
    /// service only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<Enrollment>,
}

/// Where a device's credential stands.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Enrollment {
    /// `Pending` (asked to join; approve by setting `spec.publicKey`), `Enrolled` (a
    /// credential was issued), `Revoked` (blacklisted: its credential no longer connects).
    pub phase: EnrollmentPhase,
    /// The key of the pending request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_key: Option<String>,
    /// When the pending request arrived (RFC 3339).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requested_at: Option<String>,
    /// The key of the last credential issued.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_key: Option<String>,
    /// When the last credential was issued, seconds since the epoch (revocations compare
    /// against it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issued_at: Option<i64>,
    /// When the last credential expires (RFC 3339); the agent renews before.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<String>,
    /// The last refused request, with why (e.g. the same id with another key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_refusal: Option<String>,
}

/// Phase of a device's [`Enrollment`].
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum EnrollmentPhase {
    /// Asked to join, not approved yet.
    #[default]
    Pending,
    /// A credential was issued.
    Enrolled,
    /// Its credential was revoked (blacklisted).
    Revoked,
}

/// Condition type on a `Device` saying whether its reported labels were all accepted.
pub const LABELS_ACCEPTED: &str = "LabelsAccepted";

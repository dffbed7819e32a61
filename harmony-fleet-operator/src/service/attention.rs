//! What needs attention about one `Deployment`, read from the status the operator wrote.
//!
//! One pure function, [`deployment_attention`], turns a [`DeploymentStatus`] into the items
//! the overview's "Needs attention" and the deployment rows show, each with the reason and
//! message the operator gave. Both pages use it, so they cannot disagree; and it reads the
//! conditions rather than guessing from counts, because the counts of a Deployment the
//! operator refuses (`InvalidScore`, `NameConflict`) are all zero and look healthy.
//!
//! The conditions it reads are the controller's (`controller.rs`, `conditions` and
//! `write_status`): `Ready=False` with `InvalidScore`, `InvalidName` or `NameConflict`;
//! `Ready=True` with `NoMatchingDevices`; `Paused=True` (`FailureCriteriaExceeded`);
//! `Degraded=True` (`DevicesFailing`, `RolledBack`). Offline devices have no condition (their
//! workload keeps running, adr/0015), so they come from `aggregate.offline`. A status written
//! without conditions (an older operator) still shows a stopped rollout and failing devices,
//! from `rollout` and `aggregate`.

use crate::crd::deployment::DeploymentStatus;

/// What kind of trouble an [`Attention`] item is, for ordering and colour.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum AttentionKind {
    /// The operator refuses the resource (`InvalidScore`, `InvalidName`, or another
    /// `Ready=False` reason that is not plain progress): nothing is deployed.
    Refused,
    /// Another namespace owns the deployment name: nothing is deployed from this one.
    NameConflict,
    /// The rollout stopped by itself (`Paused` after its failure criteria, `RolledBack`).
    Stopped,
    /// Devices report `Failed` (`Degraded=True`).
    Failing,
    /// The selector matches no device: it is "complete" with nothing running.
    NoMatchingDevices,
    /// Matched devices whose heartbeat expired.
    Offline,
}

impl AttentionKind {
    /// Whether the operator deploys nothing from this resource (so its counts mean nothing).
    pub fn is_refusal(self) -> bool {
        matches!(self, Self::Refused | Self::NameConflict)
    }
}

/// One thing that needs attention, in the operator's words.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Attention {
    /// What kind of trouble.
    pub kind: AttentionKind,
    /// The condition type it comes from (`Ready`, `Paused`, `Degraded`), or `None` when it
    /// comes from the counts.
    pub condition: Option<String>,
    /// The machine-readable reason (`InvalidScore`, `NameConflict`, `DevicesFailing`, …).
    pub reason: String,
    /// The operator's message (names the field, the namespace or the failing device).
    pub message: String,
    /// Failing devices and their errors (`status.failingDevices`, at most ten).
    pub devices: Vec<(String, String)>,
}

impl Attention {
    fn new(kind: AttentionKind, condition: Option<&str>, reason: &str, message: String) -> Self {
        Self {
            kind,
            condition: condition.map(str::to_owned),
            reason: reason.to_owned(),
            message,
            devices: Vec::new(),
        }
    }
}

/// Reason of the `Ready` condition while a rollout is merely under way (not a problem).
const NOT_READY: &str = "NotReady";

/// What needs attention in `status`, most serious first. Empty for a healthy Deployment (and
/// for one the operator has not written a status for yet).
pub fn deployment_attention(status: &DeploymentStatus) -> Vec<Attention> {
    let mut items = Vec::new();
    for c in &status.conditions {
        let truth = c.status == "True";
        let item = match (c.type_.as_str(), truth, c.reason.as_str()) {
            ("Ready", false, "NameConflict") => Some(AttentionKind::NameConflict),
            ("Ready", false, reason) if reason != NOT_READY => Some(AttentionKind::Refused),
            ("Ready", true, "NoMatchingDevices") => Some(AttentionKind::NoMatchingDevices),
            ("Paused", true, _) => Some(AttentionKind::Stopped),
            ("Degraded", true, "RolledBack") => Some(AttentionKind::Stopped),
            ("Degraded", true, _) => Some(AttentionKind::Failing),
            _ => None,
        };
        if let Some(kind) = item {
            let message = if c.message.is_empty() {
                format!("{} is {} ({})", c.type_, c.status, c.reason)
            } else {
                c.message.clone()
            };
            items.push(Attention::new(kind, Some(&c.type_), &c.reason, message));
        }
    }
    let has = |items: &[Attention], kind| items.iter().any(|a: &Attention| a.kind == kind);
    if let Some(r) = &status.rollout
        && r.phase.is_stopped()
        && !has(&items, AttentionKind::Stopped)
    {
        let message = r
            .reason
            .clone()
            .unwrap_or_else(|| format!("the rollout is {}", r.phase));
        items.push(Attention::new(
            AttentionKind::Stopped,
            None,
            r.phase.as_str(),
            message,
        ));
    }
    let a = &status.aggregate;
    if a.failed > 0 && !has(&items, AttentionKind::Failing) {
        let latest = a
            .last_error
            .as_deref()
            .map(|e| format!("; latest: {e}"))
            .unwrap_or_default();
        items.push(Attention::new(
            AttentionKind::Failing,
            None,
            "DevicesFailing",
            format!("{} devices failed{latest}", a.failed),
        ));
    }
    if let Some(failing) = items.iter_mut().find(|i| i.kind == AttentionKind::Failing) {
        failing.devices = status
            .failing_devices
            .iter()
            .map(|f| (f.device.clone(), f.error.clone()))
            .collect();
    }
    if a.offline > 0 {
        items.push(Attention::new(
            AttentionKind::Offline,
            None,
            "DevicesOffline",
            format!(
                "{} of {} matched devices are offline (heartbeat expired); they count by their last report",
                a.offline, a.matched_device_count
            ),
        ));
    }
    items.sort_by_key(|i| i.kind);
    items
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    use super::*;
    use crate::crd::deployment::{Aggregate, FailingDevice, RolloutPhase, RolloutStatus};

    fn condition(type_: &str, status: bool, reason: &str, message: &str) -> Condition {
        Condition {
            type_: type_.to_owned(),
            status: if status { "True" } else { "False" }.to_owned(),
            reason: reason.to_owned(),
            message: message.to_owned(),
            observed_generation: Some(1),
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    fn healthy_conditions() -> Vec<Condition> {
        vec![
            condition(
                "Ready",
                true,
                "AllSucceeded",
                "2 devices run the current revision",
            ),
            condition("Progressing", false, "Idle", "nothing to roll out"),
            condition("Paused", false, "NotPaused", "the rollout is not paused"),
            condition(
                "Degraded",
                false,
                "NoFailures",
                "no device reports a failure",
            ),
        ]
    }

    fn rollout(phase: RolloutPhase, reason: Option<&str>) -> Option<RolloutStatus> {
        Some(RolloutStatus {
            revision: "abc".into(),
            phase,
            current_batch: 1,
            total_batches: 1,
            reason: reason.map(str::to_owned),
            ..RolloutStatus::default()
        })
    }

    fn reasons(items: &[Attention]) -> Vec<(&str, &str)> {
        items
            .iter()
            .map(|i| (i.reason.as_str(), i.message.as_str()))
            .collect()
    }

    #[test]
    fn a_healthy_deployment_and_one_without_status_need_nothing() {
        let status = DeploymentStatus {
            conditions: healthy_conditions(),
            aggregate: Aggregate {
                matched_device_count: 2,
                succeeded: 2,
                ..Aggregate::default()
            },
            rollout: rollout(RolloutPhase::Complete, None),
            ..DeploymentStatus::default()
        };
        assert_eq!(deployment_attention(&status), []);
        assert_eq!(deployment_attention(&DeploymentStatus::default()), []);
    }

    #[test]
    fn a_progressing_rollout_is_not_a_problem() {
        let status = DeploymentStatus {
            conditions: vec![
                condition(
                    "Ready",
                    false,
                    "NotReady",
                    "1 succeeded, 0 failed, 1 pending of 2",
                ),
                condition("Progressing", true, "RollingOut", "batch 1/2"),
            ],
            rollout: rollout(RolloutPhase::Progressing, None),
            ..DeploymentStatus::default()
        };
        assert_eq!(deployment_attention(&status), []);
    }

    #[test]
    fn refused_resources_show_the_operators_reason_and_message() {
        for (reason, message, kind) in [
            (
                "InvalidScore",
                "spec.score is invalid: services[0].image is empty",
                AttentionKind::Refused,
            ),
            (
                "InvalidName",
                "metadata.name cannot be a deployment name: too long",
                AttentionKind::Refused,
            ),
            (
                "NameConflict",
                "deployment name `web` is already used by namespace `apps`: rename this one",
                AttentionKind::NameConflict,
            ),
        ] {
            let status = DeploymentStatus {
                conditions: vec![condition("Ready", false, reason, message)],
                ..DeploymentStatus::default()
            };
            let items = deployment_attention(&status);
            assert_eq!(reasons(&items), [(reason, message)]);
            assert_eq!(items[0].kind, kind);
            assert!(items[0].kind.is_refusal());
            assert_eq!(items[0].condition.as_deref(), Some("Ready"));
        }
    }

    #[test]
    fn a_selector_matching_nothing_says_so() {
        let mut conditions = healthy_conditions();
        conditions[0] = condition(
            "Ready",
            true,
            "NoMatchingDevices",
            "no device matches targetSelector",
        );
        let status = DeploymentStatus {
            conditions,
            rollout: rollout(RolloutPhase::Complete, None),
            ..DeploymentStatus::default()
        };
        let items = deployment_attention(&status);
        assert_eq!(
            reasons(&items),
            [("NoMatchingDevices", "no device matches targetSelector")]
        );
        assert!(!items[0].kind.is_refusal());
    }

    #[test]
    fn failing_devices_carry_the_degraded_condition_and_the_device_errors() {
        let mut conditions = healthy_conditions();
        conditions[3] = condition(
            "Degraded",
            true,
            "DevicesFailing",
            "1 devices failed; latest: d2: image not found",
        );
        let status = DeploymentStatus {
            conditions,
            aggregate: Aggregate {
                matched_device_count: 2,
                succeeded: 1,
                failed: 1,
                last_error: Some("d2: image not found".into()),
                ..Aggregate::default()
            },
            rollout: rollout(RolloutPhase::Complete, None),
            failing_devices: vec![FailingDevice {
                device: "d2".into(),
                error: "image not found".into(),
            }],
            ..DeploymentStatus::default()
        };
        let items = deployment_attention(&status);
        assert_eq!(
            reasons(&items),
            [(
                "DevicesFailing",
                "1 devices failed; latest: d2: image not found"
            )]
        );
        assert_eq!(items[0].condition.as_deref(), Some("Degraded"));
        assert_eq!(
            items[0].devices,
            [("d2".to_owned(), "image not found".to_owned())]
        );
    }

    #[test]
    fn paused_and_rolled_back_rollouts_are_stopped_with_their_reason() {
        let mut conditions = healthy_conditions();
        conditions[2] = condition(
            "Paused",
            true,
            "FailureCriteriaExceeded",
            "2 of 3 completed devices failed",
        );
        let paused = DeploymentStatus {
            conditions,
            rollout: rollout(
                RolloutPhase::Paused,
                Some("2 of 3 completed devices failed"),
            ),
            ..DeploymentStatus::default()
        };
        let items = deployment_attention(&paused);
        assert_eq!(
            reasons(&items),
            [("FailureCriteriaExceeded", "2 of 3 completed devices failed")]
        );
        assert_eq!(items[0].kind, AttentionKind::Stopped);

        let mut conditions = healthy_conditions();
        conditions[3] = condition("Degraded", true, "RolledBack", "batch 2 failed");
        let rolled_back = DeploymentStatus {
            conditions,
            rollout: rollout(RolloutPhase::RolledBack, Some("batch 2 failed")),
            ..DeploymentStatus::default()
        };
        let items = deployment_attention(&rolled_back);
        assert_eq!(reasons(&items), [("RolledBack", "batch 2 failed")]);
        assert_eq!(items[0].kind, AttentionKind::Stopped);
    }

    #[test]
    fn offline_devices_come_from_the_aggregate() {
        let status = DeploymentStatus {
            conditions: healthy_conditions(),
            aggregate: Aggregate {
                matched_device_count: 5,
                succeeded: 5,
                offline: 2,
                ..Aggregate::default()
            },
            rollout: rollout(RolloutPhase::Complete, None),
            ..DeploymentStatus::default()
        };
        let items = deployment_attention(&status);
        assert_eq!(items.len(), 1);
        assert_eq!(items[0].kind, AttentionKind::Offline);
        assert_eq!(items[0].reason, "DevicesOffline");
        assert!(
            items[0]
                .message
                .starts_with("2 of 5 matched devices are offline"),
            "{}",
            items[0].message
        );
    }

    #[test]
    fn a_status_without_conditions_still_shows_a_stop_and_failures() {
        let status = DeploymentStatus {
            aggregate: Aggregate {
                matched_device_count: 3,
                failed: 2,
                pending: 1,
                offline: 1,
                last_error: Some("d1: boom".into()),
                ..Aggregate::default()
            },
            rollout: rollout(RolloutPhase::Paused, Some("2 of 2 failed")),
            ..DeploymentStatus::default()
        };
        let items = deployment_attention(&status);
        assert_eq!(
            items.iter().map(|i| i.kind).collect::<Vec<_>>(),
            [
                AttentionKind::Stopped,
                AttentionKind::Failing,
                AttentionKind::Offline
            ]
        );
        assert_eq!(
            reasons(&items)[..2],
            [
                ("Paused", "2 of 2 failed"),
                ("DevicesFailing", "2 devices failed; latest: d1: boom")
            ]
        );
    }

    #[test]
    fn most_serious_first_and_an_empty_message_still_says_something() {
        let status = DeploymentStatus {
            conditions: vec![
                condition("Degraded", true, "DevicesFailing", ""),
                condition("Ready", false, "InvalidScore", "spec.score is invalid: x"),
            ],
            ..DeploymentStatus::default()
        };
        let items = deployment_attention(&status);
        assert_eq!(items[0].reason, "InvalidScore");
        assert_eq!(items[1].message, "Degraded is True (DevicesFailing)");
    }
}

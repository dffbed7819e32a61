//! Whether a fleet `Deployment`'s status says that one write of it is done, and what to tell
//! the user when it is not. Pure functions of the status, tested without servers; the
//! [`FleetDeploymentScore`](super::FleetDeploymentScore) and the end-to-end suite share them.
//!
//! Every judgement is tied to the write that was made: [`Applied`] records the
//! `metadata.generation` the API server gave it and the revision (content hash of `spec.score`)
//! the operator rolls out for it, so a status left from an earlier change never counts.

use harmony_fleet_contracts::ContentHash;
use harmony_fleet_types::crd::deployment::RolloutPhase;
use harmony_fleet_types::crd::{Deployment, DeploymentStatus};

use crate::error::DeployError;

/// What one write of a Deployment asked for: the generation it produced and the revision the
/// operator rolls out for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// Namespace of the resource.
    pub namespace: String,
    /// Name of the resource.
    pub name: String,
    /// `metadata.generation` after the write.
    pub generation: i64,
    /// Content hash of `spec.score`: what `status.rollout.revision` reads once the operator
    /// took the change.
    pub revision: ContentHash,
}

impl Applied {
    /// What the API server answered to a write. Fails when the answer has no
    /// `metadata.generation` or its `spec.score` cannot be encoded.
    pub fn of(deployment: &Deployment) -> Result<Self, DeployError> {
        let namespace = deployment.metadata.namespace.clone().unwrap_or_default();
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let generation =
            deployment
                .metadata
                .generation
                .ok_or_else(|| DeployError::FleetDeployment {
                    deployment: format!("{namespace}/{name}"),
                    reason: "the API server returned no metadata.generation (is the fleet CRD \
                         installed with its status subresource? FleetOperatorScore installs it)"
                        .to_owned(),
                })?;
        let revision =
            deployment
                .spec
                .score
                .content_hash()
                .map_err(|e| DeployError::FleetDeployment {
                    deployment: format!("{namespace}/{name}"),
                    reason: format!("spec.score cannot be encoded: {e}"),
                })?;
        Ok(Self {
            namespace,
            name,
            generation,
            revision,
        })
    }

    /// `namespace/name`.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// What a status says about one write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The status describes the write's generation, the rollout of its revision is
    /// `Complete`, every matched device succeeded and `Ready` is `True`.
    Ready,
    /// Not yet; the text says what was seen and what is awaited.
    Pending(String),
    /// Will not become ready without another change: the operator rejected the resource
    /// (`InvalidName`, `InvalidScore`, `NameConflict`) or stopped its rollout (`Paused`,
    /// `RolledBack`). The text says which.
    Failed(String),
}

/// Reasons of `Ready=False` that only a new write can clear.
const REJECTED: [&str; 3] = ["InvalidName", "InvalidScore", "NameConflict"];

/// Judges `status` (absent: the operator has not written one yet) against `applied`.
pub fn judge(status: Option<&DeploymentStatus>, applied: &Applied) -> Verdict {
    let Some(status) = status else {
        return Verdict::Pending("no status yet (is the operator running?)".into());
    };
    if status.observed_generation != Some(applied.generation) {
        return Verdict::Pending(format!(
            "observedGeneration {:?}, waiting for {}",
            status.observed_generation, applied.generation
        ));
    }
    if let Some(ready) = condition(status, "Ready")
        && ready.status != "True"
        && REJECTED.contains(&ready.reason.as_str())
    {
        return Verdict::Failed(format!("the operator rejected it ({})", ready.reason));
    }
    let hex = applied.revision.hex();
    let revision: &str = &hex;
    match &status.rollout {
        Some(r) if r.revision == revision && r.phase.is_stopped() => {
            return Verdict::Failed(format!(
                "its rollout of revision {} is {}{}",
                short(revision),
                r.phase,
                r.reason
                    .as_deref()
                    .map(|why| format!(": {why}"))
                    .unwrap_or_default()
            ));
        }
        Some(r) if r.revision == revision && r.phase == RolloutPhase::Complete => {}
        Some(r) => {
            return Verdict::Pending(format!(
                "rollout {} on revision {}, waiting for Complete on {}",
                r.phase,
                short(&r.revision),
                short(revision)
            ));
        }
        None => return Verdict::Pending("no rollout status".into()),
    }
    let a = &status.aggregate;
    if a.succeeded != a.matched_device_count {
        return Verdict::Pending(format!(
            "{} of {} matched devices succeeded ({} failed, {} pending)",
            a.succeeded, a.matched_device_count, a.failed, a.pending
        ));
    }
    if condition(status, "Ready").is_none_or(|c| c.status != "True") {
        return Verdict::Pending("Ready is not True".into());
    }
    Verdict::Ready
}

/// What the status says about `applied`, for an error: the Deployment, the write's generation
/// and revision, `verdict`, the `Ready` condition and every other condition that is `True`
/// (reason and message), and the failing devices with their errors.
pub fn describe(status: Option<&DeploymentStatus>, applied: &Applied, verdict: &str) -> String {
    let mut text = format!(
        "fleet Deployment {} (generation {}, revision {}): {verdict}",
        applied.key(),
        applied.generation,
        short(&applied.revision.hex())
    );
    let Some(status) = status else {
        return text;
    };
    for c in &status.conditions {
        if c.type_ == "Ready" || c.status == "True" {
            text.push_str(&format!(
                "; condition {}={} ({}): {}",
                c.type_, c.status, c.reason, c.message
            ));
        }
    }
    if !status.failing_devices.is_empty() {
        let devices: Vec<String> = status
            .failing_devices
            .iter()
            .map(|f| format!("{}: {}", f.device, f.error))
            .collect();
        text.push_str(&format!("; failing devices: {}", devices.join("; ")));
    }
    text
}

fn condition<'a>(
    status: &'a DeploymentStatus,
    kind: &str,
) -> Option<&'a k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
    status.conditions.iter().find(|c| c.type_ == kind)
}

/// The first 12 characters of a revision, for messages.
pub fn short(revision: &str) -> &str {
    revision.get(..12).unwrap_or(revision)
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmony_fleet_types::crd::deployment::{Aggregate, FailingDevice, RolloutStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn applied() -> Applied {
        Applied {
            namespace: "apps".into(),
            name: "web".into(),
            generation: 3,
            revision: ContentHash::of_bytes(b"v2"),
        }
    }

    fn cond(kind: &str, status: &str, reason: &str, message: &str) -> Condition {
        Condition {
            type_: kind.into(),
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
            observed_generation: Some(3),
            last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
        }
    }

    fn ready() -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(3),
            conditions: vec![cond("Ready", "True", "AllSucceeded", "2 devices")],
            aggregate: Aggregate {
                matched_device_count: 2,
                succeeded: 2,
                ..Default::default()
            },
            rollout: Some(RolloutStatus {
                revision: ContentHash::of_bytes(b"v2").to_string(),
                phase: RolloutPhase::Complete,
                ..Default::default()
            }),
            failing_devices: Vec::new(),
        }
    }

    fn failed() -> DeploymentStatus {
        let mut s = ready();
        s.conditions = vec![
            cond("Ready", "False", "NotReady", "0 succeeded, 1 failed"),
            cond("Progressing", "False", "Idle", "nothing to roll out"),
            cond("Paused", "True", "FailureCriteriaExceeded", "1 of 1 failed"),
            cond("Degraded", "True", "DevicesFailing", "1 devices failed"),
        ];
        s.aggregate = Aggregate {
            matched_device_count: 1,
            failed: 1,
            ..Default::default()
        };
        if let Some(r) = s.rollout.as_mut() {
            r.phase = RolloutPhase::Paused;
            r.reason = Some("1 of 1 completed devices failed".into());
        }
        s.failing_devices = vec![FailingDevice {
            device: "local-1".into(),
            error: "image localhost/nope:1 not found".into(),
        }];
        s
    }

    #[test]
    fn ready_only_for_the_generation_and_revision_written() {
        assert_eq!(judge(Some(&ready()), &applied()), Verdict::Ready);
        assert!(matches!(judge(None, &applied()), Verdict::Pending(_)));

        let mut stale = ready();
        stale.observed_generation = Some(2);
        let Verdict::Pending(why) = judge(Some(&stale), &applied()) else {
            panic!("a stale generation is pending");
        };
        assert!(why.contains("observedGeneration Some(2)"), "{why}");

        let mut old = ready();
        if let Some(r) = old.rollout.as_mut() {
            r.revision = ContentHash::of_bytes(b"v1").to_string();
        }
        let Verdict::Pending(why) = judge(Some(&old), &applied()) else {
            panic!("a previous revision is pending");
        };
        assert!(why.contains("waiting for Complete"), "{why}");

        let mut converging = ready();
        converging.aggregate.succeeded = 1;
        converging.aggregate.pending = 1;
        assert!(matches!(
            judge(Some(&converging), &applied()),
            Verdict::Pending(_)
        ));

        let mut not_ready = ready();
        not_ready.conditions[0].status = "False".into();
        assert!(matches!(
            judge(Some(&not_ready), &applied()),
            Verdict::Pending(_)
        ));
    }

    #[test]
    fn a_stopped_rollout_or_a_rejected_resource_fails_at_once() {
        let Verdict::Failed(why) = judge(Some(&failed()), &applied()) else {
            panic!("a paused rollout of the written revision fails");
        };
        assert!(
            why.contains("Paused: 1 of 1 completed devices failed"),
            "{why}"
        );

        // A pause of an older revision says nothing about this write.
        let mut older = failed();
        if let Some(r) = older.rollout.as_mut() {
            r.revision = ContentHash::of_bytes(b"v1").to_string();
        }
        assert!(matches!(
            judge(Some(&older), &applied()),
            Verdict::Pending(_)
        ));

        let mut rejected = ready();
        rejected.conditions = vec![cond(
            "Ready",
            "False",
            "NameConflict",
            "deployment name `web` is already used by namespace `other`",
        )];
        rejected.rollout = None;
        let Verdict::Failed(why) = judge(Some(&rejected), &applied()) else {
            panic!("a name conflict fails");
        };
        assert!(why.contains("NameConflict"), "{why}");
    }

    #[test]
    fn the_description_names_the_deployment_the_conditions_and_the_failing_devices() {
        let text = describe(Some(&failed()), &applied(), "its rollout is Paused");
        for needle in [
            "fleet Deployment apps/web (generation 3, revision ",
            "its rollout is Paused",
            "condition Ready=False (NotReady): 0 succeeded, 1 failed",
            "condition Paused=True (FailureCriteriaExceeded): 1 of 1 failed",
            "condition Degraded=True (DevicesFailing)",
            "failing devices: local-1: image localhost/nope:1 not found",
        ] {
            assert!(text.contains(needle), "missing {needle:?} in {text}");
        }
        assert!(!text.contains("Progressing=False"), "{text}");
        assert_eq!(
            describe(None, &applied(), "no status yet"),
            format!(
                "fleet Deployment apps/web (generation 3, revision {}): no status yet",
                short(&ContentHash::of_bytes(b"v2").hex())
            )
        );
    }
}

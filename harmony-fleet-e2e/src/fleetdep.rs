//! Fleet `Deployment`s in tests: built from JSON the way a user writes YAML, applied with
//! server-side apply, status read back.
//!
//! Every wait for "converged" is tied to the change that was made: [`Applied`] records the
//! `metadata.generation` the API server gave the write and the revision (content hash of
//! `spec.score`) the operator will roll out, and [`wait_converged`] accepts only a status that
//! describes that generation and that revision, so a status left from an earlier change never
//! satisfies it.

use std::time::Duration;

use harmony_fleet_deploy::fleet_deployment::readiness::{self, Verdict};
use harmony_fleet_operator::crd::{Deployment, DeploymentStatus};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

use crate::wait::eventually;

/// What one write of a Deployment asked for (the generation and revision every wait is tied
/// to); shared with the `FleetDeploymentScore`.
pub use harmony_fleet_deploy::fleet_deployment::Applied;

/// The field manager tests apply with.
pub const MANAGER: &str = "harmony-fleet-e2e";

/// A `PodmanV0` payload running the demo image `tag` as service `web`, published on `port`.
pub fn demo_score(tag: &str, port: u16, args: &[&str]) -> Value {
    json!({
        "type": "PodmanV0",
        "data": {
            "services": [{
                "name": "web",
                "image": format!("localhost/fleet-demo:{tag}"),
                "pullPolicy": "Never",
                "args": args,
                "ports": [{"hostPort": port, "containerPort": 8080}]
            }],
            "stopPolicy": {"signal": "SIGTERM", "graceSeconds": 5}
        }
    })
}

/// A Deployment manifest.
pub fn manifest(
    name: &str,
    namespace: &str,
    selector: Value,
    score: Value,
    rollout: Value,
) -> Value {
    json!({
        "apiVersion": "fleet.nationtech.io/v1alpha1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"targetSelector": selector, "score": score, "rollout": rollout}
    })
}

/// Applies `manifest` (server-side apply), as `kubectl apply --server-side` would.
pub async fn apply(client: &kube::Client, manifest: &Value) -> Result<Deployment, kube::Error> {
    let namespace = manifest["metadata"]["namespace"]
        .as_str()
        .unwrap_or("default");
    let name = manifest["metadata"]["name"].as_str().unwrap_or_default();
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    api.patch(
        name,
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(manifest),
    )
    .await
}

/// Applies `manifest` and records what the write asked for.
pub async fn apply_tracked(client: &kube::Client, manifest: &Value) -> anyhow::Result<Applied> {
    let deployment = apply(client, manifest).await?;
    Ok(Applied::of(&deployment)?)
}

/// Why `status` does not (yet) say that `applied` converged on `devices` online devices, or
/// `None` when it does: what [`FleetDeploymentScore`] blocks on (see [`readiness::judge`]: the
/// status describes that generation, its rollout is `Complete` on that revision, every matched
/// device succeeded, `Ready` is `True`), and moreover exactly `devices` are matched and none is
/// offline.
///
/// [`FleetDeploymentScore`]: harmony_fleet_deploy::FleetDeploymentScore
pub fn not_converged(status: &DeploymentStatus, applied: &Applied, devices: u64) -> Option<String> {
    match readiness::judge(Some(status), applied) {
        Verdict::Ready => {}
        Verdict::Pending(why) | Verdict::Failed(why) => return Some(why),
    }
    let a = &status.aggregate;
    if a.matched_device_count != devices || a.offline != 0 {
        return Some(format!(
            "{a:?}, waiting for {devices} matched, succeeded and online"
        ));
    }
    None
}

/// Waits until the change `applied` converged on `devices` online devices (see
/// [`not_converged`]).
pub async fn wait_converged(
    client: &kube::Client,
    applied: &Applied,
    devices: u64,
    timeout: Duration,
) -> anyhow::Result<DeploymentStatus> {
    let (ns, name) = (applied.namespace.as_str(), applied.name.as_str());
    eventually(
        &format!(
            "{ns}/{name} generation {} to converge on {devices} device(s)",
            applied.generation
        ),
        timeout,
        || async move {
            let seen = status(client, ns, name).await.ok_or("no status yet")?;
            match not_converged(&seen, applied, devices) {
                None => Ok(seen),
                Some(why) => Err(why),
            }
        },
    )
    .await
}

/// The status of `namespace/name`, if the resource exists and has one.
pub async fn status(
    client: &kube::Client,
    namespace: &str,
    name: &str,
) -> Option<DeploymentStatus> {
    let api: Api<Deployment> = Api::namespaced(client.clone(), namespace);
    api.get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|d| d.status)
}

/// Whether condition `kind` of `status` is `True`.
pub fn condition(status: &DeploymentStatus, kind: &str) -> bool {
    status
        .conditions
        .iter()
        .any(|c| c.type_ == kind && c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmony_fleet_contracts::ContentHash;
    use harmony_fleet_operator::crd::deployment::{Aggregate, RolloutStatus};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

    fn applied() -> Applied {
        Applied {
            namespace: "ns".into(),
            name: "web".into(),
            generation: 3,
            revision: ContentHash::of_bytes(b"v2"),
        }
    }

    fn converged() -> DeploymentStatus {
        DeploymentStatus {
            observed_generation: Some(3),
            conditions: vec![Condition {
                type_: "Ready".into(),
                status: "True".into(),
                reason: "AllSucceeded".into(),
                message: String::new(),
                observed_generation: Some(3),
                last_transition_time: Time(jiff::Timestamp::UNIX_EPOCH),
            }],
            aggregate: Aggregate {
                matched_device_count: 2,
                succeeded: 2,
                ..Default::default()
            },
            rollout: Some(RolloutStatus {
                revision: ContentHash::of_bytes(b"v2").to_string(),
                phase: harmony_fleet_operator::crd::deployment::RolloutPhase::Complete,
                ..Default::default()
            }),
            failing_devices: Vec::new(),
        }
    }

    #[test]
    fn only_the_status_of_the_change_just_made_counts() {
        assert_eq!(not_converged(&converged(), &applied(), 2), None);

        let mut stale = converged();
        stale.observed_generation = Some(2);
        let why = not_converged(&stale, &applied(), 2).expect("stale generation");
        assert!(why.contains("observedGeneration Some(2)"), "{why}");

        let mut old_revision = converged();
        if let Some(r) = old_revision.rollout.as_mut() {
            r.revision = ContentHash::of_bytes(b"v1").to_string();
        }
        let why = not_converged(&old_revision, &applied(), 2).expect("previous revision");
        assert!(why.contains("waiting for Complete"), "{why}");

        let mut outage = converged();
        outage.aggregate.offline = 1;
        assert!(
            not_converged(&outage, &applied(), 2).is_some(),
            "a device is offline"
        );

        let mut not_ready = converged();
        not_ready.conditions[0].status = "False".into();
        assert!(not_converged(&not_ready, &applied(), 2).is_some());
        assert!(
            not_converged(&converged(), &applied(), 3).is_some(),
            "wrong count"
        );
    }
}

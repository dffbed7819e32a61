//! Fleet `Deployment`s in tests: built from JSON the way a user writes YAML, applied with
//! server-side apply, status read back.

use harmony_fleet_operator::crd::{Deployment, DeploymentStatus};
use kube::Api;
use kube::api::{Patch, PatchParams};
use serde_json::{Value, json};

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

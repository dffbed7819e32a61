//! Cluster mode. With `FLEET_E2E_KUBECONFIG` set: the fleet comes up on that cluster with
//! agents as Pods, and a Deployment must converge on every device. Without it (CI here, no
//! nodes): the same bring-up against the local control plane — every object is accepted by the
//! real API server, and each Score fails its smoke test naming the workload that is not ready.

use std::time::Duration;

use harmony::inventory::Inventory;
use harmony::local::{ControlPlaneOptions, LocalControlPlane};
use harmony::topologies::K8sAnywhereTopology;
use harmony::topology::Topology;
use harmony_fleet_contracts::DeviceId;
use harmony_fleet_e2e::cluster::{self, ClusterOptions, KUBECONFIG_ENV, NAMESPACE};
use harmony_fleet_e2e::fleetdep::{self, condition, manifest};
use harmony_fleet_e2e::wait::eventually;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use kube::Api;
use kube::api::ListParams;
use serde_json::json;

fn devices() -> Vec<DeviceId> {
    ["e2e-dev-1", "e2e-dev-2"]
        .iter()
        .map(|d| d.parse().expect("id"))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_bring_up() {
    match std::env::var(KUBECONFIG_ENV).ok().filter(|v| !v.is_empty()) {
        Some(kubeconfig) => on_a_real_cluster(kubeconfig).await,
        None => on_the_local_control_plane().await,
    }
}

async fn on_a_real_cluster(kubeconfig: String) {
    let topology = K8sAnywhereTopology::from_kubeconfig(kubeconfig);
    topology.ensure_ready().await.expect("cluster reachable");
    let options = ClusterOptions::from_env(devices(), Duration::from_secs(300));
    for score in cluster::scores(&options) {
        score
            .create_interpret()
            .execute(&Inventory::new("e2e"), &topology)
            .await
            .unwrap_or_else(|e| panic!("{} failed: {}", score.name(), e.chain()));
    }
    let client = harmony::capability::K8sClient::k8s_client(&topology)
        .await
        .expect("client");
    let image = std::env::var("FLEET_E2E_WORKLOAD_IMAGE")
        .unwrap_or_else(|_| "docker.io/library/nginx:alpine".into());
    let score =
        json!({"type": "PodmanV0", "data": {"services": [{"name": "web", "image": image}]}});
    let m = manifest(
        "e2e-cluster-hello",
        "default",
        json!({"matchLabels": {"site": "e2e"}}),
        score,
        json!({}),
    );
    fleetdep::apply(&client, &m).await.expect("apply");
    eventually(
        "the Deployment to be Ready on every device",
        Duration::from_secs(600),
        || async {
            let status = fleetdep::status(&client, "default", "e2e-cluster-hello")
                .await
                .ok_or("no status")?;
            if status.aggregate.succeeded == 2 && condition(&status, "Ready") {
                Ok(())
            } else {
                Err(format!("{:?}", status.aggregate))
            }
        },
    )
    .await
    .expect("converged on the cluster");
}

async fn on_the_local_control_plane() {
    eprintln!(
        "cluster mode: {KUBECONFIG_ENV} is not set; applying the cluster bring-up to the local \
         control plane (no kubelet: objects are checked, pods cannot run)"
    );
    let plane = LocalControlPlane::start(ControlPlaneOptions::default())
        .await
        .expect("control plane");
    let topology = K8sAnywhereTopology::from_kubeconfig(plane.kubeconfig_path());
    topology.ensure_ready().await.expect("topology");
    let options = ClusterOptions::from_env(devices(), Duration::from_secs(2));
    for score in cluster::scores(&options) {
        let err = score
            .create_interpret()
            .execute(&Inventory::new("e2e"), &topology)
            .await
            .expect_err("no kubelet, no ready pods")
            .chain();
        assert!(
            err.contains("ready replica") || err.contains("to be available"),
            "{} failed for another reason than missing pods: {err}",
            score.name()
        );
    }
    let client = plane.client().await.expect("client");
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), NAMESPACE);
    assert_eq!(
        sets.list(&ListParams::default())
            .await
            .expect("list")
            .items
            .len(),
        1
    );
    let deployments: Api<Deployment> = Api::namespaced(client, NAMESPACE);
    let names: Vec<String> = deployments
        .list(&ListParams::default())
        .await
        .expect("list")
        .items
        .into_iter()
        .filter_map(|d| d.metadata.name)
        .collect();
    assert_eq!(
        names,
        vec![
            "fleet-agent-e2e-dev-1",
            "fleet-agent-e2e-dev-2",
            "harmony-fleet-operator"
        ],
        "every workload of the bring-up is stored"
    );
}

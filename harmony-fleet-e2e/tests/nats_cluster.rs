//! Losing one node of a three-node NATS cluster during a rollout loses nothing: buckets are
//! replicated three ways, agents fail over to the surviving servers, the rollout completes.

use std::collections::BTreeSet;
use std::time::Duration;

use harmony_fleet_contracts::DeviceId;
use harmony_fleet_deploy::nats::NatsReplicas;
use harmony_fleet_e2e::fleetdep::{self, condition, demo_score, manifest};
use harmony_fleet_e2e::stack::{self, StackOptions};
use harmony_fleet_e2e::wait::eventually;
use serde_json::json;

const OPTIONS: StackOptions = StackOptions {
    name: "nats-cluster",
    devices: 2,
    nats_replicas: NatsReplicas::Three,
};
const CONVERGE: Duration = Duration::from_secs(120);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_node_loss() {
    let stack = stack::shared(OPTIONS).await;
    let _exclusive = stack.exclusive_access().await;
    let ns = stack.namespace().await.expect("namespace");
    let name = format!("replicated-{}", ns.id);
    let port = 18_080;
    let devices: Vec<&DeviceId> = stack.fleet.devices.iter().map(|d| &d.id).collect();
    let selector = json!({"matchLabels": {"site": "e2e"}});
    let apply = |tag: &'static str| {
        let m = manifest(
            &name,
            &ns.name,
            selector.clone(),
            demo_score(tag, port, &[]),
            json!({}),
        );
        async move { fleetdep::apply(&stack.kube, &m).await }
    };
    let devices = &devices;
    let served = |tag: &'static str| async move {
        for device in devices {
            eventually(
                &format!("{device} to serve {tag}"),
                CONVERGE,
                || async move {
                    let got = stack.http(device, port).await?;
                    if got == tag { Ok(()) } else { Err(got) }
                },
            )
            .await
            .expect("served");
        }
    };
    apply("v1").await.expect("apply v1");
    served("v1").await;
    let keys_before = stack.desired_keys(&name).await.expect("keys");
    assert_eq!(keys_before.len(), 2);

    apply("v2").await.expect("apply v2");
    stack.stop_nats(2).await.expect("kill one NATS node");
    served("v2").await;
    eventually("the Deployment to be Ready on v2", CONVERGE, || async {
        let status = fleetdep::status(&stack.kube, &ns.name, &name)
            .await
            .ok_or("no status")?;
        if status.aggregate.succeeded == 2 && condition(&status, "Ready") {
            Ok(())
        } else {
            Err(format!("{:?}", status.aggregate))
        }
    })
    .await
    .expect("rollout completed without one node");
    let keys_after: BTreeSet<String> = stack.desired_keys(&name).await.expect("keys");
    assert_eq!(keys_before, keys_after, "a key was lost with the node");
    let commands = stack.commands();
    for device in devices {
        commands
            .ping(device)
            .await
            .expect("every agent still reachable");
    }
    // Bring the node back through the production Score (it rejoins and catches up).
    stack
        .run(&stack.fleet.nats_score())
        .await
        .expect("node back");
}

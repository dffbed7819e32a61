//! Losing one node of a three-node NATS cluster during a rollout loses nothing: buckets are
//! replicated three ways, agents fail over to the surviving servers, the rollout completes.
//!
//! The node killed is the one the operator is connected to, with at least one agent on it
//! too (read from each node's `/connz`), so both kinds of client really fail over.

use std::collections::BTreeSet;
use std::time::Duration;

use harmony_fleet_contracts::DeviceId;
use harmony_fleet_deploy::nats::NatsReplicas;
use harmony_fleet_e2e::fleetdep::{self, demo_score, manifest};
use harmony_fleet_e2e::stack::{self, Stack, StackOptions};
use harmony_fleet_e2e::wait::eventually;
use serde_json::json;

const OPTIONS: StackOptions = StackOptions {
    name: "nats-cluster",
    devices: 2,
    nats_replicas: NatsReplicas::Three,
    walkthrough_labels: false,
    credential_lifetime_secs: None,
    dashboard: false,
};
const CONVERGE: Duration = Duration::from_secs(120);
/// The operator's NATS connection name.
const OPERATOR: &str = "harmony-fleet-operator";
/// Agent restarts allowed to get one agent onto the operator's node (each lands on a random
/// one of three: the chance that 20 tries all miss is (2/3)^20 ≈ 0.03%).
const PLACEMENT_TRIES: usize = 20;

fn agent(device: &DeviceId) -> String {
    format!("fleet-agent {device}")
}

/// The NATS node the operator is on, once at least one agent is on it too (restarting agents
/// until one lands there), with the agents found on it.
async fn node_with_operator_and_an_agent(stack: &Stack) -> anyhow::Result<(usize, Vec<DeviceId>)> {
    let devices: Vec<DeviceId> = stack.fleet.devices.iter().map(|d| d.id.clone()).collect();
    for attempt in 0..=PLACEMENT_TRIES {
        let node = eventually("the operator on a NATS node", CONVERGE, || async {
            stack
                .nats_member_of(OPERATOR)
                .await
                .map_err(|e| format!("{e:#}"))?
                .ok_or_else(|| "not connected to any node".to_owned())
        })
        .await?;
        let clients = stack.nats_clients(node).await?;
        let on_it: Vec<DeviceId> = devices
            .iter()
            .filter(|d| clients.contains(&agent(d)))
            .cloned()
            .collect();
        if !on_it.is_empty() {
            eprintln!(
                "nats_node_loss: node {node} holds the operator and {on_it:?} (attempt {attempt})"
            );
            return Ok((node, on_it));
        }
        let device = &devices[attempt % devices.len()];
        stack.stop_agent(device).await?;
        stack.start_agent(device, None).await?;
        // Its new connection, wherever it landed, before the next look: a look taken before
        // it connected would count it nowhere and spend a try.
        eventually("the restarted agent on a NATS node", CONVERGE, || async {
            stack
                .nats_member_of(&agent(device))
                .await
                .map_err(|e| format!("{e:#}"))?
                .ok_or_else(|| "not connected yet".to_owned())
        })
        .await?;
    }
    anyhow::bail!("no agent connected to the operator's node after {PLACEMENT_TRIES} restarts")
}

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
        async move { fleetdep::apply_tracked(&stack.kube, &m).await }
    };
    let devices = &devices;
    let served = |tag: &'static str| async move {
        for device in devices {
            stack
                .wait_http(device, port, tag, CONVERGE)
                .await
                .expect("served");
        }
    };
    let v1 = apply("v1").await.expect("apply v1");
    served("v1").await;
    fleetdep::wait_converged(&stack.kube, &v1, 2, CONVERGE)
        .await
        .expect("v1 converged");
    let keys_before = stack.desired_keys(&name).await.expect("keys");
    assert_eq!(keys_before.len(), 2);

    let (node, agents_on_it) = node_with_operator_and_an_agent(stack)
        .await
        .expect("placement");
    let node_back = stack.restore_nats();
    let v2 = apply("v2").await.expect("apply v2");
    stack
        .stop_nats(node)
        .await
        .expect("kill the operator's NATS node");
    served("v2").await;
    fleetdep::wait_converged(&stack.kube, &v2, 2, CONVERGE)
        .await
        .expect("rollout completed without the operator's node");
    // The clients that were on it are connected elsewhere now.
    let mut moved: Vec<String> = agents_on_it.iter().map(agent).collect();
    moved.push(OPERATOR.to_owned());
    for client in &moved {
        eventually(
            &format!("{client} on a surviving node"),
            CONVERGE,
            || async {
                match stack.nats_member_of(client).await {
                    Ok(Some(n)) if n != node => Ok(()),
                    other => Err(format!("{other:?} (killed node {node})")),
                }
            },
        )
        .await
        .expect("failed over");
    }
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
    node_back.now().await.expect("node back");
}

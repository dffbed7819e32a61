//! The fleet end to end: real control plane, NATS, operator, three device agents with real
//! podman, brought up once for this binary by the production Scores.
//!
//! Tests that only observe share the stack; tests that break something (stop an agent,
//! restart NATS or the operator, relabel a device) hold it exclusively.

use std::collections::BTreeSet;
use std::time::Duration;

use harmony_fleet_contracts::commands::{ExecRequest, LogsRequest};
use harmony_fleet_contracts::{DeploymentName, DeploymentState, DeviceId, Phase, ReconcileScore};
use harmony_fleet_deploy::nats::{NatsReplicas, smoke};
use harmony_fleet_e2e::TestNamespace;
use harmony_fleet_e2e::fleetdep::{self, Applied, demo_score, manifest};
use harmony_fleet_e2e::stack::{self, Stack, StackOptions};
use harmony_fleet_e2e::wait::eventually;
use harmony_fleet_operator::commands::CommandError;
use harmony_fleet_operator::crd::{Deployment, Device};
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;

const OPTIONS: StackOptions = StackOptions {
    name: "fleet",
    devices: 3,
    nats_replicas: NatsReplicas::One,
    walkthrough_labels: false,
    credential_lifetime_secs: None,
    dashboard: false,
};
const CONVERGE: Duration = Duration::from_secs(90);

async fn stack() -> &'static Stack {
    stack::shared(OPTIONS).await
}

/// A host port unique to the test (devices are shared by concurrent tests).
fn port_of(ns: &TestNamespace) -> u16 {
    let n = u32::from_str_radix(&ns.id[..4], 16).unwrap_or(0);
    20_000 + u16::try_from(n % 20_000).unwrap_or(0)
}

fn devices_in(names: &[&DeviceId]) -> serde_json::Value {
    json!({"matchExpressions": [{
        "key": "fleet.nationtech.io/device",
        "operator": "In",
        "values": names.iter().map(|d| d.to_string()).collect::<Vec<_>>()
    }]})
}

fn key(device: &DeviceId, deployment: &str) -> String {
    format!("{device}.{deployment}")
}

/// Applies a Deployment manifest, failing the test with the API server's message; returns
/// the generation and revision the write asked for.
async fn apply(stack: &Stack, manifest: serde_json::Value) -> Applied {
    let name = manifest["metadata"]["name"].clone();
    fleetdep::apply_tracked(&stack.kube, &manifest)
        .await
        .unwrap_or_else(|e| panic!("applying {name}: {e:#}"))
}

/// Applies the demo image `tag` on `devices`, published on `port`, rolled out all at once.
async fn apply_demo(
    stack: &Stack,
    namespace: &str,
    name: &str,
    devices: &[&DeviceId],
    tag: &str,
    port: u16,
) -> Applied {
    let score = demo_score(tag, port, &[]);
    apply(
        stack,
        manifest(name, namespace, devices_in(devices), score, json!({})),
    )
    .await
}

/// Waits until the change `applied` converged on `devices` online devices: a status of that
/// generation, rollout Complete on that revision, Ready.
async fn wait_ready(stack: &Stack, applied: &Applied, devices: u64) -> anyhow::Result<()> {
    fleetdep::wait_converged(&stack.kube, applied, devices, CONVERGE)
        .await
        .map(|_| ())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping() {
    let stack = stack().await;
    let _shared = stack.shared_access().await;
    let commands = stack.commands();
    for device in &stack.fleet.devices {
        let reply = commands.ping(&device.id).await.expect("ping");
        assert_eq!(reply.device_id, device.id);
    }
    let ghost: DeviceId = "never-enrolled".parse().expect("id");
    let err = commands.ping(&ghost).await.expect_err("nobody answers");
    assert!(matches!(err, CommandError::DeviceOffline { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_converges() {
    let stack = stack().await;
    let _shared = stack.shared_access().await;
    let ns = stack.namespace().await.expect("namespace");
    let name = format!("hello-{}", ns.id);
    let port = port_of(&ns);
    let (d1, d2, d3) = (
        &stack.device(1).id,
        &stack.device(2).id,
        &stack.device(3).id,
    );
    let applied = apply_demo(stack, &ns.name, &name, &[d1, d2], "v1", port).await;
    wait_ready(stack, &applied, 2).await.expect("converged");
    for device in [d1, d2] {
        stack
            .wait_http(device, port, "v1", CONVERGE)
            .await
            .expect("serving");
        let running = stack.running_containers(device, &name).await.expect("ps");
        assert_eq!(running.len(), 1, "{device}: {running:?}");
    }
    assert!(
        stack
            .running_containers(d3, &name)
            .await
            .expect("ps")
            .is_empty()
    );
    let keys = stack.desired_keys(&name).await.expect("keys");
    assert_eq!(keys, BTreeSet::from([key(d1, &name), key(d2, &name)]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_rolls_forward_batch_by_batch() {
    let stack = stack().await;
    let _shared = stack.shared_access().await;
    let ns = stack.namespace().await.expect("namespace");
    let name = format!("update-{}", ns.id);
    let port = port_of(&ns);
    let (d1, d2) = (&stack.device(1).id, &stack.device(2).id);
    let rollout =
        json!({"strategy": "Batches", "batches": [{"count": 1}], "successThreshold": 100});
    let v1 = apply(
        stack,
        manifest(
            &name,
            &ns.name,
            devices_in(&[d1, d2]),
            demo_score("v1", port, &[]),
            rollout.clone(),
        ),
    )
    .await;
    wait_ready(stack, &v1, 2).await.expect("v1 converged");
    let mut old_ids = Vec::new();
    for device in [d1, d2] {
        stack
            .wait_http(device, port, "v1", CONVERGE)
            .await
            .expect("v1 served");
        old_ids.extend(
            stack
                .running_containers(device, &name)
                .await
                .expect("ps")
                .into_iter()
                .map(|c| c.id),
        );
    }

    let v2 = apply(
        stack,
        manifest(
            &name,
            &ns.name,
            devices_in(&[d1, d2]),
            demo_score("v2", port, &[]),
            rollout,
        ),
    )
    .await;
    assert!(v2.generation > v1.generation && v2.revision != v1.revision);
    let desired = stack.desired().await.expect("bucket");
    let state = async_nats::jetstream::new(stack.nats.clone())
        .get_key_value(harmony_fleet_contracts::buckets::DEVICE_STATE)
        .await
        .expect("state bucket");
    // Watch which device gets v2 first; when the second one gets it, the first must already
    // report Running on v2: the second batch waits for the first to succeed.
    let v2_hash = |bytes: &[u8]| {
        ReconcileScore::decode(bytes)
            .ok()
            .filter(|s| {
                serde_json::to_string(s)
                    .unwrap_or_default()
                    .contains("fleet-demo:v2")
            })
            .and_then(|s| s.content_hash().ok())
    };
    let first = eventually("the first batch to receive v2", CONVERGE, || async {
        let mut got = Vec::new();
        for device in [d1, d2] {
            if let Ok(Some(bytes)) = desired.get(key(device, &name)).await
                && v2_hash(&bytes).is_some()
            {
                got.push(device.clone());
            }
        }
        match got.as_slice() {
            [one] => Ok(one.clone()),
            [] => Err("no device has v2 yet".to_owned()),
            both => Err(format!(
                "both devices got v2 at once: {both:?} (no batches)"
            )),
        }
    })
    .await
    .expect("first batch");
    let second = if &first == d1 { d2 } else { d1 };
    eventually("the second batch to receive v2", CONVERGE, || async {
        let bytes = desired
            .get(key(second, &name))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("no key")?;
        let hash = v2_hash(&bytes).ok_or("still v1")?;
        let first_state = state
            .get(format!("state.{first}.{name}"))
            .await
            .map_err(|e| e.to_string())?
            .ok_or("first device has no state")?;
        let first_state: DeploymentState =
            serde_json::from_slice(&first_state).map_err(|e| e.to_string())?;
        assert_eq!(
            first_state.phase,
            Phase::Running,
            "the second batch started before the first ran v2"
        );
        assert_eq!(
            first_state.payload_hash,
            Some(hash),
            "the second batch started before the first ran v2"
        );
        Ok(())
    })
    .await
    .expect("second batch after the first succeeded");

    wait_ready(stack, &v2, 2).await.expect("v2 converged");
    for device in [d1, d2] {
        stack
            .wait_http(device, port, "v2", CONVERGE)
            .await
            .expect("v2 served");
        let running = stack.running_containers(device, &name).await.expect("ps");
        assert_eq!(
            running.len(),
            1,
            "{device}: exactly one container, got {running:?}"
        );
        assert!(
            !old_ids.contains(&running[0].id),
            "{device} still runs the old container"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_cleans_up() {
    let stack = stack().await;
    let _shared = stack.shared_access().await;
    let ns = stack.namespace().await.expect("namespace");
    let name = format!("bye-{}", ns.id);
    let port = port_of(&ns);
    let d1 = &stack.device(1).id;
    let applied = apply_demo(stack, &ns.name, &name, &[d1], "v1", port).await;
    wait_ready(stack, &applied, 1).await.expect("converged");
    let api: Api<Deployment> = Api::namespaced(stack.kube.clone(), &ns.name);
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete");
    eventually(
        "the resource, its keys and its container to be gone",
        CONVERGE,
        || async {
            if api
                .get_opt(&name)
                .await
                .map_err(|e| e.to_string())?
                .is_some()
            {
                return Err("the resource still exists (finalizer held)".into());
            }
            let keys = stack.desired_keys(&name).await.map_err(|e| e.to_string())?;
            if !keys.is_empty() {
                return Err(format!("keys left: {keys:?}"));
            }
            let running = stack.running_containers(d1, &name).await?;
            if running.is_empty() {
                Ok(())
            } else {
                Err(format!("containers left: {running:?}"))
            }
        },
    )
    .await
    .expect("cleaned up");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selector_follows_labels() {
    let stack = stack().await;
    let _exclusive = stack.exclusive_access().await;
    let ns = stack.namespace().await.expect("namespace");
    let name = format!("moving-{}", ns.id);
    let port = port_of(&ns);
    let (dev2, dev3) = (stack.device(2), stack.device(3));
    let selector = json!({"matchLabels": {"carries": ns.id.clone()}});
    let applied = apply(
        stack,
        manifest(
            &name,
            &ns.name,
            selector,
            demo_score("v1", port, &[]),
            json!({}),
        ),
    )
    .await;
    // Whatever happens below, both agents get the stack's labels back.
    let unlabel_dev3 = stack.restore_agent(&dev3.id);
    let unlabel_dev2 = stack.restore_agent(&dev2.id);
    let with_label = |device: &harmony_fleet_deploy::local::LocalDevice| {
        let mut labels = device.labels.clone();
        labels.insert("carries".into(), ns.id.clone());
        Some(labels)
    };
    stack
        .start_agent(&dev3.id, with_label(dev3))
        .await
        .expect("label dev3");
    stack
        .wait_http(&dev3.id, port, "v1", CONVERGE)
        .await
        .expect("runs on dev3");
    wait_ready(stack, &applied, 1)
        .await
        .expect("converged on dev3");
    assert_eq!(
        stack.desired_keys(&name).await.expect("keys"),
        BTreeSet::from([key(&dev3.id, &name)])
    );

    stack
        .start_agent(&dev2.id, with_label(dev2))
        .await
        .expect("label dev2");
    unlabel_dev3.now().await.expect("unlabel dev3");
    stack
        .wait_http(&dev2.id, port, "v1", CONVERGE)
        .await
        .expect("runs on dev2");
    eventually("the workload to leave dev3", CONVERGE, || async {
        let left = stack.running_containers(&dev3.id, &name).await?;
        if left.is_empty() {
            Ok(())
        } else {
            Err(format!("{left:?}"))
        }
    })
    .await
    .expect("moved");
    assert_eq!(
        stack.desired_keys(&name).await.expect("keys"),
        BTreeSet::from([key(&dev2.id, &name)])
    );
    unlabel_dev2.now().await.expect("unlabel dev2");
}

/// Decided in adr/0015: an offline device counts by its last report (its workload runs on
/// without the agent), and `status.aggregate.offline` says how many are offline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_offline_online() {
    let stack = stack().await;
    let _exclusive = stack.exclusive_access().await;
    let ns = stack.namespace().await.expect("namespace");
    let name = format!("steady-{}", ns.id);
    let port = port_of(&ns);
    let d3 = &stack.device(3).id;
    let applied = apply_demo(stack, &ns.name, &name, &[d3], "v1", port).await;
    wait_ready(stack, &applied, 1).await.expect("converged");
    stack
        .wait_http(d3, port, "v1", CONVERGE)
        .await
        .expect("serving");
    let before: Vec<String> = stack
        .running_containers(d3, &name)
        .await
        .expect("ps")
        .into_iter()
        .map(|c| c.id)
        .collect();

    let restart = stack.restore_agent(d3);
    stack.stop_agent(d3).await.expect("stop agent");
    let err = stack.commands().ping(d3).await.expect_err("agent stopped");
    assert!(matches!(err, CommandError::DeviceOffline { .. }), "{err}");
    let devices: Api<Device> = Api::all(stack.kube.clone());
    let online = |want: bool| {
        let devices = devices.clone();
        async move {
            eventually(&format!("Device {d3} online={want}"), CONVERGE, || async {
                let device = devices.get(d3.as_str()).await.map_err(|e| e.to_string())?;
                let online = device.status.map(|s| s.online).unwrap_or(false);
                if online == want {
                    Ok(())
                } else {
                    Err(format!("online={online}"))
                }
            })
            .await
        }
    };
    online(false).await.expect("offline");
    // The Deployment's status says so, and still counts the device by its last report.
    let during = eventually(
        "the status to count the offline device",
        CONVERGE,
        || async {
            let status = fleetdep::status(&stack.kube, &ns.name, &name)
                .await
                .ok_or("no status")?;
            if status.aggregate.offline == 1 {
                Ok(status)
            } else {
                Err(format!("{:?}", status.aggregate))
            }
        },
    )
    .await
    .expect("offline counted");
    assert_eq!(during.aggregate.succeeded, 1, "{:?}", during.aggregate);
    let ready = during
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .expect("a Ready condition");
    assert!(ready.message.contains("1 offline"), "{}", ready.message);
    assert!(
        fleetdep::not_converged(&during, &applied, 1).is_some(),
        "an outage must not read as converged"
    );
    // Offline-first: the workload keeps serving while the agent is gone.
    assert_eq!(stack.http(d3, port).await.as_deref(), Ok("v1"));

    restart.now().await.expect("start agent");
    online(true).await.expect("online again");
    wait_ready(stack, &applied, 1)
        .await
        .expect("status recovered: online, same generation and revision");
    let after: Vec<String> = stack
        .running_containers(d3, &name)
        .await
        .expect("ps")
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(
        before, after,
        "the restarted agent recreated the container instead of adopting it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_restart() {
    let stack = stack().await;
    let _exclusive = stack.exclusive_access().await;
    let ns = stack.namespace().await.expect("namespace");
    let name = format!("survivor-{}", ns.id);
    let port = port_of(&ns);
    let d1 = &stack.device(1).id;
    let healthy_nats = stack.restore_nats();
    let mut generations = Vec::new();
    for run in 1..=5 {
        stack
            .restart_nats(1)
            .await
            .unwrap_or_else(|e| panic!("run {run}: restart: {e:#}"));
        let tag = if run % 2 == 1 { "v1" } else { "v2" };
        let applied = apply_demo(stack, &ns.name, &name, &[d1], tag, port).await;
        stack
            .wait_http(d1, port, tag, CONVERGE)
            .await
            .unwrap_or_else(|e| panic!("run {run}: {e:#}"));
        // The status of this run's generation, not the previous run's.
        wait_ready(stack, &applied, 1)
            .await
            .unwrap_or_else(|e| panic!("run {run}: {e:#}"));
        generations.push(applied.generation);
    }
    assert!(
        generations.windows(2).all(|w| w[0] < w[1]),
        "every run was a new generation: {generations:?}"
    );
    healthy_nats.now().await.expect("NATS healthy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn operator_restart() {
    let stack = stack().await;
    let _exclusive = stack.exclusive_access().await;
    let ns = stack.namespace().await.expect("namespace");
    let name = format!("stable-{}", ns.id);
    let port = port_of(&ns);
    let (d1, d2) = (&stack.device(1).id, &stack.device(2).id);
    let applied = apply_demo(stack, &ns.name, &name, &[d1, d2], "v1", port).await;
    wait_ready(stack, &applied, 2).await.expect("converged");
    let desired = stack.desired().await.expect("bucket");
    let snapshot = |desired: async_nats::jetstream::kv::Store| {
        let name = name.clone();
        async move {
            let mut values = Vec::new();
            for device in [d1, d2] {
                let entry = desired
                    .entry(key(device, &name))
                    .await
                    .expect("read")
                    .expect("key exists");
                values.push((entry.revision, entry.value));
            }
            values
        }
    };
    let before = snapshot(desired.clone()).await;
    let status_before = fleetdep::status(&stack.kube, &ns.name, &name)
        .await
        .expect("status")
        .aggregate;

    let restart = stack.restore_operator();
    stack.stop_operator().await.expect("stop operator");
    let orphan = format!("{d1}.orphan-{}", ns.id);
    desired
        .put(&orphan, before[0].1.clone())
        .await
        .expect("orphan key");
    restart.now().await.expect("start operator");

    eventually("the orphaned key to be collected", CONVERGE, || async {
        match desired.get(&orphan).await.map_err(|e| e.to_string())? {
            None => Ok(()),
            Some(_) => Err("still there".to_owned()),
        }
    })
    .await
    .expect("collected");
    let after = snapshot(desired).await;
    assert_eq!(
        before, after,
        "the restarted operator rewrote desired state"
    );
    let status_after = fleetdep::status(&stack.kube, &ns.name, &name)
        .await
        .expect("status")
        .aggregate;
    assert_eq!(status_before, status_after);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_input() {
    let stack = stack().await;
    let _shared = stack.shared_access().await;
    let ns = stack.namespace().await.expect("namespace");
    let d1 = &stack.device(1).id;

    let dotted = manifest(
        "bad.name",
        &ns.name,
        devices_in(&[d1]),
        demo_score("v1", 1, &[]),
        json!({}),
    );
    let err = fleetdep::apply(&stack.kube, &dotted)
        .await
        .expect_err("dotted name")
        .to_string();
    assert!(err.contains("metadata.name must not contain '.'"), "{err}");
    let bad_strategy = manifest(
        "bad-strategy",
        &ns.name,
        devices_in(&[d1]),
        demo_score("v1", 1, &[]),
        json!({"strategy": "Sometimes"}),
    );
    let err = fleetdep::apply(&stack.kube, &bad_strategy)
        .await
        .expect_err("enum")
        .to_string();
    assert!(err.contains("spec.rollout.strategy"), "{err}");
    let mut no_score = manifest(
        "no-score",
        &ns.name,
        devices_in(&[d1]),
        json!(null),
        json!({}),
    );
    if let Some(spec) = no_score["spec"].as_object_mut() {
        spec.remove("score");
    }
    let err = fleetdep::apply(&stack.kube, &no_score)
        .await
        .expect_err("required")
        .to_string();
    assert!(err.contains("spec.score"), "{err}");

    let name = format!("broken-{}", ns.id);
    let mut score = demo_score("v1", port_of(&ns), &[]);
    score["data"]["services"][0]["image"] = json!("localhost/does-not-exist:v0");
    let applied = apply(
        stack,
        manifest(&name, &ns.name, devices_in(&[d1]), score, json!({})),
    )
    .await;
    let failing = eventually("the bad image to be reported Failed", CONVERGE, || async {
        let status = fleetdep::status(&stack.kube, &ns.name, &name)
            .await
            .ok_or("no status")?;
        if status.observed_generation == Some(applied.generation)
            && status.aggregate.failed == 1
            && !status.failing_devices.is_empty()
        {
            Ok(status.failing_devices)
        } else {
            Err(format!("{:?}", status.aggregate))
        }
    })
    .await
    .expect("failed");
    let reason = format!("{failing:?}");
    assert!(
        reason.contains("does-not-exist"),
        "the reason names the image: {reason}"
    );

    // As d1, with the credential it enrolled for and its own seed (this host is the device).
    let identity = stack.device_identity(d1).expect("enrolled");
    smoke::device_is_isolated(&stack.endpoint, d1, &identity)
        .await
        .expect("a device cannot read another device's keys");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_and_exec() {
    let stack = stack().await;
    let _shared = stack.shared_access().await;
    let ns = stack.namespace().await.expect("namespace");
    let name = format!("chatty-{}", ns.id);
    let port = port_of(&ns);
    let d2 = &stack.device(2).id;
    let line = format!("hello from {}", ns.id);
    let mut score = demo_score("v1", port, &[]);
    score["data"]["services"][0]["command"] =
        json!(["sh", "-c", format!("echo '{line}'; exec /bin/serve")]);
    let applied = apply(
        stack,
        manifest(&name, &ns.name, devices_in(&[d2]), score, json!({})),
    )
    .await;
    wait_ready(stack, &applied, 1).await.expect("converged");
    let deployment: DeploymentName = name.parse().expect("name");
    let commands = stack.commands();
    let logs = eventually("the log line", CONVERGE, || async {
        let reply = commands
            .logs(
                d2,
                &LogsRequest {
                    deployment: deployment.clone(),
                    service: None,
                    tail_lines: Some(20),
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        let all: Vec<String> = reply.services.into_iter().flat_map(|s| s.lines).collect();
        if all.iter().any(|l| l.contains(&line)) {
            Ok(all)
        } else {
            Err(format!("{all:?}"))
        }
    })
    .await
    .expect("logs");
    assert!(!logs.is_empty());
    let reply = commands
        .exec(
            d2,
            &ExecRequest {
                command: "echo hi".into(),
                deadline_ms: Some(5_000),
                max_output_bytes: None,
            },
        )
        .await
        .expect("exec");
    assert_eq!(reply.exit_code, Some(0));
    assert_eq!(reply.stdout.trim(), "hi");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_conflict_across_namespaces() {
    let stack = stack().await;
    let _shared = stack.shared_access().await;
    let first = stack.namespace().await.expect("namespace");
    let second = stack.namespace().await.expect("namespace");
    // Desired-state keys are `<device>.<deployment>`: one name, one owner across namespaces.
    let name = format!("dup-{}", first.id);
    let port = port_of(&first);
    let d1 = &stack.device(1).id;
    let owner = apply_demo(stack, &first.name, &name, &[d1], "v1", port).await;
    wait_ready(stack, &owner, 1).await.expect("owner converged");
    let claimant = apply_demo(stack, &second.name, &name, &[d1], "v2", port).await;
    eventually(
        "the second claimant to report NameConflict",
        CONVERGE,
        || async {
            let status = fleetdep::status(&stack.kube, &second.name, &name)
                .await
                .ok_or("no status")?;
            let ready = status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .ok_or("no Ready condition")?;
            if ready.status == "False" && ready.reason == "NameConflict" {
                Ok(())
            } else {
                Err(format!("{ready:?}"))
            }
        },
    )
    .await
    .expect("conflict reported");
    assert_eq!(
        stack.http(d1, port).await.as_deref(),
        Ok("v1"),
        "the owner's payload stays"
    );

    let api: Api<Deployment> = Api::namespaced(stack.kube.clone(), &first.name);
    api.delete(&name, &DeleteParams::default())
        .await
        .expect("delete owner");
    stack
        .wait_http(d1, port, "v2", CONVERGE)
        .await
        .expect("the next claimant took over");
    wait_ready(stack, &claimant, 1)
        .await
        .expect("new owner converged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_missed_while_offline_converge_when_the_device_returns() {
    let stack = stack().await;
    let _exclusive = stack.exclusive_access().await;
    let ns = stack.namespace().await.expect("namespace");
    let name = format!("missed-{}", ns.id);
    let port = port_of(&ns);
    let d2 = &stack.device(2).id;
    let first = apply_demo(stack, &ns.name, &name, &[d2], "v1", port).await;
    wait_ready(stack, &first, 1).await.expect("converged");
    stack
        .wait_http(d2, port, "v1", CONVERGE)
        .await
        .expect("serving v1");

    // Three changes while the device is disconnected: it missed every notice, and its
    // index listing on reconnect brings it to the last one.
    let restart = stack.restore_agent(d2);
    stack.stop_agent(d2).await.expect("stop agent");
    let mut last = first;
    for tag in ["v2", "v1", "v2"] {
        last = apply_demo(stack, &ns.name, &name, &[d2], tag, port).await;
    }
    restart.now().await.expect("start agent");
    stack
        .wait_http(d2, port, "v2", CONVERGE)
        .await
        .expect("the last of three missed changes is served");
    wait_ready(stack, &last, 1)
        .await
        .expect("converged on the last change");

    // Offline across a NATS restart, with a change made after it: the device gets it.
    let restart = stack.restore_agent(d2);
    let healthy_nats = stack.restore_nats();
    stack.stop_agent(d2).await.expect("stop agent");
    stack.restart_nats(1).await.expect("restart NATS");
    let after_restart = apply_demo(stack, &ns.name, &name, &[d2], "v1", port).await;
    restart.now().await.expect("start agent");
    stack
        .wait_http(d2, port, "v1", CONVERGE)
        .await
        .expect("the change made while it was away across a NATS restart is served");
    wait_ready(stack, &after_restart, 1)
        .await
        .expect("converged after the NATS restart");
    healthy_nats.now().await.expect("NATS healthy");
}

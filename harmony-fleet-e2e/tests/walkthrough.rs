//! The README's walk-through, as a new user runs it: `kubectl apply -f examples/hello.yaml`
//! from the repository root, on a device labelled exactly as `local up` labels it, then the
//! tag edited to `v2` and applied again, then `kubectl delete -f`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harmony::local::bins::KUBECTL;
use harmony_fleet_deploy::nats::NatsReplicas;
use harmony_fleet_e2e::fleetdep;
use harmony_fleet_e2e::stack::{self, Stack, StackOptions};
use harmony_fleet_e2e::wait::eventually;
use harmony_fleet_operator::crd::Deployment;
use kube::Api;

const OPTIONS: StackOptions = StackOptions {
    name: "walkthrough",
    devices: 1,
    nats_replicas: NatsReplicas::One,
    walkthrough_labels: true,
    credential_lifetime_secs: None,
    dashboard: false,
};
const CONVERGE: Duration = Duration::from_secs(120);
/// The port `examples/hello.yaml` publishes.
const PORT: u16 = 8080;

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `kubectl <args>` from the repository root with the stack's kubeconfig: its stdout.
async fn kubectl(stack: &Stack, args: &[&str]) -> anyhow::Result<String> {
    let bin = stack.topology().bins().locate(KUBECTL)?;
    let kubeconfig = stack.topology().kubeconfig_path();
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        Command::new(&bin)
            .args(&args)
            .env("KUBECONFIG", &kubeconfig)
            .current_dir(repo_root())
            .output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    anyhow::ensure!(
        output.status.success(),
        "kubectl failed ({}): {stdout}{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(stdout)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_example_as_the_readme_applies_it() {
    let stack = stack::shared(OPTIONS).await;
    let _exclusive = stack.exclusive_access().await;
    let device = stack.fleet.devices[0].id.clone();
    assert_eq!(
        stack.fleet.devices[0]
            .labels
            .get("site")
            .map(String::as_str),
        Some("local"),
        "the walk-through's device carries site=local"
    );
    // A run cut short may have left it; the README's output is that of a first apply.
    kubectl(
        stack,
        &[
            "delete",
            "--ignore-not-found",
            "--wait",
            "-f",
            "examples/hello.yaml",
        ],
    )
    .await
    .expect("clean start");

    let out = kubectl(stack, &["apply", "-f", "examples/hello.yaml"])
        .await
        .expect("apply");
    assert_eq!(out.trim(), "deployment.fleet.nationtech.io/hello created");
    stack
        .wait_http(&device, PORT, "v1", CONVERGE)
        .await
        .expect("served");

    // "Edit the tag in examples/hello.yaml to v2 and apply again."
    let example = std::fs::read_to_string(repo_root().join("examples/hello.yaml")).expect("read");
    assert!(
        example.contains("localhost/fleet-demo:v1"),
        "the example runs v1"
    );
    let dir = tempfile::tempdir().expect("temp dir");
    let edited = dir.path().join("hello.yaml");
    std::fs::write(&edited, example.replace("fleet-demo:v1", "fleet-demo:v2")).expect("write");
    let edited = edited.to_string_lossy().into_owned();
    let out = kubectl(stack, &["apply", "-f", &edited])
        .await
        .expect("apply v2");
    assert_eq!(
        out.trim(),
        "deployment.fleet.nationtech.io/hello configured"
    );
    stack
        .wait_http(&device, PORT, "v2", CONVERGE)
        .await
        .expect("served");

    kubectl(stack, &["delete", "--wait", "-f", "examples/hello.yaml"])
        .await
        .expect("delete");
    eventually("the container to stop answering", CONVERGE, || async {
        match stack.http(&device, PORT).await {
            Err(_) => Ok(()),
            Ok(body) => Err(format!("still answers {body}")),
        }
    })
    .await
    .expect("removed");
}

/// Removes the label a test put on a `Device` with kubectl, however the test ends (the other
/// walk-through test targets the device's reported `site=local`).
struct Unlabel {
    device: String,
    key: &'static str,
    kubectl: PathBuf,
    kubeconfig: PathBuf,
}

impl Drop for Unlabel {
    fn drop(&mut self) {
        let _ = Command::new(&self.kubectl)
            .args(["label", "fleetdev", &self.device, &format!("{}-", self.key)])
            .env("KUBECONFIG", &self.kubeconfig)
            .output();
    }
}

/// The README's "Labels a device cannot forge": a person's `kubectl label fleetdev` retargets
/// the device (and wins over what the device reports), and removing the label hands the key
/// back to the report. Prints how long each retargeting took (key written / removed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubectl_label_fleetdev_retargets_and_unlabel_hands_back() {
    let stack = stack::shared(OPTIONS).await;
    let _exclusive = stack.exclusive_access().await;
    let device = stack.fleet.devices[0].id.clone();
    let ns = stack.namespace().await.expect("namespace");
    let name = format!("plant-{}", ns.id);
    let port = 8081;
    let applied = fleetdep::apply_tracked(
        &stack.kube,
        &fleetdep::manifest(
            &name,
            &ns.name,
            serde_json::json!({"matchExpressions": [
                {"key": "site", "operator": "In", "values": ["plant-3", "plant-4"]}
            ]}),
            fleetdep::demo_score("v1", port, &[]),
            serde_json::json!({}),
        ),
    )
    .await
    .expect("apply");
    let key = format!("{device}.{name}");
    // The device reports site=local: nothing matches yet.
    let deployments: Api<Deployment> = Api::namespaced(stack.kube.clone(), &ns.name);
    eventually(
        "the operator to observe the Deployment",
        CONVERGE,
        || async {
            let found = deployments.get(&name).await.map_err(|e| e.to_string())?;
            let observed = found.status.as_ref().and_then(|s| s.observed_generation);
            if observed == Some(applied.generation) {
                Ok(())
            } else {
                Err(format!("observedGeneration {observed:?}"))
            }
        },
    )
    .await
    .expect("observed");
    assert!(stack.desired_keys(&name).await.expect("keys").is_empty());

    let _unlabel = Unlabel {
        device: device.to_string(),
        key: "site",
        kubectl: stack.topology().bins().locate(KUBECTL).expect("kubectl"),
        kubeconfig: stack.topology().kubeconfig_path(),
    };
    let labelled = std::time::Instant::now();
    let out = kubectl(
        stack,
        &[
            "label",
            "--overwrite",
            "fleetdev",
            device.as_str(),
            "site=plant-3",
        ],
    )
    .await
    .expect("kubectl label");
    assert!(out.contains("labeled"), "{out}");
    eventually("the device's key written", CONVERGE, || async {
        let keys = stack.desired_keys(&name).await.map_err(|e| e.to_string())?;
        if keys.contains(&key) {
            Ok(())
        } else {
            Err(format!("{keys:?}"))
        }
    })
    .await
    .expect("retargeted");
    let retargeted = labelled.elapsed();
    stack
        .wait_http(&device, port, "v1", CONVERGE)
        .await
        .expect("runs on the relabelled device");
    let serving = labelled.elapsed();
    fleetdep::wait_converged(&stack.kube, &applied, 1, CONVERGE)
        .await
        .expect("the status counts the relabelled device");

    let unlabelled = std::time::Instant::now();
    kubectl(stack, &["label", "fleetdev", device.as_str(), "site-"])
        .await
        .expect("kubectl unlabel");
    eventually("the device's key removed", CONVERGE, || async {
        let keys = stack.desired_keys(&name).await.map_err(|e| e.to_string())?;
        if keys.is_empty() {
            Ok(())
        } else {
            Err(format!("{keys:?}"))
        }
    })
    .await
    .expect("untargeted");
    let released = unlabelled.elapsed();
    eventually("the container to stop answering", CONVERGE, || async {
        match stack.http(&device, port).await {
            Err(_) => Ok(()),
            Ok(body) => Err(format!("still answers {body}")),
        }
    })
    .await
    .expect("removed from the device");
    eprintln!(
        "kubectl label → key written {retargeted:?} (serving {serving:?}); \
         label removed → key removed {released:?}"
    );
}

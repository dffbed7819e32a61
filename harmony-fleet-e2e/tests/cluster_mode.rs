//! Cluster mode. With `FLEET_E2E_KUBECONFIG` set: the fleet comes up on that cluster with
//! agents as Pods, and a Deployment must converge on every device. Without it, on the local
//! node (adr/0030) when its binaries and the fleet images (scripts/build-images.sh) are there:
//! NATS, the operator and two agents (podman inside) come up as Pods and pass their smoke
//! tests, a Deployment converges on both agents, and the operator's replacement Pod converges
//! the next change. Otherwise (a failure when
//! `CI=true`): the same bring-up against the local control plane — every object is accepted by
//! the real API server, and each Score fails its smoke test naming the workload that is not
//! ready.

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
        None => match local_node::missing().await {
            None => local_node::server_on_the_local_node().await,
            Some(missing) => {
                assert!(
                    std::env::var("CI").as_deref() != Ok("true"),
                    "CI=true and the local node cannot run the fleet: {missing}"
                );
                eprintln!("cluster mode: no local node ({missing}); checking objects only");
                on_the_local_control_plane().await
            }
        },
    }
}

/// The generated Helm chart through a real helm on a local node of its own (the chart's objects
/// have the operator Score's fixed names, so not beside the bring-up above).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn generated_chart_through_real_helm() {
    if std::env::var(KUBECONFIG_ENV).is_ok_and(|v| !v.is_empty()) {
        eprintln!("helm on the local node: skipped, {KUBECONFIG_ENV} is set");
        return;
    }
    match local_node::missing().await {
        None => local_node::helm_on_the_local_node().await,
        Some(missing) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and the local node cannot run the chart: {missing}"
            );
            eprintln!("helm on the local node: skipped ({missing})");
        }
    }
}

mod local_node {
    //! The bring-up on the local node: real Pods of the locally built images.
    use std::time::{Duration, Instant};

    use harmony::inventory::Inventory;
    use harmony::local::bins::{self, BinLocator};
    use harmony::local::{Podman, SupervisionMode};
    use harmony::topologies::{K8sAnywhereTopology, LocalTopology};
    use harmony::topology::Topology;
    use harmony_fleet_e2e::cluster::{self, ClusterOptions};
    use harmony_fleet_e2e::fleetdep::{self, demo_score, manifest};

    /// Removes what the agent Pods keep on this host (their hostPath key and state under
    /// `HOST_DATA_ROOT`): an earlier run's state under the same device ids left both devices
    /// `pending` without an error on the next run's fresh cluster.
    fn forget_devices() {
        for device in super::devices() {
            let dir = std::path::Path::new(harmony_fleet_deploy::agent::pod::HOST_DATA_ROOT)
                .join(device.as_str());
            if let Err(e) = std::fs::remove_dir_all(&dir)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                panic!("removing {}: {e}", dir.display());
            }
        }
    }

    /// The versioned tags (`:latest` would mean `imagePullPolicy: Always`, and no registry).
    fn images() -> [String; 3] {
        let version = env!("CARGO_PKG_VERSION");
        [
            format!("localhost/harmony-fleet-operator:{version}"),
            "localhost/harmony-fleet-nats:2.12.15".to_owned(),
            format!("localhost/harmony-fleet-agent:{version}"),
        ]
    }

    /// What the local node bring-up lacks, if anything.
    pub async fn missing() -> Option<String> {
        let locator = BinLocator::from_env();
        for name in [
            bins::KUBELET,
            bins::CONTAINERD,
            bins::COREDNS,
            bins::KUBE_PROXY,
        ] {
            if let Err(e) = locator.locate(name) {
                return Some(e.to_string());
            }
        }
        let podman = match Podman::new() {
            Ok(podman) => podman,
            Err(e) => return Some(e.to_string()),
        };
        for image in images() {
            if !podman.image_exists(&image).await.unwrap_or(false) {
                return Some(format!(
                    "{image} is not in podman; run scripts/build-images.sh"
                ));
            }
        }
        None
    }

    /// NATS (one replica) and the operator as Pods on the local node: both Scores pass their
    /// smoke tests (the operator reaches NATS by its Service name and the API through the
    /// `kubernetes` Service).
    pub async fn server_on_the_local_node() {
        forget_devices();
        let dir = tempfile::tempdir().expect("tempdir");
        let started = Instant::now();
        let local = LocalTopology::new(dir.path().join("state"), SupervisionMode::Owned)
            .expect("local topology")
            .with_node();
        let outcome = local.ensure_ready().await.expect("control plane and node");
        eprintln!("cluster mode on the local node: {}", outcome.message);
        let node = local.owned_node().expect("owned node");
        let podman = Podman::new().expect("podman");
        let [operator_image, nats_image, agent_image] = images();
        for image in [&operator_image, &nats_image, &agent_image] {
            node.import_image(&podman, image)
                .await
                .expect("import image");
        }
        eprintln!(
            "node up and images imported in {:.1}s",
            started.elapsed().as_secs_f64()
        );
        let topology = K8sAnywhereTopology::from_kubeconfig(local.kubeconfig_path());
        topology.ensure_ready().await.expect("topology");
        let options = ClusterOptions {
            devices: super::devices(),
            operator_image,
            agent_image,
            nats_image,
            smoke_timeout: Duration::from_secs(180),
        };
        for score in cluster::scores(&options) {
            let t = Instant::now();
            score
                .create_interpret()
                .execute(&Inventory::new("e2e"), &topology)
                .await
                .unwrap_or_else(|e| {
                    panic!("{} failed on the local node: {}", score.name(), e.chain())
                });
            eprintln!(
                "{} passed its smoke test in {:.1}s",
                score.name(),
                t.elapsed().as_secs_f64()
            );
        }
        converges_and_survives_an_operator_restart(&local, &podman).await;
        nats_refuses_to_grow_in_place(&local, &topology, &options.nats_image).await;
        forget_devices();
    }

    /// One server to three in place is refused before anything changes: a standalone server's
    /// JetStream streams do not join a cluster (seen here: after a 1 → 3 change the next
    /// Deployment change never converged).
    async fn nats_refuses_to_grow_in_place(
        local: &LocalTopology,
        topology: &K8sAnywhereTopology,
        nats_image: &str,
    ) {
        let mut nats = harmony_fleet_deploy::FleetNatsScore::new()
            .with_replicas(harmony_fleet_deploy::nats::NatsReplicas::Three);
        nats.namespace = cluster::NAMESPACE.to_owned();
        nats.image = nats_image.to_owned();
        let err = harmony::score::Score::<K8sAnywhereTopology>::create_interpret(&nats)
            .execute(&Inventory::new("e2e"), topology)
            .await
            .expect_err("1 -> 3 servers in place")
            .chain();
        assert!(
            err.contains("replicas")
                && err.contains("another namespace")
                && err.contains("1 server(s)"),
            "{err}"
        );
        let replicas = Kubectl::new(&local.kubeconfig_path())
            .run(&[
                "get",
                "statefulset/fleet-nats",
                "-o",
                "jsonpath={.spec.replicas}",
            ])
            .await
            .expect("kubectl get");
        assert_eq!(replicas.trim(), "1", "the StatefulSet was left as it was");
    }

    /// NATS on a fresh local node, then [`helm_round_trip`].
    pub async fn helm_on_the_local_node() {
        let dir = tempfile::tempdir().expect("tempdir");
        let local = LocalTopology::new(dir.path().join("state"), SupervisionMode::Owned)
            .expect("local topology")
            .with_node();
        local.ensure_ready().await.expect("control plane and node");
        let node = local.owned_node().expect("owned node");
        let podman = Podman::new().expect("podman");
        let [operator_image, nats_image, _] = images();
        for image in [&operator_image, &nats_image] {
            node.import_image(&podman, image)
                .await
                .expect("import image");
        }
        let topology = K8sAnywhereTopology::from_kubeconfig(local.kubeconfig_path());
        topology.ensure_ready().await.expect("topology");
        let options = ClusterOptions {
            devices: Vec::new(),
            operator_image: operator_image.clone(),
            agent_image: String::new(),
            nats_image,
            smoke_timeout: Duration::from_secs(180),
        };
        // Three servers here (the bring-up above runs one): routes between the Pods, JetStream
        // clustered, the operator's buckets created with three replicas.
        let mut nats = harmony_fleet_deploy::FleetNatsScore::new()
            .with_replicas(harmony_fleet_deploy::nats::NatsReplicas::Three);
        nats.namespace = cluster::NAMESPACE.to_owned();
        nats.image = options.nats_image.clone();
        nats.smoke_timeout = options.smoke_timeout;
        let t = Instant::now();
        harmony::score::Score::<K8sAnywhereTopology>::create_interpret(&nats)
            .execute(&Inventory::new("e2e"), &topology)
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "NATS with three servers failed: {}\n{}",
                    e.chain(),
                    control_plane_log_about(&local, "fleet-nats")
                )
            });
        eprintln!(
            "NATS with 3 servers ready on the local node in {:.1}s",
            t.elapsed().as_secs_f64()
        );
        helm_round_trip(&local, &operator_image).await;
    }

    /// The last lines of the scheduler's and the controller-manager's logs that mention
    /// `needle` (claims, volumes and scheduling of the pods named after it): what a failed wait
    /// needs to say which of them stalled, printed before the test's directory is removed.
    fn control_plane_log_about(local: &LocalTopology, needle: &str) -> String {
        let Some(logs) = local.kubeconfig_path().parent().map(|d| d.join("logs")) else {
            return String::new();
        };
        let mut out = String::new();
        for process in ["kube-scheduler", "kube-controller-manager"] {
            let path = logs.join(format!("{process}.log"));
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            let lines: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
            out.push_str(&format!(
                "--- {} ({} line(s) about {needle}, last 40)\n",
                path.display(),
                lines.len()
            ));
            for line in &lines[lines.len().saturating_sub(40)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// `helm lint`, `helm install --wait` (the operator becomes ready against the fleet's NATS),
    /// an idempotent `helm upgrade` (the Deployment's generation does not move) and `helm
    /// uninstall`, which keeps the CRDs (they live in the chart's `crds/`).
    async fn helm_round_trip(local: &LocalTopology, image: &str) {
        let t = Instant::now();
        let helm = BinLocator::from_env().locate(bins::HELM).expect("helm");
        let dir = tempfile::tempdir().expect("tempdir");
        let score = harmony_fleet_deploy::FleetOperatorScore {
            image: image.to_owned(),
            ..harmony_fleet_deploy::FleetOperatorScore::default()
        };
        harmony_fleet_deploy::operator::helm::chart(&score)
            .and_then(|chart| chart.write(dir.path()))
            .expect("chart");
        let chart = dir.path().to_str().expect("utf-8").to_owned();
        let kubeconfig = local.kubeconfig_path();
        let run = |args: Vec<&str>| {
            let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
            let mut command = tokio::process::Command::new(&helm);
            command
                .args(&args)
                .arg("--kubeconfig")
                .arg(&kubeconfig)
                .args(["--namespace", cluster::NAMESPACE]);
            async move {
                let out = command.output().await.expect("helm runs");
                assert!(
                    out.status.success(),
                    "helm {}: {}{}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
                String::from_utf8_lossy(&out.stdout).into_owned()
            }
        };
        run(vec!["lint", &chart]).await;
        run(vec![
            "install",
            "fleet",
            &chart,
            "--wait",
            "--timeout",
            "180s",
        ])
        .await;
        let kubectl = Kubectl::new(&kubeconfig);
        let generation = || async {
            kubectl
                .run(&[
                    "get",
                    "deployment",
                    "harmony-fleet-operator",
                    "-o",
                    "jsonpath={.metadata.generation}",
                ])
                .await
                .expect("operator Deployment")
        };
        let before = generation().await;
        run(vec![
            "upgrade",
            "fleet",
            &chart,
            "--wait",
            "--timeout",
            "180s",
        ])
        .await;
        assert_eq!(
            generation().await,
            before,
            "helm upgrade of the same chart changes nothing"
        );
        run(vec!["uninstall", "fleet", "--wait"]).await;
        kubectl
            .run(&["get", "crd", "deployments.fleet.nationtech.io"])
            .await
            .expect("helm uninstall keeps the CRDs");
        eprintln!(
            "helm lint, install (operator ready), upgrade (no change), uninstall (CRDs kept) in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }

    /// The demo image has no registry to come from: each agent Pod's podman loads it
    /// (`kubectl cp` + `podman load`), as a device would have it preloaded.
    async fn preload(kubectl: &Kubectl, podman: &Podman, tags: &[&str]) {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut archives = Vec::new();
        for tag in tags {
            let image = podman.build_demo_image(tag).await.expect("demo image");
            let archive = dir.path().join(format!("{tag}.tar"));
            let path = archive.to_str().expect("utf-8").to_owned();
            podman
                .exec(["save", "-q", "-o", path.as_str(), image.as_str()])
                .await
                .expect("podman save");
            archives.push((path, format!("/tmp/{tag}.tar")));
        }
        for device in super::devices() {
            let selector = format!("fleet.nationtech.io/device={device}");
            let pod = kubectl
                .run(&[
                    "get",
                    "pod",
                    "-l",
                    &selector,
                    "--field-selector",
                    "status.phase=Running",
                    "-o",
                    "jsonpath={.items[0].metadata.name}",
                ])
                .await
                .expect("agent pod");
            for (local_path, pod_path) in &archives {
                kubectl
                    .run(&["cp", local_path, &format!("{pod}:{pod_path}")])
                    .await
                    .expect("kubectl cp");
                kubectl
                    .run(&["exec", &pod, "--", "podman", "load", "-q", "-i", pod_path])
                    .await
                    .expect("podman load in the agent Pod");
            }
        }
    }

    /// A fleet Deployment converges on both agent Pods; the operator's Pod is deleted; its
    /// replacement converges the next change.
    async fn converges_and_survives_an_operator_restart(local: &LocalTopology, podman: &Podman) {
        let kubectl = Kubectl::new(&local.kubeconfig_path());
        preload(&kubectl, podman, &["v-e2e1", "v-e2e2"]).await;
        let client = harmony::capability::K8sClient::k8s_client(local)
            .await
            .expect("client");
        let selector = serde_json::json!({"matchLabels": {"site": "e2e"}});
        let rollout = serde_json::json!({});
        let t = Instant::now();
        let first = manifest(
            "e2e-node-hello",
            "default",
            selector.clone(),
            demo_score("v-e2e1", 8080, &[]),
            rollout.clone(),
        );
        let applied = fleetdep::apply_tracked(&client, &first)
            .await
            .expect("apply");
        if let Err(e) =
            fleetdep::wait_converged(&client, &applied, 2, Duration::from_secs(180)).await
        {
            let status = fleetdep::status(&client, "default", "e2e-node-hello").await;
            let pods = kubectl.run(&["get", "pods", "-o", "wide"]).await;
            let agent = kubectl
                .run(&["logs", "deploy/fleet-agent-e2e-dev-1", "--tail", "25"])
                .await;
            let operator = kubectl
                .run(&["logs", "deploy/harmony-fleet-operator", "--tail", "25"])
                .await;
            panic!(
                "not converged on the agent Pods: {e}\nstatus: {status:?}\npods: {pods:?}\nagent: {}\noperator: {}",
                agent.unwrap_or_else(|e| e),
                operator.unwrap_or_else(|e| e)
            );
        }
        eprintln!(
            "Deployment converged on 2 agent Pods in {:.1}s",
            t.elapsed().as_secs_f64()
        );

        let t = Instant::now();
        kubectl
            .run(&[
                "delete",
                "pod",
                "-l",
                "app.kubernetes.io/name=harmony-fleet-operator",
                "--wait=true",
            ])
            .await
            .expect("delete the operator Pod");
        let second = manifest(
            "e2e-node-hello",
            "default",
            selector,
            demo_score("v-e2e2", 8080, &[]),
            rollout,
        );
        let applied = fleetdep::apply_tracked(&client, &second)
            .await
            .expect("apply");
        fleetdep::wait_converged(&client, &applied, 2, Duration::from_secs(240))
            .await
            .expect("the new operator Pod converged the change");
        eprintln!(
            "operator Pod replaced and the change converged in {:.1}s",
            t.elapsed().as_secs_f64()
        );

        let t = Instant::now();
        kubectl
            .run(&["delete", "pod", "fleet-nats-0", "--wait=true"])
            .await
            .expect("delete the NATS Pod");
        let applied = fleetdep::apply_tracked(&client, &first)
            .await
            .expect("apply");
        fleetdep::wait_converged(&client, &applied, 2, Duration::from_secs(240))
            .await
            .expect("agents and operator reconnected to the new NATS Pod and converged");
        eprintln!(
            "NATS Pod replaced and the next change converged in {:.1}s",
            t.elapsed().as_secs_f64()
        );
    }

    /// The cached kubectl on a kubeconfig, in the fleet's namespace.
    struct Kubectl {
        program: std::path::PathBuf,
        kubeconfig: std::path::PathBuf,
    }

    impl Kubectl {
        fn new(kubeconfig: &std::path::Path) -> Self {
            let program = BinLocator::from_env()
                .locate(bins::KUBECTL)
                .expect("kubectl");
            Kubectl {
                program,
                kubeconfig: kubeconfig.to_owned(),
            }
        }

        async fn run(&self, args: &[&str]) -> Result<String, String> {
            let out = tokio::process::Command::new(&self.program)
                .arg("--kubeconfig")
                .arg(&self.kubeconfig)
                .args(["-n", cluster::NAMESPACE])
                .args(args)
                .output()
                .await
                .map_err(|e| e.to_string())?;
            if out.status.success() {
                Ok(String::from_utf8_lossy(&out.stdout).into_owned())
            } else {
                Err(format!(
                    "kubectl {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr)
                ))
            }
        }
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

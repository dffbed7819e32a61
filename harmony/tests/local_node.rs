//! A real node on this host (adr/0030): the local control plane with kube-scheduler and the
//! workload controllers, and a kubelet + containerd node in its own network namespace with the
//! CNI bridge, kube-proxy and CoreDNS. A Deployment of the locally built demo image (imported
//! into the node's containerd, no registry) becomes available; from inside one of its Pods the
//! Service answers by its cluster DNS name through its ClusterIP.
//!
//! Needs root and what `scripts/install-deps.sh` installs; fails when `CI=true` and something is
//! missing, skips with a message otherwise.

use std::time::{Duration, Instant};

use harmony::local::bins::{self, BinLocator};
use harmony::local::node::{LocalNode, NodeOptions};
use harmony::local::{ControlPlaneOptions, LocalControlPlane, Podman};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::Api;

const DEADLINE: Duration = Duration::from_secs(180);
const TAG: &str = "v-node";

fn prerequisites() -> Result<(), String> {
    let locator = BinLocator::from_env();
    for name in [
        bins::KUBELET,
        bins::KUBE_SCHEDULER,
        bins::KUBE_PROXY,
        bins::CONTAINERD,
        bins::CTR,
        bins::COREDNS,
    ] {
        locator.locate(name).map_err(|e| e.to_string())?;
    }
    use std::os::unix::fs::MetadataExt;
    let uid = std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid());
    if uid != 0 {
        return Err("the local node needs root (network namespaces, containerd)".into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deployment_on_the_local_node_serves_through_its_service_name() {
    if let Err(missing) = prerequisites() {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true and the local node cannot run: {missing}; run scripts/install-deps.sh"
        );
        eprintln!("skipped: {missing}; run scripts/install-deps.sh");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let name = format!("hfnode-{}", std::process::id());
    let started = Instant::now();
    let layout = LocalNode::prepare_network(&name, &dir.path().join("node"))
        .await
        .expect("node network");
    let plane = LocalControlPlane::start(ControlPlaneOptions {
        data_dir: Some(dir.path().join("cp")),
        node_access: Some(layout.host_ip),
        ..ControlPlaneOptions::default()
    })
    .await
    .expect("control plane");
    let node = LocalNode::start(
        layout,
        NodeOptions {
            name: name.clone(),
            data_dir: dir.path().join("node"),
            keep_data_dir: false,
            bins: BinLocator::from_env(),
            admin_kubeconfig: plane.kubeconfig_path().to_owned(),
            ready_timeout: DEADLINE,
            detached: false,
        },
    )
    .await
    .expect("node");
    eprintln!(
        "control plane ready in {:.1}s, node Ready in {:.1}s (total {:.1}s)",
        plane.startup_time().as_secs_f64(),
        node.startup_time().as_secs_f64(),
        started.elapsed().as_secs_f64()
    );

    let podman = Podman::new().expect("containers.conf");
    let image = podman.build_demo_image(TAG).await.expect("demo image");
    node.import_image(&podman, &image).await.expect("import");

    let manifest = format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: hello, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: hello}}}}
  template:
    metadata: {{labels: {{app: hello}}}}
    spec:
      automountServiceAccountToken: false
      terminationGracePeriodSeconds: 1
      containers:
      - {{name: hello, image: "{image}", imagePullPolicy: Never, ports: [{{containerPort: 8080}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: hello, namespace: default}}
spec:
  selector: {{app: hello}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    );
    let manifest_path = dir.path().join("hello.yaml");
    std::fs::write(&manifest_path, manifest).expect("write manifest");
    let applied = plane
        .kubectl()
        .expect("kubectl")
        .args(["apply", "-f"])
        .arg(&manifest_path)
        .output()
        .await
        .expect("kubectl apply");
    assert!(
        applied.status.success(),
        "{}",
        String::from_utf8_lossy(&applied.stderr)
    );

    let applied_at = Instant::now();
    let deployments: Api<Deployment> =
        Api::namespaced(plane.client().await.expect("client"), "default");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let available = deployments
            .get("hello")
            .await
            .ok()
            .and_then(|d| d.status)
            .and_then(|s| s.available_replicas)
            .unwrap_or(0);
        if available == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Deployment hello has {available}/2 available replicas after {}s:\n{}",
            DEADLINE.as_secs(),
            diagnose(&plane, &node).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!(
        "Deployment available in {:.1}s",
        applied_at.elapsed().as_secs_f64()
    );

    // From inside a Pod: the cluster DNS name resolves to the ClusterIP (busybox's own resolver:
    // its static wget cannot resolve names), and the ClusterIP answers through kube-proxy.
    let services: Api<Service> = Api::namespaced(plane.client().await.expect("client"), "default");
    let cluster_ip = services
        .get("hello")
        .await
        .expect("service")
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("ClusterIP");
    let deadline = Instant::now() + DEADLINE;
    loop {
        let resolved = exec(
            &plane,
            &["busybox", "nslookup", "hello.default.svc.cluster.local"],
        )
        .await;
        // busybox-static's wget segfaults here (exit 139, also under podman): nc speaks HTTP.
        let request =
            format!("printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 3 {cluster_ip} 80");
        let answered = exec(&plane, &["sh", "-c", &request]).await;
        if resolved.as_ref().is_ok_and(|out| out.contains(&cluster_ip))
            && answered.as_ref().is_ok_and(|out| {
                out.starts_with("HTTP/1.") && out.contains(" 200 ") && out.trim_end().ends_with(TAG)
            })
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "name → {cluster_ip} → {TAG} not seen: nslookup {resolved:?}, nc {answered:?}\n{}",
            diagnose(&plane, &node).await
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    eprintln!(
        "Service answered by name after {:.1}s",
        applied_at.elapsed().as_secs_f64()
    );

    node.stop().await;
    plane.stop().await;
    assert!(
        !std::path::Path::new(&format!("/run/netns/{name}")).exists(),
        "the node's network namespace is gone after stop"
    );
}

/// What the cluster and the node say, for a failure message.
async fn diagnose(plane: &LocalControlPlane, node: &LocalNode) -> String {
    let mut text = String::new();
    for args in [
        &[
            "get",
            "nodes,pods,rs,deploy,svc,endpointslices",
            "-A",
            "-o",
            "wide",
        ][..],
        &["get", "events", "-A"][..],
    ] {
        if let Ok(out) = plane.kubectl().expect("kubectl").args(args).output().await {
            text.push_str(&String::from_utf8_lossy(&out.stdout));
            text.push_str(&String::from_utf8_lossy(&out.stderr));
        }
    }
    for name in [
        "node-kubelet",
        "node-containerd",
        "node-kube-proxy",
        "node-coredns",
    ] {
        let log = node.layout().logs_dir().join(format!("{name}.log"));
        text.push_str(&format!("--- {name} ---\n"));
        text.push_str(&harmony::local::process::log_tail(&log, 15));
    }
    let scheduler = plane.logs_dir().join("kube-scheduler.log");
    text.push_str("--- kube-scheduler ---\n");
    text.push_str(&harmony::local::process::log_tail(&scheduler, 10));
    text
}

/// `kubectl exec deploy/hello -- ARGS`: stdout, or stdout and stderr as the error.
async fn exec(plane: &LocalControlPlane, args: &[&str]) -> Result<String, String> {
    let out = plane
        .kubectl()
        .expect("kubectl")
        .args(["exec", "deploy/hello", "--"])
        .args(args)
        .output()
        .await
        .map_err(|e| e.to_string())?;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        Err(format!("{stdout} {}", String::from_utf8_lossy(&out.stderr)))
    }
}

//! [`LocalNode`]: a real Kubernetes worker node on this host — containerd (own config, root,
//! state and socket), the CNI bridge, kubelet, kube-proxy and CoreDNS — in a network namespace
//! of its own (adr/0030), registered with a [`LocalControlPlane`](super::LocalControlPlane)
//! started with [`node_access`](super::ControlPlaneOptions::node_access).
//!
//! - [`config`] — the components' configuration files (pure).
//! - [`network`] — the node's namespace, routes and sysctls.
//! - [`images`] — the pause image, and images moved from podman into the node's containerd.
//!
//! Layout of the data directory: `containerd/`, `cni/`, `kubelet/`, `logs/<process>.log`, the
//! node's `kubeconfig` (the admin one, pointed at the host's address on the node's link).

pub mod config;
pub mod images;
pub mod network;

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Node;
use kube::Api;

use crate::local::bins::{self, BinLocator};
use crate::local::control_plane::{CONTEXT, client_from_kubeconfig};
use crate::local::data_dir::DataDir;
use crate::local::error::{LocalError, Result};
use crate::local::podman::Podman;
use crate::local::probe;
use crate::local::process::{ProcessSpec, SupervisedProcess};

pub use config::NodeLayout;

/// The node's processes, in start order (they stop in reverse).
pub const NODE_PROCESSES: [&str; 4] = [
    "node-containerd",
    "node-coredns",
    "node-kubelet",
    "node-kube-proxy",
];

/// The node's name (and its network namespace's) for a state directory: `hf<8 hex>-node`, the
/// hex a stable digest (FNV-1a) of the directory's path, so two state directories get two nodes.
pub fn node_name(state_dir: &Path) -> String {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in state_dir.as_os_str().as_encoded_bytes() {
        hash ^= u32::from(*byte);
        hash = hash.wrapping_mul(0x0100_0193);
    }
    format!("hf{hash:08x}-node")
}

/// Stops a node another run left detached under `dir` (processes recorded by `supervisor`):
/// kube-proxy, CoreDNS and the kubelet first, then the Pods' containers, then containerd, then
/// [`teardown`]. Returns the names of the processes that were running.
pub async fn stop_detached(
    supervisor: &crate::local::LocalSupervisor,
    bins: &BinLocator,
    name: &str,
    dir: &Path,
) -> Result<Vec<String>> {
    let kubectl = bins.locate(bins::KUBECTL).ok();
    let volumes = provisioned_volumes(kubectl.as_deref(), &dir.join("kubeconfig"));
    let mut stopped = Vec::new();
    for process in NODE_PROCESSES.iter().rev() {
        if *process == "node-containerd"
            && let Ok(ctr) = bins.locate(bins::CTR)
        {
            let socket = dir.join("containerd/containerd.sock");
            if let Err(e) = kill_containers(&ctr, &socket).await {
                tracing::warn!(error = %e, "killing the node's containers failed");
            }
        }
        if supervisor.stop(process).await? {
            stopped.push((*process).to_owned());
        }
    }
    teardown(name, dir).await?;
    remove_volumes(&volumes);
    Ok(stopped)
}

/// Copies `image` from `podman`'s storage into the containerd of the node whose data directory
/// is `dir` (a node started detached by an earlier run).
pub async fn import_image_into(
    bins: &BinLocator,
    dir: &Path,
    podman: &Podman,
    image: &str,
) -> Result<()> {
    let ctr = bins.locate(bins::CTR)?;
    images::import(podman, &ctr, &dir.join("containerd/containerd.sock"), image).await
}

const PROBE_INTERVAL: Duration = Duration::from_millis(250);
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// How to start a [`LocalNode`].
#[derive(Debug, Clone)]
pub struct NodeOptions {
    /// The Node's name, also its network namespace's (`[a-z0-9-]`, ≤ 63 characters).
    pub name: String,
    /// Data directory (configuration, containerd's root and state, kubelet root, logs).
    pub data_dir: PathBuf,
    /// Keep `data_dir` when the node stops.
    pub keep_data_dir: bool,
    /// Where the upstream binaries are looked up.
    pub bins: BinLocator,
    /// The control plane's admin kubeconfig (on `https://127.0.0.1:<port>`).
    pub admin_kubeconfig: PathBuf,
    /// Deadline for each component to become ready.
    pub ready_timeout: Duration,
    /// Start the processes so they outlive this process (see [`LocalNode::detach`]).
    pub detached: bool,
}

/// A running node; dropping it stops its processes, kills its containers and deletes its
/// network namespace.
#[derive(Debug)]
pub struct LocalNode {
    layout: NodeLayout,
    processes: Vec<SupervisedProcess>,
    ctr: PathBuf,
    kubectl: Option<PathBuf>,
    startup_time: Duration,
    dir: Option<DataDir>,
}

impl LocalNode {
    /// Creates the node's network (see [`network::ensure`]) and returns its layout: the host's
    /// address on it is what the control plane must advertise (start the control plane with it,
    /// then call [`LocalNode::start`]).
    pub async fn prepare_network(name: &str, dir: &Path) -> Result<NodeLayout> {
        let net = network::ensure(name, |node_ip| {
            format!("{}/24", Ipv4Addr::new(10, 214, node_ip.octets()[2], 0))
        })
        .await?;
        Ok(NodeLayout::new(
            name,
            dir,
            net.host_address,
            net.device_address,
        ))
    }

    /// Starts containerd, CoreDNS, the kubelet and kube-proxy in the node's namespace (made by
    /// [`LocalNode::prepare_network`]) and returns once the Node is `Ready` and kube-proxy
    /// answers its health check. Builds and imports the pause image on the way.
    pub async fn start(layout: NodeLayout, options: NodeOptions) -> Result<Self> {
        let started = Instant::now();
        let containerd = options.bins.locate(bins::CONTAINERD)?;
        let ctr = options.bins.locate(bins::CTR)?;
        let kubelet = options.bins.locate(bins::KUBELET)?;
        let kube_proxy = options.bins.locate(bins::KUBE_PROXY)?;
        let coredns = options.bins.locate(bins::COREDNS)?;
        let dir = DataDir::given(&options.data_dir, options.keep_data_dir)?;
        write_files(&layout, &options.admin_kubeconfig)?;
        let mut node = LocalNode {
            layout,
            processes: Vec::new(),
            ctr,
            kubectl: options.bins.locate(bins::KUBECTL).ok(),
            startup_time: Duration::ZERO,
            dir: Some(dir),
        };
        let timeout = options.ready_timeout;

        let l = node.layout.clone();
        let mut p = node.spawn(
            &options,
            "node-containerd",
            &containerd,
            vec![format!("--config={}", l.containerd_config().display())],
        )?;
        let (ctr, socket) = (node.ctr.clone(), l.containerd_socket());
        p.wait_ready(timeout, PROBE_INTERVAL, || {
            let (ctr, socket) = (ctr.clone(), socket.clone());
            async move {
                images::ctr_cmd(&ctr, &socket, ["version"])
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .await?;
        node.processes.push(p);
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "containerd ready"
        );

        let podman = Podman::new()?;
        images::build_pause_image(&podman).await?;
        node.import_image(&podman, config::PAUSE_IMAGE).await?;

        let mut p = node.spawn(
            &options,
            "node-coredns",
            &coredns,
            vec!["-conf".to_owned(), l.corefile().display().to_string()],
        )?;
        let dns = SocketAddr::from((l.node_ip, 53));
        p.wait_ready(timeout, PROBE_INTERVAL, || async move {
            tokio::time::timeout(PROBE_TIMEOUT, tokio::net::TcpStream::connect(dns))
                .await
                .map_err(|_| format!("{dns}: no answer"))?
                .map(|_| ())
                .map_err(|e| format!("{dns}: {e}"))
        })
        .await?;
        node.processes.push(p);

        let mut p = node.spawn(
            &options,
            "node-kubelet",
            &kubelet,
            vec![
                format!("--config={}", l.kubelet_config().display()),
                format!("--kubeconfig={}", l.kubeconfig.display()),
                format!("--hostname-override={}", l.name),
                format!("--node-ip={}", l.node_ip),
                format!("--root-dir={}", l.kubelet_root().display()),
                format!("--cert-dir={}", l.kubelet_root().join("pki").display()),
            ],
        )?;
        let (admin, name) = (options.admin_kubeconfig.clone(), l.name.clone());
        p.wait_ready(timeout, PROBE_INTERVAL, || {
            node_ready(admin.clone(), name.clone())
        })
        .await?;
        node.processes.push(p);
        tracing::debug!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "node Ready"
        );
        ensure_storage_class(&options.admin_kubeconfig).await?;

        let mut p = node.spawn(
            &options,
            "node-kube-proxy",
            &kube_proxy,
            vec![format!("--config={}", l.kube_proxy_config().display())],
        )?;
        let health = SocketAddr::from((l.node_ip, 10256));
        p.wait_ready(timeout, PROBE_INTERVAL, || async move {
            let response = probe::http_get(health, "/healthz", PROBE_TIMEOUT).await?;
            if response.status == 200 {
                Ok(())
            } else {
                Err(format!(
                    "/healthz answered {}: {}",
                    response.status, response.body
                ))
            }
        })
        .await?;
        node.processes.push(p);

        node.startup_time = started.elapsed();
        tracing::info!(
            node = %node.layout.name,
            node_ip = %node.layout.node_ip,
            pod_cidr = %node.layout.pod_cidr(),
            startup_ms = node.startup_time.as_millis() as u64,
            "local node ready"
        );
        Ok(node)
    }

    fn spawn(
        &self,
        options: &NodeOptions,
        name: &str,
        program: &Path,
        args: Vec<String>,
    ) -> Result<SupervisedProcess> {
        let spec = in_namespace(&self.layout, name, program, args)
            .stop_timeout(Duration::from_secs(10))
            .detached(options.detached);
        SupervisedProcess::spawn(spec)
    }

    /// The node's addresses and files.
    pub fn layout(&self) -> &NodeLayout {
        &self.layout
    }

    /// How long [`LocalNode::start`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// Copies `image` from `podman`'s storage into the node's containerd.
    pub async fn import_image(&self, podman: &Podman, image: &str) -> Result<()> {
        images::import(podman, &self.ctr, &self.layout.containerd_socket(), image).await
    }

    /// Stops supervising; returns `(name, pid)` of each process (start order) and keeps the
    /// data directory and network. Clean up later with [`teardown`].
    pub fn detach(mut self) -> Vec<(String, u32)> {
        let detached = self
            .processes
            .drain(..)
            .map(|p| (p.name().to_owned(), p.detach()))
            .collect();
        if let Some(dir) = self.dir.take() {
            dir.keep();
        }
        detached
    }

    /// Stops the kubelet (so nothing restarts the Pods), kills the Pods' containers, stops the
    /// other processes, unmounts what they mounted and deletes the network.
    pub async fn stop(mut self) {
        let volumes = provisioned_volumes(self.kubectl.as_deref(), &self.layout.kubeconfig);
        let (ctr, socket) = (self.ctr.clone(), self.layout.containerd_socket());
        // Start order is containerd first: everything after it stops before the containers go.
        while self.processes.len() > 1 {
            if let Some(mut p) = self.processes.pop() {
                p.stop().await;
            }
        }
        if let Err(e) = kill_containers(&ctr, &socket).await {
            tracing::warn!(error = %e, "killing the node's containers failed");
        }
        while let Some(mut p) = self.processes.pop() {
            p.stop().await;
        }
        if let Err(e) = teardown(&self.layout.name, &self.layout.dir).await {
            tracing::warn!(error = %e, "tearing the node down failed");
        }
        remove_volumes(&volumes);
        self.dir.take();
    }
}

impl Drop for LocalNode {
    fn drop(&mut self) {
        if self.processes.is_empty() && self.dir.is_none() {
            return;
        }
        let (ctr, socket) = (self.ctr.clone(), self.layout.containerd_socket());
        let (name, dir) = (self.layout.name.clone(), self.layout.dir.clone());
        let volumes = provisioned_volumes(self.kubectl.as_deref(), &self.layout.kubeconfig);
        let mut processes = std::mem::take(&mut self.processes);
        // Drop may run inside or outside a runtime: do the async clean-up on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            // The kubelet (and everything after containerd) first: it would restart the Pods.
            while processes.len() > 1 {
                if let Some(mut p) = processes.pop() {
                    p.stop_blocking();
                }
            }
            if let Err(e) = kill_containers_blocking(&ctr, &socket) {
                tracing::warn!(error = %e, "killing the node's containers failed");
            }
            while let Some(mut p) = processes.pop() {
                p.stop_blocking();
            }
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            if let Ok(runtime) = runtime {
                let _ = runtime.block_on(teardown(&name, &dir));
            }
            remove_volumes(&volumes);
        });
        let _ = cleanup.join();
        self.dir.take();
    }
}

/// A process run in the node's network namespace through `nsenter --net=` (not `ip netns
/// exec`, which remounts `/sys`).
fn in_namespace(layout: &NodeLayout, name: &str, program: &Path, args: Vec<String>) -> ProcessSpec {
    ProcessSpec::new(
        name,
        "nsenter",
        layout.logs_dir().join(format!("{name}.log")),
    )
    .arg(format!("--net=/run/netns/{}", layout.name))
    .arg("--")
    .arg(program)
    .args(args)
}

/// The node's configuration files, and its kubeconfig: the admin one with the server moved
/// from 127.0.0.1 (the node's own loopback, inside its namespace) to the host's address.
fn write_files(layout: &NodeLayout, admin_kubeconfig: &Path) -> Result<()> {
    let admin = std::fs::read_to_string(admin_kubeconfig).map_err(|e| {
        LocalError::io(
            format!(
                "reading the admin kubeconfig {}",
                admin_kubeconfig.display()
            ),
            e,
        )
    })?;
    let node_kubeconfig = admin.replace(
        "https://127.0.0.1:",
        &format!("https://{}:", layout.host_ip),
    );
    let files = [
        (layout.containerd_config(), config::containerd_toml(layout)),
        (
            layout.cni_conf_dir().join("10-harmony-fleet.conflist"),
            config::cni_conflist(layout),
        ),
        (layout.kubelet_config(), config::kubelet_yaml(layout)),
        (layout.kube_proxy_config(), config::kube_proxy_yaml(layout)),
        (layout.corefile(), config::corefile(layout, CONTEXT)),
        (layout.resolv_conf(), String::new()),
        (layout.kubeconfig.clone(), node_kubeconfig),
    ];
    for (path, text) in files {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent)
                .map_err(|e| LocalError::io(format!("creating {}", parent.display()), e))?;
        }
        std::fs::write(&path, text)
            .map_err(|e| LocalError::io(format!("writing {}", path.display()), e))?;
    }
    Ok(())
}

/// Where the controller-manager's hostPath provisioner puts volumes (fixed upstream).
const HOSTPATH_VOLUMES: &str = "/tmp/hostpath_pv/";

/// The directories of the hostPath volumes the cluster provisioned, asked while the API still
/// answers (empty when it does not): removed once the node is gone, as nothing else would.
fn provisioned_volumes(kubectl: Option<&Path>, kubeconfig: &Path) -> Vec<PathBuf> {
    let Some(kubectl) = kubectl else {
        return Vec::new();
    };
    let output = std::process::Command::new(kubectl)
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--request-timeout=5s",
            "get",
            "pv",
            "-o",
            "jsonpath={range .items[*]}{.spec.hostPath.path}{\"\\n\"}{end}",
        ])
        .output();
    match output {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|p| p.starts_with(HOSTPATH_VOLUMES) && !p.contains(".."))
            .map(PathBuf::from)
            .collect(),
        _ => Vec::new(),
    }
}

fn remove_volumes(volumes: &[PathBuf]) {
    for volume in volumes {
        if let Err(e) = std::fs::remove_dir_all(volume)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!(volume = %volume.display(), error = %e, "volume not removed");
        }
    }
}

/// The default StorageClass of a local node: hostPath volumes provisioned by the
/// controller-manager (under `/tmp/hostpath_pv/`, deleted with their claims).
pub const STORAGE_CLASS: &str = "local-hostpath";

async fn ensure_storage_class(kubeconfig: &Path) -> Result<()> {
    use k8s_openapi::api::storage::v1::StorageClass;
    let client = client_from_kubeconfig(kubeconfig).await?;
    let classes: Api<StorageClass> = Api::all(client);
    let class = StorageClass {
        metadata: kube::api::ObjectMeta {
            name: Some(STORAGE_CLASS.to_owned()),
            annotations: Some(
                [(
                    "storageclass.kubernetes.io/is-default-class".to_owned(),
                    "true".to_owned(),
                )]
                .into(),
            ),
            ..Default::default()
        },
        provisioner: "kubernetes.io/host-path".to_owned(),
        reclaim_policy: Some("Delete".to_owned()),
        volume_binding_mode: Some("Immediate".to_owned()),
        ..Default::default()
    };
    classes
        .patch(
            STORAGE_CLASS,
            &kube::api::PatchParams::apply("harmony-local-node").force(),
            &kube::api::Patch::Apply(&class),
        )
        .await?;
    Ok(())
}

/// The Node `name` exists and its `Ready` condition is `True`.
async fn node_ready(kubeconfig: PathBuf, name: String) -> std::result::Result<(), String> {
    let client = client_from_kubeconfig(&kubeconfig)
        .await
        .map_err(|e| e.to_string())?;
    let nodes: Api<Node> = Api::all(client);
    let node = tokio::time::timeout(PROBE_TIMEOUT, nodes.get_opt(&name))
        .await
        .map_err(|_| format!("GET node {name}: no answer"))?
        .map_err(|e| format!("GET node {name}: {e}"))?
        .ok_or_else(|| format!("node {name} not registered yet"))?;
    let ready = node
        .status
        .and_then(|s| s.conditions)
        .unwrap_or_default()
        .into_iter()
        .find(|c| c.type_ == "Ready");
    match ready {
        Some(c) if c.status == "True" => Ok(()),
        Some(c) => Err(format!(
            "node {name} Ready={}: {}",
            c.status,
            c.message.unwrap_or_default()
        )),
        None => Err(format!("node {name} has no Ready condition yet")),
    }
}

/// Kills every task in the node's containerd (namespace `k8s.io`) and removes them and the Pods'
/// network namespaces (`/run/netns/cni-…`, bind mounts only containerd's sandbox removal would
/// undo), while containerd still runs: the containers' shims do not die with containerd. Stop
/// the kubelet first, or it starts them again.
pub async fn kill_containers(ctr: &Path, socket: &Path) -> Result<usize> {
    let (ctr, socket) = (ctr.to_owned(), socket.to_owned());
    tokio::task::spawn_blocking(move || kill_containers_blocking(&ctr, &socket))
        .await
        .map_err(|e| LocalError::Config(format!("killing the node's containers: {e}")))?
}

/// [`kill_containers`] on the calling thread (also what `Drop` uses: no runtime needed).
fn kill_containers_blocking(ctr: &Path, socket: &Path) -> Result<usize> {
    if !socket.exists() {
        return Ok(0);
    }
    let ctr_cmd = |args: &[&str]| -> Result<String> {
        let output = std::process::Command::new(ctr)
            .arg("--address")
            .arg(socket)
            .args(["-n", config::CONTAINERD_NAMESPACE])
            .args(args)
            .output()
            .map_err(|e| {
                LocalError::io(format!("running {} {}", ctr.display(), args.join(" ")), e)
            })?;
        if output.status.success() {
            Ok(String::from_utf8_lossy(&output.stdout).into_owned())
        } else {
            Err(LocalError::Config(format!(
                "`ctr {}` failed ({}): {}",
                args.join(" "),
                output.status,
                String::from_utf8_lossy(&output.stderr).trim()
            )))
        }
    };
    let mut namespaces = Vec::new();
    let containers = ctr_cmd(&["containers", "ls", "-q"])?;
    for id in containers.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if let Ok(info) = ctr_cmd(&["containers", "info", id]) {
            namespaces.extend(pod_network_namespace(&info));
        }
    }
    let listed = ctr_cmd(&["tasks", "ls", "-q"])?;
    let tasks: Vec<&str> = listed
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    for task in &tasks {
        if let Err(e) = ctr_cmd(&["tasks", "kill", "-a", "-s", "SIGKILL", task]) {
            tracing::debug!(task, error = %e, "kill failed");
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for task in &tasks {
        while let Err(e) = ctr_cmd(&["tasks", "delete", "-f", task]) {
            if Instant::now() >= deadline {
                tracing::warn!(task, error = %e, "task not deleted");
                break;
            }
            std::thread::sleep(PROBE_INTERVAL);
        }
    }
    namespaces.sort();
    namespaces.dedup();
    for path in namespaces {
        let _ = std::process::Command::new("umount").arg(&path).output();
        if let Err(e) = std::fs::remove_file(&path)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::debug!(path, error = %e, "pod network namespace not removed");
        }
    }
    tracing::debug!(tasks = tasks.len(), "node containers killed");
    Ok(tasks.len())
}

/// The network namespace path of a Pod sandbox from `ctr containers info` (its OCI spec),
/// when it is one containerd made (`/var/run/netns/cni-…` or `/run/netns/cni-…`).
fn pod_network_namespace(info: &str) -> Option<String> {
    let value: serde_json::Value = serde_json::from_str(info).ok()?;
    value["Spec"]["linux"]["namespaces"]
        .as_array()?
        .iter()
        .find(|ns| ns["type"] == "network")?["path"]
        .as_str()
        .filter(|p| p.contains("/netns/cni-"))
        .map(str::to_owned)
}

/// After the processes stopped: kills shims still serving this node's containerd socket, unmounts
/// everything below `dir` (kubelet volumes, overlay snapshots) and deletes the network
/// namespace. Idempotent.
pub async fn teardown(name: &str, dir: &Path) -> Result<()> {
    let socket = dir.join("containerd/containerd.sock");
    kill_shims(&socket);
    unmount_below(dir);
    network::delete(name).await
}

fn kill_shims(socket: &Path) {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    let needle = socket.display().to_string();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains("containerd-shim") && cmdline.contains(&needle) {
            tracing::debug!(pid, "killing a shim of the node's containerd");
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let prefix = dir.display().to_string();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .map(|p| p.replace("\\040", " "))
        .filter(|p| p.starts_with(&prefix))
        .collect();
    // Deepest first.
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        match std::process::Command::new("umount")
            .arg("-l")
            .arg(&point)
            .output()
        {
            Ok(out) if out.status.success() => {}
            Ok(out) => {
                tracing::debug!(%point, stderr = %String::from_utf8_lossy(&out.stderr), "unmount failed")
            }
            Err(e) => tracing::debug!(%point, error = %e, "umount did not run"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_name_is_stable_per_state_dir_and_a_valid_namespace_name() {
        let a = node_name(Path::new("/work/a/.fleet-local"));
        assert_eq!(a, node_name(Path::new("/work/a/.fleet-local")));
        assert_ne!(a, node_name(Path::new("/work/b/.fleet-local")));
        assert!(
            a.starts_with("hf") && a.ends_with("-node") && a.len() == 15,
            "{a}"
        );
    }

    #[test]
    fn finds_the_sandbox_network_namespace_in_a_container_spec() {
        let info = r#"{"ID":"x","Spec":{"linux":{"namespaces":[{"type":"pid"},
            {"type":"network","path":"/var/run/netns/cni-1234"}]}}}"#;
        assert_eq!(
            pod_network_namespace(info).as_deref(),
            Some("/var/run/netns/cni-1234")
        );
        let app =
            r#"{"Spec":{"linux":{"namespaces":[{"type":"network","path":"/proc/9/ns/net"}]}}}"#;
        assert_eq!(pod_network_namespace(app), None);
    }
}

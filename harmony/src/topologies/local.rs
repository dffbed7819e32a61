//! [`LocalTopology`]: this host — a local Kubernetes control plane started from the cached
//! upstream binaries, plus components run as supervised local processes, all under one state
//! directory (default `.fleet-local/`) with one log file per component.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::OnceCell;

use crate::capability::{K8sClient, ProcessSupervisor};
use crate::interpret::{InterpretError, Outcome};
use crate::local::bins::{self, BinLocator};
use crate::local::control_plane::client_from_kubeconfig;
use crate::local::node::{self, LocalNode, NodeOptions};
use crate::local::{
    ControlPlaneOptions, LocalControlPlane, LocalError, LocalSupervisor, ProcessChange,
    ProcessSpec, ProcessStatus, SupervisionMode,
};
use crate::topology::Topology;

const NAME: &str = "LocalTopology";
/// Names the control plane's processes are recorded under.
const CONTROL_PLANE_PROCESSES: [&str; 3] =
    ["kube-controller-manager", "kube-apiserver", bins::ETCD];
/// What runs besides with a node: the scheduler, then the node's processes.
const NODE_STACK_PROCESSES: [&str; 5] = [
    "kube-scheduler",
    node::NODE_PROCESSES[0],
    node::NODE_PROCESSES[1],
    node::NODE_PROCESSES[2],
    node::NODE_PROCESSES[3],
];

/// The local host as a topology.
///
/// Offers [`K8sClient`] (the local control plane) and [`ProcessSupervisor`] (components as
/// host processes). In [`SupervisionMode::Detached`] (a deploy tool's `up`) everything keeps
/// running after the command exits and the next run finds it again; in
/// [`SupervisionMode::Owned`] (tests) everything stops when the topology is dropped.
pub struct LocalTopology {
    state_dir: PathBuf,
    bins: BinLocator,
    supervisor: LocalSupervisor,
    /// Also run a real node (kubelet + containerd, adr/0030).
    with_node: bool,
    // Before the control plane: fields drop in order, and the node asks the API for its
    // volumes while it stops.
    node: OnceCell<Option<LocalNode>>,
    control_plane: OnceCell<ControlPlane>,
    client: OnceCell<kube::Client>,
}

enum ControlPlane {
    /// Started by and dying with this topology (tests).
    Owned(Box<LocalControlPlane>),
    /// Running detached, found through its kubeconfig.
    Detached { kubeconfig: PathBuf },
}

impl fmt::Debug for LocalTopology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct(NAME)
            .field("state_dir", &self.state_dir)
            .field("mode", &self.supervisor.mode())
            .field("control_plane_ready", &self.control_plane.initialized())
            .finish()
    }
}

impl LocalTopology {
    /// The default state directory, relative to the working directory.
    pub const DEFAULT_STATE_DIR: &'static str = ".fleet-local";

    /// A topology keeping its state in `state_dir` (created if missing). Does not start
    /// anything; [`Topology::ensure_ready`] does.
    pub fn new(state_dir: impl Into<PathBuf>, mode: SupervisionMode) -> Result<Self, LocalError> {
        let state_dir = state_dir.into();
        std::fs::create_dir_all(&state_dir).map_err(|e| LocalError::Io {
            context: format!("creating the state directory {}", state_dir.display()),
            source: e,
        })?;
        let state_dir = std::fs::canonicalize(&state_dir).map_err(|e| LocalError::Io {
            context: format!("resolving {}", state_dir.display()),
            source: e,
        })?;
        let supervisor = LocalSupervisor::new(&state_dir, mode)?;
        Ok(LocalTopology {
            state_dir,
            bins: BinLocator::from_env(),
            supervisor,
            control_plane: OnceCell::new(),
            client: OnceCell::new(),
            with_node: false,
            node: OnceCell::new(),
        })
    }

    /// Also start a real node (kubelet, containerd, CNI, kube-proxy, CoreDNS; adr/0030) and
    /// kube-scheduler with the workload controllers, so Pods run: the cluster Scores then work
    /// against [`LocalTopology::kubeconfig_path`] through `K8sAnywhereTopology`.
    pub fn with_node(mut self) -> Self {
        self.with_node = true;
        self
    }

    /// The node's name (also its network namespace's) for this state directory.
    pub fn node_name(&self) -> String {
        node::node_name(&self.state_dir)
    }

    /// Where the node keeps its configuration, containerd data and logs.
    pub fn node_dir(&self) -> PathBuf {
        self.state_dir.join("node")
    }

    /// The node, when this topology owns it (tests: to import images, read its startup time).
    pub fn owned_node(&self) -> Option<&LocalNode> {
        self.node.get().and_then(Option::as_ref)
    }

    /// Where the control plane keeps its certificates, data and kubeconfig.
    pub fn control_plane_dir(&self) -> PathBuf {
        self.state_dir.join("control-plane")
    }

    /// The admin kubeconfig of the local control plane (usable by `kubectl`).
    pub fn kubeconfig_path(&self) -> PathBuf {
        self.control_plane_dir().join("kubeconfig")
    }

    /// Where the upstream binaries are looked up.
    pub fn bins(&self) -> &BinLocator {
        &self.bins
    }

    /// The process supervisor (status of every component, stopping them).
    pub fn supervisor(&self) -> &LocalSupervisor {
        &self.supervisor
    }

    /// The control plane, when this topology owns it (tests: to read its startup time, etc.).
    pub fn owned_control_plane(&self) -> Option<&LocalControlPlane> {
        match self.control_plane.get() {
            Some(ControlPlane::Owned(plane)) => Some(plane),
            _ => None,
        }
    }

    /// Every process recorded under the state directory, with whether it runs.
    pub fn status(&self) -> Vec<ProcessStatus> {
        self.supervisor.list()
    }

    /// Stops every process this topology (or an earlier run on the same state directory)
    /// started, latest first. Returns the names of those that were running.
    pub async fn down(&self) -> Result<Vec<String>, LocalError> {
        let mut stopped = Vec::new();
        if self.node_dir().exists() {
            stopped = node::stop_detached(
                &self.supervisor,
                &self.bins,
                &self.node_name(),
                &self.node_dir(),
            )
            .await?;
        }
        stopped.extend(self.supervisor.stop_all().await?);
        Ok(stopped)
    }

    fn not_ready(&self, reason: String, source: LocalError) -> InterpretError {
        InterpretError::TopologyNotReady {
            topology: NAME.to_owned(),
            reason,
            source: Some(Box::new(source)),
        }
    }

    fn supervisor_error(&self, action: String, source: LocalError) -> InterpretError {
        InterpretError::CapabilityUnavailable {
            capability: "ProcessSupervisor",
            topology: NAME.to_owned(),
            reason: action,
            source: Some(Box::new(source)),
        }
    }

    /// A control plane started by an earlier run, if all of it still runs and answers.
    async fn running_control_plane(&self) -> Option<PathBuf> {
        let kubeconfig = self.kubeconfig_path();
        let node_processes: &[&str] = if self.with_node {
            &NODE_STACK_PROCESSES
        } else {
            &[]
        };
        let all_running = CONTROL_PLANE_PROCESSES
            .iter()
            .chain(node_processes)
            .all(|name| self.supervisor.status(name).is_some_and(|s| s.running));
        if !all_running || !kubeconfig.is_file() {
            return None;
        }
        let client = client_from_kubeconfig(&kubeconfig).await.ok()?;
        tokio::time::timeout(Duration::from_secs(5), client.apiserver_version())
            .await
            .ok()?
            .ok()?;
        Some(kubeconfig)
    }

    async fn start_control_plane(&self) -> Result<(ControlPlane, Outcome), InterpretError> {
        let detached = self.supervisor.mode() == SupervisionMode::Detached;
        if detached && let Some(kubeconfig) = self.running_control_plane().await {
            return Ok((
                ControlPlane::Detached { kubeconfig },
                Outcome::noop("local control plane already running"),
            ));
        }
        // Leftovers of a plane that no longer answers: stop them and start from scratch (new
        // certificates make old client credentials useless anyway).
        if self.node_dir().exists() {
            node::stop_detached(
                &self.supervisor,
                &self.bins,
                &self.node_name(),
                &self.node_dir(),
            )
            .await
            .map_err(|e| self.not_ready("stopping a stale node".to_owned(), e))?;
            std::fs::remove_dir_all(self.node_dir()).map_err(|e| {
                self.not_ready(
                    "removing the stale node".to_owned(),
                    LocalError::io(format!("removing {}", self.node_dir().display()), e),
                )
            })?;
        }
        for name in CONTROL_PLANE_PROCESSES
            .iter()
            .chain(["kube-scheduler"].iter())
        {
            self.supervisor
                .stop(name)
                .await
                .map_err(|e| self.not_ready(format!("stopping a stale {name}"), e))?;
        }
        let dir = self.control_plane_dir();
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| {
                self.not_ready(
                    format!("removing the stale control plane in {}", dir.display()),
                    LocalError::Io {
                        context: format!("removing {}", dir.display()),
                        source: e,
                    },
                )
            })?;
        }
        let layout = match self.with_node {
            true => Some(
                LocalNode::prepare_network(&self.node_name(), &self.node_dir())
                    .await
                    .map_err(|e| self.not_ready("the node's network was not made".to_owned(), e))?,
            ),
            false => None,
        };
        let plane = LocalControlPlane::start(ControlPlaneOptions {
            data_dir: Some(dir),
            keep_data_dir: detached,
            bins: self.bins.clone(),
            detached,
            node_access: layout.as_ref().map(|l| l.host_ip),
            ..ControlPlaneOptions::default()
        })
        .await
        .map_err(|e| self.not_ready("the local control plane did not start".to_owned(), e))?;
        let mut message = format!(
            "local control plane started in {:.1}s (kubeconfig {})",
            plane.startup_time().as_secs_f64(),
            plane.kubeconfig_path().display()
        );
        let node = match layout {
            Some(layout) => {
                let started = LocalNode::start(
                    layout,
                    NodeOptions {
                        name: self.node_name(),
                        data_dir: self.node_dir(),
                        keep_data_dir: detached,
                        bins: self.bins.clone(),
                        admin_kubeconfig: plane.kubeconfig_path().to_owned(),
                        ready_timeout: Duration::from_secs(120),
                        detached,
                    },
                )
                .await
                .map_err(|e| self.not_ready("the local node did not start".to_owned(), e))?;
                message.push_str(&format!(
                    "; node {} Ready in {:.1}s (node IP {}, pods {})",
                    started.layout().name,
                    started.startup_time().as_secs_f64(),
                    started.layout().node_ip,
                    started.layout().pod_cidr()
                ));
                Some(started)
            }
            None => None,
        };
        let outcome = Outcome::success(message);
        if !detached {
            let _ = self.node.set(node);
            return Ok((ControlPlane::Owned(Box::new(plane)), outcome));
        }
        let kubeconfig = plane.kubeconfig_path().to_owned();
        let logs = plane.logs_dir();
        for (name, pid) in plane.detach() {
            self.supervisor
                .adopt(&name, pid, &logs.join(format!("{name}.log")))
                .map_err(|e| self.not_ready(format!("recording {name}"), e))?;
        }
        if let Some(node) = node {
            let logs = node.layout().logs_dir();
            for (name, pid) in node.detach() {
                self.supervisor
                    .adopt(&name, pid, &logs.join(format!("{name}.log")))
                    .map_err(|e| self.not_ready(format!("recording {name}"), e))?;
            }
        }
        Ok((ControlPlane::Detached { kubeconfig }, outcome))
    }
}

#[async_trait]
impl Topology for LocalTopology {
    fn name(&self) -> &str {
        NAME
    }

    /// Starts the local control plane, or finds the one an earlier run left running.
    async fn ensure_ready(&self) -> Result<Outcome, InterpretError> {
        if self.control_plane.initialized() {
            return Ok(Outcome::noop("local control plane already running"));
        }
        let mut outcome = None;
        self.control_plane
            .get_or_try_init(|| async {
                let (plane, started) = self.start_control_plane().await?;
                outcome = Some(started);
                Ok::<_, InterpretError>(plane)
            })
            .await?;
        Ok(outcome.unwrap_or_else(|| Outcome::noop("local control plane already running")))
    }
}

#[async_trait]
impl K8sClient for LocalTopology {
    async fn k8s_client(&self) -> Result<kube::Client, InterpretError> {
        self.ensure_ready().await?;
        let client = self
            .client
            .get_or_try_init(|| async {
                let result = match self.control_plane.get() {
                    Some(ControlPlane::Owned(plane)) => plane.client().await,
                    Some(ControlPlane::Detached { kubeconfig }) => {
                        client_from_kubeconfig(kubeconfig).await
                    }
                    None => client_from_kubeconfig(&self.kubeconfig_path()).await,
                };
                result.map_err(|e| InterpretError::CapabilityUnavailable {
                    capability: "K8sClient",
                    topology: NAME.to_owned(),
                    reason: "no client for the local control plane".to_owned(),
                    source: Some(Box::new(e)),
                })
            })
            .await?;
        Ok(client.clone())
    }
}

#[async_trait]
impl ProcessSupervisor for LocalTopology {
    async fn ensure_process(&self, spec: ProcessSpec) -> Result<ProcessChange, InterpretError> {
        let name = spec.name.clone();
        self.supervisor
            .ensure(spec)
            .await
            .map_err(|e| self.supervisor_error(format!("could not start {name}"), e))
    }

    async fn stop_process(&self, name: &str) -> Result<bool, InterpretError> {
        self.supervisor
            .stop(name)
            .await
            .map_err(|e| self.supervisor_error(format!("could not stop {name}"), e))
    }

    async fn restart_process(&self, name: &str) -> Result<(), InterpretError> {
        self.supervisor
            .restart(name)
            .await
            .map_err(|e| self.supervisor_error(format!("could not restart {name}"), e))
    }

    fn process_status(&self, name: &str) -> Option<ProcessStatus> {
        self.supervisor.status(name)
    }

    fn state_dir(&self) -> &Path {
        &self.state_dir
    }

    fn reserve_port(&self, name: &str) -> Result<u16, InterpretError> {
        let port = self
            .supervisor
            .reserve_port(name)
            .map_err(|e| self.supervisor_error(format!("no port for {name}"), e))?;
        self.supervisor
            .check_port_free(name, port)
            .map_err(|e| self.supervisor_error(format!("port {port} for {name} is busy"), e))?;
        Ok(port)
    }
}

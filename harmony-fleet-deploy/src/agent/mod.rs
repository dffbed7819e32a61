//! [`FleetAgentScore`]: one device agent, either a local process on this host
//! ([`FleetAgentTarget::Local`], a simulated device with its own podman storage and, when it
//! publishes ports, its own network namespace), a Pod in a cluster
//! ([`FleetAgentTarget::Pod`]) or a systemd service on a real host reached over SSH
//! ([`FleetAgentTarget::Host`]). Ready when a heartbeat from that device id is seen.
//!
//! - [`config`]: the agent's TOML configuration, rendered from the Score.
//! - [`local`] / [`pod`] / [`host`]: the three targets; [`ssh`]: the SSH client `host` uses;
//!   [`elf`]: the check that a host gets a static agent for its architecture.

pub mod config;
pub mod elf;
pub mod host;
pub mod local;
pub mod pod;
pub mod publish;
pub mod ssh;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use harmony::interpret::{Interpret, InterpretError, InterpretStatus, Outcome, StatusCell};
use harmony::inventory::Inventory;
use harmony::score::Score;
use harmony::topologies::{K8sAnywhereTopology, LocalTopology};
use harmony_fleet_contracts::DeviceId;
use serde::Serialize;

/// Where the agent runs.
#[derive(Debug, Clone, Serialize)]
pub enum FleetAgentTarget {
    /// A process on this host (`LocalTopology`).
    Local(LocalAgent),
    /// A Pod in a cluster.
    Pod(PodAgent),
    /// A systemd service on a Linux host, installed over SSH (`LocalTopology`: the fleet's
    /// NATS runs on this machine).
    Host(HostAgent),
}

/// A Linux host (a Pi on a LAN, a gateway) that runs the agent under systemd, installed over
/// SSH with key authentication and the host's key pinned.
#[derive(Debug, Clone, Serialize)]
pub struct HostAgent {
    /// The host's name or address.
    pub address: String,
    /// Its SSH port.
    pub port: u16,
    /// The remote user: `root` (the agent's unit, binary and files are the system's).
    pub user: String,
    /// The private key to log in with (its public half in the host's `authorized_keys`).
    pub identity_file: PathBuf,
    /// The host's public key (`<type> <base64>`, as in `/etc/ssh/ssh_host_ed25519_key.pub`),
    /// read from the host on a trusted path: the only key the client accepts.
    pub known_host_key: String,
    /// Static agent binaries by architecture, as `uname -m` prints it (`x86_64`, `aarch64`).
    /// A host of another architecture is refused, and so is a binary that is dynamically
    /// linked or built for another machine (read from its ELF header).
    pub agent_binaries: BTreeMap<String, PathBuf>,
    /// This machine's address as the host reaches it: the agent dials NATS there
    /// (`FleetNatsScore::lan_addresses` must contain it).
    pub nats_address: IpAddr,
    /// Approve the key the agent makes on the host before it asks to join.
    pub pre_approve: bool,
}

/// Options of a local device.
#[derive(Debug, Clone, Serialize)]
pub struct LocalAgent {
    /// Give the device its own network namespace, so its containers publish ports at the
    /// device's own address (several local devices can publish the same port).
    pub isolate_network: bool,
    /// Tags of the `localhost/fleet-demo` image to build into the device's own storage (no
    /// registry is reachable; a real device would pull).
    pub demo_image_tags: Vec<String>,
    /// Approve the device's key (`spec.publicKey`) before its agent asks to join, as the admin
    /// of a local fleet would. `false`: the agent's request waits for an approval.
    pub pre_approve: bool,
}

impl Default for LocalAgent {
    fn default() -> Self {
        LocalAgent {
            isolate_network: true,
            demo_image_tags: vec!["v1".into(), "v2".into()],
            pre_approve: true,
        }
    }
}

/// Options of an agent Pod.
#[derive(Debug, Clone, Serialize)]
pub struct PodAgent {
    /// Namespace of the Pod and its configuration Secret.
    pub namespace: String,
    /// The agent image.
    pub image: String,
    /// Approve the key the Pod's agent asks to enroll with (it makes the key itself), as the
    /// admin who created the Pod would. `false`: the request waits for `device approve`.
    pub pre_approve: bool,
}

impl Default for PodAgent {
    fn default() -> Self {
        PodAgent {
            namespace: crate::DEFAULT_NAMESPACE.to_owned(),
            image: "localhost/harmony-fleet-agent:latest".to_owned(),
            pre_approve: true,
        }
    }
}

/// One device agent (`fleet-agent`), enrolled with a key it makes itself.
///
/// **Topologies**: `LocalTopology`, with either target: [`FleetAgentTarget::Local`] (a
/// supervised process with its own data directory, podman storage, network namespace and the
/// demo images; its key approved before it asks when [`LocalAgent::pre_approve`]) or
/// [`FleetAgentTarget::Pod`]; `K8sAnywhereTopology` with [`FleetAgentTarget::Pod`] (a
/// Deployment of one agent Pod and its configuration Secret; the key it asks with approved when
/// [`PodAgent::pre_approve`]); `LocalTopology` with [`FleetAgentTarget::Host`] (the agent
/// installed over SSH on a Linux host and run by systemd, dialing this machine's NATS at
/// [`HostAgent::nats_address`], see [`host`]). On any other topology it does not compile.
/// `FleetNatsScore` and `FleetOperatorScore` must have run first on the same topology.
///
/// **Blocks on**, within [`smoke_timeout`](Self::smoke_timeout): locally, a heartbeat from
/// [`device_id`](Self::device_id) written after the agent (re)started (for a host, after its
/// unit (re)started; on the deadline the error quotes `systemctl status`); as a Pod, the agent
/// Deployment available, its enrollment request seen and approved, and the `Device` online.
///
/// **Errors**: a `Local` or `Host` target on `K8sAnywhereTopology` (`InvalidInput` naming
/// `target`); a host that SSH cannot reach or whose key is not the pinned one
/// ([`ssh::SshError::Connect`], naming `address`, `identity_file` and `known_host_key`); a
/// host architecture without a binary (`InvalidInput` naming `agent_binaries` and the build);
/// NATS not deployed (naming the endpoint file, or the bootstrap Secret on a cluster); the
/// `fleet-agent` binary not found (naming `cargo build --release -p harmony-fleet-agent` and
/// `HARMONY_FLEET_AGENT_BIN`); podman, the network namespace or a demo image failing (naming
/// the device); the agent exiting (the error quotes its log); no heartbeat, no enrollment
/// request or not online by the deadline (with what was last seen, e.g. an enrollment waiting
/// for `harmony-fleet-deploy device approve`). A second run with the same Score restarts
/// nothing and reports [`Outcome::noop`](harmony::interpret::Outcome::noop).
///
/// ```no_run
/// use std::collections::BTreeMap;
/// use harmony::inventory::Inventory;
/// use harmony::local::SupervisionMode;
/// use harmony::score::Score;
/// use harmony::topologies::LocalTopology;
/// use harmony_fleet_deploy::agent::{FleetAgentScore, PodAgent};
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let labels = BTreeMap::from([("site".to_owned(), "plant-3".to_owned())]);
/// // A simulated device on this host (after FleetNatsScore and FleetOperatorScore ran here)…
/// let mut device = FleetAgentScore::local("pi-0001".parse()?, labels.clone());
/// device.heartbeat_interval_secs = 5;
/// // …or, on a cluster, the same device's agent as a Pod.
/// let _pod = FleetAgentScore::pod("pi-0001".parse()?, labels, PodAgent::default());
///
/// let topology = LocalTopology::new(".fleet-local", SupervisionMode::Detached)?;
/// let scores: Vec<Box<dyn Score<LocalTopology>>> = vec![Box::new(device)];
/// let args = harmony_cli::Args { yes: true, ..Default::default() };
/// let summary = harmony_cli::run(Inventory::autoload(), topology, scores, Some(args)).await?;
/// assert!(summary.succeeded());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct FleetAgentScore {
    /// The device's id (must be enrolled in FleetNatsScore).
    pub device_id: DeviceId,
    /// Labels the device reports (Deployments select devices by them).
    pub labels: BTreeMap<String, String>,
    /// Where the agent runs.
    pub target: FleetAgentTarget,
    /// Heartbeat interval.
    pub heartbeat_interval_secs: u64,
    /// How long to wait for the first heartbeat.
    pub smoke_timeout: Duration,
}

impl FleetAgentScore {
    /// A local device with default options.
    pub fn local(device_id: DeviceId, labels: BTreeMap<String, String>) -> Self {
        FleetAgentScore {
            device_id,
            labels,
            target: FleetAgentTarget::Local(LocalAgent::default()),
            heartbeat_interval_secs: 10,
            smoke_timeout: Duration::from_secs(60),
        }
    }

    /// A device agent as a Pod.
    pub fn pod(device_id: DeviceId, labels: BTreeMap<String, String>, pod: PodAgent) -> Self {
        FleetAgentScore {
            device_id,
            labels,
            target: FleetAgentTarget::Pod(pod),
            heartbeat_interval_secs: 30,
            smoke_timeout: Duration::from_secs(120),
        }
    }

    /// An agent installed on a host over SSH and run by systemd.
    pub fn host(device_id: DeviceId, labels: BTreeMap<String, String>, host: HostAgent) -> Self {
        FleetAgentScore {
            device_id,
            labels,
            target: FleetAgentTarget::Host(host),
            heartbeat_interval_secs: 10,
            smoke_timeout: Duration::from_secs(60),
        }
    }

    fn describe(&self) -> String {
        match &self.target {
            FleetAgentTarget::Host(host) => {
                format!("FleetAgentScore {} (host {})", self.device_id, host.address)
            }
            FleetAgentTarget::Local(_) => format!("FleetAgentScore {} (local)", self.device_id),
            FleetAgentTarget::Pod(pod) => {
                format!(
                    "FleetAgentScore {} (Pod in {})",
                    self.device_id, pod.namespace
                )
            }
        }
    }
}

struct FleetAgentInterpret {
    score: FleetAgentScore,
    status: StatusCell,
}

impl Score<LocalTopology> for FleetAgentScore {
    fn name(&self) -> String {
        self.describe()
    }

    fn create_interpret(&self) -> Box<dyn Interpret<LocalTopology>> {
        Box::new(FleetAgentInterpret {
            score: self.clone(),
            status: StatusCell::default(),
        })
    }
}

impl Score<K8sAnywhereTopology> for FleetAgentScore {
    fn name(&self) -> String {
        self.describe()
    }

    fn create_interpret(&self) -> Box<dyn Interpret<K8sAnywhereTopology>> {
        Box::new(FleetAgentInterpret {
            score: self.clone(),
            status: StatusCell::default(),
        })
    }
}

#[async_trait]
impl Interpret<LocalTopology> for FleetAgentInterpret {
    async fn execute(
        &self,
        _inventory: &Inventory,
        topology: &LocalTopology,
    ) -> Result<Outcome, InterpretError> {
        self.status
            .track(async {
                match &self.score.target {
                    FleetAgentTarget::Local(local) => {
                        local::deploy(&self.score, local, topology).await
                    }
                    FleetAgentTarget::Pod(pod) => pod::deploy(&self.score, pod, topology).await,
                    FleetAgentTarget::Host(host) => host::deploy(&self.score, host, topology).await,
                }
            })
            .await
    }

    fn name(&self) -> String {
        self.score.describe()
    }

    fn status(&self) -> InterpretStatus {
        self.status.get()
    }
}

#[async_trait]
impl Interpret<K8sAnywhereTopology> for FleetAgentInterpret {
    async fn execute(
        &self,
        _inventory: &Inventory,
        topology: &K8sAnywhereTopology,
    ) -> Result<Outcome, InterpretError> {
        self.status
            .track(async {
                match &self.score.target {
                    FleetAgentTarget::Pod(pod) => pod::deploy(&self.score, pod, topology).await,
                    FleetAgentTarget::Local(_) => Err(InterpretError::invalid_input(
                        "target",
                        "is Local, which runs a process on this host; on a cluster use \
                         FleetAgentTarget::Pod, or run the Score on LocalTopology",
                    )),
                    FleetAgentTarget::Host(_) => Err(InterpretError::invalid_input(
                        "target",
                        "is Host, whose agent dials the NATS of LocalTopology; run it on \
                         LocalTopology, or use FleetAgentTarget::Pod on a cluster",
                    )),
                }
            })
            .await
    }

    fn name(&self) -> String {
        self.score.describe()
    }

    fn status(&self) -> InterpretStatus {
        self.status.get()
    }
}

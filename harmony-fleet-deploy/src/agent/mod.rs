//! [`FleetAgentScore`]: one device agent, either a local process on this host
//! ([`FleetAgentTarget::Local`], a simulated device with its own podman storage and, when it
//! publishes ports, its own network namespace) or a Pod in a cluster
//! ([`FleetAgentTarget::Pod`]). Ready when a heartbeat from that device id is seen.
//!
//! - [`config`]: the agent's TOML configuration, rendered from the Score.
//! - [`local`] / [`pod`]: the two targets.

pub mod config;
pub mod local;
pub mod pod;

use std::collections::BTreeMap;
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

/// One device agent.
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

    fn describe(&self) -> String {
        match &self.target {
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

//! [`FleetNatsScore`]: NATS with JetStream, the four fleet buckets, and one identity per
//! component — the operator, and each enrolled device with the contract's permission template,
//! so that a device can touch only its own keys and subjects.
//!
//! - [`auth`]: contract permission templates → nats-server users.
//! - [`local`]: on `LocalTopology`, one or three supervised `nats-server` processes.
//! - [`cluster`]: on a cluster, a StatefulSet with its Services and configuration Secret.
//! - [`smoke`]: the proof it works (KV round trip, a denied cross-device read).

pub mod auth;
pub mod cluster;
pub mod local;
pub mod smoke;

use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use harmony::interpret::{Interpret, InterpretError, InterpretStatus, Outcome, StatusCell};
use harmony::inventory::Inventory;
use harmony::score::Score;
use harmony::topologies::{K8sAnywhereTopology, LocalTopology};
use harmony_fleet_contracts::DeviceId;
use serde::{Deserialize, Serialize};

use crate::error::DeployError;

/// How many NATS servers: one, or a three-node JetStream cluster with every bucket replicated
/// three ways (losing one node loses nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum NatsReplicas {
    /// A single server.
    One,
    /// Three servers, buckets replicated three ways.
    Three,
}

impl NatsReplicas {
    /// The number of servers.
    pub fn count(self) -> usize {
        match self {
            NatsReplicas::One => 1,
            NatsReplicas::Three => 3,
        }
    }
}

/// NATS for a fleet.
#[derive(Debug, Clone, Serialize)]
pub struct FleetNatsScore {
    /// One server or a three-node cluster.
    pub replicas: NatsReplicas,
    /// Devices that get a NATS user (their agents cannot connect otherwise).
    pub devices: Vec<DeviceId>,
    /// Cluster only: the namespace of the StatefulSet.
    pub namespace: String,
    /// Cluster only: the nats-server image (≥ 2.11).
    pub image: String,
    /// How long the smoke test may take.
    pub smoke_timeout: Duration,
    /// Devices the buckets are sized for: the byte limits of the agent-written buckets are
    /// this many devices' budgets (`BucketSpec::max_bytes`), so a misbehaving device can fill
    /// at most its share of the disk. Raise it before the fleet outgrows it: writes of new
    /// keys beyond it are refused.
    pub fleet_capacity: u64,
}

impl FleetNatsScore {
    /// A single server with users for `devices`.
    pub fn new(devices: Vec<DeviceId>) -> Self {
        FleetNatsScore {
            replicas: NatsReplicas::One,
            devices,
            namespace: crate::DEFAULT_NAMESPACE.to_owned(),
            image: "docker.io/library/nats:2.12.1-alpine".to_owned(),
            smoke_timeout: Duration::from_secs(60),
            fleet_capacity: harmony_fleet_contracts::buckets::DEFAULT_FLEET_CAPACITY,
        }
    }

    /// With `replicas` servers.
    #[must_use]
    pub fn with_replicas(mut self, replicas: NatsReplicas) -> Self {
        self.replicas = replicas;
        self
    }
}

/// Where clients reach the fleet's NATS, as the NATS Score leaves it for the Scores after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsEndpoint {
    /// Every server's client URL.
    pub urls: Vec<String>,
    /// The CA the servers' TLS certificates chain to; `None`: plaintext (the cluster path, a
    /// development mode until it moves to TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl NatsEndpoint {
    /// The file `LocalTopology` keeps it in.
    pub fn local_path(state_dir: &Path) -> PathBuf {
        state_dir.join("nats").join("endpoint.json")
    }

    /// The endpoint of the NATS deployed on `LocalTopology` at `state_dir`.
    pub fn load_local(state_dir: &Path) -> Result<Self, DeployError> {
        let path = Self::local_path(state_dir);
        let bytes = match std::fs::read(&path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(DeployError::NatsNotDeployed { path });
            }
            Err(e) => return Err(DeployError::io(format!("reading {}", path.display()), e)),
        };
        serde_json::from_slice(&bytes).map_err(|e| DeployError::CorruptState {
            path,
            reason: e.to_string(),
        })
    }

    /// The in-cluster endpoint of the StatefulSet in `namespace`.
    pub fn in_cluster(namespace: &str) -> Self {
        NatsEndpoint {
            urls: vec![format!("nats://{}.{namespace}.svc:4222", cluster::SERVICE)],
            ca_file: None,
        }
    }
}

/// The credentials file of the NATS deployed on `LocalTopology` at `state_dir`.
pub fn local_credentials_path(state_dir: &Path) -> PathBuf {
    state_dir.join("nats").join("credentials.json")
}

struct FleetNatsInterpret {
    score: FleetNatsScore,
    status: StatusCell,
}

impl Score<LocalTopology> for FleetNatsScore {
    fn name(&self) -> String {
        format!("FleetNatsScore ({} server(s))", self.replicas.count())
    }

    fn create_interpret(&self) -> Box<dyn Interpret<LocalTopology>> {
        Box::new(FleetNatsInterpret {
            score: self.clone(),
            status: StatusCell::default(),
        })
    }
}

impl Score<K8sAnywhereTopology> for FleetNatsScore {
    fn name(&self) -> String {
        format!(
            "FleetNatsScore ({} replica(s) in {})",
            self.replicas.count(),
            self.namespace
        )
    }

    fn create_interpret(&self) -> Box<dyn Interpret<K8sAnywhereTopology>> {
        Box::new(FleetNatsInterpret {
            score: self.clone(),
            status: StatusCell::default(),
        })
    }
}

#[async_trait]
impl Interpret<LocalTopology> for FleetNatsInterpret {
    async fn execute(
        &self,
        _inventory: &Inventory,
        topology: &LocalTopology,
    ) -> Result<Outcome, InterpretError> {
        self.status
            .track(local::deploy(&self.score, topology))
            .await
    }

    fn name(&self) -> String {
        Score::<LocalTopology>::name(&self.score)
    }

    fn status(&self) -> InterpretStatus {
        self.status.get()
    }
}

#[async_trait]
impl Interpret<K8sAnywhereTopology> for FleetNatsInterpret {
    async fn execute(
        &self,
        _inventory: &Inventory,
        topology: &K8sAnywhereTopology,
    ) -> Result<Outcome, InterpretError> {
        self.status
            .track(cluster::deploy(&self.score, topology))
            .await
    }

    fn name(&self) -> String {
        Score::<K8sAnywhereTopology>::name(&self.score)
    }

    fn status(&self) -> InterpretStatus {
        self.status.get()
    }
}

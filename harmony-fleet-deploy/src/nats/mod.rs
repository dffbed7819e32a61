//! [`FleetNatsScore`]: NATS with JetStream over TLS, in operator mode (adr/0016): the server
//! trusts the fleet's operator key, and each party holds a credential signed under it — the
//! operator, the agents' bootstrap identity, and each enrolled device (issued by the operator's
//! identity service, carrying the contract's permission template, so a device can touch only
//! its own keys and subjects). No device is named in the server's configuration.
//!
//! - [`local`]: on `LocalTopology`, one or three supervised `nats-server` processes, the
//!   fleet buckets and the smoke test.
//! - [`cluster`]: on a cluster, a StatefulSet with its Services and Secrets (adr/0019).
//! - [`smoke`]: the proof it works (KV round trip, a denied cross-device read).

pub mod cluster;
pub mod local;
pub mod smoke;

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use harmony::interpret::{Interpret, InterpretError, InterpretStatus, Outcome, StatusCell};
use harmony::inventory::Inventory;
use harmony::score::Score;
use harmony::topologies::{K8sAnywhereTopology, LocalTopology};
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

/// NATS for a fleet: JetStream over TLS in operator mode, the four fleet buckets, the chain of
/// trust and the operator's and agents' bootstrap identities.
///
/// **Topologies**: `LocalTopology` (one or three supervised `nats-server` processes on
/// loopback; trust, CA and [`NatsEndpoint`] kept in files of the state directory) and
/// `K8sAnywhereTopology` (a StatefulSet with its Services and `nats.conf`, the trust, CA and
/// identities in Secrets of [`namespace`](Self::namespace), adr/0019). On any other topology
/// it does not compile.
///
/// **Blocks on**, within [`smoke_timeout`](Self::smoke_timeout): locally, every server's
/// `/healthz` (JetStream enabled; cluster members current), the buckets created, a KV round
/// trip as the operator and a throwaway device refused another device's key; on a cluster, the
/// StatefulSet with every replica ready.
///
/// **Errors**: `nats-server` not installed (run `scripts/install-deps.sh`); a server that
/// exits (the error quotes its log) or is not healthy by the deadline; the smoke test failing
/// (a connection or KV error naming the identity and key, or a device *allowed* another
/// device's key); on a cluster, an apply the API server refuses (`Kube`, naming the object) or
/// the StatefulSet not ready by the deadline (naming it and what its Pods show). A second run
/// with the same Score restarts nothing and reports [`Outcome::noop`].
///
/// ```no_run
/// use harmony::inventory::Inventory;
/// use harmony::score::Score;
/// use harmony::topologies::K8sAnywhereTopology;
/// use harmony_fleet_deploy::nats::{FleetNatsScore, NatsReplicas};
///
/// # #[tokio::main]
/// # async fn main() {
/// // Three replicas in namespace `fleet`, on the cluster of KUBECONFIG.
/// let mut nats = FleetNatsScore::new().with_replicas(NatsReplicas::Three);
/// nats.namespace = "fleet".to_owned();
/// let scores: Vec<Box<dyn Score<K8sAnywhereTopology>>> = vec![Box::new(nats)];
/// let args = harmony_cli::Args { yes: true, ..Default::default() };
/// let code = harmony_cli::run_to_exit_code(
///     Inventory::autoload(),
///     K8sAnywhereTopology::from_env(),
///     scores,
///     Some(args),
/// )
/// .await;
/// # let _ = code;
/// # }
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct FleetNatsScore {
    /// One server or a three-node cluster.
    pub replicas: NatsReplicas,
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
    /// JetStream file storage of each server (bytes): nats-server's `max_file_store` and, on a
    /// cluster, the size of each server's volume. JetStream refuses to create a bucket whose
    /// byte limit does not fit it. `None`: sized for [`Self::fleet_capacity`]
    /// ([`buckets::jetstream_storage_bytes`]: 2 GiB for 10,000 devices), the same on every
    /// machine (nats-server's own default is 75% of the disk's free space at start). A cluster
    /// keeps the volume size it was installed with: a StatefulSet's volume claims cannot change.
    ///
    /// [`buckets::jetstream_storage_bytes`]: harmony_fleet_contracts::buckets::jetstream_storage_bytes
    pub storage: Option<u64>,
    /// Local only: addresses of this machine where devices on its networks reach NATS (a
    /// [`Host`](crate::agent::FleetAgentTarget::Host) device on a LAN). Empty: loopback only.
    /// Otherwise the servers listen on every interface and their certificate also names these
    /// addresses (issued again by the kept CA when they change).
    pub lan_addresses: Vec<IpAddr>,
}

impl FleetNatsScore {
    /// A single server. Devices need nothing here: each enrolls with its own key.
    pub fn new() -> Self {
        FleetNatsScore {
            replicas: NatsReplicas::One,
            namespace: crate::DEFAULT_NAMESPACE.to_owned(),
            image: "docker.io/library/nats:2.12.1-alpine".to_owned(),
            smoke_timeout: Duration::from_secs(60),
            fleet_capacity: harmony_fleet_contracts::buckets::DEFAULT_FLEET_CAPACITY,
            storage: None,
            lan_addresses: Vec::new(),
        }
    }

    /// The JetStream file storage of each server, in bytes (see [`Self::storage`]).
    pub fn storage_bytes(&self) -> u64 {
        self.storage.unwrap_or_else(|| {
            harmony_fleet_contracts::buckets::jetstream_storage_bytes(self.fleet_capacity)
        })
    }

    /// With `replicas` servers.
    #[must_use]
    pub fn with_replicas(mut self, replicas: NatsReplicas) -> Self {
        self.replicas = replicas;
        self
    }
}

/// Refuses to change in place how many servers hold the fleet's JetStream data (`installed`,
/// `None` when none runs yet): a standalone server's streams do not join a cluster (nats-server
/// strands them, or deletes them as orphans once a meta leader is elected; seen here: after
/// 1 → 3 servers the next change never converged), and a cluster shrunk to one server loses
/// its quorum. `way_out` says what to do instead.
pub fn check_server_count(
    installed: Option<usize>,
    wanted: usize,
    way_out: &str,
) -> Result<(), InterpretError> {
    match installed {
        Some(current) if current != wanted => Err(InterpretError::invalid_input(
            "replicas",
            format!(
                "NATS runs {current} server(s) with the fleet's data and {wanted} were asked: \
                 JetStream data cannot move between one server and a cluster in place. Keep \
                 {current}, or {way_out}"
            ),
        )),
        _ => Ok(()),
    }
}

impl Default for FleetNatsScore {
    fn default() -> Self {
        Self::new()
    }
}

/// Where clients reach the fleet's NATS, as the NATS Score leaves it for the Scores after it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatsEndpoint {
    /// Every server's client URL.
    pub urls: Vec<String>,
    /// The CA the servers' TLS certificates chain to; `None`: the system's roots (a cluster's
    /// clients mount the CA from a Secret instead, see [`crate::trust::cluster`]).
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

    /// The in-cluster endpoint of the StatefulSet in `namespace` (TLS; clients verify it with
    /// the CA at `ca_file`, where they mount it).
    pub fn in_cluster(namespace: &str, ca_file: Option<PathBuf>) -> Self {
        NatsEndpoint {
            urls: cluster::client_urls(namespace),
            ca_file,
        }
    }
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

#[cfg(test)]
mod tests {
    use super::check_server_count;

    #[test]
    fn the_number_of_servers_does_not_change_in_place() {
        assert!(check_server_count(None, 3, "x").is_ok());
        assert!(check_server_count(Some(3), 3, "x").is_ok());
        let grow = check_server_count(Some(1), 3, "start over")
            .expect_err("1 -> 3")
            .to_string();
        assert!(
            grow.contains("replicas")
                && grow.contains("1 server(s)")
                && grow.contains("start over"),
            "{grow}"
        );
        assert!(check_server_count(Some(3), 1, "x").is_err());
    }
}

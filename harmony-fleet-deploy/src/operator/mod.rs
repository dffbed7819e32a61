//! [`FleetOperatorScore`]: the CRDs (generated from the operator's Rust types), its service
//! account and least-privilege RBAC, the NATS credentials Secret, and the operator itself —
//! a local process on `LocalTopology`, a Deployment on a cluster — ready when its `/readyz`
//! says `Converged`.
//!
//! - [`objects`]: every Kubernetes object, built from the Score (one source of truth for the
//!   cluster install, the local install and the Helm chart).
//! - [`helm`]: the Helm chart generated from those objects.
//! - [`local`] / [`cluster`]: the two interprets.

pub mod cluster;
pub mod helm;
pub mod local;
pub mod objects;

use std::time::Duration;

use async_trait::async_trait;
use harmony::interpret::{Interpret, InterpretError, InterpretStatus, Outcome, StatusCell};
use harmony::inventory::Inventory;
use harmony::score::Score;
use harmony::topologies::{K8sAnywhereTopology, LocalTopology};
use serde::Serialize;

/// The operator of a fleet: its CRDs, service account, least-privilege RBAC and the operator
/// itself, with the identity service that enrolls devices.
///
/// **Topologies**: `LocalTopology` (a supervised process of the `harmony-fleet-operator`
/// binary, authenticating to the API server with its service account's TokenRequest token,
/// so the local install exercises the cluster's RBAC) and `K8sAnywhereTopology` (a Deployment
/// of [`image`](Self::image) in [`namespace`](Self::namespace)). On any other topology it does
/// not compile. `FleetNatsScore` must have run first on the same topology.
///
/// **Blocks on**, within [`smoke_timeout`](Self::smoke_timeout): the CRDs `Established`; then
/// locally the operator's `/readyz` saying `Converged` (and the dashboard answering `GET /`
/// when [`dashboard_port`](Self::dashboard_port) is set); on a cluster the Deployment
/// available (its readiness probe is that same `/readyz`).
///
/// **Errors**: NATS not deployed (locally: no endpoint file, naming it and `FleetNatsScore`;
/// on a cluster: Secret [`objects::OPERATOR_SECRET`] missing, naming it); the operator binary not
/// found (naming `cargo build --release -p harmony-fleet-operator` and
/// `HARMONY_FLEET_OPERATOR_BIN`); an apply the API server refuses (`Kube`, naming the object);
/// the operator exiting (the error quotes its log) or not converged by the deadline (what
/// `/readyz` last said). A second run with the same Score restarts nothing and reports
/// [`Outcome::noop`].
///
/// ```no_run
/// use harmony::inventory::Inventory;
/// use harmony::local::SupervisionMode;
/// use harmony::score::Score;
/// use harmony::topologies::LocalTopology;
/// use harmony_fleet_deploy::nats::FleetNatsScore;
/// use harmony_fleet_deploy::operator::FleetOperatorScore;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let topology = LocalTopology::new(".fleet-local", SupervisionMode::Detached)?;
/// let operator = FleetOperatorScore {
///     dashboard_port: Some(8090),
///     ..FleetOperatorScore::default()
/// };
/// let scores: Vec<Box<dyn Score<LocalTopology>>> =
///     vec![Box::new(FleetNatsScore::new()), Box::new(operator)];
/// let args = harmony_cli::Args { yes: true, ..Default::default() };
/// let summary = harmony_cli::run(Inventory::autoload(), topology, scores, Some(args)).await?;
/// assert!(summary.succeeded());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct FleetOperatorScore {
    /// Namespace of its service account, Secret and (in a cluster) Deployment.
    pub namespace: String,
    /// Cluster only: the operator image.
    pub image: String,
    /// Only reconcile Deployments of this namespace (default: every namespace).
    pub watch_namespace: Option<String>,
    /// A device is offline when its last heartbeat is older than this.
    pub heartbeat_timeout_secs: u64,
    /// Serve the web dashboard on this port (local: on 127.0.0.1; needs an operator built with
    /// the `web-frontend` feature).
    pub dashboard_port: Option<u16>,
    /// How long the operator may take to report `Converged`.
    pub smoke_timeout: Duration,
    /// Lifetime of the device credentials the operator issues; `None`: its default (30 days).
    pub credential_lifetime_secs: Option<u64>,
    /// Cluster only: replicas of the operator Deployment. They elect a leader on a Lease
    /// (`--leader-elect`): one writes, the others keep warm and take over (default 2).
    pub replicas: u32,
}

impl Default for FleetOperatorScore {
    fn default() -> Self {
        FleetOperatorScore {
            namespace: crate::DEFAULT_NAMESPACE.to_owned(),
            image: "localhost/harmony-fleet-operator:latest".to_owned(),
            watch_namespace: None,
            heartbeat_timeout_secs: 90,
            dashboard_port: None,
            smoke_timeout: Duration::from_secs(90),
            credential_lifetime_secs: None,
            replicas: 2,
        }
    }
}

struct FleetOperatorInterpret {
    score: FleetOperatorScore,
    status: StatusCell,
}

impl Score<LocalTopology> for FleetOperatorScore {
    fn name(&self) -> String {
        "FleetOperatorScore (local process)".to_owned()
    }

    fn create_interpret(&self) -> Box<dyn Interpret<LocalTopology>> {
        Box::new(FleetOperatorInterpret {
            score: self.clone(),
            status: StatusCell::default(),
        })
    }
}

impl Score<K8sAnywhereTopology> for FleetOperatorScore {
    fn name(&self) -> String {
        format!("FleetOperatorScore (Deployment in {})", self.namespace)
    }

    fn create_interpret(&self) -> Box<dyn Interpret<K8sAnywhereTopology>> {
        Box::new(FleetOperatorInterpret {
            score: self.clone(),
            status: StatusCell::default(),
        })
    }
}

#[async_trait]
impl Interpret<LocalTopology> for FleetOperatorInterpret {
    async fn execute(
        &self,
        inventory: &Inventory,
        topology: &LocalTopology,
    ) -> Result<Outcome, InterpretError> {
        self.status
            .track(local::deploy(&self.score, inventory, topology))
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
impl Interpret<K8sAnywhereTopology> for FleetOperatorInterpret {
    async fn execute(
        &self,
        inventory: &Inventory,
        topology: &K8sAnywhereTopology,
    ) -> Result<Outcome, InterpretError> {
        self.status
            .track(cluster::deploy(&self.score, inventory, topology))
            .await
    }

    fn name(&self) -> String {
        Score::<K8sAnywhereTopology>::name(&self.score)
    }

    fn status(&self) -> InterpretStatus {
        self.status.get()
    }
}

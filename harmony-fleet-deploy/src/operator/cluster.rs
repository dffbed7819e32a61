//! [`FleetOperatorScore`] on a cluster: CRDs, RBAC, the NATS Secret (the operator identity
//! of the credentials FleetNatsScore keeps) and the Deployment, ready when its `/readyz`
//! readiness probe passes (it says `Converged` only after the cold start).

use harmony::capability::K8sClient;
use harmony::interpret::{InterpretError, Outcome};
use harmony::inventory::Inventory;
use harmony::topologies::K8sAnywhereTopology;

use super::FleetOperatorScore;
use super::objects::{self, NAME, NatsSettings};
use crate::k8s;
use crate::nats::{NatsEndpoint, cluster as nats_cluster};

pub(super) async fn deploy(
    score: &FleetOperatorScore,
    inventory: &Inventory,
    topology: &K8sAnywhereTopology,
) -> Result<Outcome, InterpretError> {
    let client = topology.k8s_client().await?;
    let ns = score.namespace.as_str();
    let credentials = nats_cluster::credentials(&client, ns, &[]).await?;
    let nats = NatsSettings {
        urls: NatsEndpoint::in_cluster(ns).urls,
        user: credentials.operator.user.clone(),
        password: credentials.operator.password.clone(),
    };
    let objects = objects::objects(score, &nats);
    let mut applier = objects.apply_access(&client, inventory, topology).await?;
    applier.apply(&client, &objects.deployment).await?;
    k8s::wait_deployment_available(&client, ns, NAME, &k8s::selector(NAME), score.smoke_timeout)
        .await?;
    Ok(applier.outcome(format!("operator Deployment {ns}/{NAME} available")))
}

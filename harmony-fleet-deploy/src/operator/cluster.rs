//! [`FleetOperatorScore`] on a cluster: CRDs, RBAC and the Deployment, which mounts the NATS
//! identity `FleetNatsScore` issued (Secret [`OPERATOR_SECRET`], adr/0019); ready when its
//! `/readyz` readiness probe passes (it says `Converged` only after the cold start).

use harmony::capability::K8sClient;
use harmony::interpret::{InterpretError, Outcome};
use harmony::inventory::Inventory;
use harmony::topologies::K8sAnywhereTopology;

use super::FleetOperatorScore;
use super::objects::{self, NAME, OPERATOR_SECRET};
use crate::k8s;
use crate::trust::cluster::require_issued;

pub(super) async fn deploy(
    score: &FleetOperatorScore,
    inventory: &Inventory,
    topology: &K8sAnywhereTopology,
) -> Result<Outcome, InterpretError> {
    let client = topology.k8s_client().await?;
    let ns = score.namespace.as_str();
    require_issued(&client, ns, OPERATOR_SECRET).await?;
    let objects = objects::objects(score);
    let mut applier = objects.apply_access(&client, inventory, topology).await?;
    applier.apply(&client, &objects.deployment).await?;
    k8s::wait_deployment_available(&client, ns, NAME, &k8s::selector(NAME), score.smoke_timeout)
        .await?;
    Ok(applier.outcome(format!("operator Deployment {ns}/{NAME} available")))
}

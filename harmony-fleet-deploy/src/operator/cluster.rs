//! [`FleetOperatorScore`] on a cluster: CRDs, RBAC and the Deployment, which mounts the NATS
//! identity `FleetNatsScore` issued (Secret [`OPERATOR_SECRET`], adr/0019); ready when its
//! `/readyz` readiness probe passes (it says `Converged` only after the cold start).

use harmony::capability::K8sClient;
use harmony::interpret::{InterpretError, Outcome};
use harmony::inventory::Inventory;
use harmony::topologies::K8sAnywhereTopology;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use super::FleetOperatorScore;
use super::objects::{self, NAME, OPERATOR_SECRET};
use crate::error::DeployError;
use crate::k8s;

pub(super) async fn deploy(
    score: &FleetOperatorScore,
    inventory: &Inventory,
    topology: &K8sAnywhereTopology,
) -> Result<Outcome, InterpretError> {
    let client = topology.k8s_client().await?;
    let ns = score.namespace.as_str();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let issued = secrets
        .get_opt(OPERATOR_SECRET)
        .await
        .map_err(|source| InterpretError::Kube {
            action: "get of".into(),
            object: format!("Secret {ns}/{OPERATOR_SECRET}"),
            source,
        })?;
    if issued.is_none() {
        return Err(DeployError::NatsIdentityMissing {
            namespace: ns.to_owned(),
            secret: OPERATOR_SECRET,
        }
        .into());
    }
    let objects = objects::objects(score);
    let mut applier = objects.apply_access(&client, inventory, topology).await?;
    applier.apply(&client, &objects.deployment).await?;
    k8s::wait_deployment_available(&client, ns, NAME, &k8s::selector(NAME), score.smoke_timeout)
        .await?;
    Ok(applier.outcome(format!("operator Deployment {ns}/{NAME} available")))
}

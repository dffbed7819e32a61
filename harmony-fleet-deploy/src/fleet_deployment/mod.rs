//! [`FleetDeploymentScore`]: a fleet `Deployment` built in Rust (target selector, payload,
//! rollout), applied with server-side apply, ready when the operator says every matched device
//! runs the revision just written. [`readiness`] holds the pure judgement of a status.

pub mod readiness;

use std::time::Duration;

use async_trait::async_trait;
use harmony::capability::K8sClient;
use harmony::interpret::{Interpret, InterpretError, InterpretStatus, Outcome, StatusCell};
use harmony::inventory::Inventory;
use harmony::score::Score;
use harmony::scores::{Change, apply_object};
use harmony::topology::Topology;
use harmony_fleet_contracts::payload::ReconcileScore;
use harmony_fleet_types::crd::deployment::{RolloutSpec, TargetSelector};
use harmony_fleet_types::crd::{Deployment, DeploymentSpec};
use kube::Api;
use kube::api::ObjectMeta;
use serde::Serialize;

use crate::wait::{self, Poll};
pub use readiness::{Applied, Verdict};

/// Runs a payload on the devices a selector matches: one fleet `Deployment`
/// (`fleet.nationtech.io/v1alpha1`), typed, with no YAML.
///
/// **Topologies**: every topology with a Kubernetes API ([`K8sClient`]): `LocalTopology` (the
/// local control plane) and `K8sAnywhereTopology` (a cluster). The fleet's CRDs and operator
/// must already be there (`FleetOperatorScore`, or `FleetServerScore`); against a topology
/// without [`K8sClient`] the Score does not compile.
///
/// **Blocks on**: the status the operator writes for the object the apply returned:
/// `status.observedGeneration` equals its `metadata.generation`, the rollout's revision is the
/// content hash of the payload written and its phase `Complete`, every matched device
/// succeeded, and `Ready` is `True` (see [`readiness::judge`]), within [`timeout`](Self::timeout).
///
/// **Errors**: an invalid payload is rejected before anything is written (`InvalidInput`
/// naming `spec.score`); an apply the API server refuses (CRD missing, CEL rule broken) is a
/// `Kube` error naming the object. When the operator rejects the resource (`InvalidScore`,
/// `InvalidName`, `NameConflict`), stops its rollout (`Paused`, `RolledBack`), or the deadline
/// passes, the error names the Deployment, the `Ready` condition and every condition that is
/// `True` (reason and message), and the failing devices with what each reported (see
/// [`readiness::describe`]).
///
/// **Idempotent**: a second run with the same object stores nothing and reports
/// [`Outcome::noop`] once the status says ready.
///
/// ```
/// use std::collections::BTreeMap;
/// use harmony_fleet_contracts::payload::{PodmanV0, ReconcileScore, Service};
/// use harmony_fleet_deploy::FleetDeploymentScore;
/// use harmony_fleet_types::crd::deployment::TargetSelector;
///
/// let payload = ReconcileScore::PodmanV0(PodmanV0 {
///     services: vec![Service::new("web", "docker.io/library/nginx:1.27")],
///     init_containers: Vec::new(),
///     stop_policy: Default::default(),
/// });
/// let selector = TargetSelector {
///     match_labels: BTreeMap::from([("site".to_owned(), "plant-3".to_owned())]),
///     ..TargetSelector::default()
/// };
/// let score = FleetDeploymentScore::new("apps", "web", selector, payload);
/// # let _ = score;
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct FleetDeploymentScore {
    /// The fleet Deployment, as it should be (namespace and name set).
    pub deployment: Deployment,
    /// How long the operator and devices may take to make it `Ready`.
    pub timeout: Duration,
}

impl FleetDeploymentScore {
    /// Deployment `namespace/name` running `score` on the devices `target_selector` matches,
    /// with the default rollout (all at once, pause at the first failed device) and a five
    /// minute deadline.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        target_selector: TargetSelector,
        score: ReconcileScore,
    ) -> Self {
        let name = name.into();
        let mut deployment = Deployment::new(
            &name,
            DeploymentSpec {
                target_selector,
                score,
                rollout: RolloutSpec::default(),
            },
        );
        deployment.metadata = ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.into()),
            ..ObjectMeta::default()
        };
        Self {
            deployment,
            timeout: Duration::from_secs(300),
        }
    }

    /// Rolls out as `rollout` says instead.
    #[must_use]
    pub fn with_rollout(mut self, rollout: RolloutSpec) -> Self {
        self.deployment.spec.rollout = rollout;
        self
    }

    /// Waits at most `timeout` for `Ready`.
    #[must_use]
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    fn key(&self) -> String {
        format!(
            "{}/{}",
            self.deployment.metadata.namespace.as_deref().unwrap_or(""),
            self.deployment.metadata.name.as_deref().unwrap_or("")
        )
    }
}

impl<T: Topology + K8sClient> Score<T> for FleetDeploymentScore {
    fn name(&self) -> String {
        format!("FleetDeploymentScore {}", self.key())
    }

    fn create_interpret(&self) -> Box<dyn Interpret<T>> {
        Box::new(FleetDeploymentInterpret {
            score: self.clone(),
            status: StatusCell::default(),
        })
    }
}

struct FleetDeploymentInterpret {
    score: FleetDeploymentScore,
    status: StatusCell,
}

#[async_trait]
impl<T: Topology + K8sClient> Interpret<T> for FleetDeploymentInterpret {
    async fn execute(
        &self,
        _inventory: &Inventory,
        topology: &T,
    ) -> Result<Outcome, InterpretError> {
        self.status
            .track(async {
                let client = topology.k8s_client().await?;
                deploy(&self.score, &client).await
            })
            .await
    }

    fn name(&self) -> String {
        format!("FleetDeploymentScore {}", self.score.key())
    }

    fn status(&self) -> InterpretStatus {
        self.status.get()
    }
}

/// Applies the Score's Deployment and waits until it is ready for the generation written.
async fn deploy(
    score: &FleetDeploymentScore,
    client: &kube::Client,
) -> Result<Outcome, InterpretError> {
    if let Err(e) = score.deployment.spec.score.validate() {
        return Err(InterpretError::invalid_input(
            "spec.score",
            format!("of fleet Deployment {} is invalid: {e}", score.key()),
        ));
    }
    let stored = apply_object(client, &score.deployment, crate::FIELD_MANAGER).await?;
    let applied = Applied::of(&stored.object)?;
    let api: Api<Deployment> = Api::namespaced(client.clone(), &applied.namespace);
    let awaited = format!(
        "fleet Deployment {} to be Ready for generation {} (revision {})",
        applied.key(),
        applied.generation,
        readiness::short(&applied.revision.hex())
    );
    let status = wait::until(&awaited, score.timeout, || {
        let (api, applied) = (&api, &applied);
        async move {
            let status = match api.get_opt(&applied.name).await {
                Ok(Some(d)) => d.status,
                Ok(None) => {
                    return Poll::Failed(format!(
                        "fleet Deployment {} was deleted while waiting",
                        applied.key()
                    ));
                }
                Err(e) => return Poll::Pending(format!("get failed: {e}")),
            };
            match readiness::judge(status.as_ref(), applied) {
                Verdict::Ready => Poll::Ready(status.unwrap_or_default()),
                Verdict::Pending(why) => {
                    Poll::Pending(readiness::describe(status.as_ref(), applied, &why))
                }
                Verdict::Failed(why) => {
                    Poll::Failed(readiness::describe(status.as_ref(), applied, &why))
                }
            }
        }
    })
    .await?;
    let message = format!(
        "{} fleet Deployment {}: Ready on {} device(s) (generation {}, revision {})",
        stored.change,
        applied.key(),
        status.aggregate.matched_device_count,
        applied.generation,
        readiness::short(&applied.revision.hex())
    );
    Ok(match stored.change {
        Change::Unchanged => Outcome::noop(message),
        Change::Created | Change::Updated => Outcome::success(message),
    })
}

//! Cluster mode: the same suite's bring-up on a real cluster (k3d, kind, k3s) with
//! `K8sAnywhereTopology` and agents as Pods ([`FleetAgentTarget::Pod`]).
//!
//! Set [`KUBECONFIG_ENV`] to the cluster's kubeconfig (and the image variables to images the
//! cluster can pull, see `scripts/build-images.sh`). Without it, the bring-up runs against the
//! local control plane, which has no kubelet: every object must still be accepted by the real
//! API server, and each Score must fail its smoke test saying which workload is not ready.
//!
//! [`FleetAgentTarget::Pod`]: harmony_fleet_deploy::FleetAgentTarget::Pod

use std::collections::BTreeMap;
use std::time::Duration;

use harmony::score::Score;
use harmony::topologies::K8sAnywhereTopology;
use harmony_fleet_contracts::DeviceId;
use harmony_fleet_deploy::agent::{FleetAgentScore, PodAgent};
use harmony_fleet_deploy::nats::FleetNatsScore;
use harmony_fleet_deploy::operator::FleetOperatorScore;

/// Kubeconfig of the cluster to run against.
pub const KUBECONFIG_ENV: &str = "FLEET_E2E_KUBECONFIG";
/// Operator image the cluster can pull.
pub const OPERATOR_IMAGE_ENV: &str = "FLEET_E2E_OPERATOR_IMAGE";
/// Agent image the cluster can pull.
pub const AGENT_IMAGE_ENV: &str = "FLEET_E2E_AGENT_IMAGE";
/// NATS image the cluster can pull (default: the NATS Score's).
pub const NATS_IMAGE_ENV: &str = "FLEET_E2E_NATS_IMAGE";
/// Namespace of the fleet's components in cluster mode.
pub const NAMESPACE: &str = "fleet-e2e";

/// What the cluster bring-up needs.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Device ids (one agent Pod each).
    pub devices: Vec<DeviceId>,
    /// Operator image.
    pub operator_image: String,
    /// Agent image.
    pub agent_image: String,
    /// NATS image.
    pub nats_image: String,
    /// Smoke-test deadline of every Score.
    pub smoke_timeout: Duration,
}

impl ClusterOptions {
    /// Options from the environment (images default to the locally built ones).
    pub fn from_env(devices: Vec<DeviceId>, smoke_timeout: Duration) -> Self {
        let var = |name: &str, default: &str| {
            std::env::var(name)
                .ok()
                .filter(|v| !v.is_empty())
                .unwrap_or_else(|| default.to_owned())
        };
        ClusterOptions {
            devices,
            operator_image: var(
                OPERATOR_IMAGE_ENV,
                "localhost/harmony-fleet-operator:latest",
            ),
            agent_image: var(AGENT_IMAGE_ENV, "localhost/harmony-fleet-agent:latest"),
            nats_image: var(NATS_IMAGE_ENV, &FleetNatsScore::new().image),
            smoke_timeout,
        }
    }
}

/// The cluster bring-up, in order: NATS, the operator, then one agent Pod per device (label
/// `site=e2e`, like the local stack's devices; the operator adds the device id).
pub fn scores(options: &ClusterOptions) -> Vec<Box<dyn Score<K8sAnywhereTopology>>> {
    let mut nats = FleetNatsScore::new();
    nats.namespace = NAMESPACE.to_owned();
    nats.image = options.nats_image.clone();
    nats.smoke_timeout = options.smoke_timeout;
    let operator = FleetOperatorScore {
        namespace: NAMESPACE.to_owned(),
        image: options.operator_image.clone(),
        smoke_timeout: options.smoke_timeout,
        ..FleetOperatorScore::default()
    };
    let mut scores: Vec<Box<dyn Score<K8sAnywhereTopology>>> =
        vec![Box::new(nats), Box::new(operator)];
    for device in &options.devices {
        // The operator sets fleet.nationtech.io/device itself (a protected label).
        let labels = BTreeMap::from([("site".to_owned(), "e2e".to_owned())]);
        let pod = PodAgent {
            namespace: NAMESPACE.to_owned(),
            image: options.agent_image.clone(),
            pre_approve: true,
        };
        let mut score = FleetAgentScore::pod(device.clone(), labels, pod);
        score.smoke_timeout = options.smoke_timeout;
        scores.push(Box::new(score));
    }
    scores
}

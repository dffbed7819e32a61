// The same FleetDeploymentScore compiles against both topologies with a Kubernetes API.

use harmony::score::Score;
use harmony::topologies::{K8sAnywhereTopology, LocalTopology};
use harmony_fleet_contracts::payload::{PodmanV0, ReconcileScore, Service};
use harmony_fleet_deploy::FleetDeploymentScore;

pub fn main() {
    let payload = ReconcileScore::PodmanV0(PodmanV0 {
        services: vec![Service::new("web", "docker.io/library/nginx:1.27")],
        init_containers: Vec::new(),
        stop_policy: Default::default(),
    });
    let score = FleetDeploymentScore::new("apps", "web", Default::default(), payload);
    let _local: Vec<Box<dyn Score<LocalTopology>>> = vec![Box::new(score.clone())];
    let _cluster: Vec<Box<dyn Score<K8sAnywhereTopology>>> = vec![Box::new(score)];
}

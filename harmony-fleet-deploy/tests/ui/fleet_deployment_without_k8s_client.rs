// A FleetDeploymentScore registered against a topology without a Kubernetes API: must fail to
// compile because `BareMetal` does not implement `K8sClient`, the capability the Score needs.

use async_trait::async_trait;
use harmony::interpret::{InterpretError, Outcome};
use harmony::score::Score;
use harmony::topology::Topology;
use harmony_fleet_contracts::payload::{PodmanV0, ReconcileScore, Service};
use harmony_fleet_deploy::FleetDeploymentScore;

struct BareMetal;

#[async_trait]
impl Topology for BareMetal {
    fn name(&self) -> &str {
        "bare metal"
    }

    async fn ensure_ready(&self) -> Result<Outcome, InterpretError> {
        Ok(Outcome::noop("nothing to prepare"))
    }
}

fn main() {
    let payload = ReconcileScore::PodmanV0(PodmanV0 {
        services: vec![Service::new("web", "docker.io/library/nginx:1.27")],
        init_containers: Vec::new(),
        stop_policy: Default::default(),
    });
    let score = FleetDeploymentScore::new("apps", "web", Default::default(), payload);
    let _scores: Vec<Box<dyn Score<BareMetal>>> = vec![Box::new(score)];
}

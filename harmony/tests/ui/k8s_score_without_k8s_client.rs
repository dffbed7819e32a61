// A Score that applies a Kubernetes object, registered against a topology that has no
// Kubernetes API: must fail to compile because `BareMetal` does not implement `K8sClient`.

use async_trait::async_trait;
use harmony::interpret::{InterpretError, Outcome};
use harmony::score::Score;
use harmony::scores::K8sResourceScore;
use harmony::topology::Topology;
use k8s_openapi::api::core::v1::ConfigMap;

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
    let score = K8sResourceScore::new(ConfigMap::default());
    let _scores: Vec<Box<dyn Score<BareMetal>>> = vec![Box::new(score)];
}

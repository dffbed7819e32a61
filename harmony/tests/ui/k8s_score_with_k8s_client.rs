// The same Score against a topology that offers `K8sClient` compiles (and the test that
// includes this file runs it, without touching any cluster).

use async_trait::async_trait;
use harmony::capability::K8sClient;
use harmony::interpret::{InterpretError, Outcome};
use harmony::score::Score;
use harmony::scores::{CrdScore, K8sResourceScore};
use harmony::topologies::K8sAnywhereTopology;
use harmony::topology::Topology;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};

struct Cluster;

#[async_trait]
impl Topology for Cluster {
    fn name(&self) -> &str {
        "cluster"
    }

    async fn ensure_ready(&self) -> Result<Outcome, InterpretError> {
        Ok(Outcome::noop("nothing to prepare"))
    }
}

#[async_trait]
impl K8sClient for Cluster {
    async fn k8s_client(&self) -> Result<kube::Client, InterpretError> {
        Err(InterpretError::failed(
            "this topology only exists to be type-checked",
        ))
    }
}

pub fn main() {
    let _scores: Vec<Box<dyn Score<Cluster>>> = vec![
        Box::new(K8sResourceScore::new(Namespace::default())),
        Box::new(K8sResourceScore::new(ConfigMap::default())),
        Box::new(CrdScore::new(Vec::new())),
    ];
    let _real: Vec<Box<dyn Score<K8sAnywhereTopology>>> =
        vec![Box::new(K8sResourceScore::new(ConfigMap::default()))];
}

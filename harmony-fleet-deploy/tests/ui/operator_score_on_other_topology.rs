// FleetOperatorScore registered against a topology it has no implementation for: must fail to
// compile, and the error lists the topologies that can host the operator.

use async_trait::async_trait;
use harmony::interpret::{InterpretError, Outcome};
use harmony::score::Score;
use harmony::topology::Topology;
use harmony_fleet_deploy::FleetOperatorScore;

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
    let _scores: Vec<Box<dyn Score<BareMetal>>> = vec![Box::new(FleetOperatorScore::default())];
}

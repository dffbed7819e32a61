//! [`FleetServerScore`]: the server side of a fleet — NATS, then the operator (with its
//! dashboard when the operator serves one) — composed from the component Scores, so it is
//! exactly what running them one by one does.

use async_trait::async_trait;
use harmony::interpret::{Interpret, InterpretError, InterpretStatus, Outcome, StatusCell};
use harmony::inventory::Inventory;
use harmony::score::Score;
use harmony::topology::Topology;
use serde::Serialize;

use crate::nats::FleetNatsScore;
use crate::operator::FleetOperatorScore;

/// The server side of a fleet: [`FleetNatsScore`], then [`FleetOperatorScore`], as one Score.
///
/// **Topologies**: every topology both parts are implemented for — `LocalTopology` and
/// `K8sAnywhereTopology` — and no other (the bounds say so, and it does not compile elsewhere).
///
/// **Blocks on**: what its parts block on, in order: NATS's smoke test, then the operator
/// converged (see each Score).
///
/// **Errors**: the first part's error, unchanged; the operator is not attempted when NATS
/// fails. It reports [`Outcome::noop`] only when both parts did.
///
/// ```no_run
/// use std::collections::BTreeMap;
/// use harmony::inventory::Inventory;
/// use harmony::local::SupervisionMode;
/// use harmony::score::Score;
/// use harmony::topologies::LocalTopology;
/// use harmony_fleet_deploy::{FleetAgentScore, FleetServerScore};
/// use harmony_fleet_deploy::nats::FleetNatsScore;
/// use harmony_fleet_deploy::operator::FleetOperatorScore;
///
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let server = FleetServerScore {
///     nats: FleetNatsScore::new(),
///     operator: FleetOperatorScore::default(),
/// };
/// let labels = BTreeMap::from([("site".to_owned(), "local".to_owned())]);
/// let device = FleetAgentScore::local("local-1".parse()?, labels);
///
/// let topology = LocalTopology::new(".fleet-local", SupervisionMode::Detached)?;
/// let scores: Vec<Box<dyn Score<LocalTopology>>> = vec![Box::new(server), Box::new(device)];
/// let args = harmony_cli::Args { yes: true, ..Default::default() };
/// let summary = harmony_cli::run(Inventory::autoload(), topology, scores, Some(args)).await?;
/// assert!(summary.succeeded());
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct FleetServerScore {
    /// The message bus.
    pub nats: FleetNatsScore,
    /// The operator.
    pub operator: FleetOperatorScore,
}

impl<T> Score<T> for FleetServerScore
where
    T: Topology + 'static,
    FleetNatsScore: Score<T>,
    FleetOperatorScore: Score<T>,
{
    fn name(&self) -> String {
        "FleetServerScore (NATS + operator)".to_owned()
    }

    fn create_interpret(&self) -> Box<dyn Interpret<T>> {
        Box::new(FleetServerInterpret {
            nats: self.nats.create_interpret(),
            operator: self.operator.create_interpret(),
            status: StatusCell::default(),
        })
    }
}

struct FleetServerInterpret<T: Topology> {
    nats: Box<dyn Interpret<T>>,
    operator: Box<dyn Interpret<T>>,
    status: StatusCell,
}

#[async_trait]
impl<T: Topology + 'static> Interpret<T> for FleetServerInterpret<T> {
    async fn execute(
        &self,
        inventory: &Inventory,
        topology: &T,
    ) -> Result<Outcome, InterpretError> {
        self.status
            .track(async {
                let nats = self.nats.execute(inventory, topology).await?;
                let operator = self.operator.execute(inventory, topology).await?;
                let changed = nats.changed() || operator.changed();
                let message = format!("{}; {}", nats.message, operator.message);
                let details = nats.details.into_iter().chain(operator.details);
                Ok(if changed {
                    Outcome::success(message)
                } else {
                    Outcome::noop(message)
                }
                .with_details(details))
            })
            .await
    }

    fn name(&self) -> String {
        "FleetServerScore (NATS + operator)".to_owned()
    }

    fn status(&self) -> InterpretStatus {
        self.status.get()
    }

    fn children(&self) -> Vec<&dyn Interpret<T>> {
        vec![self.nats.as_ref(), self.operator.as_ref()]
    }
}

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

/// NATS + operator.
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

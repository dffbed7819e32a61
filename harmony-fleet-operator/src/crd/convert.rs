//! The resources' specs in the operator's own terms: a `targetSelector` as an index
//! [`Selector`](index::Selector), a `rollout` as a state-machine [`Policy`](rollout::Policy).
//! Traits because the types live in `harmony-fleet-types`, which knows nothing of either.

use super::deployment::{
    OnFailure, RolloutSpec, RolloutStrategy, SelectorOperator, TargetSelector,
};
use crate::index;
use crate::rollout;

/// A `targetSelector` as the index matches it.
pub trait ToIndex {
    /// The selector in the index's terms.
    fn to_index(&self) -> index::Selector;
}

/// A `rollout` as the rollout state machine runs it.
pub trait ToPolicy {
    /// The rollout policy in the state machine's terms.
    fn to_policy(&self) -> rollout::Policy;
}

impl ToIndex for TargetSelector {
    fn to_index(&self) -> index::Selector {
        index::Selector {
            match_labels: self.match_labels.clone(),
            match_expressions: self
                .match_expressions
                .iter()
                .map(|r| index::Requirement {
                    key: r.key.clone(),
                    operator: match r.operator {
                        SelectorOperator::In => index::Operator::In,
                        SelectorOperator::NotIn => index::Operator::NotIn,
                        SelectorOperator::Exists => index::Operator::Exists,
                        SelectorOperator::DoesNotExist => index::Operator::DoesNotExist,
                    },
                    values: r.values.iter().cloned().collect(),
                })
                .collect(),
        }
    }
}

impl ToPolicy for RolloutSpec {
    fn to_policy(&self) -> rollout::Policy {
        let strategy = match self.strategy {
            RolloutStrategy::AllAtOnce => rollout::Strategy::AllAtOnce,
            RolloutStrategy::Batches => rollout::Strategy::Batches(
                self.batches
                    .iter()
                    .map(|b| rollout::Batch {
                        size: match (b.count, b.percent) {
                            (Some(c), _) => rollout::BatchSize::Count(c),
                            (None, Some(p)) => rollout::BatchSize::Percent(p.min(100)),
                            (None, None) => rollout::BatchSize::Rest,
                        },
                        pick: b.pick.clone(),
                    })
                    .collect(),
            ),
        };
        rollout::Policy {
            strategy,
            success_threshold: self.success_threshold.clamp(1, 100),
            max_unavailable: self.max_unavailable,
            min_completed: self.min_completed.max(1),
            max_failed_percent: self.max_failed_percent.min(100),
            on_failure: match self.on_failure {
                OnFailure::Pause => rollout::OnFailure::Pause,
                OnFailure::RollBack => rollout::OnFailure::RollBack,
            },
        }
    }
}

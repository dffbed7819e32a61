//! The [`Score`] trait: a desired state, as plain data.

use std::fmt::Debug;

use crate::interpret::Interpret;
use crate::topology::Topology;

/// A desired state (e.g. "this ConfigMap exists with these keys") that can be made real on a
/// topology of type `T`.
///
/// A Score implements `Score<T>` only for the topologies that have the capabilities it needs
/// (`impl<T: Topology + K8sClient> Score<T> for …`), so running it on the wrong kind of place is
/// a compile error rather than a failure halfway through a deploy. Scores are plain data: they
/// derive `Debug` (and `Clone`/`serde::Serialize` where sensible) and do no I/O themselves; the
/// work happens in the [`Interpret`] they create.
///
/// A Score implemented for a few concrete topologies (rather than for every `T` with a
/// capability) fails to compile elsewhere with a message saying so; one generic over
/// capabilities fails naming the missing capability (see [`crate::capability`]).
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot run on topology `{T}`: there is no `impl Score<{T}> for {Self}`",
    label = "`{T}` lacks what this Score needs",
    note = "a Score is implemented only for the topologies that have the capabilities it needs (adr/0005): pick one it is implemented for (its documentation and the list below name them)"
)]
pub trait Score<T: Topology>: Debug + Send + Sync {
    /// A short human name, unique within a deploy, shown by `--list` and progress lines.
    fn name(&self) -> String;

    /// The interpret that makes this Score real.
    fn create_interpret(&self) -> Box<dyn Interpret<T>>;
}

//! The [`Topology`] trait: a place that runs things (a cluster, this host, …).
//!
//! What a topology can do is expressed by the capability traits it implements (see
//! [`crate::capability`]); the trait itself only knows how to name the place and get it ready.

use async_trait::async_trait;

use crate::interpret::{InterpretError, Outcome};

/// A place Scores are applied to. Chosen at compile time: binaries pick a concrete type, so a
/// Score that needs a capability the type lacks does not compile.
#[async_trait]
pub trait Topology: Send + Sync {
    /// A human name for logs and progress lines.
    fn name(&self) -> &str;

    /// Prepares the place once before any Score runs (connect, check the API answers, start a
    /// local control plane, …). Must have no product-specific side effects: it makes the place
    /// usable, it does not install anything a Score would.
    async fn ensure_ready(&self) -> Result<Outcome, InterpretError>;
}

//! Leader election on a `coordination.k8s.io/v1` Lease, so that of several operator replicas
//! exactly one writes (`desired-state`, statuses, `Device`s, Events) while the others keep
//! their caches warm and take over without a cold start.
//!
//! * [`decide`]: pure — given the Lease as last read and how long it has been unchanged, what
//!   to do: create it, take it, renew it, or follow its holder.
//! * [`lease`]: the [`Elector`] — reads and writes the Lease, campaigns until elected, renews,
//!   and reports the lease lost when it could not renew within the renew deadline.
//!
//! Expiry is judged on this process's clock (how long the Lease's `resourceVersion` has not
//! changed), not on the holder's `renewTime`, so clock skew between nodes cannot make two
//! leaders. A leader that cannot renew for `renew_deadline` (shorter than the lease) stops
//! before anyone else may take the Lease; a stopping leader releases it at once.

pub mod decide;
pub mod lease;

use std::time::Duration;

pub use lease::Elector;

/// Where the Lease is and how it is held.
#[derive(Clone, Debug)]
pub struct LeaderConfig {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease.
    pub name: String,
    /// This replica's identity (the Pod name in a cluster).
    pub identity: String,
    /// How long a Lease not renewed stays held.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up (< `lease_duration`).
    pub renew_deadline: Duration,
    /// How often the Lease is read (followers) or renewed (leader).
    pub retry_period: Duration,
}

impl LeaderConfig {
    /// Name of the Lease the cluster install uses.
    pub const DEFAULT_NAME: &'static str = "harmony-fleet-operator";

    /// The defaults: a 10 s lease, renewed every second, given up after 7 s without renewal.
    /// A killed leader is replaced within about 11 s; a stopped one at once.
    pub fn new(namespace: impl Into<String>, identity: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: Self::DEFAULT_NAME.to_owned(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(10),
            renew_deadline: Duration::from_secs(7),
            retry_period: Duration::from_secs(1),
        }
    }
}

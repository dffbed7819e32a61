//! Pure: one shared copy of each device id and deployment name in the reconcile loop.
//!
//! Every watch event parses its ids afresh, so without this a device's id would be a new
//! string in each map it is stored in, and every map lookup would read and compare the
//! strings. The core swaps each incoming id for its one shared copy first: stored keys and
//! looked-up keys are then the same string, compared by address ([`DeviceId`]'s equality
//! checks that first), and the fleet holds one string per device instead of one per pair.

use std::hash::Hash;

use foldhash::HashSet;

use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};

/// An id whose copies share one string.
pub trait SharedId: Clone + Eq + Hash {
    /// Whether another copy shares this one's string.
    fn is_shared(&self) -> bool;
}

impl SharedId for DeviceId {
    fn is_shared(&self) -> bool {
        DeviceId::is_shared(self)
    }
}

impl SharedId for DeploymentName {
    fn is_shared(&self) -> bool {
        DeploymentName::is_shared(self)
    }
}

/// Smallest size at which [`Interner::prune`] looks for ids nothing else holds.
const PRUNE_FLOOR: usize = 1024;

/// The shared copy of each id seen, kept while anything else holds it.
#[derive(Debug)]
pub struct Interner<T> {
    ids: HashSet<T>,
    /// Size after the last prune: the next one waits until the set doubled.
    kept: usize,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self {
            ids: HashSet::default(),
            kept: 0,
        }
    }
}

impl<T: SharedId> Interner<T> {
    /// The shared copy of `id` (`id` itself the first time it is seen).
    pub fn get(&mut self, id: T) -> T {
        if let Some(shared) = self.ids.get(&id) {
            return shared.clone();
        }
        self.ids.insert(id.clone());
        id
    }

    /// Drops the ids only this interner still holds, once the set doubled since the last
    /// prune (so each prune is paid for by as many new ids). O(ids) when it runs.
    pub fn prune(&mut self) {
        if self.ids.len() < (2 * self.kept).max(PRUNE_FLOOR) {
            return;
        }
        self.ids.retain(SharedId::is_shared);
        self.kept = self.ids.len();
    }

    /// Ids held.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no id is held.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The core's interners.
#[derive(Debug, Default)]
pub struct Ids {
    devices: Interner<DeviceId>,
    deployments: Interner<DeploymentName>,
}

impl Ids {
    /// The shared copy of a device id.
    pub fn device(&mut self, id: DeviceId) -> DeviceId {
        self.devices.get(id)
    }

    /// The shared copy of a deployment name.
    pub fn deployment(&mut self, name: DeploymentName) -> DeploymentName {
        self.deployments.get(name)
    }

    /// [`Interner::prune`] of both.
    pub fn prune(&mut self) {
        self.devices.prune();
        self.deployments.prune();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        s.parse().expect("valid id")
    }

    #[test]
    fn every_copy_of_an_id_is_the_first_one_seen() {
        let mut ids = Interner::default();
        let first = ids.get(id("pi-1"));
        let again = ids.get(id("pi-1"));
        assert_eq!(first, again);
        // The same string: two clones of one, plus the interner's.
        assert!(first.is_shared() && again.is_shared());
        drop(first);
        assert!(again.is_shared(), "the interner still holds it");
        assert_eq!(ids.len(), 1);
    }

    #[test]
    fn a_prune_drops_what_only_the_interner_holds_once_the_set_doubled() {
        let mut ids = Interner::default();
        let held: Vec<DeviceId> = (0..PRUNE_FLOOR / 2)
            .map(|i| ids.get(id(&format!("held-{i}"))))
            .collect();
        for i in 0..PRUNE_FLOOR / 2 - 1 {
            ids.get(id(&format!("gone-{i}")));
        }
        ids.prune();
        assert_eq!(
            ids.len(),
            PRUNE_FLOOR - 1,
            "below the floor: nothing dropped"
        );
        ids.get(id("gone-last"));
        ids.prune();
        assert_eq!(ids.len(), held.len());
        // The next prune waits until the set doubled again.
        ids.get(id("gone-again"));
        ids.prune();
        assert_eq!(ids.len(), held.len() + 1);
    }
}

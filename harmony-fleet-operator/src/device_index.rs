//! The per-device desired-state index (adr/0014): for each device, which deployments it holds
//! a `desired-state` key of and the hash of each payload, kept as the operator writes keys and
//! turned into the index values ([`DesiredIndex`]) the operator writes at key `<device>` before
//! publishing the device's change notice.
//!
//! A device that holds nothing gets an explicit empty index, never a deleted one: agents keep
//! what they run while their index is missing (a recreated bucket not yet rewritten), and
//! remove workloads only when an index says so.
//!
//! Pure bookkeeping, no I/O. Costs: [`DeviceIndexes::set`] is O(log d) for a device holding d
//! deployments; [`DeviceIndexes::take_writes`] is O(dirty devices × d) and skips every device
//! whose index bytes already sit in KV, so a cold start that changes nothing writes nothing.

// The core's maps hash device ids and names a few million times a second: foldhash
// (seeded per process) instead of SipHash (adr/0044).
use foldhash::{HashMap, HashSet};

use bytes::Bytes;
use harmony_fleet_contracts::canonical::ContentHash;
use harmony_fleet_contracts::notice::DesiredIndex;
use harmony_fleet_contracts::{DeploymentName, DeviceId};

/// One index write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IndexWrite {
    /// The device whose index this is.
    pub device: DeviceId,
    /// Canonical index bytes (an empty index when the device holds nothing).
    pub bytes: Bytes,
}

/// Indexes wanted and stored, per device.
#[derive(Debug, Default)]
pub struct DeviceIndexes {
    /// Deployment → payload hash, sorted by deployment: a vector, not a `BTreeMap`, whose
    /// smallest node costs 544 bytes whatever a device holds.
    wanted: HashMap<DeviceId, Vec<(DeploymentName, ContentHash)>>,
    /// Hash of the index bytes KV holds (absent: no index key).
    stored: HashMap<DeviceId, ContentHash>,
    /// Devices whose wanted index may differ from the stored one (a hash set: a cold start
    /// marks a device once per key it loads; sorted only when taken).
    dirty: HashSet<DeviceId>,
}

impl DeviceIndexes {
    /// No devices.
    pub fn new() -> Self {
        Self::default()
    }

    /// `device` holds `hash` for `deployment` in `desired-state` (`None`: no key).
    pub fn set(
        &mut self,
        device: &DeviceId,
        deployment: &DeploymentName,
        hash: Option<&ContentHash>,
    ) {
        let index = self.wanted.entry(device.clone()).or_default();
        let at = index.binary_search_by(|(d, _)| d.cmp(deployment));
        let changed = match (hash, at) {
            (Some(h), Ok(i)) => std::mem::replace(&mut index[i].1, *h) != *h,
            (Some(h), Err(i)) => {
                index.insert(i, (deployment.clone(), *h));
                true
            }
            (None, Ok(i)) => {
                index.remove(i);
                true
            }
            (None, Err(_)) => false,
        };
        if index.is_empty() {
            self.wanted.remove(device);
        } else if changed {
            // Exactly as long as needed: a fleet holds 100k of these.
            index.shrink_to_fit();
        }
        if changed {
            self.dirty.insert(device.clone());
        }
    }

    /// KV holds `bytes` as `device`'s index (read at cold start). Marks the device for a
    /// comparison on the next [`take_writes`](Self::take_writes).
    pub fn load_stored(&mut self, device: DeviceId, bytes: Option<&[u8]>) {
        match bytes {
            Some(b) => self.stored.insert(device.clone(), ContentHash::of_bytes(b)),
            None => self.stored.remove(&device),
        };
        self.dirty.insert(device);
    }

    /// Devices with an index stored.
    pub fn stored_count(&self) -> usize {
        self.stored.len()
    }

    /// Compares every known device (after a cold start, once all keys are loaded).
    pub fn mark_all_dirty(&mut self) {
        let all: Vec<DeviceId> = self
            .wanted
            .keys()
            .chain(self.stored.keys())
            .cloned()
            .collect();
        self.dirty.extend(all);
    }

    /// The index writes needed now, in device order; each is recorded as stored (call
    /// [`failed`](Self::failed) for a write that did not go through).
    pub fn take_writes(&mut self) -> Vec<IndexWrite> {
        let mut writes = Vec::new();
        let mut dirty: Vec<DeviceId> = self.dirty.drain().collect();
        dirty.sort_unstable();
        for device in dirty {
            let bytes = Bytes::from(self.wanted(&device).unwrap_or_default().to_bytes());
            let hash = ContentHash::of_bytes(&bytes);
            if self.stored.get(&device) == Some(&hash) {
                continue;
            }
            self.stored.insert(device.clone(), hash);
            writes.push(IndexWrite { device, bytes });
        }
        writes
    }

    /// A write of [`take_writes`](Self::take_writes) failed: what KV holds is unknown, so the
    /// next call writes it again.
    pub fn failed(&mut self, device: &DeviceId) {
        self.stored.remove(device);
        self.dirty.insert(device.clone());
    }

    /// Whether some device's index may need writing.
    pub fn has_pending(&self) -> bool {
        !self.dirty.is_empty()
    }

    /// The index `device` should hold.
    pub fn wanted(&self, device: &DeviceId) -> Option<DesiredIndex> {
        self.wanted.get(device).map(|index| DesiredIndex {
            deployments: index.iter().cloned().collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dev(s: &str) -> DeviceId {
        s.parse().expect("device")
    }

    fn dep(s: &str) -> DeploymentName {
        s.parse().expect("deployment")
    }

    #[test]
    fn a_new_key_writes_the_index_once() {
        let mut idx = DeviceIndexes::new();
        let h = ContentHash::of_bytes(b"v1");
        idx.set(&dev("pi-1"), &dep("web"), Some(&h));
        let writes = idx.take_writes();
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].device, dev("pi-1"));
        let bytes = writes[0].bytes.clone();
        let index = DesiredIndex::from_bytes(&bytes).expect("decodes");
        assert_eq!(index.deployments.get(&dep("web")), Some(&h));
        // Nothing changed since: nothing to write, even when marked again.
        assert!(idx.take_writes().is_empty());
        idx.set(&dev("pi-1"), &dep("web"), Some(&h));
        idx.mark_all_dirty();
        assert!(idx.take_writes().is_empty());
    }

    #[test]
    fn removing_the_last_deployment_writes_an_empty_index() {
        let mut idx = DeviceIndexes::new();
        let h = ContentHash::of_bytes(b"v1");
        idx.set(&dev("pi-1"), &dep("web"), Some(&h));
        idx.take_writes();
        idx.set(&dev("pi-1"), &dep("web"), None);
        assert_eq!(
            idx.take_writes(),
            vec![IndexWrite {
                device: dev("pi-1"),
                bytes: Bytes::from_static(br#"{"deployments":{}}"#)
            }]
        );
        assert!(idx.wanted(&dev("pi-1")).is_none());
        assert!(idx.take_writes().is_empty());
    }

    #[test]
    fn a_cold_start_that_finds_the_same_bytes_writes_nothing() {
        let mut before = DeviceIndexes::new();
        let h1 = ContentHash::of_bytes(b"a");
        let h2 = ContentHash::of_bytes(b"b");
        before.set(&dev("pi-1"), &dep("web"), Some(&h1));
        before.set(&dev("pi-1"), &dep("api"), Some(&h2));
        let stored = before.take_writes()[0].bytes.clone();

        // A restarted operator loads keys in another order, and the stored index.
        let mut after = DeviceIndexes::new();
        after.set(&dev("pi-1"), &dep("api"), Some(&h2));
        after.load_stored(dev("pi-1"), Some(&stored));
        after.set(&dev("pi-1"), &dep("web"), Some(&h1));
        after.mark_all_dirty();
        assert!(after.take_writes().is_empty());

        // A stale index in KV (written by an older operator) is rewritten, and the index of a
        // device with no keys left becomes the empty index.
        let mut stale = DeviceIndexes::new();
        stale.set(&dev("pi-1"), &dep("web"), Some(&h1));
        stale.load_stored(dev("pi-1"), Some(b"{\"deployments\":{}}"));
        stale.load_stored(dev("pi-2"), Some(&stored));
        stale.mark_all_dirty();
        let writes = stale.take_writes();
        assert_eq!(writes.len(), 2);
        assert_ne!(
            writes[0].bytes,
            Bytes::from_static(br#"{"deployments":{}}"#)
        );
        assert_eq!(
            writes[1].bytes,
            Bytes::from_static(br#"{"deployments":{}}"#)
        );
    }

    #[test]
    fn a_failed_write_is_retried() {
        let mut idx = DeviceIndexes::new();
        let h = ContentHash::of_bytes(b"v1");
        idx.set(&dev("pi-1"), &dep("web"), Some(&h));
        let first = idx.take_writes();
        idx.failed(&dev("pi-1"));
        assert_eq!(idx.take_writes(), first);
        // A failed empty index is retried too.
        idx.set(&dev("pi-1"), &dep("web"), None);
        let empty = idx.take_writes();
        idx.failed(&dev("pi-1"));
        assert_eq!(idx.take_writes(), empty);
    }
}

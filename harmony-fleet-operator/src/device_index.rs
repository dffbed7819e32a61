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

use crate::revisions::{RevId, Revisions};

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
    /// smallest node costs 544 bytes whatever a device holds; the hash is an id into
    /// `revisions` (24 bytes a pair instead of 48: a fleet holds 1.1M pairs).
    wanted: HashMap<DeviceId, Vec<(DeploymentName, RevId)>>,
    /// The payload hashes `wanted` refers to.
    revisions: Revisions<ContentHash>,
    /// Hash of the index bytes KV holds (absent: no index key).
    stored: HashMap<DeviceId, ContentHash>,
    /// Devices whose wanted index may differ from the stored one (a hash set: a cold start
    /// marks a device once per key it loads; sorted only when taken).
    dirty: HashSet<DeviceId>,
    /// Dirty devices taken in one round and not yet compared, in reverse device order (the
    /// next is last): a round larger than one batch goes out in several.
    queue: Vec<DeviceId>,
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
        let revisions = &mut self.revisions;
        let index = self.wanted.entry(device.clone()).or_default();
        let at = index.binary_search_by(|(d, _)| d.cmp(deployment));
        let changed = match (hash, at) {
            (Some(h), Ok(i)) => {
                let same = revisions.get(index[i].1) == Some(h);
                if !same {
                    let id = revisions.acquire(h);
                    revisions.release(std::mem::replace(&mut index[i].1, id));
                }
                !same
            }
            (Some(h), Err(i)) => {
                // Exactly as long as needed: a fleet holds 100k of these.
                index.reserve_exact(1);
                index.insert(i, (deployment.clone(), revisions.acquire(h)));
                true
            }
            (None, Ok(i)) => {
                let (_, id) = index.remove(i);
                revisions.release(id);
                true
            }
            (None, Err(_)) => false,
        };
        if index.is_empty() {
            self.wanted.remove(device);
        }
        if changed {
            self.dirty.insert(device.clone());
        }
    }

    /// KV holds an index whose bytes hash to `stored` as `device`'s index (`None`: no index
    /// key), read at a cold start or followed by a standby. Marks the device for a comparison
    /// on the next [`take_writes`](Self::take_writes).
    pub fn load_stored(&mut self, device: DeviceId, stored: Option<ContentHash>) {
        match stored {
            Some(hash) => self.stored.insert(device.clone(), hash),
            None => self.stored.remove(&device),
        };
        self.dirty.insert(device);
    }

    /// KV holds an index naming `deployments` (sorted by name, as an index lists them), whose
    /// bytes hash to `stored`: read at a checkpoint (adr/0051), it is what `desired-state`
    /// holds for the device. Taken whole and not marked for a comparison: what the device
    /// should hold is what it holds until a key of it changes. O(its deployments).
    pub fn load_listed(
        &mut self,
        device: DeviceId,
        stored: ContentHash,
        deployments: Vec<(DeploymentName, ContentHash)>,
    ) {
        if self.wanted.contains_key(&device) {
            // Keys of the device came first: merge, and compare.
            for (deployment, hash) in &deployments {
                self.set(&device, deployment, Some(hash));
            }
            self.load_stored(device, Some(stored));
            return;
        }
        debug_assert!(deployments.is_sorted_by(|a, b| a.0 < b.0));
        self.stored.insert(device.clone(), stored);
        if !deployments.is_empty() {
            let mut index = Vec::with_capacity(deployments.len());
            for (deployment, hash) in deployments {
                index.push((deployment, self.revisions.acquire(&hash)));
            }
            self.wanted.insert(device, index);
        }
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

    /// Up to `limit` index writes needed now, in device order; each is recorded as stored
    /// (call [`failed`](Self::failed) for a write that did not go through). The dirty devices
    /// are taken in rounds: each call goes on with the round under way, so a device marked
    /// again meanwhile waits for the next round (and is skipped there when unchanged).
    pub fn take_writes(&mut self, limit: usize) -> Vec<IndexWrite> {
        if self.queue.is_empty() {
            self.queue = self.dirty.drain().collect();
            self.queue.sort_unstable_by(|a, b| b.cmp(a));
        }
        let mut writes = Vec::new();
        while writes.len() < limit {
            let Some(device) = self.queue.pop() else {
                break;
            };
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
        !self.dirty.is_empty() || !self.queue.is_empty()
    }

    /// The index `device` should hold.
    pub fn wanted(&self, device: &DeviceId) -> Option<DesiredIndex> {
        self.wanted.get(device).map(|index| DesiredIndex {
            deployments: index
                .iter()
                .filter_map(|(deployment, id)| {
                    Some((deployment.clone(), *self.revisions.get(*id)?))
                })
                .collect(),
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
        let writes = idx.take_writes(usize::MAX);
        assert_eq!(writes.len(), 1);
        assert_eq!(writes[0].device, dev("pi-1"));
        let bytes = writes[0].bytes.clone();
        let index = DesiredIndex::from_bytes(&bytes).expect("decodes");
        assert_eq!(index.deployments.get(&dep("web")), Some(&h));
        // Nothing changed since: nothing to write, even when marked again.
        assert!(idx.take_writes(usize::MAX).is_empty());
        idx.set(&dev("pi-1"), &dep("web"), Some(&h));
        idx.mark_all_dirty();
        assert!(idx.take_writes(usize::MAX).is_empty());
    }

    #[test]
    fn removing_the_last_deployment_writes_an_empty_index() {
        let mut idx = DeviceIndexes::new();
        let h = ContentHash::of_bytes(b"v1");
        idx.set(&dev("pi-1"), &dep("web"), Some(&h));
        idx.take_writes(usize::MAX);
        idx.set(&dev("pi-1"), &dep("web"), None);
        assert_eq!(
            idx.take_writes(usize::MAX),
            vec![IndexWrite {
                device: dev("pi-1"),
                bytes: Bytes::from_static(br#"{"deployments":{}}"#)
            }]
        );
        assert!(idx.wanted(&dev("pi-1")).is_none());
        assert!(idx.take_writes(usize::MAX).is_empty());
    }

    #[test]
    fn a_cold_start_that_finds_the_same_bytes_writes_nothing() {
        let mut before = DeviceIndexes::new();
        let h1 = ContentHash::of_bytes(b"a");
        let h2 = ContentHash::of_bytes(b"b");
        before.set(&dev("pi-1"), &dep("web"), Some(&h1));
        before.set(&dev("pi-1"), &dep("api"), Some(&h2));
        let stored = before.take_writes(usize::MAX)[0].bytes.clone();

        // A restarted operator loads keys in another order, and the stored index.
        let mut after = DeviceIndexes::new();
        after.set(&dev("pi-1"), &dep("api"), Some(&h2));
        after.load_stored(dev("pi-1"), Some(ContentHash::of_bytes(&stored)));
        after.set(&dev("pi-1"), &dep("web"), Some(&h1));
        after.mark_all_dirty();
        assert!(after.take_writes(usize::MAX).is_empty());

        // A stale index in KV (written by an older operator) is rewritten, and the index of a
        // device with no keys left becomes the empty index.
        let mut stale = DeviceIndexes::new();
        stale.set(&dev("pi-1"), &dep("web"), Some(&h1));
        stale.load_stored(
            dev("pi-1"),
            Some(ContentHash::of_bytes(b"{\"deployments\":{}}")),
        );
        stale.load_stored(dev("pi-2"), Some(ContentHash::of_bytes(&stored)));
        stale.mark_all_dirty();
        let writes = stale.take_writes(usize::MAX);
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
    fn an_index_read_at_a_checkpoint_is_taken_whole_and_written_only_once_changed() {
        let (h1, h2) = (ContentHash::of_bytes(b"a"), ContentHash::of_bytes(b"b"));
        let mut before = DeviceIndexes::new();
        before.set(&dev("pi-1"), &dep("api"), Some(&h2));
        before.set(&dev("pi-1"), &dep("web"), Some(&h1));
        let stored = before.take_writes(usize::MAX)[0].bytes.clone();

        let mut after = DeviceIndexes::new();
        after.load_listed(
            dev("pi-1"),
            ContentHash::of_bytes(&stored),
            vec![(dep("api"), h2), (dep("web"), h1)],
        );
        assert!(!after.has_pending(), "nothing to compare");
        assert_eq!(after.wanted(&dev("pi-1")), before.wanted(&dev("pi-1")));
        after.set(&dev("pi-1"), &dep("web"), Some(&h2));
        let writes = after.take_writes(usize::MAX);
        assert_eq!(writes.len(), 1);
        let index = DesiredIndex::from_bytes(&writes[0].bytes).expect("decodes");
        assert_eq!(index.deployments.len(), 2, "the listed api is kept");

        // Keys of the device loaded before its index: merged and compared.
        let mut merged = DeviceIndexes::new();
        merged.set(&dev("pi-1"), &dep("web"), Some(&h1));
        merged.load_listed(
            dev("pi-1"),
            ContentHash::of_bytes(&stored),
            vec![(dep("api"), h2)],
        );
        assert!(merged.take_writes(usize::MAX).is_empty(), "same bytes");
        assert_eq!(merged.wanted(&dev("pi-1")), before.wanted(&dev("pi-1")));
    }

    #[test]
    fn a_round_goes_out_in_batches_in_device_order() {
        let h = ContentHash::of_bytes(b"v1");
        let mut idx = DeviceIndexes::new();
        for d in ["pi-5", "pi-3", "pi-1", "pi-4", "pi-2"] {
            idx.set(&dev(d), &dep("web"), Some(&h));
        }
        let devices = |writes: Vec<IndexWrite>| -> Vec<String> {
            writes.into_iter().map(|w| w.device.to_string()).collect()
        };
        assert_eq!(devices(idx.take_writes(2)), ["pi-1", "pi-2"]);
        // Marked during the round: waits for the next one.
        idx.set(&dev("pi-1"), &dep("api"), Some(&h));
        assert_eq!(devices(idx.take_writes(2)), ["pi-3", "pi-4"]);
        assert_eq!(devices(idx.take_writes(2)), ["pi-5"]);
        assert!(idx.has_pending());
        assert_eq!(devices(idx.take_writes(2)), ["pi-1"]);
        assert!(!idx.has_pending());
        assert!(idx.take_writes(2).is_empty());
    }

    #[test]
    fn a_failed_write_is_retried() {
        let mut idx = DeviceIndexes::new();
        let h = ContentHash::of_bytes(b"v1");
        idx.set(&dev("pi-1"), &dep("web"), Some(&h));
        let first = idx.take_writes(usize::MAX);
        idx.failed(&dev("pi-1"));
        assert_eq!(idx.take_writes(usize::MAX), first);
        // A failed empty index is retried too.
        idx.set(&dev("pi-1"), &dep("web"), None);
        let empty = idx.take_writes(usize::MAX);
        idx.failed(&dev("pi-1"));
        assert_eq!(idx.take_writes(usize::MAX), empty);
    }
}

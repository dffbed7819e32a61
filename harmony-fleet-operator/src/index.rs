//! The targeting index: which devices each Deployment's label selector matches.
//!
//! Pure data structure, no I/O. It is fed device label sets (from `device-info`) and Deployment
//! selectors (from the CR watcher) and answers every update with the exact list of
//! `(device, deployment)` pairs that started or stopped matching. The controller turns those
//! changes into `desired-state` writes and deletes.
//!
//! # Complexity
//!
//! Nothing here is O(deployments × devices) per event:
//!
//! * **Device added / relabelled / removed**: candidate selectors are looked up through an
//!   inverted index keyed by each of the device's labels (`key=value` anchors and `key` anchors)
//!   plus the *broad* selectors that have no anchor (only `NotIn` / `DoesNotExist` requirements,
//!   or empty). Cost: O(Σ over the device's labels of the selectors anchored there + broad
//!   selectors + deployments previously matching the device), each candidate evaluated once.
//! * **Deployment added / selector changed**: the candidate devices come from the smallest
//!   posting list among the selector's anchors (`key=value` from `matchLabels`, the union of
//!   `In` values, or `Exists` keys); only broad selectors scan every device, and their result
//!   is that large anyway. Cost: O(candidates + previously matched devices).
//! * **Deployment removed**: O(previously matched devices).
//!
//! Memory is O(distinct label sets × labels + devices + Σ matched pairs): devices carrying
//! the same labels share one copy of them ([`LabelSets`]).

use std::collections::{BTreeMap, BTreeSet};

// The core's maps hash device ids and names a few million times a second: foldhash
// (seeded per process) instead of SipHash (adr/0044).
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::hash::Hash;
use std::sync::Arc;

/// Labels of one device, as the agent reports them.
pub type Labels = BTreeMap<String, String>;

/// Label sets held once however many devices carry them. A fleet repeats a handful of sets
/// (site, hardware, channel), while one small `BTreeMap` of labels costs over 600 bytes: at
/// 100k devices the copies were a third of the operator's memory.
#[derive(Debug, Default)]
pub struct LabelSets {
    sets: HashSet<Arc<Labels>>,
}

impl LabelSets {
    /// The shared copy of `labels`.
    pub fn intern(&mut self, labels: Labels) -> Arc<Labels> {
        if let Some(shared) = self.sets.get(&labels) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(labels);
        self.sets.insert(Arc::clone(&shared));
        shared
    }

    /// A holder let go of `labels`: forgotten once only this table holds them.
    pub fn release(&mut self, labels: Arc<Labels>) {
        if Arc::strong_count(&labels) == 2 {
            self.sets.remove(&*labels);
        }
    }

    /// Distinct label sets held.
    pub fn len(&self) -> usize {
        self.sets.len()
    }

    /// Whether no label set is held.
    pub fn is_empty(&self) -> bool {
        self.sets.is_empty()
    }
}

/// Labels a selector is evaluated against.
pub trait LabelLookup {
    /// The value of label `key`, if the device carries it.
    fn label(&self, key: &str) -> Option<&str>;
}

impl LabelLookup for Labels {
    fn label(&self, key: &str) -> Option<&str> {
        self.get(key).map(String::as_str)
    }
}

/// A known device's labels: its stored (shared) set plus its identity label, which the index
/// does not store per device (see [`TargetIndex::with_identity_label`]).
#[derive(Clone, Copy, Debug)]
pub struct DeviceLabels<'a> {
    shared: &'a Labels,
    identity: Option<(&'a str, &'a str)>,
}

impl<'a> DeviceLabels<'a> {
    /// Labels without an identity label.
    pub fn plain(labels: &'a Labels) -> Self {
        Self {
            shared: labels,
            identity: None,
        }
    }

    /// Every label, as an owned map.
    pub fn to_labels(&self) -> Labels {
        let mut out = self.shared.clone();
        if let Some((k, v)) = self.identity {
            out.entry(k.to_owned()).or_insert_with(|| v.to_owned());
        }
        out
    }
}

impl LabelLookup for DeviceLabels<'_> {
    fn label(&self, key: &str) -> Option<&str> {
        self.shared
            .label(key)
            .or_else(|| self.identity.and_then(|(k, v)| (k == key).then_some(v)))
    }
}

/// Operator of a set-based selector requirement (the Kubernetes `LabelSelector` semantics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Operator {
    /// The label is present and its value is one of `values`.
    In,
    /// The label is absent, or its value is none of `values`.
    NotIn,
    /// The label is present, whatever its value.
    Exists,
    /// The label is absent.
    DoesNotExist,
}

/// One `matchExpressions` entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Requirement {
    /// Label key the requirement is about.
    pub key: String,
    /// How the key and values are compared.
    pub operator: Operator,
    /// Values for `In` / `NotIn`; empty for the existence operators.
    pub values: BTreeSet<String>,
}

impl Requirement {
    fn matches<L: LabelLookup + ?Sized>(&self, labels: &L) -> bool {
        let value = labels.label(&self.key);
        match self.operator {
            Operator::In => value.is_some_and(|v| self.values.contains(v)),
            Operator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            Operator::Exists => value.is_some(),
            Operator::DoesNotExist => value.is_none(),
        }
    }
}

/// A label selector: every `match_labels` pair and every requirement must hold (logical AND).
/// An empty selector matches every device, like Kubernetes' `{}` selector.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Selector {
    /// Exact `key=value` pairs.
    pub match_labels: BTreeMap<String, String>,
    /// Set-based requirements.
    pub match_expressions: Vec<Requirement>,
}

impl Selector {
    /// Whether a device with `labels` is selected.
    pub fn matches<L: LabelLookup + ?Sized>(&self, labels: &L) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.label(k) == Some(v.as_str()))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    /// The anchor under which the selector is filed in the inverted index: a label (or set of
    /// labels, or a key) that every matching device must carry.
    fn anchor(&self) -> Anchor {
        if let Some((k, v)) = self.match_labels.iter().next() {
            return Anchor::Pairs(vec![(k.clone(), v.clone())]);
        }
        let mut key_anchor = None;
        for r in &self.match_expressions {
            match r.operator {
                Operator::In => {
                    return Anchor::Pairs(
                        r.values
                            .iter()
                            .map(|v| (r.key.clone(), v.clone()))
                            .collect(),
                    );
                }
                Operator::Exists if key_anchor.is_none() => key_anchor = Some(r.key.clone()),
                _ => {}
            }
        }
        key_anchor.map_or(Anchor::Broad, Anchor::Key)
    }
}

/// Where a selector is filed. A device can only match a selector if it carries one of the
/// anchor's pairs (or the anchor's key); broad selectors are checked against every device.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Anchor {
    Pairs(Vec<(String, String)>),
    Key(String),
    Broad,
}

/// A `(device, deployment)` pair that started or stopped matching.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Change<D, K> {
    /// The device now matches the deployment's selector: it needs a `desired-state` key.
    Matched {
        /// The device.
        device: D,
        /// The deployment.
        deployment: K,
    },
    /// The device no longer matches: its `desired-state` key must go.
    Unmatched {
        /// The device.
        device: D,
        /// The deployment.
        deployment: K,
    },
}

/// Incremental index from selectors to matched device sets.
///
/// `D` is the device id, `K` the deployment key; both are cheap to clone in practice.
#[derive(Debug)]
pub struct TargetIndex<D, K> {
    /// Each device's labels without its identity label, shared between devices.
    devices: HashMap<D, Arc<Labels>>,
    label_sets: LabelSets,
    /// The label every device carries with its own id as the value, never stored.
    identity_key: Option<String>,
    devices_by_pair: HashMap<(String, String), HashSet<D>>,
    devices_by_key: HashMap<String, HashSet<D>>,
    selectors: HashMap<K, (Selector, Anchor)>,
    /// Selectors anchored on `key=value`, by key then value: looked up by borrowed strings.
    selectors_by_pair: HashMap<String, HashMap<String, HashSet<K>>>,
    selectors_by_key: HashMap<String, HashSet<K>>,
    broad_selectors: HashSet<K>,
    matched: HashMap<K, BTreeSet<D>>,
    /// Deployments matching each device, sorted: a device is matched by a handful, and a
    /// vector of them costs a fraction of a hash set.
    matched_by_device: HashMap<D, Vec<K>>,
}

impl<D, K> Default for TargetIndex<D, K> {
    fn default() -> Self {
        Self {
            devices: HashMap::new(),
            label_sets: LabelSets::default(),
            identity_key: None,
            devices_by_pair: HashMap::new(),
            devices_by_key: HashMap::new(),
            selectors: HashMap::new(),
            selectors_by_pair: HashMap::new(),
            selectors_by_key: HashMap::new(),
            broad_selectors: HashSet::new(),
            matched: HashMap::new(),
            matched_by_device: HashMap::new(),
        }
    }
}

impl<D, K> TargetIndex<D, K>
where
    D: Clone + Ord + Hash + AsRef<str> + for<'a> TryFrom<&'a str>,
    K: Clone + Ord + Hash,
{
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty index where every device carries label `key` with its own id as the value
    /// (`fleet.nationtech.io/device`). It is matched and anchored like any label but not
    /// stored per device: a label unique to each device would keep devices with otherwise
    /// equal labels from sharing them, and give every device a posting list of its own.
    pub fn with_identity_label(key: impl Into<String>) -> Self {
        Self {
            identity_key: Some(key.into()),
            ..Self::default()
        }
    }

    fn view<'a>(&'a self, device: &'a D, shared: &'a Labels) -> DeviceLabels<'a> {
        DeviceLabels {
            shared,
            identity: self.identity_key.as_deref().map(|k| (k, device.as_ref())),
        }
    }

    /// Number of known devices.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Labels of a known device.
    pub fn labels<'a>(&'a self, device: &'a D) -> Option<DeviceLabels<'a>> {
        self.devices.get(device).map(|l| self.view(device, l))
    }

    /// Distinct label sets among the known devices.
    pub fn label_set_count(&self) -> usize {
        self.label_sets.len()
    }

    /// Devices currently matched by `deployment`, in device order.
    pub fn matched(&self, deployment: &K) -> impl Iterator<Item = &D> {
        self.matched.get(deployment).into_iter().flatten()
    }

    /// Number of devices currently matched by `deployment`.
    pub fn matched_count(&self, deployment: &K) -> usize {
        self.matched.get(deployment).map_or(0, BTreeSet::len)
    }

    /// Whether `device` is matched by `deployment`.
    pub fn is_matched(&self, deployment: &K, device: &D) -> bool {
        self.matched
            .get(deployment)
            .is_some_and(|set| set.contains(device))
    }

    /// Deployments currently matching `device`.
    pub fn deployments_of(&self, device: &D) -> impl Iterator<Item = &K> {
        self.matched_by_device.get(device).into_iter().flatten()
    }

    /// Adds a device or replaces its labels. Returns the pairs that changed.
    pub fn upsert_device(&mut self, device: D, mut labels: Labels) -> Vec<Change<D, K>> {
        if let Some(key) = &self.identity_key
            && labels.get(key).map(String::as_str) == Some(device.as_ref())
        {
            labels.remove(key);
        }
        if self.devices.get(&device).is_some_and(|l| **l == labels) {
            return Vec::new();
        }
        if let Some(old) = self.devices.remove(&device) {
            self.unfile_device(&device, &old);
            self.label_sets.release(old);
        }
        let labels = self.label_sets.intern(labels);
        self.file_device(&device, &labels);

        let mut candidates: HashSet<&K> = self.broad_selectors.iter().collect();
        let identity = self.identity_key.as_deref().map(|k| (k, device.as_ref()));
        let pairs = labels.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        for (k, v) in pairs.chain(identity) {
            if let Some(set) = self
                .selectors_by_pair
                .get(k)
                .and_then(|values| values.get(v))
            {
                candidates.extend(set);
            }
            if let Some(set) = self.selectors_by_key.get(k) {
                candidates.extend(set);
            }
        }
        let mut now: Vec<K> = candidates
            .into_iter()
            .filter(|k| {
                self.selectors
                    .get(*k)
                    .is_some_and(|(s, _)| s.matches(&self.view(&device, &labels)))
            })
            .cloned()
            .collect();
        now.sort_unstable();
        self.devices.insert(device.clone(), labels);
        self.apply_device_matches(device, now)
    }

    /// Forgets a device. Returns the pairs that stopped matching.
    pub fn remove_device(&mut self, device: &D) -> Vec<Change<D, K>> {
        let Some(old) = self.devices.remove(device) else {
            return Vec::new();
        };
        self.unfile_device(device, &old);
        self.label_sets.release(old);
        self.apply_device_matches(device.clone(), Vec::new())
    }

    /// Adds a deployment or replaces its selector. Returns the pairs that changed.
    pub fn upsert_deployment(&mut self, deployment: K, selector: Selector) -> Vec<Change<D, K>> {
        if self
            .selectors
            .get(&deployment)
            .is_some_and(|(s, _)| *s == selector)
        {
            return Vec::new();
        }
        if let Some((_, anchor)) = self.selectors.remove(&deployment) {
            self.unfile_selector(&deployment, &anchor);
        }
        let anchor = selector.anchor();
        let now: BTreeSet<D> = self
            .candidate_devices(&anchor)
            .filter(|d| {
                self.devices
                    .get(*d)
                    .is_some_and(|labels| selector.matches(&self.view(d, labels)))
            })
            .cloned()
            .collect();
        self.file_selector(&deployment, &anchor);
        self.selectors
            .insert(deployment.clone(), (selector, anchor));
        self.apply_deployment_matches(deployment, now)
    }

    /// Forgets a deployment. Returns the pairs that stopped matching.
    pub fn remove_deployment(&mut self, deployment: &K) -> Vec<Change<D, K>> {
        let Some((_, anchor)) = self.selectors.remove(deployment) else {
            return Vec::new();
        };
        self.unfile_selector(deployment, &anchor);
        self.apply_deployment_matches(deployment.clone(), BTreeSet::new())
    }

    fn candidate_devices<'a>(&'a self, anchor: &Anchor) -> Box<dyn Iterator<Item = &'a D> + 'a> {
        let is_identity = |key: &str| self.identity_key.as_deref() == Some(key);
        match anchor {
            Anchor::Pairs(pairs) => {
                // matchLabels anchors hold one pair; `In` anchors are a union over values.
                let sets: Vec<&HashSet<D>> = pairs
                    .iter()
                    .filter_map(|p| self.devices_by_pair.get(p))
                    .collect();
                // The identity label's posting lists are the devices themselves.
                let by_id: Vec<&D> = pairs
                    .iter()
                    .filter(|(k, _)| is_identity(k))
                    .filter_map(|(_, v)| {
                        let id = D::try_from(v.as_str()).ok()?;
                        self.devices.get_key_value(&id).map(|(d, _)| d)
                    })
                    .collect();
                Box::new(sets.into_iter().flatten().chain(by_id))
            }
            Anchor::Key(key) if is_identity(key) => Box::new(self.devices.keys()),
            Anchor::Key(key) => Box::new(self.devices_by_key.get(key).into_iter().flatten()),
            Anchor::Broad => Box::new(self.devices.keys()),
        }
    }

    fn file_device(&mut self, device: &D, labels: &Labels) {
        for (k, v) in labels {
            self.devices_by_pair
                .entry((k.clone(), v.clone()))
                .or_default()
                .insert(device.clone());
            self.devices_by_key
                .entry(k.clone())
                .or_default()
                .insert(device.clone());
        }
    }

    fn unfile_device(&mut self, device: &D, labels: &Labels) {
        for (k, v) in labels {
            let pair = (k.clone(), v.clone());
            if let Some(set) = self.devices_by_pair.get_mut(&pair) {
                set.remove(device);
                if set.is_empty() {
                    self.devices_by_pair.remove(&pair);
                }
            }
            if let Some(set) = self.devices_by_key.get_mut(k) {
                set.remove(device);
                if set.is_empty() {
                    self.devices_by_key.remove(k);
                }
            }
        }
    }

    fn file_selector(&mut self, deployment: &K, anchor: &Anchor) {
        match anchor {
            Anchor::Pairs(pairs) => {
                for (k, v) in pairs {
                    self.selectors_by_pair
                        .entry(k.clone())
                        .or_default()
                        .entry(v.clone())
                        .or_default()
                        .insert(deployment.clone());
                }
            }
            Anchor::Key(key) => {
                self.selectors_by_key
                    .entry(key.clone())
                    .or_default()
                    .insert(deployment.clone());
            }
            Anchor::Broad => {
                self.broad_selectors.insert(deployment.clone());
            }
        }
    }

    fn unfile_selector(&mut self, deployment: &K, anchor: &Anchor) {
        match anchor {
            Anchor::Pairs(pairs) => {
                for (k, v) in pairs {
                    let Some(values) = self.selectors_by_pair.get_mut(k) else {
                        continue;
                    };
                    if let Some(set) = values.get_mut(v) {
                        set.remove(deployment);
                        if set.is_empty() {
                            values.remove(v);
                        }
                    }
                    if values.is_empty() {
                        self.selectors_by_pair.remove(k);
                    }
                }
            }
            Anchor::Key(key) => {
                if let Some(set) = self.selectors_by_key.get_mut(key) {
                    set.remove(deployment);
                    if set.is_empty() {
                        self.selectors_by_key.remove(key);
                    }
                }
            }
            Anchor::Broad => {
                self.broad_selectors.remove(deployment);
            }
        }
    }

    /// `now`: the deployments matching `device`, sorted.
    fn apply_device_matches(&mut self, device: D, mut now: Vec<K>) -> Vec<Change<D, K>> {
        let before = self.matched_by_device.remove(&device).unwrap_or_default();
        let mut changes = Vec::new();
        for k in sorted_difference(&before, &now) {
            if let Some(set) = self.matched.get_mut(k) {
                set.remove(&device);
            }
            changes.push(Change::Unmatched {
                device: device.clone(),
                deployment: k.clone(),
            });
        }
        for k in sorted_difference(&now, &before) {
            self.matched
                .entry(k.clone())
                .or_default()
                .insert(device.clone());
            changes.push(Change::Matched {
                device: device.clone(),
                deployment: k.clone(),
            });
        }
        if !now.is_empty() {
            now.shrink_to_fit();
            self.matched_by_device.insert(device, now);
        }
        changes
    }

    fn apply_deployment_matches(&mut self, deployment: K, now: BTreeSet<D>) -> Vec<Change<D, K>> {
        let before = self.matched.remove(&deployment).unwrap_or_default();
        let mut changes = Vec::new();
        for d in before.difference(&now) {
            if let Some(set) = self.matched_by_device.get_mut(d) {
                if let Ok(at) = set.binary_search(&deployment) {
                    set.remove(at);
                }
                if set.is_empty() {
                    self.matched_by_device.remove(d);
                }
            }
            changes.push(Change::Unmatched {
                device: d.clone(),
                deployment: deployment.clone(),
            });
        }
        for d in now.difference(&before) {
            let set = self.matched_by_device.entry(d.clone()).or_default();
            if let Err(at) = set.binary_search(&deployment) {
                // Exactly as long as needed: a fleet holds 100k of these.
                set.reserve_exact(1);
                set.insert(at, deployment.clone());
            }
            changes.push(Change::Matched {
                device: d.clone(),
                deployment: deployment.clone(),
            });
        }
        if !now.is_empty() || self.selectors.contains_key(&deployment) {
            self.matched.insert(deployment, now);
        }
        changes
    }
}

/// The items of sorted `a` that sorted `b` lacks, in order.
fn sorted_difference<'a, T: Ord>(a: &'a [T], b: &'a [T]) -> impl Iterator<Item = &'a T> {
    a.iter().filter(move |x| b.binary_search(x).is_err())
}

#[cfg(test)]
mod tests;

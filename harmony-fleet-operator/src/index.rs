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
//! Memory is O(devices × labels + Σ matched pairs).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::hash::Hash;

/// Labels of one device, as the agent reports them.
pub type Labels = BTreeMap<String, String>;

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
    fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(&self.key);
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
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(k) == Some(v))
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
    devices: HashMap<D, Labels>,
    devices_by_pair: HashMap<(String, String), HashSet<D>>,
    devices_by_key: HashMap<String, HashSet<D>>,
    selectors: HashMap<K, (Selector, Anchor)>,
    selectors_by_pair: HashMap<(String, String), HashSet<K>>,
    selectors_by_key: HashMap<String, HashSet<K>>,
    broad_selectors: HashSet<K>,
    matched: HashMap<K, BTreeSet<D>>,
    matched_by_device: HashMap<D, HashSet<K>>,
}

impl<D, K> Default for TargetIndex<D, K> {
    fn default() -> Self {
        Self {
            devices: HashMap::new(),
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
    D: Clone + Ord + Hash,
    K: Clone + Ord + Hash,
{
    /// An empty index.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of known devices.
    pub fn device_count(&self) -> usize {
        self.devices.len()
    }

    /// Labels of a known device.
    pub fn labels(&self, device: &D) -> Option<&Labels> {
        self.devices.get(device)
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
    pub fn upsert_device(&mut self, device: D, labels: Labels) -> Vec<Change<D, K>> {
        if self.devices.get(&device) == Some(&labels) {
            return Vec::new();
        }
        if let Some(old) = self.devices.remove(&device) {
            self.unfile_device(&device, &old);
        }
        self.file_device(&device, &labels);

        let mut candidates: HashSet<&K> = self.broad_selectors.iter().collect();
        for (k, v) in &labels {
            // Lookups by borrowed tuple need an owned key; the clone is per label, not per
            // selector, so it stays within the documented bound.
            if let Some(set) = self.selectors_by_pair.get(&(k.clone(), v.clone())) {
                candidates.extend(set);
            }
            if let Some(set) = self.selectors_by_key.get(k) {
                candidates.extend(set);
            }
        }
        let now: BTreeSet<K> = candidates
            .into_iter()
            .filter(|k| {
                self.selectors
                    .get(*k)
                    .is_some_and(|(s, _)| s.matches(&labels))
            })
            .cloned()
            .collect();
        self.devices.insert(device.clone(), labels);
        self.apply_device_matches(device, now)
    }

    /// Forgets a device. Returns the pairs that stopped matching.
    pub fn remove_device(&mut self, device: &D) -> Vec<Change<D, K>> {
        let Some(old) = self.devices.remove(device) else {
            return Vec::new();
        };
        self.unfile_device(device, &old);
        self.apply_device_matches(device.clone(), BTreeSet::new())
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
                    .is_some_and(|labels| selector.matches(labels))
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
        match anchor {
            Anchor::Pairs(pairs) => {
                // matchLabels anchors hold one pair; `In` anchors are a union over values.
                let sets: Vec<&HashSet<D>> = pairs
                    .iter()
                    .filter_map(|p| self.devices_by_pair.get(p))
                    .collect();
                Box::new(sets.into_iter().flatten())
            }
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
                for p in pairs {
                    self.selectors_by_pair
                        .entry(p.clone())
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
                for p in pairs {
                    if let Some(set) = self.selectors_by_pair.get_mut(p) {
                        set.remove(deployment);
                        if set.is_empty() {
                            self.selectors_by_pair.remove(p);
                        }
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

    fn apply_device_matches(&mut self, device: D, now: BTreeSet<K>) -> Vec<Change<D, K>> {
        let before: BTreeSet<K> = self
            .matched_by_device
            .remove(&device)
            .map(|s| s.into_iter().collect())
            .unwrap_or_default();
        let mut changes = Vec::new();
        for k in before.difference(&now) {
            if let Some(set) = self.matched.get_mut(k) {
                set.remove(&device);
            }
            changes.push(Change::Unmatched {
                device: device.clone(),
                deployment: k.clone(),
            });
        }
        for k in now.difference(&before) {
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
            self.matched_by_device
                .insert(device, now.into_iter().collect());
        }
        changes
    }

    fn apply_deployment_matches(&mut self, deployment: K, now: BTreeSet<D>) -> Vec<Change<D, K>> {
        let before = self.matched.remove(&deployment).unwrap_or_default();
        let mut changes = Vec::new();
        for d in before.difference(&now) {
            if let Some(set) = self.matched_by_device.get_mut(d) {
                set.remove(&deployment);
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
            self.matched_by_device
                .entry(d.clone())
                .or_default()
                .insert(deployment.clone());
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

#[cfg(test)]
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    type Index = TargetIndex<String, String>;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn eq(pairs: &[(&str, &str)]) -> Selector {
        Selector {
            match_labels: labels(pairs),
            match_expressions: Vec::new(),
        }
    }

    fn expr(key: &str, operator: Operator, values: &[&str]) -> Selector {
        Selector {
            match_labels: BTreeMap::new(),
            match_expressions: vec![Requirement {
                key: key.to_owned(),
                operator,
                values: values.iter().map(|v| (*v).to_owned()).collect(),
            }],
        }
    }

    fn matched(device: &str, deployment: &str) -> Change<String, String> {
        Change::Matched {
            device: device.into(),
            deployment: deployment.into(),
        }
    }

    fn unmatched(device: &str, deployment: &str) -> Change<String, String> {
        Change::Unmatched {
            device: device.into(),
            deployment: deployment.into(),
        }
    }

    fn sorted(mut v: Vec<Change<String, String>>) -> Vec<Change<String, String>> {
        v.sort();
        v
    }

    #[test]
    fn selector_semantics_follow_kubernetes() {
        let l = labels(&[("site", "plant-3"), ("arch", "arm64")]);
        assert!(Selector::default().matches(&l));
        assert!(eq(&[("site", "plant-3")]).matches(&l));
        assert!(!eq(&[("site", "plant-3"), ("arch", "x86")]).matches(&l));
        assert!(expr("site", Operator::In, &["plant-1", "plant-3"]).matches(&l));
        assert!(!expr("site", Operator::NotIn, &["plant-3"]).matches(&l));
        assert!(expr("ring", Operator::NotIn, &["canary"]).matches(&l));
        assert!(expr("arch", Operator::Exists, &[]).matches(&l));
        assert!(!expr("arch", Operator::DoesNotExist, &[]).matches(&l));
        assert!(expr("ring", Operator::DoesNotExist, &[]).matches(&l));
    }

    #[test]
    fn new_deployment_matches_exactly_the_labelled_devices() {
        let mut ix = Index::new();
        ix.upsert_device("a".into(), labels(&[("site", "p3")]));
        ix.upsert_device("b".into(), labels(&[("site", "p4")]));
        ix.upsert_device("c".into(), labels(&[("site", "p3"), ("ring", "canary")]));
        let changes = ix.upsert_deployment("web".into(), eq(&[("site", "p3")]));
        assert_eq!(
            sorted(changes),
            vec![matched("a", "web"), matched("c", "web")]
        );
        assert_eq!(ix.matched(&"web".to_owned()).count(), 2);
    }

    #[test]
    fn relabelled_device_moves_between_deployments() {
        let mut ix = Index::new();
        ix.upsert_deployment("p3".into(), eq(&[("site", "p3")]));
        ix.upsert_deployment("p4".into(), eq(&[("site", "p4")]));
        assert_eq!(
            ix.upsert_device("a".into(), labels(&[("site", "p3")])),
            vec![matched("a", "p3")]
        );
        assert_eq!(
            sorted(ix.upsert_device("a".into(), labels(&[("site", "p4")]))),
            vec![matched("a", "p4"), unmatched("a", "p3")]
        );
        assert!(ix.is_matched(&"p4".to_owned(), &"a".to_owned()));
        assert!(!ix.is_matched(&"p3".to_owned(), &"a".to_owned()));
    }

    #[test]
    fn unchanged_labels_produce_no_changes() {
        let mut ix = Index::new();
        ix.upsert_deployment("web".into(), eq(&[("site", "p3")]));
        ix.upsert_device("a".into(), labels(&[("site", "p3")]));
        assert!(
            ix.upsert_device("a".into(), labels(&[("site", "p3")]))
                .is_empty()
        );
        assert!(
            ix.upsert_deployment("web".into(), eq(&[("site", "p3")]))
                .is_empty()
        );
    }

    #[test]
    fn removed_device_and_deployment_release_their_pairs() {
        let mut ix = Index::new();
        ix.upsert_deployment("web".into(), Selector::default());
        ix.upsert_device("a".into(), labels(&[]));
        ix.upsert_device("b".into(), labels(&[("x", "y")]));
        assert_eq!(
            ix.remove_device(&"a".to_owned()),
            vec![unmatched("a", "web")]
        );
        assert_eq!(
            ix.remove_deployment(&"web".to_owned()),
            vec![unmatched("b", "web")]
        );
        assert!(ix.remove_deployment(&"web".to_owned()).is_empty());
        assert_eq!(ix.deployments_of(&"b".to_owned()).count(), 0);
    }

    #[test]
    fn selector_change_reports_only_the_difference() {
        let mut ix = Index::new();
        for (d, site) in [("a", "p1"), ("b", "p2"), ("c", "p3")] {
            ix.upsert_device(d.into(), labels(&[("site", site)]));
        }
        ix.upsert_deployment("web".into(), expr("site", Operator::In, &["p1", "p2"]));
        let changes = ix.upsert_deployment("web".into(), expr("site", Operator::In, &["p2", "p3"]));
        assert_eq!(
            sorted(changes),
            vec![matched("c", "web"), unmatched("a", "web")]
        );
    }

    #[test]
    fn anchored_selectors_still_see_devices_added_later() {
        let mut ix = Index::new();
        ix.upsert_deployment("exists".into(), expr("gpu", Operator::Exists, &[]));
        ix.upsert_deployment("notin".into(), expr("ring", Operator::NotIn, &["canary"]));
        ix.upsert_deployment(
            "mixed".into(),
            Selector {
                match_labels: labels(&[("site", "p3")]),
                match_expressions: vec![Requirement {
                    key: "ring".into(),
                    operator: Operator::DoesNotExist,
                    values: BTreeSet::new(),
                }],
            },
        );
        let changes = ix.upsert_device("a".into(), labels(&[("gpu", "yes"), ("site", "p3")]));
        assert_eq!(
            sorted(changes),
            vec![
                matched("a", "exists"),
                matched("a", "mixed"),
                matched("a", "notin")
            ]
        );
        let changes = ix.upsert_device(
            "a".into(),
            labels(&[("gpu", "yes"), ("site", "p3"), ("ring", "canary")]),
        );
        assert_eq!(
            sorted(changes),
            vec![unmatched("a", "mixed"), unmatched("a", "notin")]
        );
    }

    /// Cross-checks the incremental index against brute force over a pseudo-random sequence
    /// of device and deployment updates.
    #[test]
    fn incremental_index_agrees_with_brute_force() {
        let sites = ["p1", "p2", "p3"];
        let rings = ["canary", "stable"];
        let selectors = [
            eq(&[("site", "p1")]),
            expr("site", Operator::In, &["p2", "p3"]),
            expr("ring", Operator::Exists, &[]),
            expr("ring", Operator::NotIn, &["canary"]),
            Selector::default(),
            expr("site", Operator::DoesNotExist, &[]),
        ];
        let mut ix = Index::new();
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        for _ in 0..2000 {
            let r = next();
            match r % 4 {
                0 | 1 => {
                    let mut l = Labels::new();
                    if next() % 3 != 0 {
                        l.insert("site".into(), sites[(next() % 3) as usize].into());
                    }
                    if next() % 2 == 0 {
                        l.insert("ring".into(), rings[(next() % 2) as usize].into());
                    }
                    ix.upsert_device(format!("d{}", next() % 20), l);
                }
                2 => {
                    let s = selectors[(next() % selectors.len() as u64) as usize].clone();
                    ix.upsert_deployment(format!("k{}", next() % 5), s);
                }
                _ => {
                    if next() % 2 == 0 {
                        ix.remove_device(&format!("d{}", next() % 20));
                    } else {
                        ix.remove_deployment(&format!("k{}", next() % 5));
                    }
                }
            }
            for (k, (sel, _)) in &ix.selectors {
                let brute: BTreeSet<&String> = ix
                    .devices
                    .iter()
                    .filter(|(_, l)| sel.matches(l))
                    .map(|(d, _)| d)
                    .collect();
                let indexed: BTreeSet<&String> = ix.matched(k).collect();
                assert_eq!(indexed, brute, "deployment {k}");
            }
        }
    }
}

//! The in-memory fleet state: per `(deployment, device)` pair, whether the device is matched,
//! which revision the operator assigned to it (what `desired-state` holds) and what the
//! device last reported (`device-state`); per deployment, running counts and the failing set.
//!
//! Pure: fed by the controller from the KV watches and the targeting index, read when
//! building statuses and stepping rollouts. Every update is O(1) amortised (plus O(log f) for
//! the failing set); building one status is O(failing devices of that deployment). Updates
//! mark the deployment dirty so the controller patches only what changed.
//!
//! Everything of a deployment (its pairs, their counts, failing set and failed reports'
//! details) sits in one record, so an update costs one lookup of the deployment and one of
//! the device: a cold start applies a few million of them (adr/0053).
//!
//! # Memory
//!
//! A fleet of 100k devices with 1,000 Deployments holds 1.1M pairs, so a pair is kept in
//! 16 bytes (`Entry`): its revisions are 4-byte ids into one reference-counted table of the
//! revisions in use (`Revisions`; a fleet has about as many as it has Deployment versions),
//! and the error text and time of a failed report live beside it, only for failed reports.

use std::collections::BTreeSet;

// The core's maps hash device ids and names a few million times a second: foldhash
// (seeded per process) instead of SipHash (adr/0044).
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::hash::Hash;

use jiff::Timestamp;

use crate::rollout::Outcome;

use crate::revisions::{RevId, Revisions};

/// What a device reported about one deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report<R> {
    /// Revision (payload hash) the report is about.
    pub rev: R,
    /// Outcome class of the reported phase.
    pub outcome: Outcome,
    /// Last error the device reported, if any.
    pub error: Option<String>,
    /// When the device's state last changed.
    pub at: Option<Timestamp>,
}

/// Per-pair record: 16 bytes. A report is present when `reported` is.
#[derive(Clone, Copy, Debug)]
struct Entry {
    matched: bool,
    /// Outcome of the report (meaningless without one).
    outcome: Outcome,
    assigned: Option<RevId>,
    reported: Option<RevId>,
    last_good: Option<RevId>,
}

impl Default for Entry {
    fn default() -> Self {
        Self {
            matched: false,
            outcome: Outcome::InProgress,
            assigned: None,
            reported: None,
            last_good: None,
        }
    }
}

/// Class a matched pair counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Class {
    Unmatched,
    Succeeded,
    Failed,
    Pending,
}

impl Entry {
    fn class(&self) -> Class {
        if !self.matched {
            return Class::Unmatched;
        }
        match (self.assigned, self.reported) {
            (Some(a), Some(r)) if r == a => match self.outcome {
                Outcome::Succeeded => Class::Succeeded,
                Outcome::Failed => Class::Failed,
                Outcome::InProgress => Class::Pending,
            },
            _ => Class::Pending,
        }
    }

    fn is_empty(&self) -> bool {
        !self.matched && self.assigned.is_none() && self.reported.is_none()
    }

    /// The revision ids it holds, for reference counting.
    fn revs(&self) -> [Option<RevId>; 3] {
        [self.assigned, self.reported, self.last_good]
    }
}

/// What a failed report said, kept only for failed reports (the status lists them).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Detail {
    error: Option<String>,
    at: Option<Timestamp>,
}

/// One change to a pair.
enum Change<R> {
    Matched(bool),
    Assigned(Option<R>),
    Report(Option<Report<R>>),
}

/// Counts for `status.aggregate`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Devices the selector matches.
    pub matched: u64,
    /// Matched devices that report success on the revision assigned to them.
    pub succeeded: u64,
    /// Matched devices that report failure on the revision assigned to them.
    pub failed: u64,
    /// Matched devices that are offline (heartbeat expired or removed), whatever they last
    /// reported: they also count in `succeeded`/`failed`/pending by that report.
    pub offline: u64,
}

impl Counts {
    /// Matched devices that are neither succeeded nor failed.
    pub fn pending(&self) -> u64 {
        self.matched - self.succeeded - self.failed
    }
}

/// A failing device and its error, for `status.failingDevices`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Failing<D> {
    /// The device.
    pub device: D,
    /// Its error (or a placeholder when it reported none).
    pub error: String,
    /// When it reported it.
    pub at: Option<Timestamp>,
}

/// The pairs of one deployment ([`FleetState::pairs_of`]).
pub struct Pairs<'a, D, R> {
    entries: Option<&'a HashMap<D, Entry>>,
    revisions: &'a Revisions<R>,
}

/// What the operator knows of one pair.
#[derive(Clone, Copy, Debug)]
pub struct Pair<'a, R> {
    /// Revision `desired-state` holds for it.
    pub assigned: Option<&'a R>,
    /// Revision and outcome of the device's latest report.
    pub reported: Option<(&'a R, Outcome)>,
    /// Last revision the device reported success on.
    pub last_good: Option<&'a R>,
}

impl<'a, D: Eq + Hash, R: Clone + Eq + Hash> Pairs<'a, D, R> {
    /// The pair of `device` (all `None` when unknown).
    pub fn get(&self, device: &D) -> Pair<'a, R> {
        let entry = self.entries.and_then(|e| e.get(device));
        let rev = |id: Option<RevId>| id.and_then(|id| self.revisions.get(id));
        Pair {
            assigned: rev(entry.and_then(|e| e.assigned)),
            reported: entry.and_then(|e| Some((rev(e.reported)?, e.outcome))),
            last_good: rev(entry.and_then(|e| e.last_good)),
        }
    }
}

/// What is known of one deployment's pairs: the device-keyed records, the details of failed
/// reports, and the counts and failing set they add up to. Kept together so that an update
/// finds everything of its pair with one lookup of the deployment.
#[derive(Debug)]
struct Deployment<D> {
    entries: HashMap<D, Entry>,
    /// Error and time of failed reports.
    details: HashMap<D, Detail>,
    counts: Counts,
    failing: BTreeSet<D>,
    /// Listed in [`FleetState::dirty`] since the last [`FleetState::take_dirty`].
    dirty: bool,
}

impl<D> Default for Deployment<D> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            details: HashMap::new(),
            counts: Counts::default(),
            failing: BTreeSet::new(),
            dirty: false,
        }
    }
}

/// Everything the operator knows about the fleet, keyed by deployment then device.
#[derive(Debug)]
pub struct FleetState<D, K, R> {
    deployments: HashMap<K, Deployment<D>>,
    revisions: Revisions<R>,
    offline: HashSet<D>,
    /// Deployments whose counts or failing set changed since the last take.
    dirty: HashSet<K>,
    /// Pairs with a report.
    reported: usize,
}

impl<D, K, R> Default for FleetState<D, K, R> {
    fn default() -> Self {
        Self {
            deployments: HashMap::new(),
            revisions: Revisions::default(),
            offline: HashSet::new(),
            dirty: HashSet::new(),
            reported: 0,
        }
    }
}

/// Placeholder error for failed devices that did not say why.
const NO_ERROR_TEXT: &str = "failed without an error message";

impl<D, K, R> FleetState<D, K, R>
where
    D: Clone + Ord + Hash,
    K: Clone + Eq + Hash,
    R: Clone + Eq + Hash,
{
    /// An empty fleet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records whether `device` is matched by `deployment`.
    pub fn set_matched(&mut self, deployment: &K, device: &D, matched: bool) {
        self.update(deployment, device, Change::Matched(matched));
    }

    /// Records which revision `desired-state` holds for the pair (`None`: no key).
    pub fn set_assigned(&mut self, deployment: &K, device: &D, rev: Option<R>) {
        self.update(deployment, device, Change::Assigned(rev));
    }

    /// Records the device's latest report for the deployment (`None`: the key was deleted).
    pub fn set_report(&mut self, deployment: &K, device: &D, report: Option<Report<R>>) {
        self.update(deployment, device, Change::Report(report));
    }

    /// Records whether `device` is offline. `deployments` are the ones that match it (the
    /// targeting index's view); their `offline` counts change. O(those deployments).
    ///
    /// An offline device keeps counting by its last report: its workload runs on without the
    /// agent, so a dropped link neither blocks a rollout nor reads as a failure.
    pub fn set_offline<'a>(
        &mut self,
        device: &D,
        offline: bool,
        deployments: impl IntoIterator<Item = &'a K>,
    ) where
        K: 'a,
    {
        let changed = if offline {
            self.offline.insert(device.clone())
        } else {
            self.offline.remove(device)
        };
        if !changed {
            return;
        }
        for name in deployments {
            let Some(deployment) = self.deployments.get_mut(name) else {
                continue;
            };
            if !deployment.entries.get(device).is_some_and(|e| e.matched) {
                continue;
            }
            let counts = &mut deployment.counts;
            if offline {
                counts.offline += 1;
            } else {
                counts.offline = counts.offline.saturating_sub(1);
            }
            mark(&mut self.dirty, name, &mut deployment.dirty);
        }
    }

    /// Whether `device` is recorded offline.
    pub fn is_offline(&self, device: &D) -> bool {
        self.offline.contains(device)
    }

    /// Revision `desired-state` holds for the pair, as far as the operator knows.
    pub fn assigned(&self, deployment: &K, device: &D) -> Option<&R> {
        self.revisions
            .get(self.entry(deployment, device)?.assigned?)
    }

    /// The revision and outcome of the device's latest report for the deployment.
    pub fn reported(&self, deployment: &K, device: &D) -> Option<(&R, Outcome)> {
        let entry = self.entry(deployment, device)?;
        Some((self.revisions.get(entry.reported?)?, entry.outcome))
    }

    /// Last revision the device reported success on (since the operator started).
    pub fn last_good(&self, deployment: &K, device: &D) -> Option<&R> {
        self.revisions
            .get(self.entry(deployment, device)?.last_good?)
    }

    /// Pairs with a report.
    pub fn reported_count(&self) -> usize {
        self.reported
    }

    /// Distinct revisions the pairs refer to.
    pub fn revisions_in_use(&self) -> usize {
        self.revisions.len()
    }

    /// Counts of a deployment.
    pub fn counts(&self, deployment: &K) -> Counts {
        self.deployments
            .get(deployment)
            .map(|d| d.counts)
            .unwrap_or_default()
    }

    /// Up to `limit` failing devices of a deployment, in device order, and the most recent
    /// error among all of them. Cost O(failing devices).
    pub fn failing(&self, deployment: &K, limit: usize) -> (Vec<Failing<D>>, Option<Failing<D>>) {
        let Some(deployment) = self.deployments.get(deployment) else {
            return (Vec::new(), None);
        };
        let detail = |device: &D| deployment.details.get(device);
        let to_failing = |device: &D| {
            let detail = detail(device);
            Failing {
                device: device.clone(),
                error: detail
                    .and_then(|d| d.error.clone())
                    .unwrap_or_else(|| NO_ERROR_TEXT.to_owned()),
                at: detail.and_then(|d| d.at),
            }
        };
        let set = &deployment.failing;
        let first = set.iter().take(limit).map(to_failing).collect();
        let latest = set
            .iter()
            .max_by_key(|d| (detail(d).and_then(|d| d.at), std::cmp::Reverse(*d)))
            .map(to_failing);
        (first, latest)
    }

    /// Every pair with a report but no `desired-state` key: reports a device should not have
    /// written (or left behind). Used once, after a cold start, to collect them.
    pub fn unassigned_reports(&self) -> impl Iterator<Item = (&K, &D)> {
        self.deployments.iter().flat_map(|(k, deployment)| {
            deployment
                .entries
                .iter()
                .filter(|(_, e)| e.reported.is_some() && e.assigned.is_none())
                .map(move |(d, _)| (k, d))
        })
    }

    /// Every report held, grouped by deployment, with the error and time of failed ones: what
    /// the reports snapshot saves (adr/0052).
    pub fn reports(&self) -> impl Iterator<Item = (&K, &D, Report<&R>)> {
        self.deployments.iter().flat_map(move |(k, deployment)| {
            deployment.entries.iter().filter_map(move |(d, e)| {
                let rev = self.revisions.get(e.reported?)?;
                let detail = (e.outcome == Outcome::Failed)
                    .then(|| deployment.details.get(d))
                    .flatten();
                Some((
                    k,
                    d,
                    Report {
                        rev,
                        outcome: e.outcome,
                        error: detail.and_then(|d| d.error.clone()),
                        at: detail.and_then(|d| d.at),
                    },
                ))
            })
        })
    }

    /// Every pair that has a `desired-state` key, as `(deployment, device, revision,
    /// matched)`. Used once, after a cold start, to collect orphaned keys.
    pub fn assigned_pairs(&self) -> impl Iterator<Item = (&K, &D, &R, bool)> {
        self.deployments.iter().flat_map(move |(k, deployment)| {
            deployment.entries.iter().filter_map(move |(d, e)| {
                let rev = self.revisions.get(e.assigned?)?;
                Some((k, d, rev, e.matched))
            })
        })
    }

    /// The pairs of one deployment, for reading many of its devices with one lookup each.
    pub fn pairs_of(&self, deployment: &K) -> Pairs<'_, D, R> {
        Pairs {
            entries: self.deployments.get(deployment).map(|d| &d.entries),
            revisions: &self.revisions,
        }
    }

    /// Devices that still have a `desired-state` key of `deployment`. O(its entries).
    pub fn assigned_devices(&self, deployment: &K) -> Vec<D> {
        self.deployments
            .get(deployment)
            .map(|deployment| {
                deployment
                    .entries
                    .iter()
                    .filter(|(_, e)| e.assigned.is_some())
                    .map(|(d, _)| d.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `device` is matched by `deployment`, as recorded here.
    pub fn is_matched(&self, deployment: &K, device: &D) -> bool {
        self.entry(deployment, device).is_some_and(|e| e.matched)
    }

    /// Takes the set of deployments whose counts or failing set changed since the last call.
    pub fn take_dirty(&mut self) -> Vec<K> {
        let dirty: Vec<K> = self.dirty.drain().collect();
        for name in &dirty {
            if let Some(deployment) = self.deployments.get_mut(name) {
                deployment.dirty = false;
            }
        }
        dirty
    }

    /// Marks a deployment dirty from outside (spec or rollout changes).
    pub fn mark_dirty(&mut self, name: &K) {
        match self.deployments.get_mut(name) {
            Some(deployment) => mark(&mut self.dirty, name, &mut deployment.dirty),
            None => {
                self.dirty.insert(name.clone());
            }
        }
    }

    fn entry(&self, deployment: &K, device: &D) -> Option<&Entry> {
        self.deployments.get(deployment)?.entries.get(device)
    }

    /// Applies one change to a pair: one lookup of the deployment, one of the device.
    fn update(&mut self, name: &K, device: &D, change: Change<R>) {
        let deployment = match self.deployments.get_mut(name) {
            Some(deployment) => deployment,
            // Nothing to clear on a deployment with no pairs.
            None if change.clears() => return,
            None => self.deployments.entry(name.clone()).or_default(),
        };
        let offline = !self.offline.is_empty() && self.offline.contains(device);
        let revisions = &mut self.revisions;
        let Deployment {
            entries,
            details,
            counts,
            failing,
            dirty,
        } = deployment;
        let slot = entries.get_mut(device);
        let old = slot.as_deref().copied().unwrap_or_default();
        let before = old.class();
        let mut new = old;
        let mut detail_changed = false;
        // Each field set takes a reference to its new revision and drops the old one's
        // (taken first, so a revision both refer to keeps its slot).
        let mut dropped: [Option<RevId>; 2] = [None, None];
        match change {
            Change::Matched(matched) => new.matched = matched,
            Change::Assigned(rev) => {
                new.assigned = rev.map(|r| revisions.acquire(&r));
                dropped[0] = old.assigned;
            }
            Change::Report(report) => {
                new.reported = report.as_ref().map(|r| revisions.acquire(&r.rev));
                dropped[0] = old.reported;
                if let Some(r) = &report {
                    new.outcome = r.outcome;
                    if r.outcome == Outcome::Succeeded {
                        new.last_good = Some(revisions.acquire(&r.rev));
                        dropped[1] = old.last_good;
                    }
                }
                let detail = report
                    .filter(|r| r.outcome == Outcome::Failed)
                    .map(|r| Detail {
                        error: r.error,
                        at: r.at,
                    });
                if detail.as_ref() != details.get(device) {
                    detail_changed = true;
                    match detail {
                        Some(d) => {
                            details.insert(device.clone(), d);
                        }
                        None => {
                            details.remove(device);
                        }
                    }
                }
            }
        }
        for id in dropped.into_iter().flatten() {
            revisions.release(id);
        }
        match (old.reported.is_some(), new.reported.is_some()) {
            (false, true) => self.reported += 1,
            (true, false) => self.reported -= 1,
            _ => {}
        }
        match slot {
            Some(_) if new.is_empty() => {
                entries.remove(device);
            }
            Some(slot) => *slot = new,
            None if new.is_empty() => {}
            None => {
                entries.insert(device.clone(), new);
            }
        }
        if new.is_empty() {
            for id in new.revs().into_iter().flatten() {
                revisions.release(id);
            }
        }
        // Nothing is left of the deployment's pairs (its counts are zero then).
        let forget = entries.is_empty();
        let after = new.class();
        // A failed pair's error or time is part of the status.
        if before != after || (after == Class::Failed && detail_changed) {
            count(counts, before, after, offline);
            if before == Class::Failed && after != Class::Failed {
                failing.remove(device);
            } else if after == Class::Failed && before != Class::Failed {
                failing.insert(device.clone());
            }
            mark(&mut self.dirty, name, dirty);
        }
        if forget {
            self.deployments.remove(name);
        }
    }
}

/// Moves a pair from class `before` to class `after` in `counts`.
fn count(counts: &mut Counts, before: Class, after: Class, offline: bool) {
    if offline && (before == Class::Unmatched) != (after == Class::Unmatched) {
        if after == Class::Unmatched {
            counts.offline = counts.offline.saturating_sub(1);
        } else {
            counts.offline += 1;
        }
    }
    match before {
        Class::Unmatched => {}
        Class::Succeeded => {
            counts.matched -= 1;
            counts.succeeded -= 1;
        }
        Class::Failed => {
            counts.matched -= 1;
            counts.failed -= 1;
        }
        Class::Pending => counts.matched -= 1,
    }
    match after {
        Class::Unmatched => {}
        Class::Succeeded => {
            counts.matched += 1;
            counts.succeeded += 1;
        }
        Class::Failed => {
            counts.matched += 1;
            counts.failed += 1;
        }
        Class::Pending => counts.matched += 1,
    }
}

/// Lists a deployment as dirty, once until the next take (`listed`: its [`Deployment::dirty`]).
fn mark<K: Clone + Eq + Hash>(dirty: &mut HashSet<K>, name: &K, listed: &mut bool) {
    if !*listed {
        *listed = true;
        dirty.insert(name.clone());
    }
}

impl<R> Change<R> {
    /// Whether the change only removes something (a no-op on a pair not known).
    fn clears(&self) -> bool {
        matches!(
            self,
            Change::Matched(false) | Change::Assigned(None) | Change::Report(None)
        )
    }
}

#[cfg(test)]
mod tests;

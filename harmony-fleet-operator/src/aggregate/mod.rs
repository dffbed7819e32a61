//! The in-memory fleet state: per `(deployment, device)` pair, whether the device is matched,
//! which revision the operator assigned to it (what `desired-state` holds) and what the
//! device last reported (`device-state`); per deployment, running counts and the failing set.
//!
//! Pure: fed by the controller from the KV watches and the targeting index, read when
//! building statuses and stepping rollouts. Every update is O(1) amortised (plus O(log f) for
//! the failing set); building one status is O(failing devices of that deployment). Updates
//! mark the deployment dirty so the controller patches only what changed.
//!
//! # Memory
//!
//! A fleet of 100k devices with 1,000 Deployments holds 1.1M pairs, so a pair is kept in
//! 16 bytes (`Entry`): its revisions are 4-byte ids into one reference-counted table of the
//! revisions in use (`Revisions`; a fleet has about as many as it has Deployment versions),
//! and the error text and time of a failed report live beside it, only for failed reports.

use std::collections::BTreeMap;

// The core's maps hash device ids and names a few million times a second: foldhash
// (seeded per process) instead of SipHash (adr/0044).
use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};
use std::hash::Hash;

use jiff::Timestamp;

use crate::rollout::Outcome;

mod revisions;

use revisions::{RevId, Revisions};

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

/// Everything the operator knows about the fleet, keyed by deployment then device.
#[derive(Debug)]
pub struct FleetState<D, K, R> {
    entries: HashMap<K, HashMap<D, Entry>>,
    revisions: Revisions<R>,
    /// Error and time of failed reports, by deployment then device.
    details: HashMap<K, HashMap<D, Detail>>,
    counts: HashMap<K, Counts>,
    failing: HashMap<K, BTreeMap<D, ()>>,
    offline: HashSet<D>,
    dirty: HashSet<K>,
    /// Pairs with a report.
    reported: usize,
}

impl<D, K, R> Default for FleetState<D, K, R> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            revisions: Revisions::default(),
            details: HashMap::new(),
            counts: HashMap::new(),
            failing: HashMap::new(),
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
        for deployment in deployments {
            let matched = self
                .entries
                .get(deployment)
                .and_then(|d| d.get(device))
                .is_some_and(|e| e.matched);
            if !matched {
                continue;
            }
            let counts = self.counts.entry(deployment.clone()).or_default();
            if offline {
                counts.offline += 1;
            } else {
                counts.offline = counts.offline.saturating_sub(1);
            }
            self.dirty.insert(deployment.clone());
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
        self.counts.get(deployment).copied().unwrap_or_default()
    }

    /// Up to `limit` failing devices of a deployment, in device order, and the most recent
    /// error among all of them. Cost O(failing devices).
    pub fn failing(&self, deployment: &K, limit: usize) -> (Vec<Failing<D>>, Option<Failing<D>>) {
        let Some(set) = self.failing.get(deployment) else {
            return (Vec::new(), None);
        };
        let details = self.details.get(deployment);
        let detail = |device: &D| details.and_then(|d| d.get(device));
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
        let first = set.keys().take(limit).map(to_failing).collect();
        let latest = set
            .keys()
            .max_by_key(|d| (detail(d).and_then(|d| d.at), std::cmp::Reverse(*d)))
            .map(to_failing);
        (first, latest)
    }

    /// Every pair with a report but no `desired-state` key: reports a device should not have
    /// written (or left behind). Used once, after a cold start, to collect them.
    pub fn unassigned_reports(&self) -> impl Iterator<Item = (&K, &D)> {
        self.entries.iter().flat_map(|(k, devices)| {
            devices
                .iter()
                .filter(|(_, e)| e.reported.is_some() && e.assigned.is_none())
                .map(move |(d, _)| (k, d))
        })
    }

    /// Every report held, grouped by deployment, with the error and time of failed ones: what
    /// the reports snapshot saves (adr/0052).
    pub fn reports(&self) -> impl Iterator<Item = (&K, &D, Report<&R>)> {
        self.entries.iter().flat_map(move |(k, devices)| {
            devices.iter().filter_map(move |(d, e)| {
                let rev = self.revisions.get(e.reported?)?;
                let detail = (e.outcome == Outcome::Failed)
                    .then(|| self.detail(k, d))
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
        self.entries.iter().flat_map(move |(k, devices)| {
            devices.iter().filter_map(move |(d, e)| {
                let rev = self.revisions.get(e.assigned?)?;
                Some((k, d, rev, e.matched))
            })
        })
    }

    /// The pairs of one deployment, for reading many of its devices with one lookup each.
    pub fn pairs_of(&self, deployment: &K) -> Pairs<'_, D, R> {
        Pairs {
            entries: self.entries.get(deployment),
            revisions: &self.revisions,
        }
    }

    /// Devices that still have a `desired-state` key of `deployment`. O(its entries).
    pub fn assigned_devices(&self, deployment: &K) -> Vec<D> {
        self.entries
            .get(deployment)
            .map(|devices| {
                devices
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
        self.dirty.drain().collect()
    }

    /// Marks a deployment dirty from outside (spec or rollout changes).
    pub fn mark_dirty(&mut self, deployment: &K) {
        self.dirty.insert(deployment.clone());
    }

    fn entry(&self, deployment: &K, device: &D) -> Option<&Entry> {
        self.entries.get(deployment)?.get(device)
    }

    fn detail(&self, deployment: &K, device: &D) -> Option<&Detail> {
        self.details.get(deployment)?.get(device)
    }

    /// Keeps the failed report's error and time (and forgets them for any other report).
    fn set_detail(&mut self, deployment: &K, device: &D, detail: Option<Detail>) {
        match detail {
            Some(d) => {
                self.details
                    .entry(deployment.clone())
                    .or_default()
                    .insert(device.clone(), d);
            }
            None => {
                if let Some(devices) = self.details.get_mut(deployment) {
                    devices.remove(device);
                    if devices.is_empty() {
                        self.details.remove(deployment);
                    }
                }
            }
        }
    }

    fn update(&mut self, deployment: &K, device: &D, change: Change<R>) {
        let offline = self.offline.contains(device);
        let old = self.entry(deployment, device).copied().unwrap_or_default();
        let before = old.class();
        let was_failed_error = (before == Class::Failed)
            .then(|| self.detail(deployment, device).cloned())
            .flatten();
        let mut new = old;
        // Each field set takes a reference to its new revision and drops the old one's
        // (taken first, so a revision both refer to keeps its slot).
        let mut dropped: [Option<RevId>; 2] = [None, None];
        match change {
            Change::Matched(matched) => new.matched = matched,
            Change::Assigned(rev) => {
                new.assigned = rev.map(|r| self.revisions.acquire(&r));
                dropped[0] = old.assigned;
            }
            Change::Report(report) => {
                new.reported = report.as_ref().map(|r| self.revisions.acquire(&r.rev));
                dropped[0] = old.reported;
                if let Some(r) = &report {
                    new.outcome = r.outcome;
                    if r.outcome == Outcome::Succeeded {
                        new.last_good = Some(self.revisions.acquire(&r.rev));
                        dropped[1] = old.last_good;
                    }
                }
                let detail = report
                    .filter(|r| r.outcome == Outcome::Failed)
                    .map(|r| Detail {
                        error: r.error,
                        at: r.at,
                    });
                if detail.as_ref() != self.detail(deployment, device) {
                    self.set_detail(deployment, device, detail);
                }
            }
        }
        for id in dropped.into_iter().flatten() {
            self.revisions.release(id);
        }
        match (old.reported.is_some(), new.reported.is_some()) {
            (false, true) => self.reported += 1,
            (true, false) => self.reported -= 1,
            _ => {}
        }
        let after = new.class();
        let devices = self.entries.entry(deployment.clone()).or_default();
        if new.is_empty() {
            devices.remove(device);
            if devices.is_empty() {
                self.entries.remove(deployment);
            }
            for id in new.revs().into_iter().flatten() {
                self.revisions.release(id);
            }
        } else {
            devices.insert(device.clone(), new);
        }
        let now_failed_error = (after == Class::Failed)
            .then(|| self.detail(deployment, device).cloned())
            .flatten();
        if before == after && was_failed_error == now_failed_error {
            return;
        }
        let counts = self.counts.entry(deployment.clone()).or_default();
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
        if *counts == Counts::default() {
            self.counts.remove(deployment);
        }
        if before == Class::Failed && after != Class::Failed {
            if let Some(set) = self.failing.get_mut(deployment) {
                set.remove(device);
                if set.is_empty() {
                    self.failing.remove(deployment);
                }
            }
        } else if after == Class::Failed {
            self.failing
                .entry(deployment.clone())
                .or_default()
                .insert(device.clone(), ());
        }
        self.dirty.insert(deployment.clone());
    }
}

#[cfg(test)]
mod tests;

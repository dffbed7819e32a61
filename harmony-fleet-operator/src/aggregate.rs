//! The in-memory fleet state: per `(deployment, device)` pair, whether the device is matched,
//! which revision the operator assigned to it (what `desired-state` holds) and what the
//! device last reported (`device-state`); per deployment, running counts and the failing set.
//!
//! Pure: fed by the controller from the KV watches and the targeting index, read when
//! building statuses and stepping rollouts. Every update is O(1) amortised (plus O(log f) for
//! the failing set); building one status is O(failing devices of that deployment). Updates
//! mark the deployment dirty so the controller patches only what changed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::hash::Hash;

use jiff::Timestamp;

use crate::rollout::Outcome;

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

/// Per-pair record.
#[derive(Clone, Debug)]
struct Entry<R> {
    matched: bool,
    assigned: Option<R>,
    report: Option<Report<R>>,
    last_good: Option<R>,
}

impl<R> Default for Entry<R> {
    fn default() -> Self {
        Self {
            matched: false,
            assigned: None,
            report: None,
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

impl<R: Eq> Entry<R> {
    fn class(&self) -> Class {
        if !self.matched {
            return Class::Unmatched;
        }
        match (&self.assigned, &self.report) {
            (Some(a), Some(r)) if r.rev == *a => match r.outcome {
                Outcome::Succeeded => Class::Succeeded,
                Outcome::Failed => Class::Failed,
                Outcome::InProgress => Class::Pending,
            },
            _ => Class::Pending,
        }
    }

    fn is_empty(&self) -> bool {
        !self.matched && self.assigned.is_none() && self.report.is_none()
    }
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

/// Everything the operator knows about the fleet, keyed by deployment then device.
#[derive(Debug)]
pub struct FleetState<D, K, R> {
    entries: HashMap<K, HashMap<D, Entry<R>>>,
    counts: HashMap<K, Counts>,
    failing: HashMap<K, BTreeMap<D, ()>>,
    offline: HashSet<D>,
    dirty: HashSet<K>,
}

impl<D, K, R> Default for FleetState<D, K, R> {
    fn default() -> Self {
        Self {
            entries: HashMap::new(),
            counts: HashMap::new(),
            failing: HashMap::new(),
            offline: HashSet::new(),
            dirty: HashSet::new(),
        }
    }
}

/// Placeholder error for failed devices that did not say why.
const NO_ERROR_TEXT: &str = "failed without an error message";

impl<D, K, R> FleetState<D, K, R>
where
    D: Clone + Ord + Hash,
    K: Clone + Eq + Hash,
    R: Clone + Eq,
{
    /// An empty fleet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Records whether `device` is matched by `deployment`.
    pub fn set_matched(&mut self, deployment: &K, device: &D, matched: bool) {
        self.update(deployment, device, |e| e.matched = matched);
    }

    /// Records which revision `desired-state` holds for the pair (`None`: no key).
    pub fn set_assigned(&mut self, deployment: &K, device: &D, rev: Option<R>) {
        self.update(deployment, device, |e| e.assigned = rev);
    }

    /// Records the device's latest report for the deployment (`None`: the key was deleted).
    pub fn set_report(&mut self, deployment: &K, device: &D, report: Option<Report<R>>) {
        self.update(deployment, device, |e| {
            if let Some(r) = &report
                && r.outcome == Outcome::Succeeded
            {
                e.last_good = Some(r.rev.clone());
            }
            e.report = report;
        });
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
        self.entry(deployment, device)?.assigned.as_ref()
    }

    /// The device's latest report for the deployment.
    pub fn report(&self, deployment: &K, device: &D) -> Option<&Report<R>> {
        self.entry(deployment, device)?.report.as_ref()
    }

    /// Last revision the device reported success on (since the operator started).
    pub fn last_good(&self, deployment: &K, device: &D) -> Option<&R> {
        self.entry(deployment, device)?.last_good.as_ref()
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
        let to_failing = |device: &D| {
            let report = self.report(deployment, device);
            Failing {
                device: device.clone(),
                error: report
                    .and_then(|r| r.error.clone())
                    .unwrap_or_else(|| NO_ERROR_TEXT.to_owned()),
                at: report.and_then(|r| r.at),
            }
        };
        let first = set.keys().take(limit).map(to_failing).collect();
        let latest = set
            .keys()
            .max_by_key(|d| {
                (
                    self.report(deployment, d).and_then(|r| r.at),
                    std::cmp::Reverse(*d),
                )
            })
            .map(to_failing);
        (first, latest)
    }

    /// Every pair with a report but no `desired-state` key: reports a device should not have
    /// written (or left behind). Used once, after a cold start, to collect them.
    pub fn unassigned_reports(&self) -> impl Iterator<Item = (&K, &D)> {
        self.entries.iter().flat_map(|(k, devices)| {
            devices
                .iter()
                .filter(|(_, e)| e.report.is_some() && e.assigned.is_none())
                .map(move |(d, _)| (k, d))
        })
    }

    /// Every pair that has a `desired-state` key, as `(deployment, device, revision)`.
    /// Used once, after a cold start, to collect orphaned keys.
    pub fn assigned_pairs(&self) -> impl Iterator<Item = (&K, &D, &R)> {
        self.entries.iter().flat_map(|(k, devices)| {
            devices
                .iter()
                .filter_map(move |(d, e)| e.assigned.as_ref().map(|r| (k, d, r)))
        })
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

    fn entry(&self, deployment: &K, device: &D) -> Option<&Entry<R>> {
        self.entries.get(deployment)?.get(device)
    }

    fn update(&mut self, deployment: &K, device: &D, f: impl FnOnce(&mut Entry<R>)) {
        let offline = self.offline.contains(device);
        let devices = self.entries.entry(deployment.clone()).or_default();
        let entry = devices.entry(device.clone()).or_default();
        let before = entry.class();
        let was_failed_error = (before == Class::Failed).then(|| entry.report.clone());
        f(entry);
        let after = entry.class();
        let now_failed_error = (after == Class::Failed).then(|| entry.report.clone());
        if entry.is_empty() {
            devices.remove(device);
            if devices.is_empty() {
                self.entries.remove(deployment);
            }
        }
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
mod tests {
    use super::*;
    use pretty_assertions::assert_eq;

    type Fleet = FleetState<String, String, u32>;

    fn report(rev: u32, outcome: Outcome, error: Option<&str>, secs: i64) -> Option<Report<u32>> {
        Some(Report {
            rev,
            outcome,
            error: error.map(str::to_owned),
            at: Timestamp::from_second(secs).ok(),
        })
    }

    fn k(s: &str) -> String {
        s.to_owned()
    }

    #[test]
    fn reports_without_a_key_are_listed_as_unassigned() {
        let mut f: FleetState<&str, &str, &str> = FleetState::new();
        let report = |rev| Report {
            rev,
            outcome: Outcome::Succeeded,
            error: None,
            at: None,
        };
        f.set_assigned(&"web", &"d1", Some("r1"));
        f.set_report(&"web", &"d1", Some(report("r1")));
        f.set_report(&"made-up", &"d1", Some(report("r1")));
        let stray: Vec<_> = f.unassigned_reports().collect();
        assert_eq!(stray, vec![(&"made-up", &"d1")]);
    }

    #[test]
    fn offline_devices_are_counted_beside_their_last_report() {
        let mut f = Fleet::new();
        let (web, db) = (k("web"), k("db"));
        for d in ["a", "b"] {
            f.set_matched(&web, &k(d), true);
            f.set_assigned(&web, &k(d), Some(1));
            f.set_report(&web, &k(d), report(1, Outcome::Succeeded, None, 1));
        }
        f.take_dirty();
        f.set_offline(&k("a"), true, [&web, &db]);
        let counts = f.counts(&web);
        assert_eq!((counts.succeeded, counts.offline), (2, 1));
        assert_eq!(f.counts(&db), Counts::default(), "db does not match a");
        assert_eq!(f.take_dirty(), vec![web.clone()]);
        // Repeating the same liveness changes nothing.
        f.set_offline(&k("a"), true, [&web]);
        assert!(f.take_dirty().is_empty());
        // Matching an offline device counts it; unmatching uncounts it.
        f.set_matched(&db, &k("a"), true);
        assert_eq!(f.counts(&db).offline, 1);
        f.set_matched(&web, &k("a"), false);
        assert_eq!(f.counts(&web).offline, 0);
        f.set_offline(&k("a"), false, [&db]);
        assert_eq!(f.counts(&db).offline, 0);
        assert!(!f.is_offline(&k("a")));
    }

    #[test]
    fn counts_follow_matches_assignments_and_reports() {
        let mut f = Fleet::new();
        let web = k("web");
        for d in ["a", "b", "c"] {
            f.set_matched(&web, &k(d), true);
            f.set_assigned(&web, &k(d), Some(2));
        }
        assert_eq!(
            f.counts(&web),
            Counts {
                matched: 3,
                succeeded: 0,
                failed: 0,
                offline: 0
            }
        );
        f.set_report(&web, &k("a"), report(2, Outcome::Succeeded, None, 1));
        f.set_report(&web, &k("b"), report(2, Outcome::Failed, Some("pull"), 2));
        f.set_report(&web, &k("c"), report(1, Outcome::Succeeded, None, 3));
        let c = f.counts(&web);
        assert_eq!(
            (c.matched, c.succeeded, c.failed, c.pending()),
            (3, 1, 1, 1)
        );
        // A report for an older revision counts as pending, not succeeded.
        f.set_assigned(&web, &k("a"), Some(3));
        assert_eq!(f.counts(&web).succeeded, 0);
        f.set_matched(&web, &k("b"), false);
        assert_eq!(f.counts(&web).failed, 0);
        assert_eq!(f.counts(&web).matched, 2);
    }

    #[test]
    fn reports_before_the_deployment_is_known_are_kept() {
        let mut f = Fleet::new();
        let web = k("web");
        f.set_report(&web, &k("a"), report(7, Outcome::Succeeded, None, 1));
        assert_eq!(f.counts(&web), Counts::default());
        f.set_matched(&web, &k("a"), true);
        f.set_assigned(&web, &k("a"), Some(7));
        assert_eq!(f.counts(&web).succeeded, 1);
    }

    #[test]
    fn failing_list_is_capped_and_last_error_is_the_latest() {
        let mut f = Fleet::new();
        let web = k("web");
        for i in 0..25 {
            let d = format!("d{i:02}");
            f.set_matched(&web, &d, true);
            f.set_assigned(&web, &d, Some(1));
            f.set_report(
                &web,
                &d,
                report(1, Outcome::Failed, Some(&format!("e{i}")), 100 - i),
            );
        }
        let (first, latest) = f.failing(&web, 10);
        assert_eq!(first.len(), 10);
        assert_eq!(first[0].device, "d00");
        let latest = latest.expect("a latest error");
        assert_eq!(
            (latest.device.as_str(), latest.error.as_str()),
            ("d00", "e0")
        );
        assert_eq!(f.counts(&web).failed, 25);
    }

    #[test]
    fn dirty_set_only_holds_changed_deployments() {
        let mut f = Fleet::new();
        f.set_matched(&k("web"), &k("a"), true);
        assert_eq!(f.take_dirty(), vec![k("web")]);
        f.set_matched(&k("web"), &k("a"), true);
        assert!(f.take_dirty().is_empty());
        f.set_report(&k("web"), &k("a"), report(1, Outcome::InProgress, None, 1));
        assert!(
            f.take_dirty().is_empty(),
            "no assignment yet: still pending"
        );
    }

    #[test]
    fn error_change_of_a_failed_device_marks_dirty() {
        let mut f = Fleet::new();
        let web = k("web");
        f.set_matched(&web, &k("a"), true);
        f.set_assigned(&web, &k("a"), Some(1));
        f.set_report(&web, &k("a"), report(1, Outcome::Failed, Some("x"), 1));
        f.take_dirty();
        f.set_report(&web, &k("a"), report(1, Outcome::Failed, Some("y"), 2));
        assert_eq!(f.take_dirty(), vec![web]);
    }

    #[test]
    fn last_good_survives_a_later_failure() {
        let mut f = Fleet::new();
        let web = k("web");
        f.set_report(&web, &k("a"), report(1, Outcome::Succeeded, None, 1));
        f.set_report(&web, &k("a"), report(2, Outcome::Failed, Some("boom"), 2));
        assert_eq!(f.last_good(&web, &k("a")), Some(&1));
    }

    #[test]
    fn empty_entries_are_forgotten() {
        let mut f = Fleet::new();
        let web = k("web");
        f.set_assigned(&web, &k("a"), Some(1));
        f.set_assigned(&web, &k("a"), None);
        assert_eq!(f.assigned_pairs().count(), 0);
        assert!(f.entries.is_empty());
    }
}

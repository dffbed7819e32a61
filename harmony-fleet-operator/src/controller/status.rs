//! What a `Deployment`'s status says (aggregate, rollout, conditions), and when it is written:
//! the first change after a quiet second at once, later ones at most once a second.

use std::collections::HashMap;
use std::hash::Hash;
use std::time::{Duration, Instant};

use harmony_fleet_contracts::ids::DeploymentName;
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::ownership::{Cr, Owned};
use super::reconciler::Reconciler;
use super::{CrKey, Effect, Rev};
use crate::crd::deployment::{
    Aggregate, DeploymentStatus, FailingDevice, MAX_FAILING_DEVICES, RolloutStatus,
};
use crate::rollout::{Phase, RolloutState};

/// The least time between two status writes of one resource (and two rollout steps of one
/// deployment on reports).
pub(super) const PACE: Duration = Duration::from_secs(1);

/// When something keyed by `K` may happen again: at once after `interval` of quiet, else
/// `interval` after the last time.
#[derive(Debug)]
pub(super) struct Pacer<K> {
    interval: Duration,
    last: HashMap<K, Instant>,
}

impl<K: Eq + Hash + Clone> Pacer<K> {
    pub(super) fn new(interval: Duration) -> Self {
        Self {
            interval,
            last: HashMap::new(),
        }
    }

    /// Whether `key` may happen at `now`.
    pub(super) fn is_due(&self, key: &K, now: Instant) -> bool {
        self.last
            .get(key)
            .is_none_or(|last| now.saturating_duration_since(*last) >= self.interval)
    }

    /// When `key` may happen next, if it happened recently (`None`: any time).
    pub(super) fn due_at(&self, key: &K) -> Option<Instant> {
        self.last.get(key).map(|last| *last + self.interval)
    }

    /// `key` happened at `now`.
    pub(super) fn mark(&mut self, key: K, now: Instant) {
        self.last.insert(key, now);
    }

    /// Forgets `key` (its resource is gone).
    pub(super) fn forget(&mut self, key: &K) {
        self.last.remove(key);
    }
}

/// A condition as decided: type, whether true, reason, message.
type Decided = (&'static str, bool, String, String);

/// What a status says at a glance: the rollout phase and whether anything is failed, pending
/// or matched. A change of it is a transition (a condition flips) and is written at once; the
/// rest (counts moving) is paced. O(1) to compute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Headline {
    phase: Phase,
    failed: bool,
    pending: bool,
    matched: bool,
}

impl Reconciler {
    /// Steps the rollouts whose inputs changed, each at most once per [`PACE`] — except a
    /// progressing rollout whose devices all reported an outcome: that step may complete a
    /// batch or the rollout, and is taken at once.
    pub(super) fn step_due_rollouts(&mut self) {
        for name in self.fleet.take_dirty() {
            if let Some(key) = self.owned.get(&name).map(|o| o.key.clone()) {
                self.dirty_status(key);
            }
            self.dirty_rollout(name);
        }
        let now = self.mono();
        let candidates: Vec<DeploymentName> = if self.full_scan {
            self.touched_rollouts.clear();
            self.wake = None;
            self.rollout_dirty.iter().cloned().collect()
        } else {
            std::mem::take(&mut self.touched_rollouts)
        };
        for name in candidates {
            if !self.rollout_dirty.contains(&name) {
                continue;
            }
            if self.rollout_pacer.is_due(&name, now) || self.may_complete(&name) {
                self.rollout_dirty.remove(&name);
                self.rollout_pacer.mark(name.clone(), now);
                self.step_rollout(&name);
            } else if let Some(at) = self.rollout_pacer.due_at(&name) {
                self.wake_at(at);
            }
        }
    }

    /// A progressing rollout none of whose matched devices is still pending.
    fn may_complete(&self, name: &DeploymentName) -> bool {
        self.owned
            .get(name)
            .is_some_and(|o| o.rollout.phase == Phase::Progressing)
            && self.fleet.counts(name).pending() == 0
    }

    /// The headline of the status `key` would get now (`None`: not served by us).
    fn headline(&self, key: &CrKey) -> Option<Headline> {
        let name = self.crs.get(key)?.name.as_ref()?;
        let owned = self.owned.get(name).filter(|o| o.key == *key)?;
        let counts = self.fleet.counts(name);
        Some(Headline {
            phase: owned.rollout.phase,
            failed: counts.failed > 0,
            pending: counts.pending() > 0,
            matched: counts.matched > 0,
        })
    }

    /// Writes the statuses that changed and are due: at once when their headline changed or
    /// after a quiet [`PACE`], else at most once per [`PACE`].
    pub(super) fn publish_due_statuses(&mut self) {
        let now = self.mono();
        let candidates: Vec<CrKey> = if self.full_scan {
            self.touched_statuses.clear();
            self.status_dirty.iter().cloned().collect()
        } else {
            std::mem::take(&mut self.touched_statuses)
        };
        for key in candidates {
            if !self.status_dirty.contains(&key) {
                continue;
            }
            let headline = self.headline(&key);
            let due = self.status_pacer.is_due(&key, now)
                || headline != self.headlines.get(&key).copied();
            if !due {
                if let Some(at) = self.status_pacer.due_at(&key) {
                    self.wake_at(at);
                }
                continue;
            }
            self.status_dirty.remove(&key);
            if self.publish_status(&key) {
                self.status_pacer.mark(key.clone(), now);
            }
            match headline {
                Some(h) => self.headlines.insert(key, h),
                None => self.headlines.remove(&key),
            };
        }
    }

    /// Emits the status of `key` if it differs from the last one written; whether it did.
    fn publish_status(&mut self, key: &CrKey) -> bool {
        let Some(cr) = self.crs.get(key) else {
            return false;
        };
        if cr.deleting {
            return false;
        }
        let owner = cr
            .name
            .as_ref()
            .and_then(|n| self.owned.get(n))
            .filter(|o| o.key == *key);
        let previous = cr.last_status.clone().unwrap_or_default();
        let mut status = match owner {
            Some(owned) => self.serving_status(cr, owned),
            None => DeploymentStatus::default(),
        };
        let conditions = match (&cr.problem, owner, &cr.name) {
            (Some((reason, message)), _, _) => {
                vec![("Ready", false, reason.clone(), message.clone())]
            }
            (None, Some(owned), _) => conditions(owned, &status),
            (None, None, Some(name)) => {
                let holder = self
                    .owned
                    .get(name)
                    .map(|o| o.key.namespace.clone())
                    .unwrap_or_default();
                vec![(
                    "Ready",
                    false,
                    "NameConflict".to_owned(),
                    format!(
                        "deployment name `{name}` is already used by namespace `{holder}`: \
                         names are fleet-wide (they become desired-state keys); rename this one"
                    ),
                )]
            }
            (None, None, None) => Vec::new(),
        };
        status.observed_generation = cr.generation;
        status.conditions = to_conditions(conditions, &previous, cr.generation, self.now.wall);
        if status == previous {
            return false;
        }
        if let Some(cr) = self.crs.get_mut(key) {
            cr.last_status = Some(status.clone());
        }
        self.emit(Effect::PatchStatus(key.clone(), Box::new(status)));
        true
    }

    /// Aggregate and rollout of a deployment this operator serves.
    fn serving_status(&self, cr: &Cr, owned: &Owned) -> DeploymentStatus {
        let Some(name) = &cr.name else {
            return DeploymentStatus::default();
        };
        let counts = self.fleet.counts(name);
        let (failing, latest) = self.fleet.failing(name, MAX_FAILING_DEVICES);
        let r = &owned.rollout;
        DeploymentStatus {
            observed_generation: cr.generation,
            conditions: Vec::new(),
            aggregate: Aggregate {
                matched_device_count: counts.matched,
                succeeded: counts.succeeded,
                failed: counts.failed,
                pending: counts.pending(),
                offline: counts.offline,
                last_error: latest.map(|f| format!("{}: {}", f.device, f.error)),
            },
            rollout: Some(RolloutStatus {
                revision: r.target.to_string(),
                previous_revision: r.previous.as_ref().map(ToString::to_string),
                phase: r.phase.to_status(),
                current_batch: r.batch.saturating_add(1).min(owned.policy.total_batches()),
                total_batches: owned.policy.total_batches(),
                updated: owned.progress.updated,
                reason: r.reason.clone(),
            }),
            failing_devices: failing
                .into_iter()
                .map(|f| FailingDevice {
                    device: f.device.to_string(),
                    error: f.error,
                })
                .collect(),
        }
    }
}

/// Conditions as written: a condition keeps its transition time while its value holds.
fn to_conditions(
    decided: Vec<Decided>,
    previous: &DeploymentStatus,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    decided
        .into_iter()
        .map(|(kind, ok, reason, message)| {
            let value = if ok { "True" } else { "False" };
            let since = previous
                .conditions
                .iter()
                .find(|c| c.type_ == kind && c.status == value)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or(Time(now));
            Condition {
                type_: kind.to_owned(),
                status: value.to_owned(),
                reason,
                message,
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

/// Devices named in a condition's message, at most.
const NAMED_FAILING_DEVICES: usize = 3;

/// `message`, then which devices failed and why (the first few of `failingDevices`), so the
/// condition says what to look at.
fn with_failing_devices(message: String, status: &DeploymentStatus) -> String {
    let failing = &status.failing_devices;
    if failing.is_empty() {
        return message;
    }
    let named: Vec<String> = failing
        .iter()
        .take(NAMED_FAILING_DEVICES)
        .map(|f| format!("{}: {}", f.device, f.error))
        .collect();
    let more = failing.len().saturating_sub(NAMED_FAILING_DEVICES);
    let more = if more > 0 {
        format!(" (and {more} more in status.failingDevices)")
    } else {
        String::new()
    };
    format!("{message}; failed: {}{more}", named.join("; "))
}

/// `Ready`, `Progressing`, `Paused` and `Degraded` of a served deployment.
fn conditions(owned: &Owned, status: &DeploymentStatus) -> Vec<Decided> {
    let a = &status.aggregate;
    let r = &owned.rollout;
    let p = &owned.progress;
    let batch = format!(
        "batch {}/{}: {} of {} devices on the new revision",
        r.batch.saturating_add(1).min(owned.policy.total_batches()),
        owned.policy.total_batches(),
        p.updated,
        p.matched
    );
    let ready = r.phase == Phase::Complete && a.failed == 0 && a.pending == 0;
    let (ready_reason, ready_message) = if ready && a.matched_device_count == 0 {
        (
            "NoMatchingDevices",
            "no device matches targetSelector".to_owned(),
        )
    } else if ready {
        (
            "AllSucceeded",
            match a.offline {
                0 => format!("{} devices run the current revision", a.succeeded),
                n => format!(
                    "{} devices run the current revision ({n} offline, by their last report)",
                    a.succeeded
                ),
            },
        )
    } else {
        (
            "NotReady",
            format!(
                "{} succeeded, {} failed, {} pending of {} matched",
                a.succeeded, a.failed, a.pending, a.matched_device_count
            ),
        )
    };
    let progressing = match r.phase {
        Phase::Progressing => (true, "RollingOut", batch),
        _ if a.pending > 0 => (
            true,
            "Converging",
            format!("{} devices have not reported success yet", a.pending),
        ),
        _ => (false, "Idle", "nothing to roll out".to_owned()),
    };
    let paused = match r.phase {
        Phase::Paused => (
            true,
            "FailureCriteriaExceeded",
            with_failing_devices(r.reason.clone().unwrap_or_default(), status),
        ),
        _ => (false, "NotPaused", "the rollout is not paused".to_owned()),
    };
    let degraded = match (r.phase, a.failed) {
        (Phase::RolledBack, _) => (true, "RolledBack", r.reason.clone().unwrap_or_default()),
        (_, 0) => (
            false,
            "NoFailures",
            "no device reports a failure".to_owned(),
        ),
        (_, n) => (
            true,
            "DevicesFailing",
            format!(
                "{n} devices failed; latest: {}",
                a.last_error.clone().unwrap_or_default()
            ),
        ),
    };
    vec![
        ("Ready", ready, ready_reason.to_owned(), ready_message),
        (
            "Progressing",
            progressing.0,
            progressing.1.to_owned(),
            progressing.2,
        ),
        ("Paused", paused.0, paused.1.to_owned(), paused.2),
        ("Degraded", degraded.0, degraded.1.to_owned(), degraded.2),
    ]
}

/// Rebuilds a rollout from `status.rollout` (restart mid-rollout).
pub(super) fn restore_rollout(s: &RolloutStatus) -> Option<RolloutState<Rev>> {
    Some(RolloutState {
        target: s.revision.parse().ok()?,
        previous: s.previous_revision.as_deref().and_then(|p| p.parse().ok()),
        phase: Phase::from_status(s.phase)?,
        batch: s.current_batch.saturating_sub(1),
        reason: s.reason.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_paused_condition_names_the_failing_devices_and_why() {
        let mut status = DeploymentStatus::default();
        assert_eq!(with_failing_devices("paused".into(), &status), "paused");
        status.failing_devices = (1..=5)
            .map(|i| FailingDevice {
                device: format!("pi-{i}"),
                error: format!("reverted {i}"),
            })
            .collect();
        assert_eq!(
            with_failing_devices("paused".into(), &status),
            "paused; failed: pi-1: reverted 1; pi-2: reverted 2; pi-3: reverted 3 (and 2 more in status.failingDevices)"
        );
    }
}

//! The rollout state machine: which revision of a Deployment's payload each matched device
//! should be given, batch after batch.
//!
//! Pure: no I/O, no clock. The controller calls [`RolloutState::step`] for a dirty Deployment
//! with a view of every matched device (what the operator assigned to it in `desired-state`,
//! what the device reported in `device-state`) and writes the returned assignments.
//!
//! # Semantics
//!
//! * A *revision* is the content hash of the payload. A rollout moves the matched devices from
//!   whatever they run to the target revision `T` (the current `spec.score`).
//! * Devices without any assignment yet (new devices, a brand-new Deployment) get `T` at once:
//!   they run nothing that could be disrupted ("devices that join get the current target").
//!   Only upgrades of devices that already hold an older revision are staged.
//! * `AllAtOnce` releases every upgrade at once; `Batches` releases them batch by batch.
//!   Batch sizes are cumulative over the rollout: batch *i* ends when `Σ sizes[..=i]` devices
//!   hold `T` (or no candidate is left for its label pick) and `successThreshold` percent of
//!   them report success on `T`. An implicit last batch takes every remaining device.
//! * `maxUnavailable` caps devices that hold `T` but have not succeeded on it yet (in flight
//!   or failed): the disruption budget, applied to both strategies.
//! * Failure criteria: once `minCompleted` devices finished on `T` (succeeded or failed), a
//!   failed share above `maxFailedPercent` stops the rollout. `Pause` keeps every device where it
//!   is and releases nothing more (roll forward only); `RollBack` gives every device holding
//!   `T` the last revision that succeeded on it (or the Deployment's previous revision).
//! * A new target always starts a new rollout, whatever state the previous one ended in: a
//!   failed rollout never blocks the next change.
//!
//! One step costs O(devices matched by this Deployment).

use harmony_fleet_types::crd::deployment::RolloutPhase;
use std::collections::BTreeMap;

use crate::index::{DeviceLabels, LabelLookup};

/// How big a batch is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BatchSize {
    /// This many devices.
    Count(u32),
    /// This percentage of the devices matched when the batch starts (rounded up).
    Percent(u32),
    /// Every remaining device (allowed only with a label pick).
    Rest,
}

/// One batch of a `Batches` rollout.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batch {
    /// Devices this batch adds.
    pub size: BatchSize,
    /// Only devices carrying all these labels are picked for this batch.
    pub pick: BTreeMap<String, String>,
}

/// Rollout strategy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Strategy {
    /// Every device gets the target at once (bounded by `max_unavailable`).
    AllAtOnce,
    /// Devices get the target batch after batch.
    Batches(Vec<Batch>),
}

/// What to do when the failure criteria are exceeded.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop releasing; devices keep what they have (roll forward only).
    #[default]
    Pause,
    /// Give devices back the last revision that succeeded on them.
    RollBack,
}

/// The rollout policy of one Deployment (validated `spec.rollout`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// How devices are released.
    pub strategy: Strategy,
    /// Percentage (1–100) of released devices that must succeed before the next batch.
    pub success_threshold: u32,
    /// Maximum devices holding the target without having succeeded on it.
    pub max_unavailable: Option<u32>,
    /// Completed devices needed before the failure ratio is judged.
    pub min_completed: u32,
    /// Failed share (0–100) of completed devices above which the rollout stops.
    pub max_failed_percent: u32,
    /// Reaction to exceeding the failure criteria.
    pub on_failure: OnFailure,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            strategy: Strategy::AllAtOnce,
            success_threshold: 100,
            max_unavailable: None,
            min_completed: 1,
            max_failed_percent: 0,
            on_failure: OnFailure::Pause,
        }
    }
}

impl Policy {
    /// Number of batches, counting the implicit last one of `Batches` (1 for `AllAtOnce`).
    pub fn total_batches(&self) -> u32 {
        match &self.strategy {
            Strategy::AllAtOnce => 1,
            Strategy::Batches(b) => u32::try_from(b.len()).unwrap_or(u32::MAX).saturating_add(1),
        }
    }
}

/// Where a rollout stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Releasing devices to the target.
    Progressing,
    /// Every matched device holds the target and succeeded on it at least once.
    Complete,
    /// Stopped by the failure criteria; nothing more is released.
    Paused,
    /// Stopped by the failure criteria; devices went back to their last good revision.
    RolledBack,
}

impl Phase {
    /// The phase as `status.rollout.phase` says it.
    pub fn to_status(self) -> RolloutPhase {
        match self {
            Self::Progressing => RolloutPhase::Progressing,
            Self::Complete => RolloutPhase::Complete,
            Self::Paused => RolloutPhase::Paused,
            Self::RolledBack => RolloutPhase::RolledBack,
        }
    }

    /// The phase of a `status.rollout.phase` (`None` for one this build does not know).
    pub fn from_status(phase: RolloutPhase) -> Option<Self> {
        Some(match phase {
            RolloutPhase::Progressing => Self::Progressing,
            RolloutPhase::Complete => Self::Complete,
            RolloutPhase::Paused => Self::Paused,
            RolloutPhase::RolledBack => Self::RolledBack,
            RolloutPhase::Unknown => return None,
        })
    }

    /// The name used in `status.rollout.phase`.
    pub fn as_str(self) -> &'static str {
        self.to_status().as_str()
    }
}

/// What a device reported about the revision it runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Running as desired.
    Succeeded,
    /// Failed to apply or crashed.
    Failed,
    /// Still converging.
    InProgress,
}

/// The controller's view of one matched device.
#[derive(Clone, Copy, Debug)]
pub struct DeviceView<'a, R> {
    /// Revision currently written to the device's `desired-state` key.
    pub assigned: Option<&'a R>,
    /// Latest report: revision and outcome.
    pub observed: Option<(&'a R, Outcome)>,
    /// Last revision the device reported success on (for `RollBack`).
    pub last_good: Option<&'a R>,
    /// The device's labels (for batch picks).
    pub labels: DeviceLabels<'a>,
}

/// Counters of the current rollout, for `status.rollout`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Progress {
    /// Devices holding the target revision.
    pub updated: u64,
    /// Of those, devices that report success on it.
    pub succeeded: u64,
    /// Of those, devices that report failure on it.
    pub failed: u64,
    /// Matched devices.
    pub matched: u64,
}

/// Result of one step: assignments to write and the counters after them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step<D, R> {
    /// `(device, revision)` pairs whose `desired-state` value must change.
    pub assign: Vec<(D, R)>,
    /// Progress after the assignments.
    pub progress: Progress,
}

/// The persistent state of a Deployment's rollout (mirrored in `status.rollout`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutState<R> {
    /// Target revision.
    pub target: R,
    /// The Deployment's last revision known to have completed, if any.
    pub previous: Option<R>,
    /// Where the rollout stands.
    pub phase: Phase,
    /// Current batch, 0-based.
    pub batch: u32,
    /// Why the rollout stopped, when it did.
    pub reason: Option<String>,
}

impl<R: Clone + Eq> RolloutState<R> {
    /// Starts a rollout to `target`, continuing from the state of the previous one (if any).
    /// Whatever the previous rollout's phase, the new one starts `Progressing`.
    pub fn start(target: R, before: Option<&RolloutState<R>>) -> Self {
        let previous = before.and_then(|b| match b.phase {
            Phase::Complete => Some(b.target.clone()),
            _ => b.previous.clone(),
        });
        let previous = previous.filter(|p| *p != target);
        Self {
            target,
            previous,
            phase: Phase::Progressing,
            batch: 0,
            reason: None,
        }
    }

    /// Revision a device that has no assignment yet gets: the target, except after a
    /// rollback, where it is the previous revision (when known).
    pub fn joiner_revision(&self) -> &R {
        match (self.phase, &self.previous) {
            (Phase::RolledBack, Some(p)) => p,
            _ => &self.target,
        }
    }

    /// Advances the rollout given every matched device. Returns the assignments to write.
    pub fn step<'a, D>(
        &mut self,
        policy: &Policy,
        devices: impl IntoIterator<Item = (&'a D, DeviceView<'a, R>)>,
    ) -> Step<D, R>
    where
        D: Clone + Ord + 'a,
        R: 'a,
    {
        let mut assign = Vec::new();
        // Devices on the target, with their last good revision (a rollback's way back).
        let mut on_target: Vec<(&D, Option<&R>)> = Vec::new();
        let mut candidates: Vec<(&D, DeviceView<'_, R>)> = Vec::new();
        let (mut succeeded, mut failed) = (0u64, 0u64);
        let joiner_rev = self.joiner_revision().clone();
        for (d, view) in devices {
            match view.assigned {
                None => assign.push((d.clone(), joiner_rev.clone())),
                Some(r) if *r == self.target => {
                    match view.observed {
                        Some((r, Outcome::Succeeded)) if *r == self.target => succeeded += 1,
                        Some((r, Outcome::Failed)) if *r == self.target => failed += 1,
                        _ => {}
                    }
                    on_target.push((d, view.last_good));
                }
                Some(_) => candidates.push((d, view)),
            }
        }
        let matched = (on_target.len() + candidates.len() + assign.len()) as u64;
        let joined_on_target = if joiner_rev == self.target {
            assign.len() as u64
        } else {
            0
        };
        let mut updated = on_target.len() as u64 + joined_on_target;

        if self.phase == Phase::Progressing {
            let completed = succeeded + failed;
            if completed >= u64::from(policy.min_completed.max(1))
                && failed * 100 > u64::from(policy.max_failed_percent) * completed
            {
                let why = format!(
                    "{failed} of {completed} devices that finished on the new revision failed \
                     ({}%), above maxFailedPercent {}% (minCompleted {})",
                    failed * 100 / completed,
                    policy.max_failed_percent,
                    policy.min_completed
                );
                match policy.on_failure {
                    OnFailure::Pause => {
                        self.phase = Phase::Paused;
                        self.reason = Some(format!("{why}; paused, fix the payload and apply it"));
                    }
                    OnFailure::RollBack => {
                        self.phase = Phase::RolledBack;
                        self.reason = Some(format!("{why}; rolled back"));
                    }
                }
            }
        }

        match self.phase {
            Phase::Progressing | Phase::Complete => {
                let unavailable = updated - succeeded;
                let mut budget = policy
                    .max_unavailable
                    .map_or(u64::MAX, |m| u64::from(m).saturating_sub(unavailable));
                match (&policy.strategy, self.phase) {
                    (Strategy::Batches(batches), Phase::Progressing) => {
                        candidates.sort_by(|a, b| a.0.cmp(b.0));
                        self.release_batches(
                            policy,
                            batches,
                            matched,
                            succeeded,
                            &mut updated,
                            &mut budget,
                            &mut candidates,
                            &mut assign,
                        );
                    }
                    _ => {
                        candidates.sort_by(|a, b| a.0.cmp(b.0));
                        for (d, _) in candidates.drain(..) {
                            if budget == 0 {
                                break;
                            }
                            budget -= 1;
                            updated += 1;
                            assign.push((d.clone(), self.target.clone()));
                        }
                    }
                }
                if candidates.is_empty() && updated == matched && succeeded == updated {
                    self.phase = Phase::Complete;
                    self.batch = policy.total_batches().saturating_sub(1);
                } else if self.phase == Phase::Complete && !candidates.is_empty() {
                    self.phase = Phase::Progressing;
                }
            }
            Phase::Paused => {}
            Phase::RolledBack => {
                let mut stuck = 0u64;
                for (d, last_good) in &on_target {
                    let back = last_good
                        .filter(|r| **r != self.target)
                        .or(self.previous.as_ref());
                    match back {
                        Some(back) => {
                            assign.push(((*d).clone(), back.clone()));
                            updated -= 1;
                        }
                        None => stuck += 1,
                    }
                }
                const NOTE: &str = "no earlier revision is known for";
                if stuck > 0 && self.reason.as_deref().is_none_or(|r| !r.contains(NOTE)) {
                    let r = self.reason.take().unwrap_or_default();
                    self.reason = Some(format!("{r}; {NOTE} {stuck} device(s), they keep it"));
                }
            }
        }
        let (succeeded, failed) = if self.phase == Phase::RolledBack {
            (0, 0)
        } else {
            (succeeded, failed)
        };
        Step {
            assign,
            progress: Progress {
                updated,
                succeeded,
                failed,
                matched,
            },
        }
    }

    /// Batch bookkeeping: advance past finished batches, then release the current one.
    #[allow(clippy::too_many_arguments)]
    fn release_batches<D: Clone + Ord>(
        &mut self,
        policy: &Policy,
        batches: &[Batch],
        matched: u64,
        succeeded: u64,
        updated: &mut u64,
        budget: &mut u64,
        candidates: &mut Vec<(&D, DeviceView<'_, R>)>,
        assign: &mut Vec<(D, R)>,
    ) {
        let quota = |i: usize| -> u64 {
            let mut total = 0u64;
            for b in batches.iter().take(i + 1) {
                total = total.saturating_add(match b.size {
                    BatchSize::Count(c) => u64::from(c),
                    BatchSize::Percent(p) => (u64::from(p) * matched).div_ceil(100),
                    BatchSize::Rest => matched,
                });
            }
            if i >= batches.len() {
                matched
            } else {
                total.min(matched)
            }
        };
        let pickable = |i: usize, view: &DeviceView<'_, R>| -> bool {
            batches.get(i).is_none_or(|b| {
                b.pick
                    .iter()
                    .all(|(k, v)| view.labels.label(k) == Some(v.as_str()))
            })
        };
        let threshold_met =
            |updated: u64| succeeded * 100 >= u64::from(policy.success_threshold) * updated;
        loop {
            let i = self.batch as usize;
            let quota_met = *updated >= quota(i) || !candidates.iter().any(|(_, v)| pickable(i, v));
            if i < batches.len() && quota_met && threshold_met(*updated) {
                self.batch += 1;
                continue;
            }
            if quota_met {
                return;
            }
            let mut want = quota(i).saturating_sub(*updated);
            let mut kept = Vec::with_capacity(candidates.len());
            for (d, view) in candidates.drain(..) {
                if want > 0 && *budget > 0 && pickable(i, &view) {
                    want -= 1;
                    *budget -= 1;
                    *updated += 1;
                    assign.push((d.clone(), self.target.clone()));
                } else {
                    kept.push((d, view));
                }
            }
            *candidates = kept;
            return;
        }
    }
}

#[cfg(test)]
mod tests;

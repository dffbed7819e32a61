use super::*;
use pretty_assertions::assert_eq;
use std::collections::BTreeMap;

use crate::index::Labels;

/// A simulated fleet: device -> (assigned, observed, last good, labels).
#[derive(Default)]
struct Fleet {
    devices: BTreeMap<String, Sim>,
}

#[derive(Default)]
struct Sim {
    assigned: Option<&'static str>,
    observed: Option<(&'static str, Outcome)>,
    last_good: Option<&'static str>,
    labels: Labels,
}

impl Fleet {
    fn with(n: usize, rev: &'static str) -> Self {
        let mut f = Self::default();
        for i in 0..n {
            f.devices.insert(
                format!("d{i:02}"),
                Sim {
                    assigned: Some(rev),
                    observed: Some((rev, Outcome::Succeeded)),
                    last_good: Some(rev),
                    labels: Labels::new(),
                },
            );
        }
        f
    }

    fn step(
        &mut self,
        state: &mut RolloutState<&'static str>,
        policy: &Policy,
    ) -> Step<String, &'static str> {
        let step = state.step(
            policy,
            self.devices.iter().map(|(d, s)| {
                (
                    d,
                    DeviceView {
                        assigned: s.assigned.as_ref(),
                        observed: s.observed.as_ref().map(|(r, o)| (r, *o)),
                        last_good: s.last_good.as_ref(),
                        labels: DeviceLabels::plain(&s.labels),
                    },
                )
            }),
        );
        for (d, r) in &step.assign {
            let sim = self.devices.get_mut(d).expect("known device");
            sim.assigned = Some(r);
        }
        step
    }

    /// Every device holding `rev` reports `outcome` on it.
    fn report(&mut self, rev: &'static str, outcome: impl Fn(&str) -> Outcome) {
        for (d, s) in &mut self.devices {
            if s.assigned == Some(rev) {
                let o = outcome(d);
                s.observed = Some((rev, o));
                if o == Outcome::Succeeded {
                    s.last_good = Some(rev);
                }
            }
        }
    }

    fn holding(&self, rev: &str) -> usize {
        self.devices
            .values()
            .filter(|s| s.assigned == Some(rev))
            .count()
    }
}

fn batches(sizes: &[BatchSize]) -> Policy {
    Policy {
        strategy: Strategy::Batches(
            sizes
                .iter()
                .map(|s| Batch {
                    size: s.clone(),
                    pick: BTreeMap::new(),
                })
                .collect(),
        ),
        ..Policy::default()
    }
}

fn started(target: &'static str) -> RolloutState<&'static str> {
    let done = RolloutState {
        target: "v1",
        previous: None,
        phase: Phase::Complete,
        batch: 0,
        reason: None,
    };
    RolloutState::start(target, Some(&done))
}

#[test]
fn all_at_once_releases_every_device_and_completes() {
    let mut fleet = Fleet::with(5, "v1");
    let mut state = started("v2");
    let policy = Policy::default();
    let step = fleet.step(&mut state, &policy);
    assert_eq!(step.assign.len(), 5);
    assert_eq!(state.phase, Phase::Progressing);
    fleet.report("v2", |_| Outcome::Succeeded);
    let step = fleet.step(&mut state, &policy);
    assert!(step.assign.is_empty());
    assert_eq!(state.phase, Phase::Complete);
    assert_eq!(step.progress.succeeded, 5);
}

#[test]
fn new_devices_get_the_target_at_once_even_in_batches() {
    let mut fleet = Fleet::default();
    for d in ["a", "b", "c"] {
        fleet.devices.insert(d.into(), Sim::default());
    }
    let mut state = RolloutState::start("v1", None);
    let step = fleet.step(&mut state, &batches(&[BatchSize::Count(1)]));
    assert_eq!(step.assign.len(), 3);
    assert_eq!(step.progress.updated, 3);
}

#[test]
fn batches_wait_for_the_success_threshold() {
    let mut fleet = Fleet::with(10, "v1");
    let mut state = started("v2");
    let policy = batches(&[BatchSize::Count(1), BatchSize::Percent(50)]);
    let step = fleet.step(&mut state, &policy);
    assert_eq!(step.assign, vec![("d00".to_owned(), "v2")]);
    // Nothing more until the canary succeeds.
    assert!(fleet.step(&mut state, &policy).assign.is_empty());
    fleet.report("v2", |_| Outcome::Succeeded);
    let step = fleet.step(&mut state, &policy);
    assert_eq!(state.batch, 1);
    assert_eq!(
        step.assign.len(),
        5,
        "batch sizes add up: 1 + 50% of 10 = 6 devices"
    );
    fleet.report("v2", |_| Outcome::Succeeded);
    fleet.step(&mut state, &policy);
    assert_eq!(state.batch, 2, "implicit last batch");
    assert_eq!(fleet.holding("v2"), 10);
    fleet.report("v2", |_| Outcome::Succeeded);
    fleet.step(&mut state, &policy);
    assert_eq!(state.phase, Phase::Complete);
}

#[test]
fn batch_pick_chooses_labelled_devices_first() {
    let mut fleet = Fleet::with(4, "v1");
    let canary = fleet.devices.get_mut("d02").expect("d02");
    canary.labels.insert("ring".into(), "canary".into());
    let mut state = started("v2");
    let mut policy = batches(&[BatchSize::Rest]);
    if let Strategy::Batches(b) = &mut policy.strategy {
        b[0].pick.insert("ring".into(), "canary".into());
    }
    let step = fleet.step(&mut state, &policy);
    assert_eq!(step.assign, vec![("d02".to_owned(), "v2")]);
}

#[test]
fn max_unavailable_bounds_devices_in_flight() {
    let mut fleet = Fleet::with(6, "v1");
    let mut state = started("v2");
    let policy = Policy {
        max_unavailable: Some(2),
        ..Policy::default()
    };
    assert_eq!(fleet.step(&mut state, &policy).assign.len(), 2);
    assert!(fleet.step(&mut state, &policy).assign.is_empty());
    fleet.report("v2", |_| Outcome::Succeeded);
    assert_eq!(fleet.step(&mut state, &policy).assign.len(), 2);
}

#[test]
fn failure_past_criteria_pauses_and_releases_nothing_more() {
    let mut fleet = Fleet::with(10, "v1");
    let mut state = started("v2");
    let policy = Policy {
        min_completed: 2,
        max_failed_percent: 40,
        success_threshold: 50,
        ..batches(&[BatchSize::Count(2), BatchSize::Count(2)])
    };
    fleet.step(&mut state, &policy);
    fleet.report("v2", |d| {
        if d == "d00" {
            Outcome::Failed
        } else {
            Outcome::Succeeded
        }
    });
    // 1 of 2 failed = 50% > 40%.
    let step = fleet.step(&mut state, &policy);
    assert!(step.assign.is_empty());
    assert_eq!(state.phase, Phase::Paused);
    assert!(
        state
            .reason
            .as_deref()
            .is_some_and(|r| r.contains("maxFailedPercent 40%"))
    );
    assert_eq!(
        fleet.holding("v2"),
        2,
        "paused devices keep the new revision"
    );
    assert!(fleet.step(&mut state, &policy).assign.is_empty());
}

#[test]
fn min_completed_defers_the_failure_judgement() {
    let mut fleet = Fleet::with(10, "v1");
    let mut state = started("v2");
    let policy = Policy {
        min_completed: 3,
        success_threshold: 10,
        ..batches(&[BatchSize::Count(1), BatchSize::Count(2)])
    };
    fleet.step(&mut state, &policy);
    fleet.report("v2", |_| Outcome::Failed);
    fleet.step(&mut state, &policy);
    assert_eq!(
        state.phase,
        Phase::Progressing,
        "1 completed < minCompleted 3"
    );
}

#[test]
fn rollback_restores_the_last_good_revision() {
    let mut fleet = Fleet::with(4, "v1");
    let mut state = started("v2");
    let policy = Policy {
        on_failure: OnFailure::RollBack,
        ..Policy::default()
    };
    fleet.step(&mut state, &policy);
    fleet.report("v2", |d| {
        if d == "d01" {
            Outcome::Failed
        } else {
            Outcome::InProgress
        }
    });
    let step = fleet.step(&mut state, &policy);
    assert_eq!(state.phase, Phase::RolledBack);
    assert_eq!(step.assign.len(), 4);
    assert_eq!(fleet.holding("v1"), 4);
    assert!(
        fleet.step(&mut state, &policy).assign.is_empty(),
        "idempotent"
    );
}

#[test]
fn a_failed_rollout_does_not_block_the_next_change() {
    let mut fleet = Fleet::with(3, "v1");
    let mut state = started("v2");
    let policy = Policy::default();
    fleet.step(&mut state, &policy);
    fleet.report("v2", |_| Outcome::Failed);
    fleet.step(&mut state, &policy);
    assert_eq!(state.phase, Phase::Paused);
    let mut next = RolloutState::start("v3", Some(&state));
    assert_eq!(next.previous, Some("v1"), "v2 never completed");
    assert_eq!(next.phase, Phase::Progressing);
    assert_eq!(fleet.step(&mut next, &policy).assign.len(), 3);
}

#[test]
fn joiners_during_a_rollback_get_the_previous_revision() {
    let mut fleet = Fleet::with(2, "v1");
    let mut state = started("v2");
    let policy = Policy {
        on_failure: OnFailure::RollBack,
        ..Policy::default()
    };
    fleet.step(&mut state, &policy);
    fleet.report("v2", |_| Outcome::Failed);
    fleet.step(&mut state, &policy);
    fleet.devices.insert("new".into(), Sim::default());
    let step = fleet.step(&mut state, &policy);
    assert_eq!(step.assign, vec![("new".to_owned(), "v1")]);
}

#[test]
fn restart_mid_rollout_resumes_without_rewrites() {
    let mut fleet = Fleet::with(10, "v1");
    let mut state = started("v2");
    let policy = batches(&[BatchSize::Count(3)]);
    fleet.step(&mut state, &policy);
    // A fresh state object restored from status sees the same KV and writes nothing.
    let mut restored = RolloutState {
        target: "v2",
        previous: Some("v1"),
        phase: Phase::Progressing,
        batch: state.batch,
        reason: None,
    };
    assert!(fleet.step(&mut restored, &policy).assign.is_empty());
}

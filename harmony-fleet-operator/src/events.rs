//! Kubernetes Events, so `kubectl describe` tells the story: on fleet `Deployment`s the
//! rollout's (started, each batch completed and the next started, paused on the failure
//! threshold, rolled back, complete), on `Device`s their liveness and blacklist.
//!
//! [`transitions`] decides from two consecutive rollout states which Events happened, and
//! [`liveness`] and [`blacklist`] what a `Device` flip means (pure); [`EventBudget`] bounds how
//! many are written (per object and fleet-wide, so 1,000 Deployments rolling out or 100k
//! devices going offline at once do not flood the API server); [`spawn`] is the thin task that
//! publishes what passes the budget.

use std::collections::HashMap;
use std::fmt::Display;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio::time::Instant;

use harmony_fleet_contracts::ids::DeviceId;

use crate::crd::Deployment;
use crate::crd::device::Device;
use crate::rollout::{Phase, RolloutState};

/// One Event to write.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FleetEvent {
    /// PascalCase reason (`kubectl describe` shows it).
    pub reason: &'static str,
    /// What happened, in a sentence.
    pub note: String,
    /// `Warning` rather than `Normal`.
    pub warning: bool,
}

fn normal(reason: &'static str, note: String) -> FleetEvent {
    FleetEvent {
        reason,
        note,
        warning: false,
    }
}

fn warning(reason: &'static str, note: String) -> FleetEvent {
    FleetEvent {
        reason,
        note,
        warning: true,
    }
}

/// The Events between `before` (`None`: the Deployment was just taken on) and `after`, in the
/// order they happened. A rollout restored at operator start (same target, same phase and
/// batch) yields none.
pub fn transitions<R: Clone + Eq + Display>(
    before: Option<&RolloutState<R>>,
    after: &RolloutState<R>,
) -> Vec<FleetEvent> {
    let mut events = Vec::new();
    let same_rollout = before.is_some_and(|b| b.target == after.target);
    if !same_rollout && after.phase == Phase::Progressing {
        events.push(normal(
            "RolloutStarted",
            format!("rolling out revision {}", after.target),
        ));
        events.push(normal(
            "BatchStarted",
            format!("batch {} started", after.batch + 1),
        ));
    }
    if let Some(b) = before.filter(|_| same_rollout)
        && after.batch > b.batch
    {
        for done in b.batch..after.batch {
            events.push(normal(
                "BatchCompleted",
                format!("batch {} completed", done + 1),
            ));
        }
        if after.phase == Phase::Progressing {
            events.push(normal(
                "BatchStarted",
                format!("batch {} started", after.batch + 1),
            ));
        }
    }
    let phase_before = before.filter(|_| same_rollout).map(|b| b.phase);
    if phase_before != Some(after.phase) {
        let why = after.reason.clone().unwrap_or_default();
        match after.phase {
            Phase::Complete => events.push(normal(
                "RolloutComplete",
                format!("revision {} is on every matched device", after.target),
            )),
            Phase::Paused => events.push(warning(
                "RolloutPaused",
                format!("paused on the failure criteria: {why}"),
            )),
            Phase::RolledBack => events.push(warning(
                "RolledBack",
                format!("rolled back to the last good revision: {why}"),
            )),
            Phase::Progressing if phase_before.is_some() => events.push(normal(
                "RolloutResumed",
                format!("revision {} progressing again", after.target),
            )),
            Phase::Progressing => {}
        }
    }
    events
}

/// The Event of a `Device` whose `online` went from `before` to `after` (`before` `None`: the
/// resource is new, which is no news).
pub fn liveness(before: Option<bool>, after: bool) -> Option<FleetEvent> {
    match (before?, after) {
        (false, true) => Some(normal("DeviceOnline", "heartbeating again".to_owned())),
        (true, false) => Some(warning(
            "DeviceOffline",
            "no heartbeat within the heartbeat timeout".to_owned(),
        )),
        _ => None,
    }
}

/// The Event of a `Device` blacklisted (`true`) or released.
pub fn blacklist(on: bool) -> FleetEvent {
    if on {
        warning(
            "Blacklisted",
            "its desired state is withdrawn and its credential revoked; its agent, refused, stops its workloads".to_owned(),
        )
    } else {
        normal(
            "BlacklistLifted",
            "its desired state is written again; it may enroll again".to_owned(),
        )
    }
}

/// What an Event is about.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Regarding {
    /// A fleet `Deployment`.
    Deployment {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
    },
    /// A `Device` (cluster-scoped).
    Device(DeviceId),
}

/// How many Events may be written: at most `per_object` per Deployment and `global` in all
/// per `window`. What exceeds it is dropped (and counted), not queued: Events are a story for
/// people, the status is the record.
#[derive(Debug)]
pub struct EventBudget<K> {
    window: Duration,
    per_object: u32,
    global: u32,
    started: Option<Instant>,
    used: HashMap<K, u32>,
    used_global: u32,
    dropped: u64,
}

impl<K: std::hash::Hash + Eq + Clone> EventBudget<K> {
    /// A budget of `per_object` and `global` Events per `window`.
    pub fn new(window: Duration, per_object: u32, global: u32) -> Self {
        Self {
            window,
            per_object,
            global,
            started: None,
            used: HashMap::new(),
            used_global: 0,
            dropped: 0,
        }
    }

    /// Whether an Event on `key` may be written at `now` (and counts it if so).
    pub fn allow(&mut self, key: &K, now: Instant) -> bool {
        if self
            .started
            .is_none_or(|start| now.duration_since(start) >= self.window)
        {
            self.started = Some(now);
            self.used.clear();
            self.used_global = 0;
        }
        let used = self.used.entry(key.clone()).or_insert(0);
        if *used >= self.per_object || self.used_global >= self.global {
            self.dropped += 1;
            return false;
        }
        *used += 1;
        self.used_global += 1;
        true
    }

    /// Events refused so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// Where the controller and the registry send Events.
pub type Sender = mpsc::UnboundedSender<(Regarding, Vec<FleetEvent>)>;

/// Spawns the task that writes Events as `harmony-fleet-operator`, within a budget of 10 per
/// object and 50 in all per 10 s.
pub fn spawn(
    client: kube::Client,
    metrics: crate::metrics::Metrics,
) -> (Sender, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Regarding, Vec<FleetEvent>)>();
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "harmony-fleet-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let task = tokio::spawn(async move {
        let mut budget = EventBudget::new(Duration::from_secs(10), 10, 50);
        while let Some((regarding, events)) = rx.recv().await {
            let reference = reference(&regarding);
            for event in events {
                if !budget.allow(&regarding, Instant::now()) {
                    tracing::debug!(regarding = ?regarding, reason = event.reason, dropped = budget.dropped(), "Event over budget; dropped");
                    continue;
                }
                let published = recorder
                    .publish(
                        &Event {
                            type_: if event.warning {
                                EventType::Warning
                            } else {
                                EventType::Normal
                            },
                            reason: event.reason.into(),
                            note: Some(event.note.clone()),
                            action: match regarding {
                                Regarding::Deployment { .. } => "Rollout".into(),
                                Regarding::Device(_) => "Observe".into(),
                            },
                            secondary: None,
                        },
                        &reference,
                    )
                    .await;
                if let Err(e) = published {
                    metrics.error("event");
                    tracing::warn!(regarding = ?regarding, reason = event.reason, error = %e, "writing an Event failed");
                }
            }
        }
    });
    (tx, task)
}

/// A reference to what `regarding` names.
fn reference(regarding: &Regarding) -> ObjectReference {
    use kube::Resource;
    match regarding {
        Regarding::Deployment { namespace, name } => ObjectReference {
            api_version: Some(Deployment::api_version(&()).into_owned()),
            kind: Some(Deployment::kind(&()).into_owned()),
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            ..ObjectReference::default()
        },
        Regarding::Device(id) => ObjectReference {
            api_version: Some(Device::api_version(&()).into_owned()),
            kind: Some(Device::kind(&()).into_owned()),
            name: Some(id.to_string()),
            ..ObjectReference::default()
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(target: &str, phase: Phase, batch: u32) -> RolloutState<String> {
        RolloutState {
            target: target.to_owned(),
            previous: None,
            phase,
            batch,
            reason: Some("2 of 4 devices failed (limit 25%)".into()),
        }
    }

    fn reasons(events: &[FleetEvent]) -> Vec<&'static str> {
        events.iter().map(|e| e.reason).collect()
    }

    #[test]
    fn a_new_revision_starts_a_rollout_and_its_first_batch() {
        let events = transitions(None, &state("r1", Phase::Progressing, 0));
        assert_eq!(reasons(&events), ["RolloutStarted", "BatchStarted"]);
        assert_eq!(events[0].note, "rolling out revision r1");
        assert_eq!(events[1].note, "batch 1 started");
        let next = transitions(
            Some(&state("r1", Phase::Complete, 0)),
            &state("r2", Phase::Progressing, 0),
        );
        assert_eq!(reasons(&next), ["RolloutStarted", "BatchStarted"]);
    }

    #[test]
    fn batches_complete_in_order_and_the_last_one_completes_the_rollout() {
        let events = transitions(
            Some(&state("r1", Phase::Progressing, 0)),
            &state("r1", Phase::Progressing, 1),
        );
        assert_eq!(reasons(&events), ["BatchCompleted", "BatchStarted"]);
        assert_eq!(events[0].note, "batch 1 completed");
        assert_eq!(events[1].note, "batch 2 started");
        let done = transitions(
            Some(&state("r1", Phase::Progressing, 1)),
            &state("r1", Phase::Complete, 2),
        );
        assert_eq!(reasons(&done), ["BatchCompleted", "RolloutComplete"]);
    }

    #[test]
    fn stops_are_warnings_with_their_reason() {
        let paused = transitions(
            Some(&state("r1", Phase::Progressing, 0)),
            &state("r1", Phase::Paused, 0),
        );
        assert_eq!(reasons(&paused), ["RolloutPaused"]);
        assert!(paused[0].warning);
        assert!(paused[0].note.contains("2 of 4 devices failed"));
        let back = transitions(
            Some(&state("r1", Phase::Progressing, 0)),
            &state("r1", Phase::RolledBack, 0),
        );
        assert_eq!(reasons(&back), ["RolledBack"]);
        assert!(back[0].warning);
        let resumed = transitions(
            Some(&state("r1", Phase::Paused, 0)),
            &state("r1", Phase::Progressing, 0),
        );
        assert_eq!(reasons(&resumed), ["RolloutResumed"]);
    }

    #[test]
    fn nothing_changed_means_no_event() {
        let s = state("r1", Phase::Progressing, 1);
        assert!(transitions(Some(&s), &s).is_empty());
        let c = state("r1", Phase::Complete, 1);
        assert!(transitions(Some(&c), &c).is_empty());
    }

    #[test]
    fn devices_tell_their_flips_not_their_first_appearance() {
        assert_eq!(liveness(None, true), None);
        assert_eq!(liveness(Some(true), true), None);
        let offline = liveness(Some(true), false).expect("offline");
        assert_eq!((offline.reason, offline.warning), ("DeviceOffline", true));
        let online = liveness(Some(false), true).expect("online");
        assert_eq!((online.reason, online.warning), ("DeviceOnline", false));
        assert_eq!(blacklist(true).reason, "Blacklisted");
        assert!(blacklist(true).warning);
        assert_eq!(blacklist(false).reason, "BlacklistLifted");
    }

    #[test]
    fn the_budget_bounds_each_deployment_and_the_fleet_per_window() {
        let start = Instant::now();
        let mut budget = EventBudget::new(Duration::from_secs(10), 2, 3);
        assert!(budget.allow(&"a", start));
        assert!(budget.allow(&"a", start));
        assert!(!budget.allow(&"a", start), "per Deployment");
        assert!(budget.allow(&"b", start));
        assert!(!budget.allow(&"c", start), "fleet-wide");
        assert_eq!(budget.dropped(), 2);
        let later = start + Duration::from_secs(10);
        assert!(budget.allow(&"a", later), "a new window");
    }
}

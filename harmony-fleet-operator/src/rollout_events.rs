//! Kubernetes Events on fleet `Deployment`s, so `kubectl describe fleetdep` tells the rollout's
//! story: started, each batch completed and the next started, paused on the failure threshold,
//! rolled back, complete.
//!
//! [`transitions`] decides from two consecutive rollout states which Events happened (pure);
//! [`EventBudget`] bounds how many are written (per Deployment and fleet-wide, so 1,000
//! Deployments rolling out at once do not flood the API server); [`spawn`] is the thin task
//! that publishes what passes the budget.

use std::collections::HashMap;
use std::fmt::Display;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::crd::Deployment;
use crate::rollout::{Phase, RolloutState};

/// One Event to write on a `Deployment`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutEvent {
    /// PascalCase reason (`kubectl describe` shows it).
    pub reason: &'static str,
    /// What happened, in a sentence.
    pub note: String,
    /// `Warning` rather than `Normal`.
    pub warning: bool,
}

fn normal(reason: &'static str, note: String) -> RolloutEvent {
    RolloutEvent {
        reason,
        note,
        warning: false,
    }
}

fn warning(reason: &'static str, note: String) -> RolloutEvent {
    RolloutEvent {
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
) -> Vec<RolloutEvent> {
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

/// Where the controller sends the Events of `namespace`/`name`.
pub type Sender = mpsc::UnboundedSender<(String, String, Vec<RolloutEvent>)>;

/// Spawns the task that writes rollout Events as `harmony-fleet-operator`, within a budget of
/// 10 per Deployment and 50 in all per 10 s.
pub fn spawn(client: kube::Client) -> (Sender, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, String, Vec<RolloutEvent>)>();
    let recorder = Recorder::new(
        client,
        Reporter {
            controller: "harmony-fleet-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        },
    );
    let task = tokio::spawn(async move {
        let mut budget = EventBudget::new(Duration::from_secs(10), 10, 50);
        while let Some((namespace, name, events)) = rx.recv().await {
            let reference = deployment_ref(&namespace, &name);
            for event in events {
                let key = (namespace.clone(), name.clone());
                if !budget.allow(&key, Instant::now()) {
                    tracing::debug!(deployment = %name, namespace = %namespace, reason = event.reason, dropped = budget.dropped(), "rollout Event over budget; dropped");
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
                            action: "Rollout".into(),
                            secondary: None,
                        },
                        &reference,
                    )
                    .await;
                if let Err(e) = published {
                    tracing::warn!(deployment = %name, namespace = %namespace, reason = event.reason, error = %e, "writing a rollout Event failed");
                }
            }
        }
    });
    (tx, task)
}

/// A reference to the fleet `Deployment` `namespace`/`name`.
fn deployment_ref(namespace: &str, name: &str) -> ObjectReference {
    use kube::Resource;
    ObjectReference {
        api_version: Some(Deployment::api_version(&()).into_owned()),
        kind: Some(Deployment::kind(&()).into_owned()),
        name: Some(name.to_owned()),
        namespace: Some(namespace.to_owned()),
        ..ObjectReference::default()
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

    fn reasons(events: &[RolloutEvent]) -> Vec<&'static str> {
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

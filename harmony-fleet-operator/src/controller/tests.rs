//! The core without servers: each input kind, fed as the shell would, and the effects it gives.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use bytes::Bytes;
use harmony_fleet_contracts::device::{AgentVersion, DeviceInfo, Inventory};
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};
use harmony_fleet_contracts::keys;
use harmony_fleet_contracts::payload::{PodmanV0, ReconcileScore, Service};
use harmony_fleet_contracts::state::{DeploymentState, Phase as StatePhase};
use jiff::Timestamp;
use kube::core::{ObjectMeta, PartialObjectMeta};
use kube::runtime::watcher;
use serde_json::json;

use super::ownership::pick_owner;
use super::*;
use crate::crd::FINALIZER;
use crate::crd::device::BLACKLIST_ANNOTATION;
use crate::fleet::stray_state_device;
use crate::metrics::Metrics;
use crate::registry::DeviceUpdate;

const T0: i64 = 1_800_000_000;

/// A core and a clock; answers the effects that expect an outcome as the shell would.
struct Harness {
    core: Reconciler,
    base: Instant,
    secs: f64,
    /// Keys whose next write fails.
    failing: BTreeSet<String>,
}

impl Harness {
    fn new() -> Self {
        Self::with(false)
    }

    /// A replica that starts as a standby (leader election).
    fn standby() -> Self {
        Self::with(true)
    }

    fn with(standby: bool) -> Self {
        let core = Reconciler::new(
            Settings {
                heartbeat_timeout: Duration::from_secs(30),
                device_resources: true,
                stray_report_limit: 3,
                standby,
            },
            Metrics::new(),
        );
        Self {
            core,
            base: Instant::now(),
            secs: 0.0,
            failing: BTreeSet::new(),
        }
    }

    fn now(&self) -> Now {
        Now {
            wall: Timestamp::from_second(T0).expect("valid")
                + jiff::SignedDuration::from_secs_f64(self.secs),
            mono: self.base + Duration::from_secs_f64(self.secs),
        }
    }

    fn wall(&self) -> Timestamp {
        self.now().wall
    }

    fn advance(&mut self, secs: f64) {
        self.secs += secs;
    }

    /// Feeds `input` and every outcome, in the shell's order; returns all effects.
    fn feed(&mut self, input: Input) -> Vec<Effect> {
        let mut all = Vec::new();
        let mut queue = std::collections::VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            for effect in self.core.handle(input, self.now()) {
                match &effect {
                    Effect::WriteKeys(ops) => queue.push_back(Input::KeysWritten(
                        ops.iter()
                            .map(|(k, _)| (k.clone(), !self.failing.remove(k)))
                            .collect(),
                    )),
                    Effect::WriteIndexes(ops) => queue.push_back(Input::IndexesWritten(
                        ops.iter().map(|(d, _)| (d.clone(), true)).collect(),
                    )),
                    Effect::ReleaseFinalizer { key, .. } => {
                        queue.push_back(Input::FinalizerReleased {
                            key: key.clone(),
                            outcome: PatchOutcome::Done,
                        })
                    }
                    _ => {}
                }
                all.push(effect);
            }
        }
        all
    }

    /// Every source caught up (nothing in any of them unless fed before).
    fn cold_start(&mut self) -> Vec<Effect> {
        self.cold_start_with(Vec::new())
    }

    /// Every source caught up; the `Deployment` watch lists `crs`.
    fn cold_start_with(&mut self, crs: Vec<Deployment>) -> Vec<Effect> {
        assert!(self.core.load_desired(KvEvent::CaughtUp));
        let mut effects = self.feed(Input::Cr(Box::new(watcher::Event::Init)));
        for d in crs {
            effects.extend(self.feed(Input::Cr(Box::new(watcher::Event::InitApply(d)))));
        }
        for input in [
            Input::Cr(Box::new(watcher::Event::InitDone)),
            Input::Info(KvEvent::CaughtUp),
            Input::State(KvEvent::CaughtUp),
            Input::Heartbeat(KvEvent::CaughtUp),
            Input::Devices(Box::new(watcher::Event::Init)),
        ] {
            effects.extend(self.feed(input));
        }
        assert!(!self.core.is_converged(), "not before the last source");
        effects.extend(self.feed(Input::Devices(Box::new(watcher::Event::InitDone))));
        assert!(self.core.is_converged());
        effects
    }
}

fn id(s: &str) -> DeviceId {
    s.parse().expect("valid device id")
}

fn name(s: &str) -> DeploymentName {
    DeploymentName::new(s.to_owned()).expect("valid name")
}

fn score(image: &str) -> ReconcileScore {
    ReconcileScore::PodmanV0(PodmanV0::new(vec![Service::new("web", image)]))
}

fn payload(image: &str) -> Bytes {
    Bytes::from(score(image).to_canonical_json().expect("encodes"))
}

fn deployment(ns: &str, n: &str, site: &str, image: &str, created: i64) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "fleet.nationtech.io/v1alpha1",
        "kind": "Deployment",
        "metadata": {
            "name": n, "namespace": ns, "generation": 1, "resourceVersion": "1",
            "creationTimestamp": Timestamp::from_second(T0 + created).expect("valid").to_string(),
            "finalizers": [FINALIZER],
        },
        "spec": {
            "targetSelector": { "matchLabels": { "site": site } },
            "score": serde_json::to_value(score(image)).expect("score serialises"),
        }
    }))
    .expect("a valid Deployment")
}

fn apply(d: Deployment) -> Input {
    Input::Cr(Box::new(watcher::Event::Apply(d)))
}

fn info(device: &str, site: &str) -> Input {
    let info = DeviceInfo {
        device_id: id(device),
        labels: [("site".to_owned(), site.to_owned())].into(),
        inventory: Inventory {
            hostname: device.to_owned(),
            arch: "aarch64".into(),
            os: "linux".into(),
            os_release: None,
            kernel_version: None,
            cpu_count: 4,
            memory_bytes: 1 << 30,
        },
        agent_version: AgentVersion::new("0.1.0").expect("valid"),
        boot_time: None,
        observed_at: Timestamp::from_second(T0).expect("valid"),
    };
    Input::Info(KvEvent::Put {
        key: keys::info_key(&id(device)),
        value: Bytes::from(serde_json::to_vec(&info).expect("serialises")),
        at: Timestamp::from_second(T0).expect("valid"),
    })
}

fn report(device: &str, deployment: &str, image: &str, phase: StatePhase) -> Input {
    let state = DeploymentState {
        phase,
        payload_hash: Some(ContentHash::of_bytes(&payload(image))),
        desired_revision: None,
        last_error: (phase == StatePhase::Failed).then(|| "image not found".to_owned()),
        container_ids: Default::default(),
        last_change: Timestamp::from_second(T0).expect("valid"),
    };
    Input::State(KvEvent::Put {
        key: keys::state_key(&id(device), &name(deployment)),
        value: Bytes::from(serde_json::to_vec(&state).expect("serialises")),
        at: Timestamp::from_second(T0).expect("valid"),
    })
}

fn heartbeat(device: &str, at: Timestamp) -> Input {
    Input::Heartbeat(KvEvent::Put {
        key: keys::heartbeat_key(&id(device)),
        value: Bytes::new(),
        at,
    })
}

fn device_resource(device: &str, blacklisted: bool) -> PartialObjectMeta<Device> {
    let annotations =
        blacklisted.then(|| [(BLACKLIST_ANNOTATION.to_owned(), "true".to_owned())].into());
    PartialObjectMeta {
        types: None,
        metadata: ObjectMeta {
            name: Some(device.to_owned()),
            annotations,
            ..ObjectMeta::default()
        },
        _phantom: Default::default(),
    }
}

/// The keys put and deleted, in order.
fn writes(effects: &[Effect]) -> (Vec<String>, Vec<String>) {
    let (mut puts, mut deletes) = (Vec::new(), Vec::new());
    for e in effects {
        if let Effect::WriteKeys(ops) = e {
            for (key, op) in ops {
                match op {
                    KvOp::Put(_) => puts.push(key.clone()),
                    KvOp::Delete => deletes.push(key.clone()),
                }
            }
        }
    }
    (puts, deletes)
}

fn statuses(effects: &[Effect]) -> Vec<&DeploymentStatus> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::PatchStatus(_, s) => Some(&**s),
            _ => None,
        })
        .collect()
}

fn ready_reason(status: &DeploymentStatus) -> &str {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready")
        .map(|c| c.reason.as_str())
        .unwrap_or("")
}

fn position(effects: &[Effect], pred: impl Fn(&Effect) -> bool) -> usize {
    effects.iter().position(pred).expect("effect present")
}

/// Two devices at `plant-1`, one at `plant-2`, converged, and `web` at `plant-1` applied.
fn fleet_with_web() -> (Harness, Vec<Effect>) {
    let mut h = Harness::new();
    h.cold_start();
    for (d, site) in [
        ("pi-1", "plant-1"),
        ("pi-2", "plant-1"),
        ("pi-3", "plant-2"),
    ] {
        h.feed(info(d, site));
    }
    let effects = h.feed(apply(deployment("default", "web", "plant-1", "nginx:1", 0)));
    (h, effects)
}

// ----- cold start -----

#[test]
fn cold_start_writes_nothing_until_every_source_caught_up_then_fills_gaps_and_deletes_orphans() {
    let mut h = Harness::new();
    // KV holds a key for pi-1 (still wanted) and one of a deployment nobody owns any more.
    for (device, deployment) in [("pi-1", "web"), ("pi-1", "gone")] {
        h.core.load_desired(KvEvent::Put {
            key: keys::desired_key(&id(device), &name(deployment)),
            value: payload("nginx:1"),
            at: h.wall(),
        });
    }
    let mut before = Vec::new();
    before.extend(h.feed(info("pi-1", "plant-1")));
    before.extend(h.feed(info("pi-2", "plant-1")));
    assert_eq!(
        writes(&before),
        (vec![], vec![]),
        "nothing before the sources caught up"
    );

    let effects = h.cold_start_with(vec![deployment("default", "web", "plant-1", "nginx:1", 0)]);
    let (puts, deletes) = writes(&effects);
    assert_eq!(
        puts,
        vec![keys::desired_key(&id("pi-2"), &name("web"))],
        "only the gap"
    );
    assert_eq!(deletes, vec![keys::desired_key(&id("pi-1"), &name("gone"))]);
    // Ready only after the writes and the indexes, and each notice after its index.
    let written = position(&effects, |e| matches!(e, Effect::WriteKeys(_)));
    let indexed = position(&effects, |e| matches!(e, Effect::WriteIndexes(_)));
    let notified = position(&effects, |e| matches!(e, Effect::Notify(_)));
    let ready = position(&effects, |e| *e == Effect::Converged);
    assert!(
        written < indexed && indexed < notified && notified < ready,
        "{effects:?}"
    );
    assert!(
        !statuses(&effects).is_empty(),
        "statuses written once converged"
    );
}

#[test]
fn a_restart_with_everything_in_place_rewrites_nothing() {
    let mut h = Harness::new();
    h.core.load_desired(KvEvent::Put {
        key: keys::desired_key(&id("pi-1"), &name("web")),
        value: payload("nginx:1"),
        at: h.wall(),
    });
    h.feed(info("pi-1", "plant-1"));
    let effects = h.cold_start_with(vec![deployment("default", "web", "plant-1", "nginx:1", 0)]);
    assert_eq!(writes(&effects), (vec![], vec![]));
    assert!(effects.contains(&Effect::Converged));
}

// ----- Deployment resources -----

#[test]
fn a_new_deployment_writes_its_matched_devices_and_reports_status_at_once() {
    let (_, effects) = fleet_with_web();
    let (puts, deletes) = writes(&effects);
    assert_eq!(
        puts,
        vec![
            keys::desired_key(&id("pi-1"), &name("web")),
            keys::desired_key(&id("pi-2"), &name("web")),
        ]
    );
    assert!(deletes.is_empty());
    let notified: Vec<&Vec<DeviceId>> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Notify(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(notified.len(), 1);
    assert_eq!(notified[0].len(), 2);
    // The first status change after quiet is written in the same pass.
    let status = statuses(&effects);
    assert_eq!(status.len(), 1, "{effects:?}");
    assert_eq!(status[0].aggregate.matched_device_count, 2);
    assert_eq!(status[0].aggregate.pending, 2);
    assert!(effects.iter().any(
        |e| matches!(e, Effect::Events(_, ev) if ev.iter().any(|ev| ev.reason == "RolloutStarted"))
    ));
}

#[test]
fn a_deployment_without_our_finalizer_gets_it() {
    let mut h = Harness::new();
    h.cold_start();
    let mut d = deployment("default", "web", "plant-1", "nginx:1", 0);
    d.metadata.finalizers = Some(vec!["someone/else".to_owned()]);
    let effects = h.feed(apply(d));
    assert!(effects.contains(&Effect::AddFinalizer {
        key: CrKey {
            namespace: "default".into(),
            name: "web".into()
        },
        finalizers: vec!["someone/else".to_owned(), FINALIZER.to_owned()],
        resource_version: Some("1".into()),
    }));
}

#[test]
fn a_younger_claim_on_the_same_name_gets_name_conflict_and_writes_nothing() {
    let (mut h, _) = fleet_with_web();
    let effects = h.feed(apply(deployment("other", "web", "plant-2", "nginx:2", 5)));
    assert_eq!(writes(&effects), (vec![], vec![]));
    let conflict = effects.iter().find_map(|e| match e {
        Effect::PatchStatus(k, s) if k.namespace == "other" => Some(s),
        _ => None,
    });
    assert_eq!(conflict.map(|s| ready_reason(s)), Some("NameConflict"));
}

#[test]
fn deleting_a_deployment_deletes_its_keys_then_releases_the_finalizer() {
    let (mut h, _) = fleet_with_web();
    let mut d = deployment("default", "web", "plant-1", "nginx:1", 0);
    d.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        h.wall(),
    ));
    let effects = h.feed(apply(d));
    let (_, deletes) = writes(&effects);
    assert_eq!(deletes.len(), 2);
    let deleted = position(&effects, |e| matches!(e, Effect::WriteKeys(_)));
    let released = position(
        &effects,
        |e| matches!(e, Effect::ReleaseFinalizer { finalizers, .. } if finalizers.is_empty()),
    );
    assert!(deleted < released);
    // Released: nothing more to do on later ticks.
    h.advance(1.0);
    let later = h.feed(Input::Tick);
    assert!(
        !later
            .iter()
            .any(|e| matches!(e, Effect::ReleaseFinalizer { .. }))
    );
}

#[test]
fn the_finalizer_waits_while_a_key_delete_fails_and_is_released_after_the_retry() {
    let (mut h, _) = fleet_with_web();
    h.failing
        .insert(keys::desired_key(&id("pi-1"), &name("web")));
    let mut d = deployment("default", "web", "plant-1", "nginx:1", 0);
    d.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        h.wall(),
    ));
    let effects = h.feed(apply(d));
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::ReleaseFinalizer { .. }))
    );
    h.advance(1.0);
    let effects = h.feed(Input::Tick);
    assert_eq!(
        writes(&effects).1,
        vec![keys::desired_key(&id("pi-1"), &name("web"))]
    );
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::ReleaseFinalizer { .. }))
    );
}

// ----- device-info -----

#[test]
fn a_device_relabelled_out_of_the_selector_loses_its_key_and_an_inconsistent_info_is_ignored() {
    let (mut h, _) = fleet_with_web();
    let effects = h.feed(info("pi-2", "plant-9"));
    assert_eq!(
        writes(&effects).1,
        vec![keys::desired_key(&id("pi-2"), &name("web"))]
    );
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Device(DeviceUpdate::Info { .. })))
    );

    // A value whose deviceId is not its key's changes nothing.
    let Input::Info(KvEvent::Put { value, at, .. }) = info("pi-3", "plant-1") else {
        unreachable!()
    };
    let forged = h.feed(Input::Info(KvEvent::Put {
        key: keys::info_key(&id("pi-1")),
        value,
        at,
    }));
    assert!(forged.is_empty(), "{forged:?}");
}

// ----- device-state -----

#[test]
fn reports_fold_into_the_status_and_a_report_for_an_unassigned_deployment_is_removed() {
    let (mut h, _) = fleet_with_web();
    h.advance(2.0);
    let effects = h.feed(report("pi-1", "web", "nginx:1", StatePhase::Running));
    let status = statuses(&effects);
    assert_eq!(status.len(), 1, "quiet for 2 s: written at once");
    assert_eq!(status[0].aggregate.succeeded, 1);

    let stray = h.feed(report("pi-3", "web", "nginx:1", StatePhase::Running));
    assert!(stray.contains(&Effect::RemoveStray(keys::state_key(
        &id("pi-3"),
        &name("web")
    ))));
}

#[test]
fn a_device_writing_too_many_stray_keys_is_blacklisted() {
    let (mut h, _) = fleet_with_web();
    let mut all = Vec::new();
    for n in 0..4 {
        all.extend(h.feed(report(
            "pi-3",
            &format!("made-up-{n}"),
            "nginx:1",
            StatePhase::Running,
        )));
    }
    assert!(
        all.iter()
            .any(|e| matches!(e, Effect::BlacklistDevice { device, .. } if *device == id("pi-3")))
    );
    assert_eq!(
        all.iter()
            .filter(|e| matches!(e, Effect::RemoveStray(_)))
            .count(),
        4
    );
    assert_eq!(
        stray_state_device("state.pi-1.NOT_A_NAME"),
        Some(id("pi-1"))
    );
    assert_eq!(stray_state_device("state.pi-1"), None);
    assert_eq!(stray_state_device("state.Not_A_Device.x"), None);
}

// ----- heartbeats -----

#[test]
fn a_heartbeat_brings_a_device_online_and_the_tick_after_the_timeout_takes_it_offline() {
    let (mut h, _) = fleet_with_web();
    let effects = h.feed(heartbeat("pi-1", h.wall()));
    assert!(effects.contains(&Effect::Device(DeviceUpdate::Liveness {
        id: id("pi-1"),
        online: true,
        last_heartbeat: Some(h.wall()),
    })));
    let beat = h.wall();
    h.advance(31.0);
    let effects = h.feed(Input::Tick);
    assert!(effects.contains(&Effect::Device(DeviceUpdate::Liveness {
        id: id("pi-1"),
        online: false,
        last_heartbeat: Some(beat),
    })));
    let status = statuses(&effects);
    assert_eq!(status.last().map(|s| s.aggregate.offline), Some(1));
}

// ----- Device resources: blacklist -----

#[test]
fn a_blacklisted_device_loses_its_keys_and_gets_them_back_when_released() {
    let (mut h, _) = fleet_with_web();
    let key = keys::desired_key(&id("pi-1"), &name("web"));
    let effects = h.feed(Input::Devices(Box::new(watcher::Event::Apply(
        device_resource("pi-1", true),
    ))));
    assert_eq!(writes(&effects).1, vec![key.clone()]);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Events(_, ev) if ev[0].reason == "Blacklisted"))
    );
    // Labels reported while blacklisted are kept aside.
    assert_eq!(writes(&h.feed(info("pi-1", "plant-1"))), (vec![], vec![]));

    let effects = h.feed(Input::Devices(Box::new(watcher::Event::Apply(
        device_resource("pi-1", false),
    ))));
    assert_eq!(writes(&effects).0, vec![key]);
}

// ----- write outcomes, tick, pace -----

#[test]
fn a_failed_write_is_retried_on_the_next_tick() {
    let mut h = Harness::new();
    h.cold_start();
    h.feed(info("pi-1", "plant-1"));
    let key = keys::desired_key(&id("pi-1"), &name("web"));
    h.failing.insert(key.clone());
    let effects = h.feed(apply(deployment("default", "web", "plant-1", "nginx:1", 0)));
    assert_eq!(writes(&effects).0, vec![key.clone()]);
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::WriteIndexes(_))),
        "no index for a failed key"
    );
    h.advance(1.0);
    let effects = h.feed(Input::Tick);
    assert_eq!(writes(&effects).0, vec![key]);
    assert!(effects.iter().any(|e| matches!(e, Effect::Notify(_))));
}

#[test]
fn status_changes_within_a_second_are_held_back_and_written_when_due() {
    let (mut h, first) = fleet_with_web();
    assert_eq!(statuses(&first).len(), 1);
    h.advance(0.2);
    let effects = h.feed(report("pi-1", "web", "nginx:1", StatePhase::Running));
    assert!(statuses(&effects).is_empty(), "within the pace: held back");
    let wake = h.core.next_wake().expect("a status is waiting");
    assert_eq!(wake, h.base + Duration::from_secs(1));
    h.advance(0.8);
    let effects = h.feed(Input::Wake);
    let status = statuses(&effects);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].aggregate.succeeded, 1);
    assert_eq!(h.core.next_wake(), None);
}

#[test]
fn a_new_revision_is_written_to_every_device_and_counted_when_reported() {
    let (mut h, _) = fleet_with_web();
    h.feed(report("pi-1", "web", "nginx:1", StatePhase::Running));
    h.feed(report("pi-2", "web", "nginx:1", StatePhase::Running));
    h.advance(2.0);
    let mut d = deployment("default", "web", "plant-1", "nginx:2", 0);
    d.metadata.generation = Some(2);
    let effects = h.feed(apply(d));
    assert_eq!(writes(&effects).0.len(), 2);
    let status = statuses(&effects);
    assert_eq!(status.last().map(|s| s.observed_generation), Some(Some(2)));
    assert_eq!(status.last().map(|s| s.aggregate.succeeded), Some(0));
}

// ----- leader election -----

/// What `effects` wrote to `desired-state`, as the watch a standby follows delivers it.
fn as_watched(effects: &[Effect]) -> Vec<Input> {
    let at = Timestamp::from_second(T0).expect("valid");
    let event = |key: String, op: &KvOp| match op {
        KvOp::Put(value) => KvEvent::Put {
            key,
            value: value.clone(),
            at,
        },
        KvOp::Delete => KvEvent::Delete { key },
    };
    let mut out = Vec::new();
    for e in effects {
        match e {
            Effect::WriteKeys(ops) => out.extend(
                ops.iter()
                    .map(|(k, op)| Input::Desired(event(k.clone(), op))),
            ),
            Effect::WriteIndexes(ops) => out.extend(ops.iter().map(|(d, op)| {
                Input::Desired(event(harmony_fleet_contracts::notice::index_key(d), op))
            })),
            _ => {}
        }
    }
    out
}

#[test]
fn a_standby_writes_nothing_and_takes_over_without_rewriting_what_the_leader_wrote() {
    let web = || deployment("default", "web", "plant-1", "nginx:1", 0);
    let (mut leader, mut standby) = (Harness::new(), Harness::standby());
    for h in [&mut leader, &mut standby] {
        h.feed(info("pi-1", "plant-1"));
        h.feed(info("pi-2", "plant-1"));
    }
    let written = leader.cold_start_with(vec![web()]);
    assert_eq!(writes(&written).0.len(), 2);
    let effects = standby.cold_start_with(vec![web()]);
    assert_eq!(
        effects,
        vec![Effect::Converged],
        "ready, but writes nothing"
    );
    assert!(!standby.core.is_leader());

    // The standby follows the leader's writes and its status; reports change nothing it does.
    for input in as_watched(&written) {
        assert!(standby.feed(input).is_empty());
    }
    let mut with_status = web();
    with_status.status = statuses(&written).last().map(|s| (*s).clone());
    assert!(standby.feed(apply(with_status)).is_empty());
    assert!(
        standby
            .feed(report("pi-1", "web", "nginx:1", StatePhase::Running))
            .is_empty()
    );
    leader.feed(report("pi-1", "web", "nginx:1", StatePhase::Running));

    // Elected: nothing the leader wrote is written again.
    let takeover = standby.feed(Input::Elected);
    assert!(standby.core.is_leader());
    assert_eq!(writes(&takeover), (vec![], vec![]), "{takeover:?}");
    assert!(
        !takeover
            .iter()
            .any(|e| matches!(e, Effect::WriteIndexes(_)))
    );
    // And it writes from now on: a new device gets its key.
    let effects = standby.feed(info("pi-3", "plant-1"));
    assert_eq!(
        writes(&effects).0,
        vec![keys::desired_key(&id("pi-3"), &name("web"))]
    );
}

#[test]
fn the_oldest_claim_owns_a_name_and_a_same_second_tie_keeps_the_owner() {
    let at = |secs: i64| Timestamp::from_second(secs).ok();
    let claims: BTreeSet<_> = [(at(10), "b".to_owned()), (at(11), "a".to_owned())].into();
    assert_eq!(
        pick_owner(&claims, Some("a"), |_| false),
        Some("b"),
        "oldest wins"
    );
    // Created in the same second: the current owner keeps it, though "a" sorts first.
    let tied: BTreeSet<_> = [(at(10), "a".to_owned()), (at(10), "b".to_owned())].into();
    assert_eq!(pick_owner(&tied, Some("b"), |_| false), Some("b"));
    // After a restart (no owner yet), the one not refused before keeps it.
    assert_eq!(pick_owner(&tied, None, |ns| ns == "a"), Some("b"));
    // Nothing else to go by: the first namespace.
    assert_eq!(pick_owner(&tied, None, |_| false), Some("a"));
    assert_eq!(pick_owner(&BTreeSet::new(), None, |_| false), None);
}

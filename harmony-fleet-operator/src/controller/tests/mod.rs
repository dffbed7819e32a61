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

use super::*;
use crate::crd::FINALIZER;
use crate::crd::device::BLACKLIST_ANNOTATION;
use crate::fleet::{DesiredEvent, decode_desired, stray_state_device};
use crate::metrics::Metrics;
use crate::registry::DeviceUpdate;

const T0: i64 = 1_800_000_000;

/// In [`Harness::failing`]: the next reports snapshot is not saved.
const SNAPSHOT: &str = "reports snapshot";

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
                    Effect::SaveReports { seq, .. } => queue.push_back(Input::ReportsSaved {
                        seq: *seq,
                        ok: !self.failing.remove(SNAPSHOT),
                    }),
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
        assert!(self.core.load_desired(DesiredEvent::CaughtUp));
        let mut effects = self.feed(Input::Cr(Box::new(watcher::Event::Init)));
        for d in crs {
            effects.extend(self.feed(Input::Cr(Box::new(watcher::Event::InitApply(d)))));
        }
        for input in [
            Input::Cr(Box::new(watcher::Event::InitDone)),
            Input::info(KvEvent::CaughtUp),
            Input::state(KvEvent::CaughtUp, 0),
            Input::heartbeat(KvEvent::CaughtUp),
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
    Input::info(info_event(device, site))
}

/// The `device-info` event of `device` on `site`, as the watch delivers it.
fn info_event(device: &str, site: &str) -> KvEvent {
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
    KvEvent::Put {
        key: keys::info_key(&id(device)),
        value: Bytes::from(serde_json::to_vec(&info).expect("serialises")),
        at: Timestamp::from_second(T0).expect("valid"),
    }
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
    Input::state(
        KvEvent::Put {
            key: keys::state_key(&id(device), &name(deployment)),
            value: Bytes::from(serde_json::to_vec(&state).expect("serialises")),
            at: Timestamp::from_second(T0).expect("valid"),
        },
        0,
    )
}

fn heartbeat(device: &str, at: Timestamp) -> Input {
    Input::heartbeat(KvEvent::Put {
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

mod checkpoint;
mod devices;
mod leader;
mod reports_snapshot;
mod resources;
mod writes;

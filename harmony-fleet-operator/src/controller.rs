//! The reconcile loop: one task that owns the whole in-memory fleet state and reacts to the
//! `Deployment` watcher and the KV watches, in the order events arrive.
//!
//! * `device-info` → targeting index → exactly the affected `desired-state` keys; `Device`
//!   resources through the registry.
//! * `Deployment` changes → ownership of the name, index, rollout → keys; finalizer.
//! * `device-state` / heartbeats → aggregate → at most one status patch per Deployment per
//!   second (only when it changed); liveness → registry.
//! * `Device` resources annotated [`BLACKLIST_ANNOTATION`]`=true` are blacklisted: the
//!   device leaves the targeting index (its keys are deleted, nothing new is written) and
//!   comes back with its latest labels when the annotation goes.
//! * Cold start: load `desired-state` (what KV holds), then the CRs and the other buckets
//!   from the beginning; nothing is written until all of them caught up. Then one full pass
//!   writes what is missing, deletes orphaned keys, and `/readyz` says `Converged`.
//!
//! **Deployment names are fleet-wide.** A `desired-state` key carries the CR name, not its
//! namespace, so two namespaces cannot both own `web`. The oldest claimant (creation time;
//! on a same-second tie the current owner, see [`pick_owner`]) owns the name; others get
//! `Ready=False, reason NameConflict` and write no keys. When the owner is deleted, the next claimant takes over its keys.
//!
//! A single task keeps the logic sequential and lock-free; KV writes of one event are issued
//! in parallel and awaited before the next event, so the loop never has two opinions about a
//! key. Status patches and `Device` writes run in their own tasks.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use harmony_fleet_contracts::canonical::ContentHash;
use harmony_fleet_contracts::device::DeviceInfo;
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};
use harmony_fleet_contracts::keys::{self, DesiredKey, HeartbeatKey, InfoKey, StateKey};
use harmony_fleet_contracts::notice;
use harmony_fleet_contracts::state::{DeploymentState, Phase as StatePhase};
use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::mpsc;

use crate::aggregate::{FleetState, Report};
use crate::config::Config;
use crate::crd::deployment::{
    Aggregate, Deployment, DeploymentStatus, FailingDevice, MAX_FAILING_DEVICES, RolloutStatus,
};
use crate::crd::device::{BLACKLIST_ANNOTATION, BLACKLIST_REASON_ANNOTATION, Device};
use crate::crd::{FIELD_MANAGER, FINALIZER, GROUP, ToIndex, ToPolicy};
use crate::device_index::DeviceIndexes;
use crate::error::{Error, Result};
use crate::events::{self as fleet_events, Regarding};
use crate::http::Readiness;
use crate::index::{Change, TargetIndex};
use crate::kv::{self, DesiredWriter, FleetKv, KvEvent, KvOp};
use crate::labels;
use crate::metrics::Metrics;
use crate::registry::{self, DeviceUpdate};
use crate::rollout::{DeviceView, Outcome, Phase, Policy, Progress, RolloutState};
use crate::write_quota::{self, StrayWrites, Verdict};

type Rev = ContentHash;

/// Identity of a `Deployment` resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CrKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// Input of the reconcile loop.
#[derive(Debug)]
enum Input {
    Cr(Box<watcher::Event<Deployment>>),
    Info(KvEvent),
    State(KvEvent),
    Heartbeat(KvEvent),
    Blacklist(Box<watcher::Event<kube::core::PartialObjectMeta<Device>>>),
}

/// A running operator. Dropping it stops every task it started.
#[derive(Debug)]
pub struct OperatorHandle {
    /// Readiness (`Recovering` → `Converged`).
    pub readiness: Readiness,
    /// Metrics of this instance.
    pub metrics: Metrics,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    main: Option<tokio::task::JoinHandle<Result<()>>>,
}

impl OperatorHandle {
    /// Waits for the reconcile loop to end (it only ends on a fatal error).
    pub async fn wait(mut self) -> Result<()> {
        match self.main.take() {
            Some(main) => match main.await {
                Ok(result) => result,
                Err(e) => Err(Error::Config(format!("reconcile loop panicked: {e}"))),
            },
            None => Ok(()),
        }
    }
}

impl Drop for OperatorHandle {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        if let Some(main) = &self.main {
            main.abort();
        }
    }
}

/// Starts the operator against a Kubernetes API and a NATS server.
pub async fn start(
    config: Config,
    client: kube::Client,
    nats: async_nats::Client,
    metrics: Metrics,
    readiness: Readiness,
) -> Result<OperatorHandle> {
    let nats_client = nats.clone();
    let fleet_kv = FleetKv::open_or_create(nats, config.create_buckets).await?;
    let (tx, rx) = mpsc::channel::<Input>(8192);
    let mut tasks = Vec::new();

    // What desired-state holds, before anything else: the baseline writes are compared with.
    let mut fleet = FleetState::new();
    let mut revisions: HashMap<Rev, Bytes> = HashMap::new();
    let mut indexes = DeviceIndexes::new();
    load_desired(&fleet_kv, &mut fleet, &mut revisions, &mut indexes).await?;

    let api: Api<Deployment> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let cr_tx = tx.clone();
    tasks.push(tokio::spawn(async move {
        let mut events = std::pin::pin!(watcher(api, watcher::Config::default()).default_backoff());
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if cr_tx.send(Input::Cr(Box::new(event))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Deployment watch error; retrying with backoff")
                }
            }
        }
    }));
    tasks.push(kv::forward(
        kv::watch_from_start(&fleet_kv.info).await?,
        tx.clone(),
        Input::Info,
        "device-info",
    ));
    tasks.push(kv::forward(
        kv::watch_from_start(&fleet_kv.state).await?,
        tx.clone(),
        Input::State,
        "device-state",
    ));
    tasks.push(kv::forward(
        kv::watch_from_start(&fleet_kv.heartbeat).await?,
        tx.clone(),
        Input::Heartbeat,
        "device-heartbeat",
    ));

    // Blacklist: the annotation of `Device` resources (metadata only).
    let blacklist_tx = tx;
    let devices: Api<kube::core::PartialObjectMeta<Device>> = Api::all(client.clone());
    tasks.push(tokio::spawn(async move {
        let mut events = std::pin::pin!(
            watcher(devices, watcher::Config::default()).default_backoff()
        );
        while let Some(event) = events.next().await {
            match event {
                Ok(event) => {
                    if blacklist_tx
                        .send(Input::Blacklist(Box::new(event)))
                        .await
                        .is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "Device watch (blacklist) error; retrying with backoff")
                }
            }
        }
    }));

    let (events, task) = fleet_events::spawn(client.clone());
    tasks.push(task);
    let registry = if config.device_resources {
        let (registry_tx, task) = registry::spawn(
            client.clone(),
            metrics.clone(),
            config.last_seen_refresh,
            events.clone(),
        );
        tasks.push(task);
        Some(registry_tx)
    } else {
        None
    };
    let (status_tx, task) = spawn_status_patcher(client.clone(), metrics.clone());
    tasks.push(task);
    let (stray_tx, task) = kv::spawn_stray_remover(fleet_kv.state.clone(), metrics.clone());
    tasks.push(task);

    let reconciler = Reconciler {
        heartbeat_timeout: config.heartbeat_timeout,
        metrics: metrics.clone(),
        readiness: readiness.clone(),
        writer: DesiredWriter::new(fleet_kv.desired.clone(), nats_client, metrics.clone()),
        client,
        registry,
        status_tx,
        events,
        index: TargetIndex::new(),
        fleet,
        indexes,
        revisions,
        crs: HashMap::new(),
        claims: HashMap::new(),
        owned: HashMap::new(),
        devices: HashMap::new(),
        expiry: BTreeSet::new(),
        caught_up: CaughtUp::default(),
        converged: false,
        ops: HashMap::new(),
        retry: HashMap::new(),
        rollout_dirty: HashSet::new(),
        status_dirty: HashSet::new(),
        finalize: HashSet::new(),
        relist: None,
        blacklist: HashSet::new(),
        blacklist_relist: None,
        held_labels: HashMap::new(),
        reported_labels: HashMap::new(),
        admin_labels: HashMap::new(),
        stray_tx,
        stray_writes: StrayWrites::new(config.stray_report_limit, write_quota::DEFAULT_WINDOW),
        flooding: Vec::new(),
    };
    let main = tokio::spawn(reconciler.run(rx));
    Ok(OperatorHandle {
        readiness,
        metrics,
        tasks,
        main: Some(main),
    })
}

/// Reads `desired-state` up to its current end into `fleet` (assignments), `revisions` and
/// `indexes` (the per-device indexes it holds, and the ones it should hold).
async fn load_desired(
    fleet_kv: &FleetKv,
    fleet: &mut FleetState<DeviceId, DeploymentName, Rev>,
    revisions: &mut HashMap<Rev, Bytes>,
    indexes: &mut DeviceIndexes,
) -> Result<()> {
    let mut events = std::pin::pin!(kv::watch_from_start(&fleet_kv.desired).await?);
    let mut count = 0usize;
    let index_device = |key: &str| {
        notice::is_index_key(key)
            .then(|| key.parse::<DeviceId>().ok())
            .flatten()
    };
    while let Some(event) = events.next().await {
        match event? {
            KvEvent::Put { key, value, .. } if notice::is_index_key(&key) => {
                match index_device(&key) {
                    Some(device) => indexes.load_stored(device, Some(&value)),
                    None => tracing::warn!(key, "ignoring foreign key in desired-state"),
                }
            }
            KvEvent::Put { key, value, .. } => match DesiredKey::parse(&key) {
                Ok(k) => {
                    let rev = ContentHash::of_bytes(&value);
                    indexes.set(&k.device, &k.deployment, Some(&rev));
                    revisions.entry(rev.clone()).or_insert(value);
                    fleet.set_assigned(&k.deployment, &k.device, Some(rev));
                    count += 1;
                }
                Err(e) => tracing::warn!(key, error = %e, "ignoring foreign key in desired-state"),
            },
            KvEvent::Delete { key } => {
                if let Some(device) = index_device(&key) {
                    indexes.load_stored(device, None);
                } else if let Ok(k) = DesiredKey::parse(&key) {
                    indexes.set(&k.device, &k.deployment, None);
                    fleet.set_assigned(&k.deployment, &k.device, None);
                }
            }
            KvEvent::CaughtUp => {
                fleet.take_dirty();
                indexes.mark_all_dirty();
                tracing::info!(keys = count, "loaded desired-state");
                return Ok(());
            }
        }
    }
    Err(Error::WatchEnded {
        bucket: "desired-state".into(),
        message: "ended before the backlog was read".into(),
    })
}

#[derive(Debug, Default)]
struct CaughtUp {
    crs: bool,
    info: bool,
    state: bool,
    heartbeat: bool,
    blacklist: bool,
}

impl CaughtUp {
    fn all(&self) -> bool {
        self.crs && self.info && self.state && self.heartbeat && self.blacklist
    }
}

/// Which namespace owns a fleet-wide name among its claims `(created, namespace)`: the oldest.
/// `creationTimestamp` has one-second resolution, so claims made in the same second tie; the
/// tie goes to the current owner, then to a claimant not already refused with `NameConflict`
/// (so a restarted operator keeps the owner), then to the first namespace.
fn pick_owner<'a>(
    claims: &'a BTreeSet<(Option<Timestamp>, String)>,
    current: Option<&str>,
    refused: impl Fn(&str) -> bool,
) -> Option<&'a str> {
    let (oldest, _) = claims.iter().next()?;
    let tied: Vec<&str> = claims
        .iter()
        .take_while(|(created, _)| created == oldest)
        .map(|(_, ns)| ns.as_str())
        .collect();
    tied.iter()
        .copied()
        .find(|ns| Some(*ns) == current)
        .or_else(|| tied.iter().copied().find(|ns| !refused(ns)))
        .or_else(|| tied.first().copied())
}

/// What the loop remembers of one `Deployment` resource.
#[derive(Debug, Clone)]
struct Cr {
    key: CrKey,
    name: Option<DeploymentName>,
    created: Option<Timestamp>,
    generation: Option<i64>,
    resource_version: Option<String>,
    finalizers: Vec<String>,
    deleting: bool,
    resource: Deployment,
    /// Why the spec cannot be served (invalid name or payload), if so.
    problem: Option<(String, String)>,
    /// Status as last written (or found on the resource at start).
    last_status: Option<DeploymentStatus>,
}

/// A Deployment name this operator owns.
#[derive(Debug)]
struct Owned {
    key: CrKey,
    selector: crate::index::Selector,
    policy: Policy,
    rollout: RolloutState<Rev>,
    progress: Progress,
}

#[derive(Debug, Default)]
struct DeviceLive {
    last_heartbeat: Option<Timestamp>,
    online: bool,
}

/// The reconcile loop's state.
struct Reconciler {
    heartbeat_timeout: Duration,
    metrics: Metrics,
    readiness: Readiness,
    writer: DesiredWriter,
    client: kube::Client,
    registry: Option<mpsc::UnboundedSender<DeviceUpdate>>,
    status_tx: mpsc::UnboundedSender<(CrKey, DeploymentStatus)>,
    /// Events on Deployments and Devices (`kubectl describe`), see [`fleet_events`].
    events: fleet_events::Sender,
    index: TargetIndex<DeviceId, DeploymentName>,
    fleet: FleetState<DeviceId, DeploymentName, Rev>,
    /// Per-device desired-state indexes (adr/0014), kept with every key written.
    indexes: DeviceIndexes,
    revisions: HashMap<Rev, Bytes>,
    crs: HashMap<CrKey, Cr>,
    claims: HashMap<DeploymentName, BTreeSet<(Option<Timestamp>, String)>>,
    owned: HashMap<DeploymentName, Owned>,
    devices: HashMap<DeviceId, DeviceLive>,
    expiry: BTreeSet<(Timestamp, DeviceId)>,
    caught_up: CaughtUp,
    converged: bool,
    /// Writes decided while handling the current event, by key.
    ops: HashMap<String, (DeploymentName, DeviceId, Option<Rev>)>,
    /// Writes that failed, retried on the next tick.
    retry: HashMap<(DeploymentName, DeviceId), Option<Rev>>,
    rollout_dirty: HashSet<DeploymentName>,
    status_dirty: HashSet<CrKey>,
    finalize: HashSet<CrKey>,
    /// CR keys seen since the watcher's last `Init` (to detect deletions across re-lists).
    relist: Option<HashSet<CrKey>>,
    /// Blacklisted devices (annotation on their `Device` resource).
    blacklist: HashSet<DeviceId>,
    /// Blacklisted devices seen since the Device watcher's last `Init`.
    blacklist_relist: Option<HashSet<DeviceId>>,
    /// Latest labels of blacklisted devices, kept out of the index until released.
    held_labels: HashMap<DeviceId, crate::index::Labels>,
    /// `device-state` keys of pairs with no assignment go here to be deleted.
    stray_tx: mpsc::UnboundedSender<String>,
    /// Stray keys counted per device: too many, and the device is blacklisted.
    stray_writes: StrayWrites,
    /// Devices found flooding, with the reason, to blacklist on their `Device`.
    flooding: Vec<(DeviceId, String)>,
    /// Labels each device reported and may claim (protected prefixes dropped).
    reported_labels: HashMap<DeviceId, crate::index::Labels>,
    /// Labels set on `Device` resources by anyone but the operator: they win for targeting.
    admin_labels: HashMap<DeviceId, crate::index::Labels>,
}

impl Reconciler {
    async fn run(mut self, mut rx: mpsc::Receiver<Input>) -> Result<()> {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                input = rx.recv() => {
                    let Some(input) = input else {
                        return Err(Error::WatchEnded {
                            bucket: "all".into(),
                            message: "every watch ended".into(),
                        });
                    };
                    let started = Instant::now();
                    let trigger = self.handle(input).await;
                    self.flush().await;
                    self.metrics.observe_reconcile(trigger, started.elapsed());
                }
                _ = tick.tick() => {
                    let started = Instant::now();
                    self.on_tick().await;
                    self.metrics.observe_reconcile("tick", started.elapsed());
                }
            }
        }
    }

    async fn handle(&mut self, input: Input) -> &'static str {
        match input {
            Input::Cr(event) => {
                self.on_cr(*event).await;
                "deployment"
            }
            Input::Info(event) => {
                self.on_info(event);
                "device-info"
            }
            Input::State(event) => {
                self.on_state(event);
                "device-state"
            }
            Input::Heartbeat(event) => {
                self.on_heartbeat(event);
                "heartbeat"
            }
            Input::Blacklist(event) => {
                self.on_blacklist(*event).await;
                "blacklist"
            }
        }
    }

    // ----- Deployment resources -----

    async fn on_cr(&mut self, event: watcher::Event<Deployment>) {
        match event {
            watcher::Event::Init => self.relist = Some(HashSet::new()),
            watcher::Event::InitApply(d) | watcher::Event::Apply(d) => {
                if let Some(seen) = &mut self.relist {
                    seen.insert(cr_key(&d));
                }
                self.on_cr_apply(d).await;
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relist.take() {
                    let gone: Vec<CrKey> = self
                        .crs
                        .keys()
                        .filter(|k| !seen.contains(k))
                        .cloned()
                        .collect();
                    for key in gone {
                        self.forget_cr(&key);
                    }
                }
                if !self.caught_up.crs {
                    self.caught_up.crs = true;
                    self.maybe_converge().await;
                }
            }
            watcher::Event::Delete(d) => {
                let key = cr_key(&d);
                self.forget_cr(&key);
            }
        }
    }

    async fn on_cr_apply(&mut self, d: Deployment) {
        let key = cr_key(&d);
        let deleting = d.metadata.deletion_timestamp.is_some();
        let previous = self.crs.get(&key);
        let spec_changed = previous.is_none_or(|p| p.resource.spec != d.spec);
        let last_status = previous
            .and_then(|p| p.last_status.clone())
            .or_else(|| d.status.clone());
        let name = DeploymentName::new(key.name.clone());
        let problem = match &name {
            Err(e) => Some((
                "InvalidName".to_owned(),
                format!("metadata.name cannot be a deployment name: {e}"),
            )),
            Ok(_) => d.spec.score.validate().err().map(|e| {
                (
                    "InvalidScore".to_owned(),
                    format!("spec.score is invalid: {e}"),
                )
            }),
        };
        let cr = Cr {
            key: key.clone(),
            name: name.ok(),
            created: d.metadata.creation_timestamp.as_ref().map(|t| t.0),
            generation: d.metadata.generation,
            resource_version: d.metadata.resource_version.clone(),
            finalizers: d.finalizers().to_vec(),
            deleting,
            resource: d,
            problem,
            last_status,
        };
        let generation_changed = previous.is_none_or(|p| p.generation != cr.generation);
        self.crs.insert(key.clone(), cr.clone());
        if generation_changed {
            self.status_dirty.insert(key.clone());
        }

        if deleting {
            self.release_name(&key);
            self.finalize.insert(key.clone());
            self.try_finalize(&key).await;
            return;
        }
        if !cr.finalizers.iter().any(|f| f == FINALIZER) {
            self.add_finalizer(&cr).await;
        }
        let Some(name) = cr.name.clone() else {
            return;
        };
        self.claims
            .entry(name.clone())
            .or_default()
            .insert((cr.created, key.namespace.clone()));
        if spec_changed {
            self.resolve_owner(&name, true);
        } else {
            self.resolve_owner(&name, false);
        }
    }

    /// Decides which CR owns `name` and (re)applies it when it changed or `force` is set.
    fn resolve_owner(&mut self, name: &DeploymentName, force: bool) {
        let current = self.owned.get(name).map(|o| o.key.clone());
        let refused = |ns: &str| {
            self.crs
                .get(&CrKey {
                    namespace: ns.to_owned(),
                    name: name.as_str().to_owned(),
                })
                .and_then(|cr| cr.last_status.as_ref())
                .is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.reason == "NameConflict")
                })
        };
        let claimant = self
            .claims
            .get(name)
            .and_then(|c| pick_owner(c, current.as_ref().map(|k| k.namespace.as_str()), refused))
            .map(|ns| CrKey {
                namespace: ns.to_owned(),
                name: name.as_str().to_owned(),
            });
        if let Some(claims) = self.claims.get(name) {
            for (_, ns) in claims {
                self.status_dirty.insert(CrKey {
                    namespace: ns.clone(),
                    name: name.as_str().to_owned(),
                });
            }
        }
        match claimant {
            None => {
                if current.is_some() {
                    self.owned.remove(name);
                    let changes = self.index.remove_deployment(name);
                    self.apply_changes(changes);
                    self.metrics.deployments.set(self.owned.len() as i64);
                }
            }
            Some(owner) => {
                if current.as_ref() != Some(&owner) || force {
                    self.apply_owned(&owner);
                }
            }
        }
    }

    /// Applies the spec of the owning CR: revision, rollout, selector.
    fn apply_owned(&mut self, key: &CrKey) {
        let Some(cr) = self.crs.get(key) else {
            return;
        };
        let Some(name) = cr.name.clone() else {
            return;
        };
        if cr.problem.is_some() {
            // Keep serving the last good spec (if any); the status says what is wrong.
            if let Some(owned) = self.owned.get_mut(&name) {
                owned.key = key.clone();
            }
            return;
        }
        let spec = &cr.resource.spec;
        let (bytes, rev) = match spec.score.to_canonical_json() {
            Ok(bytes) => {
                let rev = ContentHash::of_bytes(&bytes);
                (Bytes::from(bytes), rev)
            }
            Err(e) => {
                tracing::error!(deployment = %name, error = %e, "cannot encode spec.score");
                return;
            }
        };
        self.revisions.entry(rev.clone()).or_insert(bytes);
        let selector = spec.target_selector.to_index();
        let policy = spec.rollout.to_policy();
        let restored = cr
            .last_status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .and_then(restore_rollout);
        let events = match self.owned.get_mut(&name) {
            Some(owned) => {
                owned.key = key.clone();
                owned.policy = policy;
                owned.selector = selector.clone();
                if owned.rollout.target != rev {
                    let before = owned.rollout.clone();
                    owned.rollout = RolloutState::start(rev, Some(&owned.rollout));
                    fleet_events::transitions(Some(&before), &owned.rollout)
                } else {
                    Vec::new()
                }
            }
            None => {
                // A rollout restored from the status (operator restart) is no news.
                let (rollout, events) = match restored {
                    Some(r) if r.target == rev => (r, Vec::new()),
                    other => {
                        let rollout = RolloutState::start(rev, other.as_ref());
                        let events = fleet_events::transitions(other.as_ref(), &rollout);
                        (rollout, events)
                    }
                };
                self.owned.insert(
                    name.clone(),
                    Owned {
                        key: key.clone(),
                        selector: selector.clone(),
                        policy,
                        rollout,
                        progress: Progress::default(),
                    },
                );
                self.metrics.deployments.set(self.owned.len() as i64);
                events
            }
        };
        self.tell(key, events);
        let changes = self.index.upsert_deployment(name.clone(), selector);
        self.apply_changes(changes);
        self.rollout_dirty.insert(name.clone());
        self.step_rollout(&name);
        self.status_dirty.insert(key.clone());
    }

    /// Stops `key` from claiming its name (deletion or removal).
    fn release_name(&mut self, key: &CrKey) {
        let Some(cr) = self.crs.get(key) else {
            return;
        };
        let Some(name) = cr.name.clone() else {
            return;
        };
        let created = cr.created;
        if let Some(claims) = self.claims.get_mut(&name) {
            claims.remove(&(created, key.namespace.clone()));
            if claims.is_empty() {
                self.claims.remove(&name);
            }
        }
        if self.owned.get(&name).is_some_and(|o| o.key == *key) {
            self.owned.remove(&name);
            // A successor takes over the keys; otherwise they are deleted.
            if self.claims.contains_key(&name) {
                self.resolve_owner(&name, true);
            } else {
                let changes = self.index.remove_deployment(&name);
                self.apply_changes(changes);
            }
            self.metrics.deployments.set(self.owned.len() as i64);
        }
    }

    fn forget_cr(&mut self, key: &CrKey) {
        self.release_name(key);
        self.crs.remove(key);
        self.finalize.remove(key);
        self.status_dirty.remove(key);
    }

    async fn add_finalizer(&self, cr: &Cr) {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &cr.key.namespace);
        let mut finalizers = cr.finalizers.clone();
        finalizers.push(FINALIZER.to_owned());
        let patch = json!({
            "metadata": { "finalizers": finalizers, "resourceVersion": cr.resource_version }
        });
        if let Err(e) = api
            .patch(&cr.key.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            // A conflict means a newer version is on its way through the watch; retried then.
            tracing::debug!(deployment = %cr.key.name, namespace = %cr.key.namespace, error = %e, "adding finalizer failed");
        }
    }

    /// Releases the finalizer of a deleted CR once none of its keys remain.
    async fn try_finalize(&mut self, key: &CrKey) {
        if !self.converged {
            return;
        }
        let Some(cr) = self.crs.get(key) else {
            self.finalize.remove(key);
            return;
        };
        let name = cr.name.clone();
        // Keys of a name nobody owns any more must be gone first.
        if let Some(name) = &name
            && !self.owned.contains_key(name)
        {
            for device in self.fleet.assigned_devices(name) {
                self.want(name, &device, None);
            }
            self.flush().await;
            if !self.fleet.assigned_devices(name).is_empty() {
                return;
            }
        }
        let Some(cr) = self.crs.get(key) else {
            return;
        };
        if !cr.finalizers.iter().any(|f| f == FINALIZER) {
            self.finalize.remove(key);
            return;
        }
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &key.namespace);
        let finalizers: Vec<&String> = cr.finalizers.iter().filter(|f| *f != FINALIZER).collect();
        let patch = json!({
            "metadata": { "finalizers": finalizers, "resourceVersion": cr.resource_version }
        });
        match api
            .patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                tracing::info!(deployment = %key.name, namespace = %key.namespace, "keys removed, finalizer released");
                self.finalize.remove(key);
            }
            Err(kube::Error::Api(s)) if s.code == 404 => {
                self.finalize.remove(key);
            }
            Err(e) => {
                tracing::debug!(deployment = %key.name, error = %e, "releasing finalizer failed; retrying");
            }
        }
    }

    // ----- KV inputs -----

    fn on_info(&mut self, event: KvEvent) {
        match event {
            KvEvent::CaughtUp => {
                self.caught_up.info = true;
            }
            KvEvent::Put { key, value, .. } => {
                let Ok(k) = InfoKey::parse(&key) else {
                    tracing::warn!(key, "ignoring foreign key in device-info");
                    return;
                };
                let info: DeviceInfo = match serde_json::from_slice(&value) {
                    Ok(info) => info,
                    Err(e) => {
                        tracing::warn!(device = %k.device, error = %e, "rejecting unreadable device-info; keeping the previous one");
                        return;
                    }
                };
                if info.device_id != k.device {
                    tracing::warn!(key, reported = %info.device_id, "rejecting device-info whose deviceId differs from its key");
                    return;
                }
                if let Err(e) = info.validate() {
                    tracing::warn!(device = %k.device, error = %e, "rejecting device-info with invalid labels; keeping the previous one");
                    return;
                }
                let reported = labels::split_reported(&k.device, &info.labels);
                if !reported.ignored.is_empty() {
                    tracing::warn!(device = %k.device, ignored = ?reported.ignored, "ignoring reported labels under a protected prefix");
                }
                let apply = labels::to_apply(&reported.accepted, self.admin_labels.get(&k.device));
                self.reported_labels
                    .insert(k.device.clone(), reported.accepted);
                self.retarget(&k.device);
                self.metrics
                    .devices_known
                    .set(self.index.device_count() as i64);
                if let Some(registry) = &self.registry {
                    let _ = registry.send(DeviceUpdate::Info {
                        id: k.device,
                        labels: apply,
                        ignored_labels: reported.ignored,
                        inventory: (&info.inventory).into(),
                        agent_version: info.agent_version.as_str().to_owned(),
                    });
                }
            }
            KvEvent::Delete { key } => {
                let Ok(k) = InfoKey::parse(&key) else {
                    return;
                };
                self.held_labels.remove(&k.device);
                self.reported_labels.remove(&k.device);
                let changes = self.index.remove_device(&k.device);
                self.apply_changes(changes);
                self.metrics
                    .devices_known
                    .set(self.index.device_count() as i64);
                if let Some(registry) = &self.registry {
                    let _ = registry.send(DeviceUpdate::Removed { id: k.device });
                }
            }
        }
    }

    /// Targets `device` on its labels now: accepted reported labels overlaid by labels set by
    /// people on its `Device` ([`labels::effective`]). A device that reported no info yet is
    /// not targeted; a blacklisted one keeps its labels aside until released.
    fn retarget(&mut self, device: &DeviceId) {
        let Some(reported) = self.reported_labels.get(device) else {
            return;
        };
        let effective = labels::effective(reported, self.admin_labels.get(device));
        if self.blacklist.contains(device) {
            self.held_labels.insert(device.clone(), effective);
        } else {
            let changes = self.index.upsert_device(device.clone(), effective);
            self.apply_changes(changes);
        }
    }

    /// Labels people set on a `Device` changed (`None`: the resource is gone): retarget, and
    /// tell the registry which reported labels it may still apply.
    fn set_admin_labels(&mut self, device: &DeviceId, admin: Option<crate::index::Labels>) {
        let admin = admin.filter(|a| !a.is_empty());
        if self.admin_labels.get(device) == admin.as_ref() {
            return;
        }
        tracing::info!(%device, labels = ?admin, "labels set on the Device changed; retargeting");
        match admin {
            Some(a) => self.admin_labels.insert(device.clone(), a),
            None => self.admin_labels.remove(device),
        };
        self.retarget(device);
        if let (Some(registry), Some(reported)) = (&self.registry, self.reported_labels.get(device))
        {
            let _ = registry.send(DeviceUpdate::Labels {
                id: device.clone(),
                labels: labels::to_apply(reported, self.admin_labels.get(device)),
            });
        }
    }

    fn on_state(&mut self, event: KvEvent) {
        let (k, report) = match event {
            KvEvent::CaughtUp => {
                self.caught_up.state = true;
                return;
            }
            KvEvent::Put { key, value, .. } => {
                let k = match StateKey::parse(&key) {
                    Ok(k) => k,
                    Err(e) => {
                        // A device may write `state.<itself>.<anything>`: a key that is not
                        // a deployment name is as stray as one of a deployment it lacks.
                        match stray_state_device(&key) {
                            Some(device) if self.converged => self.note_stray(&device, key),
                            _ => {
                                tracing::warn!(key, error = %e, "ignoring foreign key in device-state")
                            }
                        }
                        return;
                    }
                };
                let state: DeploymentState = match serde_json::from_slice(&value) {
                    Ok(s) => s,
                    Err(e) => {
                        if self.converged && !self.is_assigned(&k.deployment, &k.device) {
                            self.note_stray(&k.device, key);
                        } else {
                            tracing::warn!(key, error = %e, "ignoring unreadable device-state");
                        }
                        return;
                    }
                };
                let report = state.payload_hash.clone().map(|rev| Report {
                    rev,
                    outcome: match state.phase {
                        StatePhase::Running => Outcome::Succeeded,
                        StatePhase::Failed => Outcome::Failed,
                        _ => Outcome::InProgress,
                    },
                    error: state.last_error.clone(),
                    at: Some(state.last_change),
                });
                (k, report)
            }
            KvEvent::Delete { key } => {
                let Ok(k) = StateKey::parse(&key) else {
                    return;
                };
                (k, None)
            }
        };
        let reported = report.is_some();
        self.fleet.set_report(&k.deployment, &k.device, report);
        // A device reports only for deployments assigned to it: anything else (a made-up
        // name, or a leftover) is removed, so a device cannot grow the bucket at will. Before
        // the cold start converged, assignments are not all known yet.
        if reported && self.converged && !self.is_assigned(&k.deployment, &k.device) {
            self.note_stray(&k.device, keys::state_key(&k.device, &k.deployment));
        }
    }

    /// Queues the removal of `device`'s stray `device-state` key `key` and counts it: a device
    /// over the limit ([`StrayWrites`]) is queued for blacklisting.
    fn note_stray(&mut self, device: &DeviceId, key: String) {
        self.metrics.stray_reports.inc();
        if let Verdict::Exceeded { keys } = self.stray_writes.record(device, &key, Instant::now()) {
            let reason = format!(
                "the operator blacklisted it: it wrote {keys} device-state keys for deployments not assigned to it within {}s (limit {}, --stray-report-limit); remove the annotation {BLACKLIST_ANNOTATION} to let it back",
                self.stray_writes.window().as_secs(),
                self.stray_writes.limit(),
            );
            tracing::warn!(device = %device, keys, "device floods device-state: blacklisting it");
            self.metrics.devices_flooding.inc();
            self.flooding.push((device.clone(), reason));
        }
        let _ = self.stray_tx.send(key);
    }

    /// Whether the pair has (or is about to get) a `desired-state` key.
    fn is_assigned(&self, deployment: &DeploymentName, device: &DeviceId) -> bool {
        self.fleet.assigned(deployment, device).is_some()
            || self
                .ops
                .get(&keys::desired_key(device, deployment))
                .is_some_and(|(_, _, rev)| rev.is_some())
    }

    fn on_heartbeat(&mut self, event: KvEvent) {
        match event {
            KvEvent::CaughtUp => self.caught_up.heartbeat = true,
            KvEvent::Put { key, at, .. } => {
                let Ok(k) = HeartbeatKey::parse(&key) else {
                    return;
                };
                let live = self.devices.entry(k.device.clone()).or_default();
                if let Some(old) = live.last_heartbeat.replace(at) {
                    self.expiry.remove(&(old, k.device.clone()));
                }
                self.expiry.insert((at, k.device.clone()));
                let fresh = age(at) < self.heartbeat_timeout;
                if fresh && !live.online {
                    live.online = true;
                    self.metrics.devices_online.inc();
                }
                let online = live.online;
                // A heartbeat already stale when read (cold start) marks the device offline.
                self.fleet
                    .set_offline(&k.device, !online, self.index.deployments_of(&k.device));
                if let Some(registry) = &self.registry {
                    let _ = registry.send(DeviceUpdate::Liveness {
                        id: k.device,
                        online,
                        last_heartbeat: Some(at),
                    });
                }
            }
            KvEvent::Delete { key } => {
                let Ok(k) = HeartbeatKey::parse(&key) else {
                    return;
                };
                if let Some(live) = self.devices.remove(&k.device) {
                    if let Some(at) = live.last_heartbeat {
                        self.expiry.remove(&(at, k.device.clone()));
                    }
                    if live.online {
                        self.metrics.devices_online.dec();
                    }
                    self.fleet
                        .set_offline(&k.device, true, self.index.deployments_of(&k.device));
                    if let Some(registry) = &self.registry {
                        let _ = registry.send(DeviceUpdate::Liveness {
                            id: k.device,
                            online: false,
                            last_heartbeat: live.last_heartbeat,
                        });
                    }
                }
            }
        }
    }

    // ----- blacklist -----

    async fn on_blacklist(&mut self, event: watcher::Event<kube::core::PartialObjectMeta<Device>>) {
        let flagged = |d: &kube::core::PartialObjectMeta<Device>| -> Option<(DeviceId, bool)> {
            let id = DeviceId::new(d.metadata.name.clone()?).ok()?;
            let on = d
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(BLACKLIST_ANNOTATION))
                .is_some_and(|v| v == "true");
            Some((id, on))
        };
        match event {
            watcher::Event::Init => self.blacklist_relist = Some(HashSet::new()),
            watcher::Event::InitApply(d) => {
                self.on_device_labels(&d);
                if let (Some(seen), Some((id, true))) = (&mut self.blacklist_relist, flagged(&d)) {
                    seen.insert(id);
                }
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.blacklist_relist.take() {
                    let released: Vec<DeviceId> =
                        self.blacklist.difference(&seen).cloned().collect();
                    for id in released {
                        self.set_blacklisted(id, false);
                    }
                    for id in seen {
                        self.set_blacklisted(id, true);
                    }
                }
                if !self.caught_up.blacklist {
                    self.caught_up.blacklist = true;
                    self.maybe_converge().await;
                }
            }
            watcher::Event::Apply(d) => {
                self.on_device_labels(&d);
                if let Some((id, on)) = flagged(&d) {
                    self.set_blacklisted(id, on);
                }
            }
            watcher::Event::Delete(d) => {
                if let Some((id, _)) = flagged(&d) {
                    self.set_admin_labels(&id, None);
                    self.set_blacklisted(id, false);
                }
            }
        }
    }

    /// The labels others set on a `Device` (read from its managed fields).
    fn on_device_labels(&mut self, d: &kube::core::PartialObjectMeta<Device>) {
        let Some(id) = d.metadata.name.clone().and_then(|n| DeviceId::new(n).ok()) else {
            return;
        };
        let admin = labels::set_by_others(&d.metadata, FIELD_MANAGER);
        self.set_admin_labels(&id, Some(admin));
    }

    /// Takes a device out of targeting (its keys go) or puts it back with its latest labels.
    fn set_blacklisted(&mut self, device: DeviceId, on: bool) {
        if on {
            if !self.blacklist.insert(device.clone()) {
                return;
            }
            tracing::info!(device = %device, "device blacklisted: removing its desired state");
            self.tell_device(&device, fleet_events::blacklist(true));
            if let Some(labels) = self.index.labels(&device).cloned() {
                self.held_labels.insert(device.clone(), labels);
                let changes = self.index.remove_device(&device);
                self.apply_changes(changes);
            }
        } else {
            if !self.blacklist.remove(&device) {
                return;
            }
            tracing::info!(device = %device, "device released from the blacklist");
            self.tell_device(&device, fleet_events::blacklist(false));
            self.stray_writes.release(&device);
            if let Some(labels) = self.held_labels.remove(&device) {
                let changes = self.index.upsert_device(device, labels);
                self.apply_changes(changes);
            }
        }
    }

    /// Marks devices whose last heartbeat is older than the timeout offline. O(expired).
    fn expire_heartbeats(&mut self) {
        let Ok(timeout) = jiff::SignedDuration::try_from(self.heartbeat_timeout) else {
            return;
        };
        let Ok(cutoff) = Timestamp::now().checked_sub(timeout) else {
            return;
        };
        while let Some((at, device)) = self.expiry.first().cloned() {
            if at >= cutoff {
                break;
            }
            self.expiry.pop_first();
            if let Some(live) = self.devices.get_mut(&device)
                && live.online
            {
                live.online = false;
                self.metrics.devices_online.dec();
                self.fleet
                    .set_offline(&device, true, self.index.deployments_of(&device));
                tracing::info!(device = %device, last_heartbeat = %at, "device offline");
                if let Some(registry) = &self.registry {
                    let _ = registry.send(DeviceUpdate::Liveness {
                        id: device,
                        online: false,
                        last_heartbeat: Some(at),
                    });
                }
            }
        }
    }

    // ----- targeting and writes -----

    fn apply_changes(&mut self, changes: Vec<Change<DeviceId, DeploymentName>>) {
        for change in changes {
            match change {
                Change::Matched { device, deployment } => {
                    self.fleet.set_matched(&deployment, &device, true);
                    if self.converged
                        && self.fleet.assigned(&deployment, &device).is_none()
                        && let Some(owned) = self.owned.get(&deployment)
                    {
                        let rev = owned.rollout.joiner_revision().clone();
                        self.want(&deployment, &device, Some(rev));
                    }
                    self.rollout_dirty.insert(deployment);
                }
                Change::Unmatched { device, deployment } => {
                    self.fleet.set_matched(&deployment, &device, false);
                    if self.converged {
                        self.want(&deployment, &device, None);
                    }
                    self.rollout_dirty.insert(deployment);
                }
            }
        }
    }

    /// Records that the pair should hold `rev` (`None`: no key). Skipped when KV holds it.
    fn want(&mut self, deployment: &DeploymentName, device: &DeviceId, rev: Option<Rev>) {
        let key = keys::desired_key(device, deployment);
        if self.fleet.assigned(deployment, device) == rev.as_ref() {
            if self.ops.remove(&key).is_none() {
                self.metrics.kv_writes_skipped.inc();
            }
            return;
        }
        self.ops
            .insert(key, (deployment.clone(), device.clone(), rev));
    }

    /// Issues the writes decided so far and records their outcome; then writes the indexes of
    /// the devices whose keys changed and tells each device (adr/0014).
    async fn flush(&mut self) {
        self.flush_keys().await;
        self.flush_indexes().await;
        self.flush_flooding().await;
    }

    /// Blacklists the devices found flooding (annotations on their `Device`; the blacklist
    /// watch then takes their keys, and the identity service revokes their credential).
    async fn flush_flooding(&mut self) {
        if self.flooding.is_empty() {
            return;
        }
        let api: Api<Device> = Api::all(self.client.clone());
        for (device, reason) in std::mem::take(&mut self.flooding) {
            let patch = serde_json::json!({"metadata": {"annotations": {
                BLACKLIST_ANNOTATION: "true",
                BLACKLIST_REASON_ANNOTATION: reason,
            }}});
            let result = api
                .patch(
                    device.as_str(),
                    &PatchParams::default(),
                    &Patch::Merge(patch),
                )
                .await;
            match result {
                Ok(_) => {
                    tracing::info!(device = %device, "device blacklisted for flooding device-state")
                }
                Err(e) => {
                    tracing::warn!(device = %device, error = %e, "could not blacklist a flooding device (no Device resource with --no-device-resources?); its stray keys are still removed")
                }
            }
        }
    }

    /// The index writes pending (keys changed, or a cold start found a stale index), then one
    /// notice per device whose index was written. Notices go out only after the index is
    /// stored, so a device that lists on a notice reads the new index.
    async fn flush_indexes(&mut self) {
        // Before the cold start converged the picture is incomplete (orphans not collected
        // yet): an index written now could name a key about to be deleted.
        if !self.converged {
            return;
        }
        let writes = self.indexes.take_writes();
        if writes.is_empty() {
            return;
        }
        let ops = writes
            .into_iter()
            .map(|w| (notice::index_key(&w.device), KvOp::Put(w.bytes)))
            .collect();
        let mut notify = Vec::new();
        for (key, _, ok) in self.writer.apply(ops).await {
            let Ok(device) = key.parse::<DeviceId>() else {
                continue;
            };
            if ok {
                notify.push(device);
            } else {
                self.indexes.failed(&device);
            }
        }
        self.writer.notify(&notify).await;
    }

    async fn flush_keys(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        let mut batch = Vec::with_capacity(self.ops.len());
        let mut meta = HashMap::with_capacity(self.ops.len());
        for (key, (k, d, rev)) in self.ops.drain() {
            let op = match &rev {
                Some(r) => match self.revisions.get(r) {
                    Some(bytes) => KvOp::Put(bytes.clone()),
                    None => {
                        tracing::error!(key, revision = %r, "payload bytes of revision unknown; not writing");
                        continue;
                    }
                },
                None => KvOp::Delete,
            };
            meta.insert(key.clone(), (k, d, rev));
            batch.push((key, op));
        }
        for (key, _, ok) in self.writer.apply(batch).await {
            let Some((k, d, rev)) = meta.remove(&key) else {
                continue;
            };
            if ok {
                self.indexes.set(&d, &k, rev.as_ref());
                self.fleet.set_assigned(&k, &d, rev);
                self.retry.remove(&(k, d));
            } else {
                self.retry.insert((k, d), rev);
            }
        }
    }

    /// Hands the rollout Events of `key` to the Event writer.
    fn tell(&self, key: &CrKey, events: Vec<fleet_events::FleetEvent>) {
        if !events.is_empty() {
            let regarding = Regarding::Deployment {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            };
            let _ = self.events.send((regarding, events));
        }
    }

    /// Hands an Event on `device`'s `Device` to the Event writer, once the operator has caught
    /// up (the blacklists found at start are no news).
    fn tell_device(&self, device: &DeviceId, event: fleet_events::FleetEvent) {
        if self.converged {
            let _ = self
                .events
                .send((Regarding::Device(device.clone()), vec![event]));
        }
    }

    /// Runs one rollout step for an owned deployment. O(devices it matches).
    fn step_rollout(&mut self, name: &DeploymentName) {
        if !self.converged {
            return;
        }
        let Some(owned) = self.owned.get_mut(name) else {
            return;
        };
        let before = (owned.rollout.clone(), owned.progress.clone());
        let fleet = &self.fleet;
        let index = &self.index;
        let empty = crate::index::Labels::new();
        let step = owned.rollout.step(
            &owned.policy,
            index.matched(name).map(|d| {
                (
                    d,
                    DeviceView {
                        assigned: fleet.assigned(name, d),
                        observed: fleet.report(name, d).map(|r| (&r.rev, r.outcome)),
                        last_good: fleet.last_good(name, d),
                        labels: index.labels(d).unwrap_or(&empty),
                    },
                )
            }),
        );
        owned.progress = step.progress;
        let changed = before != (owned.rollout.clone(), owned.progress.clone());
        let key = owned.key.clone();
        let events = fleet_events::transitions(Some(&before.0), &owned.rollout);
        if changed {
            if owned.rollout.phase != before.0.phase {
                tracing::info!(deployment = %name, phase = owned.rollout.phase.as_str(), reason = owned.rollout.reason.as_deref().unwrap_or(""), "rollout phase changed");
            }
            self.tell(&key, events);
            self.status_dirty.insert(key);
        }
        for (device, rev) in step.assign {
            self.want(name, &device, Some(rev));
        }
    }

    // ----- cold start -----

    async fn maybe_converge(&mut self) {
        if self.converged || !self.caught_up.all() {
            return;
        }
        self.converged = true;
        let started = Instant::now();
        let names: Vec<DeploymentName> = self.owned.keys().cloned().collect();
        for name in &names {
            self.step_rollout(name);
        }
        // Orphans: keys of deployments nobody owns, or of devices no longer matched.
        let orphans: Vec<(DeploymentName, DeviceId)> = self
            .fleet
            .assigned_pairs()
            .filter(|(k, d, _)| !self.owned.contains_key(*k) || !self.index.is_matched(k, d))
            .map(|(k, d, _)| (k.clone(), d.clone()))
            .collect();
        let orphan_count = orphans.len();
        for (k, d) in orphans {
            self.want(&k, &d, None);
        }
        // Reports of pairs left without a key (their orphans are deleted just above).
        let stray: Vec<String> = self
            .fleet
            .unassigned_reports()
            .filter(|(k, d)| !self.is_assigned(k, d))
            .map(|(k, d)| keys::state_key(d, k))
            .collect();
        if !stray.is_empty() {
            tracing::info!(
                count = stray.len(),
                "removing device-state keys of deployments not assigned to their device"
            );
        }
        for key in stray {
            let _ = self.stray_tx.send(key);
        }
        let writes = self.ops.len();
        self.flush().await;
        let pending: Vec<CrKey> = self.finalize.iter().cloned().collect();
        for key in pending {
            self.try_finalize(&key).await;
        }
        let keys: Vec<CrKey> = self.crs.keys().cloned().collect();
        self.status_dirty.extend(keys);
        self.readiness.set_converged();
        tracing::info!(
            deployments = self.owned.len(),
            devices = self.index.device_count(),
            writes,
            orphans = orphan_count,
            took_ms = started.elapsed().as_millis() as u64,
            "cold start converged"
        );
    }

    // ----- periodic work -----

    async fn on_tick(&mut self) {
        if !self.converged {
            self.maybe_converge().await;
            if !self.converged {
                return;
            }
        }
        self.expire_heartbeats();
        self.stray_writes.expire(Instant::now());
        let retry: Vec<((DeploymentName, DeviceId), Option<Rev>)> = self.retry.drain().collect();
        for ((k, d), rev) in retry {
            let rev = if self.index.is_matched(&k, &d) {
                rev
            } else {
                None
            };
            self.want(&k, &d, rev);
        }
        for name in self.fleet.take_dirty() {
            if let Some(owned) = self.owned.get(&name) {
                self.status_dirty.insert(owned.key.clone());
            }
            self.rollout_dirty.insert(name);
        }
        let dirty: Vec<DeploymentName> = self.rollout_dirty.drain().collect();
        for name in &dirty {
            self.step_rollout(name);
        }
        self.flush().await;
        let pending: Vec<CrKey> = self.finalize.iter().cloned().collect();
        for key in pending {
            self.try_finalize(&key).await;
        }
        let dirty: Vec<CrKey> = self.status_dirty.drain().collect();
        for key in dirty {
            self.publish_status(&key);
        }
    }

    fn publish_status(&mut self, key: &CrKey) {
        let Some(cr) = self.crs.get(key) else {
            return;
        };
        if cr.deleting {
            return;
        }
        let owner = cr
            .name
            .as_ref()
            .and_then(|n| self.owned.get(n))
            .filter(|o| o.key == *key);
        let mut status = DeploymentStatus {
            observed_generation: cr.generation,
            ..DeploymentStatus::default()
        };
        let previous = cr.last_status.clone().unwrap_or_default();
        if let Some(owned) = owner {
            status = self.serving_status(cr, owned, cr.name.as_ref());
        }
        let conditions = match (&cr.problem, owner, &cr.name) {
            (Some((reason, message)), _, _) => {
                vec![("Ready", false, reason.clone(), message.clone())]
            }
            (None, Some(owned), _) => self.conditions(owned, &status),
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
        status.conditions = conditions
            .into_iter()
            .map(|(kind, ok, reason, message)| {
                let value = if ok { "True" } else { "False" };
                let since = previous
                    .conditions
                    .iter()
                    .find(|c| c.type_ == kind && c.status == value)
                    .map(|c| c.last_transition_time.clone())
                    .unwrap_or_else(|| Time(Timestamp::now()));
                Condition {
                    type_: kind.to_owned(),
                    status: value.to_owned(),
                    reason,
                    message,
                    observed_generation: cr.generation,
                    last_transition_time: since,
                }
            })
            .collect();
        if status == previous {
            return;
        }
        if let Some(cr) = self.crs.get_mut(key) {
            cr.last_status = Some(status.clone());
        }
        let _ = self.status_tx.send((key.clone(), status));
    }

    fn serving_status(
        &self,
        cr: &Cr,
        owned: &Owned,
        name: Option<&DeploymentName>,
    ) -> DeploymentStatus {
        let Some(name) = name else {
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
                phase: r.phase.as_str().to_owned(),
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

    fn conditions(
        &self,
        owned: &Owned,
        status: &DeploymentStatus,
    ) -> Vec<(&'static str, bool, String, String)> {
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
                r.reason.clone().unwrap_or_default(),
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
}

fn cr_key(d: &Deployment) -> CrKey {
    CrKey {
        namespace: d.namespace().unwrap_or_default(),
        name: d.name_any(),
    }
}

fn age(at: Timestamp) -> Duration {
    Timestamp::now()
        .duration_since(at)
        .try_into()
        .unwrap_or(Duration::ZERO)
}

/// Rebuilds a rollout from `status.rollout` (restart mid-rollout).
fn restore_rollout(s: &RolloutStatus) -> Option<RolloutState<Rev>> {
    Some(RolloutState {
        target: s.revision.parse().ok()?,
        previous: s.previous_revision.as_deref().and_then(|p| p.parse().ok()),
        phase: Phase::parse(&s.phase)?,
        batch: s.current_batch.saturating_sub(1),
        reason: s.reason.clone(),
    })
}

/// Spawns the task that writes `Deployment` statuses by server-side apply. Coalesces: when
/// several statuses of one resource queue up, only the latest is written.
fn spawn_status_patcher(
    client: kube::Client,
    metrics: Metrics,
) -> (
    mpsc::UnboundedSender<(CrKey, DeploymentStatus)>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(CrKey, DeploymentStatus)>();
    let task = tokio::spawn(async move {
        let mut pending: HashMap<CrKey, DeploymentStatus> = HashMap::new();
        let (retry_tx, mut retry_rx) = mpsc::unbounded_channel::<(CrKey, DeploymentStatus)>();
        loop {
            if pending.is_empty() {
                match rx.recv().await {
                    Some((k, s)) => {
                        pending.insert(k, s);
                    }
                    None => return,
                }
            }
            while let Ok((k, s)) = rx.try_recv() {
                pending.insert(k, s);
            }
            let batch: Vec<(CrKey, DeploymentStatus)> = pending.drain().collect();
            futures::stream::iter(batch)
                .for_each_concurrent(8, |(key, status)| {
                    let client = client.clone();
                    let metrics = metrics.clone();
                    let retry_tx = retry_tx.clone();
                    async move {
                        let api: Api<Deployment> = Api::namespaced(client, &key.namespace);
                        let body = json!({
                            "apiVersion": format!("{GROUP}/v1alpha1"),
                            "kind": "Deployment",
                            "status": status,
                        });
                        let result = api
                            .patch_status(
                                &key.name,
                                &PatchParams::apply(FIELD_MANAGER).force(),
                                &Patch::Apply(body),
                            )
                            .await;
                        match result {
                            Ok(_) => metrics.status_patch("deployment", true),
                            Err(kube::Error::Api(s)) if s.code == 404 => {}
                            Err(e) => {
                                metrics.status_patch("deployment", false);
                                tracing::warn!(deployment = %key.name, namespace = %key.namespace, error = %e, "status patch failed; retrying");
                                let _ = retry_tx.send((key, status));
                            }
                        }
                    }
                })
                .await;
            let mut failed = false;
            while let Ok((k, s)) = retry_rx.try_recv() {
                failed = true;
                pending.entry(k).or_insert(s);
            }
            if failed {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    (tx, task)
}

/// The device a `device-state` key names, when it has the shape a device may write
/// (`state.<device>.<one token>`) without being a valid [`StateKey`].
fn stray_state_device(key: &str) -> Option<DeviceId> {
    let mut parts = key.splitn(3, '.');
    match (parts.next(), parts.next(), parts.next()) {
        (Some(keys::STATE_PREFIX), Some(device), Some(rest)) if !rest.is_empty() => {
            device.parse().ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Option<Timestamp> {
        Timestamp::from_second(secs).ok()
    }

    #[test]
    fn stray_keys_name_their_device_even_when_not_a_deployment() {
        let device = |k: &str| stray_state_device(k).map(|d| d.to_string());
        assert_eq!(device("state.pi-1.NOT_A_NAME").as_deref(), Some("pi-1"));
        assert_eq!(device("state.pi-1.web").as_deref(), Some("pi-1"));
        assert_eq!(device("state.pi-1"), None);
        assert_eq!(device("state.pi-1."), None);
        assert_eq!(device("info.pi-1.x"), None);
        assert_eq!(device("state.Not_A_Device.x"), None);
    }

    #[test]
    fn the_oldest_claim_owns_a_name_and_a_same_second_tie_keeps_the_owner() {
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
}

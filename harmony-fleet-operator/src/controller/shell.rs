//! The async shell around the core: starts the watches, feeds the [`Reconciler`] in arrival
//! order, carries out its [`Effect`]s and feeds their outcomes back. `desired-state` writes go
//! to the writer task ([`super::writer`]) and their outcomes come back on a channel the loop
//! reads first; every other effect is carried out before the next input.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, object_store::ObjectStore};
use futures::StreamExt;
use harmony_fleet_contracts::ids::DeviceId;
use kube::api::{Api, Patch, PatchParams};
use kube::core::PartialObjectMeta;
use kube::runtime::WatchStreamExt;
use kube::runtime::watcher;
use serde_json::json;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

use super::MAX_PENDING_WRITES;
use super::reconciler::{Reconciler, Settings};
use super::reports_io;
use super::supervise::{Named, supervise};
use super::writer::{self, WriteJob};
use super::{CrKey, Effect, Input, Now, PatchOutcome};
use crate::config::Config;
use crate::crd::deployment::{Deployment, DeploymentStatus};
use crate::crd::device::{BLACKLIST_ANNOTATION, BLACKLIST_REASON_ANNOTATION, Device};
use crate::crd::{FIELD_MANAGER, GROUP};
use crate::error::{Error, Result};
use crate::events as fleet_events;
use crate::fleet;
use crate::http::Readiness;
use crate::kv::{self, DesiredRead, DesiredWriter, FleetKv};
use crate::leader::Elector;
use crate::metrics::Metrics;
use crate::registry::{self, DeviceUpdate};

/// A running operator. Dropping it stops every task it started.
#[derive(Debug)]
pub struct OperatorHandle {
    /// Readiness (`Recovering` → `Converged`).
    pub readiness: Readiness,
    /// Metrics of this instance.
    pub metrics: Metrics,
    supervisor: Option<tokio::task::JoinHandle<Result<()>>>,
    elector: Option<Elector>,
    /// Asks the loop to write what it decided, and says when that is done.
    drain: mpsc::Sender<oneshot::Sender<()>>,
}

/// An input whose handling takes longer is logged (its trigger and time).
const SLOW_INPUT: Duration = Duration::from_millis(200);

/// How long a stopping operator waits for its decided writes and their checkpoint
/// ([`OperatorHandle::shutdown`]); well inside Kubernetes' default 30 s grace period.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

impl OperatorHandle {
    /// Waits until the operator stops: the first of its tasks to end or panic, as an error
    /// (`/readyz` says `Failed` by then). It never stops on its own otherwise.
    pub async fn wait(mut self) -> Result<()> {
        self.wait_ref().await
    }

    /// [`Self::wait`] without giving the handle up (to [`Self::shutdown`] it after).
    pub async fn wait_ref(&mut self) -> Result<()> {
        match self.supervisor.as_mut() {
            Some(supervisor) => {
                let ended = supervisor.await;
                self.supervisor = None;
                match ended {
                    Ok(result) => result,
                    Err(e) => Err(Error::TaskEnded {
                        task: "supervisor",
                        how: e.to_string(),
                    }),
                }
            }
            None => Ok(()),
        }
    }
}

impl OperatorHandle {
    /// Stops the operator: the loop first writes what it decided and the checkpoint after it
    /// (at most [`DRAIN_TIMEOUT`], so that the next start reads from there, adr/0051), then
    /// every task stops (no write after this), then the leader Lease is released so that a
    /// standby takes over at once.
    pub async fn shutdown(mut self) {
        let (done_tx, done) = oneshot::channel();
        if self.supervisor.is_some() && self.drain.send(done_tx).await.is_ok() {
            match tokio::time::timeout(DRAIN_TIMEOUT, done).await {
                Ok(Ok(())) => tracing::info!("decided writes and the checkpoint are written"),
                Ok(Err(_)) => {}
                Err(_) => tracing::warn!(
                    timeout_s = DRAIN_TIMEOUT.as_secs(),
                    "stopping with writes unfinished; the next start reads from the last checkpoint"
                ),
            }
        }
        if let Some(supervisor) = self.supervisor.take() {
            supervisor.abort();
            let _ = supervisor.await;
        }
        if let Some(elector) = self.elector.take() {
            elector.release().await;
        }
    }
}

impl Drop for OperatorHandle {
    /// Stops every task of the operator.
    fn drop(&mut self) {
        if let Some(supervisor) = &self.supervisor {
            supervisor.abort();
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
    // Batches of inputs ([`kv::FORWARD_BATCH`] at most): up to 8,192 inputs queued.
    let (tx, rx) = mpsc::channel::<Vec<Input>>(8192 / kv::FORWARD_BATCH);
    let mut tasks: Vec<Named<()>> = Vec::new();

    let core = Reconciler::new(
        Settings {
            heartbeat_timeout: config.heartbeat_timeout,
            device_resources: config.device_resources,
            stray_report_limit: config.stray_report_limit,
            standby: config.leader.is_some(),
        },
        metrics.clone(),
    );
    let mut fallible: Vec<Named<Result<()>>> = Vec::new();
    let elector = config
        .leader
        .clone()
        .map(|leader| Elector::new(client.clone(), leader, metrics.clone()));
    // What desired-state holds: the baseline writes are compared with, read side by side with
    // the other sources (nothing is written before all of them caught up); from a checkpoint,
    // the indexes and the keys written after it (adr/0051). A replica that may be a standby
    // follows the leader's writes after it, so that it takes over without a reload; a lone
    // leader knows its own.
    tasks.push((
        "desired-state watch",
        kv::forward(
            fleet_kv.watch_desired(elector.is_some()).await?,
            tx.clone(),
            |read| match read {
                DesiredRead::Listed(event) => Input::Desired(fleet::decode_listed(event)),
                DesiredRead::Event(event) => Input::desired(event),
            },
            "desired-state",
            "kv_watch",
            metrics.clone(),
        ),
    ));
    if let Some(elector) = &elector {
        let (elector, tx) = (elector.clone(), tx.clone());
        fallible.push((
            "leader election",
            tokio::spawn(async move {
                let lease = elector.campaign().await;
                if tx.send(vec![Input::Elected]).await.is_err() {
                    return Ok(());
                }
                elector.hold(lease).await
            }),
        ));
    }

    let api: Api<Deployment> = match &config.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    tasks.push((
        "deployment watch",
        forward_watch(
            api,
            tx.clone(),
            |e| Input::Cr(Box::new(e)),
            "Deployment",
            metrics.clone(),
        ),
    ));
    tasks.push((
        "device-info watch",
        kv::forward(
            fleet_kv.watch(&fleet_kv.info).await?,
            tx.clone(),
            Input::info,
            "device-info",
            "kv_watch",
            metrics.clone(),
        ),
    ));
    // The reports snapshot and the messages after it, or every report (adr/0052).
    let snapshots = kv::operator_store::open(&jetstream::new(nats_client.clone())).await;
    fallible.push((
        "device-state watch",
        tokio::spawn(reports_io::watch(
            fleet_kv.clone(),
            snapshots.clone(),
            tx.clone(),
            metrics.clone(),
        )),
    ));
    tasks.push((
        "device-heartbeat watch",
        kv::forward(
            fleet_kv.watch(&fleet_kv.heartbeat).await?,
            tx.clone(),
            Input::heartbeat,
            "device-heartbeat",
            "kv_watch",
            metrics.clone(),
        ),
    ));
    // Blacklist and labels set by people: `Device` resources, metadata only.
    let devices: Api<PartialObjectMeta<Device>> = Api::all(client.clone());
    tasks.push((
        "device watch",
        forward_watch(
            devices,
            tx,
            |e| Input::Devices(Box::new(e)),
            "Device",
            metrics.clone(),
        ),
    ));

    let (events, task) = fleet_events::spawn(client.clone(), metrics.clone());
    tasks.push(("event writer", task));
    let registry = if config.device_resources {
        let (registry_tx, task) = registry::spawn(
            client.clone(),
            metrics.clone(),
            config.last_seen,
            events.clone(),
        );
        tasks.push(("device registry", task));
        Some(registry_tx)
    } else {
        None
    };
    let (status_tx, task) = spawn_status_patcher(client.clone(), metrics.clone());
    tasks.push(("status patcher", task));
    let (stray_tx, task) = kv::spawn_stray_remover(fleet_kv.state.clone(), metrics.clone());
    tasks.push(("stray remover", task));

    let (outcomes_tx, outcomes) = mpsc::unbounded_channel();
    let (writes, task) = writer::spawn(
        DesiredWriter::new(fleet_kv.desired.clone(), nats_client, metrics.clone()),
        outcomes_tx.clone(),
    );
    tasks.push(("desired-state writer", task));
    let shell = Shell {
        writes,
        // Weak: the loop learns that the writer ended from its outcomes channel closing.
        snapshots: snapshots.map(|store| (store, outcomes_tx.downgrade())),
        saves: JoinSet::new(),
        client,
        registry,
        status_tx,
        events,
        stray_tx,
        readiness: readiness.clone(),
        metrics: metrics.clone(),
    };
    let (drain, drain_rx) = mpsc::channel(1);
    let main = tokio::spawn(run(core, shell, rx, outcomes, drain_rx));
    fallible.push(("reconcile loop", main));
    let supervisor = tokio::spawn(supervise(
        fallible,
        tasks,
        readiness.clone(),
        metrics.clone(),
    ));
    Ok(OperatorHandle {
        readiness,
        metrics,
        supervisor: Some(supervisor),
        elector,
        drain,
    })
}

/// Forwards a Kubernetes watch (with the default backoff) into the loop's channel.
fn forward_watch<K>(
    api: Api<K>,
    tx: mpsc::Sender<Vec<Input>>,
    wrap: fn(watcher::Event<K>) -> Input,
    what: &'static str,
    metrics: Metrics,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + 'static,
    K::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let events = watcher(api, watcher::Config::default()).default_backoff();
    kv::forward(events, tx, wrap, what, "kube_watch", metrics)
}

/// The loop: one input at a time, each with the outcomes of its effects other than writes,
/// then the next. A write's outcome goes before any queued input: it unblocks the next write
/// and the statuses held while writes are in flight.
async fn run(
    mut core: Reconciler,
    mut shell: Shell,
    mut rx: mpsc::Receiver<Vec<Input>>,
    mut outcomes: mpsc::UnboundedReceiver<Input>,
    mut drain: mpsc::Receiver<oneshot::Sender<()>>,
) -> Result<()> {
    // Once stopping, no more watch inputs; `draining` is told when the decided writes are done.
    let mut stopping = false;
    let mut draining: Option<oneshot::Sender<()>> = None;
    let mut drain_open = true;
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inputs: VecDeque<Input> = VecDeque::with_capacity(kv::FORWARD_BATCH);
    loop {
        if let Ok(outcome) = outcomes.try_recv() {
            inputs.push_front(outcome);
        } else if core.writing() && core.writes_pending() >= MAX_PENDING_WRITES {
            // Enough decided and unwritten: let the writer catch up before reading more.
            match outcomes.recv().await {
                Some(outcome) => inputs.push_front(outcome),
                None => return Err(writer_ended()),
            }
        } else if inputs.is_empty() {
            let wake = core.next_wake();
            tokio::select! {
                biased;
                outcome = outcomes.recv() => match outcome {
                    Some(outcome) => inputs.push_back(outcome),
                    None => return Err(writer_ended()),
                },
                asked = drain.recv(), if !stopping && drain_open => match asked {
                    Some(done) => {
                        stopping = true;
                        draining = Some(done);
                        inputs.push_back(Input::Drain);
                    }
                    None => drain_open = false,
                },
                batch = rx.recv(), if !stopping => match batch {
                    Some(batch) => inputs.extend(batch),
                    None => return Err(Error::WatchEnded {
                        bucket: "all".into(),
                        message: "every watch ended".into(),
                    }),
                },
                _ = tick.tick() => inputs.push_back(Input::Tick),
                _ = sleep_until(wake) => inputs.push_back(Input::Wake),
            }
        }
        let Some(input) = inputs.pop_front() else {
            continue;
        };
        let started = Instant::now();
        let trigger = input.trigger();
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            core.set_backlog(!inputs.is_empty() || !rx.is_empty());
            for effect in core.handle(input, Now::system()) {
                if let Some(outcome) = shell.carry_out(effect).await {
                    queue.push_back(outcome);
                }
            }
        }
        let took = started.elapsed();
        shell.metrics.observe_reconcile(trigger, took);
        if took >= SLOW_INPUT {
            // Rare and worth knowing: a snapshot loaded or saved, a large list.
            tracing::info!(
                trigger,
                took_ms = took.as_millis() as u64,
                "an input held the loop"
            );
        }
        if draining.is_some() && core.drained() {
            // The writer carries out its jobs in order: once it answers, the checkpoint and
            // the notices before it are written.
            let (written, barrier) = oneshot::channel();
            shell.send_write(WriteJob::Barrier(written));
            let _ = barrier.await;
            if let Some(done) = draining.take() {
                let _ = done.send(());
            }
        }
    }
}

fn writer_ended() -> Error {
    Error::WatchEnded {
        bucket: "desired-state".into(),
        message: "the writer task ended".into(),
    }
}

/// Resolves at `at`, or never.
async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at.into()).await,
        None => std::future::pending().await,
    }
}

/// Where the effects go.
struct Shell {
    /// Jobs for the writer task.
    writes: mpsc::UnboundedSender<WriteJob>,
    /// The operator's store, and where a snapshot's outcome goes (adr/0052).
    snapshots: Option<(ObjectStore, mpsc::WeakUnboundedSender<Input>)>,
    /// The snapshot save under way, stopped with the loop.
    saves: JoinSet<()>,
    client: kube::Client,
    registry: Option<mpsc::UnboundedSender<DeviceUpdate>>,
    status_tx: mpsc::UnboundedSender<(CrKey, DeploymentStatus)>,
    events: fleet_events::Sender,
    stray_tx: mpsc::UnboundedSender<String>,
    readiness: Readiness,
    metrics: Metrics,
}

impl Shell {
    /// Hands a write to the writer task. If that task is gone the write is lost here; the
    /// supervisor stops the operator for the ended task.
    fn send_write(&self, job: WriteJob) {
        if self.writes.send(job).is_err() {
            tracing::error!("desired-state writer task is gone; write dropped");
        }
    }

    /// Carries out one effect; returns the input that reports its outcome, if it has one.
    async fn carry_out(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::WriteKeys(ops) => {
                self.send_write(WriteJob::Keys(ops));
                None
            }
            Effect::WriteIndexes(ops) => {
                self.send_write(WriteJob::Indexes(ops));
                None
            }
            Effect::Notify(devices) => {
                self.send_write(WriteJob::Notify(devices));
                None
            }
            Effect::WriteCheckpoint(checkpoint) => {
                self.send_write(WriteJob::Checkpoint(checkpoint));
                None
            }
            Effect::SaveReports { seq, bytes } => {
                if let Some((store, outcomes)) = &self.snapshots {
                    // Reaps the last save (one at a time: the core waits for its outcome).
                    while self.saves.try_join_next().is_some() {}
                    self.saves.spawn(reports_io::save(
                        store.clone(),
                        outcomes.clone(),
                        self.metrics.clone(),
                        seq,
                        bytes,
                    ));
                }
                None
            }
            Effect::FetchRevision { rev, key } => {
                self.send_write(WriteJob::Fetch { rev, key });
                None
            }
            Effect::AddFinalizer {
                key,
                finalizers,
                resource_version,
            } => {
                if let Err(e) = self
                    .set_finalizers(&key, finalizers, resource_version)
                    .await
                {
                    // A conflict means a newer version is on its way through the watch.
                    tracing::debug!(deployment = %key.name, namespace = %key.namespace, error = %e, "adding finalizer failed");
                }
                None
            }
            Effect::ReleaseFinalizer {
                key,
                finalizers,
                resource_version,
            } => {
                let outcome = match self
                    .set_finalizers(&key, finalizers, resource_version)
                    .await
                {
                    Ok(()) => PatchOutcome::Done,
                    Err(kube::Error::Api(s)) if s.code == 404 => PatchOutcome::Gone,
                    Err(e) => {
                        self.metrics.error("finalizer");
                        tracing::debug!(deployment = %key.name, error = %e, "releasing finalizer failed; retrying");
                        PatchOutcome::Failed
                    }
                };
                Some(Input::FinalizerReleased { key, outcome })
            }
            Effect::PatchStatus(key, status) => {
                let _ = self.status_tx.send((key, *status));
                None
            }
            Effect::BlacklistDevice { device, reason } => {
                self.blacklist(&device, reason).await;
                None
            }
            Effect::RemoveStray(key) => {
                let _ = self.stray_tx.send(key);
                None
            }
            Effect::Device(update) => {
                if let Some(registry) = &self.registry {
                    let _ = registry.send(update);
                }
                None
            }
            Effect::Events(regarding, events) => {
                let _ = self.events.send((regarding, events));
                None
            }
            Effect::Converged => {
                self.readiness.set_converged();
                None
            }
        }
    }

    /// Writes a `Deployment`'s finalizer list, conditional on the version it was read at.
    async fn set_finalizers(
        &self,
        key: &CrKey,
        finalizers: Vec<String>,
        resource_version: Option<String>,
    ) -> std::result::Result<(), kube::Error> {
        let api: Api<Deployment> = Api::namespaced(self.client.clone(), &key.namespace);
        let patch = json!({
            "metadata": { "finalizers": finalizers, "resourceVersion": resource_version }
        });
        api.patch(&key.name, &PatchParams::default(), &Patch::Merge(patch))
            .await
            .map(|_| ())
    }

    /// Blacklists a flooding device (annotations on its `Device`; the blacklist watch then
    /// takes its keys, and the identity service revokes its credential).
    async fn blacklist(&self, device: &DeviceId, reason: String) {
        let api: Api<Device> = Api::all(self.client.clone());
        let patch = json!({"metadata": {"annotations": {
            BLACKLIST_ANNOTATION: "true",
            BLACKLIST_REASON_ANNOTATION: reason,
        }}});
        match api
            .patch(
                device.as_str(),
                &PatchParams::default(),
                &Patch::Merge(patch),
            )
            .await
        {
            Ok(_) => {
                tracing::info!(device = %device, "device blacklisted for flooding device-state")
            }
            Err(e) => {
                self.metrics.error("blacklist");
                tracing::warn!(device = %device, error = %e, "could not blacklist a flooding device (no Device resource with --no-device-resources?); its stray keys are still removed")
            }
        }
    }
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
                            Ok(_) => {
                                metrics.status_patch("deployment", true);
                                tracing::debug!(deployment = %key.name, namespace = %key.namespace, "status written");
                            }
                            Err(kube::Error::Api(s)) if s.code == 404 => {}
                            Err(e) => {
                                metrics.status_patch("deployment", false);
                                metrics.error("status_patch");
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
                // Back off before writing again (the API server refused or was away).
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    });
    (tx, task)
}

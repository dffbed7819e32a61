//! The deployments this device holds, and one worker task per deployment.
//!
//! The [`Supervisor`] is the single owner of the held desired state: it receives watch events,
//! decides by KV revision what is new (roll forward only: a revision not newer than the held
//! one is ignored), persists the result to the offline [`Store`], and hands each deployment's
//! [`Target`] to its worker through a `watch` channel (latest wins, so a burst of updates
//! coalesces). Workers reconcile serially per deployment and in parallel across deployments,
//! re-check on an interval (restarting crashed containers), retry failures with back-off, and
//! report every change of phase.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use harmony_fleet_contracts::canonical::ContentHash;
use harmony_fleet_contracts::payload::{AgentV0, ReconcileScore};
use harmony_fleet_contracts::state::{DeploymentState, Phase};
use harmony_fleet_contracts::{DeploymentName, DesiredKey, DeviceId};
use jiff::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::reconcile::{self, Desired, Health, Outcome};
use crate::reports::Report;
use crate::runtime::{ContainerRuntime, LABEL_DEPLOYMENT};
use crate::store::{Store, StoredEntry, StoredState};
use crate::upgrade::Upgrader;
use crate::watch::{KvOperation, KvRecord, WatchEvent};

/// Longest back-off between retries of a failing deployment.
const MAX_RETRY_DELAY: Duration = Duration::from_secs(300);

/// How often a pending `AgentV0` deployment looks again (a new binary on probation is
/// confirmed by its first heartbeat, which the worker sees only by looking).
const AGENT_PENDING_RECHECK: Duration = Duration::from_secs(2);

/// What one deployment's worker must achieve.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// KV revision this target comes from (0: not from KV, e.g. an orphan found on disk).
    pub revision: u64,
    /// What to run; `None`: nothing (the key was deleted).
    pub desired: Option<Arc<Payload>>,
    /// Why the newest value could not be used; the previous `desired` keeps running and the
    /// deployment reports `Failed` with this message.
    pub rejected: Option<String>,
}

impl Target {
    fn is_removal(&self) -> bool {
        self.desired.is_none() && self.rejected.is_none()
    }
}

/// Settings every worker shares.
#[derive(Debug, Clone)]
pub struct WorkerSettings {
    /// Periodic re-check interval.
    pub reconcile_interval: Duration,
    /// When `false`, containers are never touched.
    pub runtime_enabled: bool,
    /// Where reconciles and restarts are counted.
    pub metrics: crate::metrics::Metrics,
    /// Self-upgrade (`AgentV0` deployments); not affected by `runtime_enabled`.
    pub upgrader: Arc<dyn Upgrader>,
}

/// A payload accepted for a deployment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Payload {
    /// Containers to run (`PodmanV0`), reconciled by [`crate::reconcile`].
    Podman(Desired),
    /// The agent build this device must run (`AgentV0`), installed by [`crate::upgrade`].
    Agent {
        /// The payload.
        desired: AgentV0,
        /// SHA-256 of the exact bytes read from KV.
        hash: ContentHash,
    },
}

impl Payload {
    /// SHA-256 of the bytes the payload was read from.
    pub fn hash(&self) -> &ContentHash {
        match self {
            Payload::Podman(desired) => &desired.hash,
            Payload::Agent { hash, .. } => hash,
        }
    }
}

/// Decode a payload read from KV (or from the offline store).
pub fn decode(bytes: &[u8]) -> Result<Payload, String> {
    let hash = ContentHash::of_bytes(bytes);
    match ReconcileScore::decode(bytes) {
        Ok(ReconcileScore::PodmanV0(payload)) => Ok(Payload::Podman(Desired { payload, hash })),
        Ok(ReconcileScore::AgentV0(desired)) => Ok(Payload::Agent { desired, hash }),
        Ok(other) => Err(format!(
            "payload type {} is not supported by this agent; upgrade the agent",
            other.type_name()
        )),
        Err(err) => Err(err.to_string()),
    }
}

/// Owner of the held desired state and of the workers.
pub struct Supervisor<R: ContainerRuntime + ?Sized> {
    device: DeviceId,
    runtime: Arc<R>,
    store: Store,
    held: StoredState,
    workers: BTreeMap<DeploymentName, watch::Sender<Target>>,
    /// Targets decided but not handed to workers yet: they wait until the held state that
    /// produced them is on disk, so a crash can never restore an older revision than the one
    /// being applied.
    staged: Vec<(DeploymentName, Target)>,
    reports: mpsc::UnboundedSender<Report>,
    removed_tx: mpsc::UnboundedSender<(DeploymentName, u64)>,
    removed_rx: mpsc::UnboundedReceiver<(DeploymentName, u64)>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
    tasks: JoinSet<()>,
}

impl<R: ContainerRuntime + ?Sized> Supervisor<R> {
    /// A supervisor holding `held` (read from the store).
    pub fn new(
        device: DeviceId,
        runtime: Arc<R>,
        store: Store,
        held: StoredState,
        reports: mpsc::UnboundedSender<Report>,
        settings: WorkerSettings,
        shutdown: CancellationToken,
    ) -> Self {
        let (removed_tx, removed_rx) = mpsc::unbounded_channel();
        Self {
            device,
            runtime,
            store,
            held,
            workers: BTreeMap::new(),
            staged: Vec::new(),
            reports,
            removed_tx,
            removed_rx,
            settings,
            shutdown,
            tasks: JoinSet::new(),
        }
    }

    /// Start a worker for every deployment held on disk: workloads come back (or are adopted)
    /// without waiting for NATS.
    pub fn restore(&mut self) {
        let entries: Vec<(DeploymentName, StoredEntry)> = self
            .held
            .deployments
            .iter()
            .map(|(name, entry)| (name.clone(), entry.clone()))
            .collect();
        if !entries.is_empty() {
            tracing::info!(
                deployments = entries.len(),
                "restoring the desired state kept on disk"
            );
        }
        for (name, entry) in entries {
            let desired = entry.payload.as_deref().map(|text| decode(text.as_bytes()));
            let target = match desired {
                Some(Ok(desired)) => Target {
                    revision: entry.revision,
                    desired: Some(Arc::new(desired)),
                    rejected: entry.rejected.clone(),
                },
                Some(Err(err)) => Target {
                    revision: entry.revision,
                    desired: None,
                    rejected: Some(err),
                },
                None => Target {
                    revision: entry.revision,
                    desired: None,
                    rejected: entry.rejected.clone(),
                },
            };
            self.set_target(&name, target);
        }
    }

    /// Handle watch events until shutdown (or until the watch goes away), then save the held
    /// state one last time: an event cut short by the shutdown may have changed it without
    /// reaching the disk, and the file exists after every clean stop.
    pub async fn run(mut self, mut events: mpsc::Receiver<WatchEvent>) {
        loop {
            tokio::select! {
                () = self.shutdown.cancelled() => break,
                event = events.recv() => match event {
                    Some(event) => self.handle(event).await,
                    None => break,
                },
                Some((name, revision)) = self.removed_rx.recv() => self.forget(&name, revision),
            }
        }
        self.persist().await;
        self.workers.clear();
        while self.tasks.join_next().await.is_some() {}
    }

    /// Apply one watch event: update the held state, persist it, then hand the new targets to
    /// the workers (write-ahead: disk first, containers second).
    pub async fn handle(&mut self, event: WatchEvent) {
        let snapshot = !matches!(event, WatchEvent::Change(_));
        let changed = match event {
            WatchEvent::Snapshot(records) => self.resync(records),
            WatchEvent::Rebased(records) => {
                // The stream was recreated: its revisions restarted, so what we hold is
                // compared from zero (an unchanged payload re-applies as a no-op).
                tracing::info!("re-basing: the held revisions are forgotten");
                for entry in self.held.deployments.values_mut() {
                    entry.revision = 0;
                }
                self.resync(records)
            }
            WatchEvent::Change(record) => self.apply(record),
        };
        if changed {
            self.persist().await;
        }
        for (name, target) in std::mem::take(&mut self.staged) {
            self.set_target(&name, target);
        }
        if snapshot {
            // Listing containers can take a while: a shutdown does not wait for it.
            let shutdown = self.shutdown.clone();
            tokio::select! {
                () = shutdown.cancelled() => {}
                () = self.collect_orphans() => {}
            }
        }
    }

    fn parse_key(&self, record: &KvRecord) -> Option<DeploymentName> {
        match DesiredKey::parse(&record.key) {
            Ok(key) if key.device == self.device => Some(key.deployment),
            Ok(key) => {
                tracing::warn!(key = %record.key, device = %key.device, "desired-state key of another device ignored");
                None
            }
            Err(err) => {
                tracing::error!(key = %record.key, error = %err, "malformed desired-state key ignored");
                None
            }
        }
    }

    /// A full view of our keys: apply what is newer, remove what is gone.
    fn resync(&mut self, records: Vec<KvRecord>) -> bool {
        tracing::info!(
            keys = records.len(),
            "desired-state snapshot received; re-syncing"
        );
        let mut present = BTreeSet::new();
        let mut changed = false;
        for record in records {
            if let Some(name) = self.parse_key(&record) {
                present.insert(name);
            }
            changed |= self.apply(record);
        }
        let gone: Vec<DeploymentName> = self
            .held
            .deployments
            .iter()
            .filter(|(name, entry)| !present.contains(*name) && entry.payload.is_some())
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            tracing::info!(deployment = %name, "desired-state key vanished while away; removing");
            if let Some(entry) = self.held.deployments.get_mut(&name) {
                entry.payload = None;
                entry.rejected = None;
                let revision = entry.revision;
                self.staged.push((
                    name,
                    Target {
                        revision,
                        desired: None,
                        rejected: None,
                    },
                ));
                changed = true;
            }
        }
        changed
    }

    /// Containers labelled with a deployment we do not hold: removed (the snapshot is
    /// authoritative).
    async fn collect_orphans(&mut self) {
        if !self.settings.runtime_enabled {
            return;
        }
        let containers = match self.runtime.list().await {
            Ok(containers) => containers,
            Err(err) => {
                tracing::warn!(error = %err, "cannot list containers to find orphans");
                return;
            }
        };
        let orphans: BTreeSet<DeploymentName> = containers
            .iter()
            .filter_map(|c| c.label(LABEL_DEPLOYMENT))
            .filter_map(|name| name.parse::<DeploymentName>().ok())
            .filter(|name| {
                !self.workers.contains_key(name)
                    && self
                        .held
                        .deployments
                        .get(name)
                        .is_none_or(|entry| entry.payload.is_none())
            })
            .collect();
        for name in orphans {
            tracing::info!(deployment = %name, "removing containers of a deployment no longer desired");
            let revision = self.held.deployments.get(&name).map_or(0, |e| e.revision);
            self.set_target(
                &name,
                Target {
                    revision,
                    desired: None,
                    rejected: None,
                },
            );
        }
    }

    /// Apply one record if it is newer than what we hold. Returns whether the held state changed.
    fn apply(&mut self, record: KvRecord) -> bool {
        let Some(name) = self.parse_key(&record) else {
            return false;
        };
        let held = self.held.deployments.get(&name).cloned();
        if let Some(held) = &held
            && record.revision <= held.revision
        {
            if record.revision < held.revision {
                tracing::warn!(
                    deployment = %name,
                    revision = record.revision,
                    held = held.revision,
                    "ignoring a desired state older than the one applied (roll forward only)"
                );
            }
            return false;
        }
        let previous_payload = held.and_then(|h| h.payload);
        let (entry, target) = match record.operation {
            KvOperation::Put => match decode(&record.value) {
                Ok(desired) => {
                    tracing::info!(deployment = %name, revision = record.revision, hash = %desired.hash().short(), "new desired state");
                    (
                        StoredEntry {
                            revision: record.revision,
                            payload: Some(String::from_utf8_lossy(&record.value).into_owned()),
                            rejected: None,
                        },
                        Target {
                            revision: record.revision,
                            desired: Some(Arc::new(desired)),
                            rejected: None,
                        },
                    )
                }
                Err(reason) => {
                    tracing::error!(deployment = %name, revision = record.revision, error = %reason, "malformed desired state; keeping what runs");
                    let previous = previous_payload
                        .as_deref()
                        .and_then(|text| decode(text.as_bytes()).ok())
                        .map(Arc::new);
                    (
                        StoredEntry {
                            revision: record.revision,
                            payload: previous_payload,
                            rejected: Some(reason.clone()),
                        },
                        Target {
                            revision: record.revision,
                            desired: previous,
                            rejected: Some(reason),
                        },
                    )
                }
            },
            KvOperation::Delete | KvOperation::Purge => {
                tracing::info!(deployment = %name, revision = record.revision, "desired state deleted");
                (
                    StoredEntry {
                        revision: record.revision,
                        payload: None,
                        rejected: None,
                    },
                    Target {
                        revision: record.revision,
                        desired: None,
                        rejected: None,
                    },
                )
            }
        };
        self.held.deployments.insert(name.clone(), entry);
        self.staged.push((name, target));
        true
    }

    fn set_target(&mut self, name: &DeploymentName, target: Target) {
        if let Some(sender) = self.workers.get(name)
            && !sender.is_closed()
        {
            sender.send_replace(target);
            return;
        }
        let (sender, receiver) = watch::channel(target);
        self.workers.insert(name.clone(), sender);
        let worker = Worker {
            name: name.clone(),
            runtime: self.runtime.clone(),
            reports: self.reports.clone(),
            removed: self.removed_tx.clone(),
            settings: self.settings.clone(),
            shutdown: self.shutdown.clone(),
        };
        self.tasks.spawn(worker.run(receiver));
    }

    /// A worker finished removing `name` at `revision`: drop it unless a newer target came.
    fn forget(&mut self, name: &DeploymentName, revision: u64) {
        let still_removed = self
            .workers
            .get(name)
            .is_some_and(|w| w.borrow().is_removal() && w.borrow().revision == revision);
        if still_removed {
            self.workers.remove(name);
        }
    }

    async fn persist(&self) {
        let store = self.store.clone();
        let state = self.held.clone();
        let saved = tokio::task::spawn_blocking(move || store.save(&state)).await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::error!(error = %err, "cannot persist the desired state"),
            Err(err) => tracing::error!(error = %err, "persisting the desired state panicked"),
        }
    }

    /// The held state (for tests and diagnostics).
    pub fn held(&self) -> &StoredState {
        &self.held
    }
}

/// One deployment's reconcile loop.
struct Worker<R: ContainerRuntime + ?Sized> {
    name: DeploymentName,
    runtime: Arc<R>,
    reports: mpsc::UnboundedSender<Report>,
    removed: mpsc::UnboundedSender<(DeploymentName, u64)>,
    settings: WorkerSettings,
    shutdown: CancellationToken,
}

/// What was last reported, to report only changes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Reported {
    phase: Phase,
    hash: Option<ContentHash>,
    revision: u64,
    error: Option<String>,
    containers: BTreeMap<String, String>,
}

fn retry_delay(failures: u32, interval: Duration) -> Duration {
    let base = Duration::from_secs(2u64.saturating_pow(failures.min(9)));
    base.min(MAX_RETRY_DELAY)
        .min(interval.max(Duration::from_secs(1)) * 10)
}

impl<R: ContainerRuntime + ?Sized> Worker<R> {
    async fn run(self, mut targets: watch::Receiver<Target>) {
        let mut last: Option<(Reported, Timestamp)> = None;
        let mut failures: u32 = 0;
        loop {
            let target = targets.borrow_and_update().clone();
            // A reconcile in progress (a pull, a graceful stop) is abandoned on shutdown: the
            // next start plans again from what podman shows (adr/0022).
            let reported = tokio::select! {
                () = self.shutdown.cancelled() => return,
                reported = self.step(&target, &mut last) => reported,
            };
            let delay = if reported.phase == Phase::Failed {
                failures = failures.saturating_add(1);
                retry_delay(failures, self.settings.reconcile_interval)
            } else {
                failures = 0;
                let agent = matches!(target.desired.as_deref(), Some(Payload::Agent { .. }));
                if agent && reported.phase == Phase::Pending {
                    AGENT_PENDING_RECHECK.min(self.settings.reconcile_interval)
                } else {
                    self.settings.reconcile_interval
                }
            };
            if reported.phase == Phase::Removed && target.is_removal() {
                let _ = self.removed.send((self.name.clone(), target.revision));
            }
            tokio::select! {
                () = self.shutdown.cancelled() => return,
                changed = targets.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                () = tokio::time::sleep(delay) => {}
            }
        }
    }

    /// One reconcile of the current target; reports if anything changed.
    async fn step(&self, target: &Target, last: &mut Option<(Reported, Timestamp)>) -> Reported {
        if let Some(Payload::Agent { desired, hash }) = target.desired.as_deref() {
            return self.upgrade_step(target, desired, hash, last).await;
        }
        let hash = target.desired.as_ref().map(|d| *d.hash());
        if !self.settings.runtime_enabled {
            let reported = Reported {
                phase: if target.is_removal() {
                    Phase::Removed
                } else {
                    Phase::Pending
                },
                hash,
                revision: target.revision,
                error: Some(
                    "the container runtime is disabled on this device (agent.runtime_enabled = false)"
                        .to_owned(),
                ),
                containers: BTreeMap::new(),
            };
            self.report(&reported, last, target.is_removal());
            return reported;
        }
        let desired = match target.desired.as_deref() {
            Some(Payload::Podman(desired)) => Some(desired),
            Some(Payload::Agent { .. }) | None => None,
        };
        let started = std::time::Instant::now();
        let outcome: Outcome =
            reconcile::reconcile(self.runtime.as_ref(), &self.name, desired, &|plan| {
                self.settings.metrics.container_restarts(plan.start.len());
                // Acting on the runtime: say so while it happens (pulls and init containers take time).
                let pending = Reported {
                    phase: if desired.is_some() {
                        Phase::Pending
                    } else {
                        Phase::Removed
                    },
                    hash,
                    revision: target.revision,
                    error: None,
                    containers: BTreeMap::new(),
                };
                if desired.is_some()
                    && last.as_ref().is_none_or(|(l, _)| {
                        l.phase != Phase::Pending || l.revision != target.revision
                    })
                {
                    self.send_state(&pending, Timestamp::now());
                }
            })
            .await;
        let (phase, error) = match (&outcome.health, &target.rejected) {
            (Health::Failed(message), _) => (Phase::Failed, Some(message.clone())),
            (_, Some(reason)) => (Phase::Failed, Some(reason.clone())),
            (Health::Running, None) => (Phase::Running, None),
            (Health::Pending, None) => (Phase::Pending, None),
            (Health::Removed, None) => (Phase::Removed, None),
        };
        self.settings
            .metrics
            .observe_reconcile(phase, started.elapsed());
        let reported = Reported {
            phase,
            // A rejected payload reports no hash: the report is about bytes we could not read.
            hash: if target.rejected.is_some() {
                None
            } else {
                hash
            },
            revision: target.revision,
            error,
            containers: outcome.containers,
        };
        self.report(&reported, last, target.is_removal());
        reported
    }

    /// One reconcile of an `AgentV0` deployment (self-upgrade). The container runtime
    /// setting does not apply: it is about containers.
    async fn upgrade_step(
        &self,
        target: &Target,
        desired: &AgentV0,
        hash: &ContentHash,
        last: &mut Option<(Reported, Timestamp)>,
    ) -> Reported {
        let installing = || {
            let pending = Reported {
                phase: Phase::Pending,
                hash: Some(*hash),
                revision: target.revision,
                error: None,
                containers: BTreeMap::new(),
            };
            if last
                .as_ref()
                .is_none_or(|(l, _)| l.phase != Phase::Pending || l.revision != target.revision)
            {
                self.send_state(&pending, Timestamp::now());
            }
        };
        let outcome = crate::upgrade::worker::step(
            self.settings.upgrader.as_ref(),
            &self.name,
            desired,
            &installing,
        )
        .await;
        let (phase, error) = match (outcome.phase, &target.rejected) {
            (Phase::Failed, _) => (Phase::Failed, outcome.error),
            (_, Some(reason)) => (Phase::Failed, Some(reason.clone())),
            (phase, None) => (phase, outcome.error),
        };
        let reported = Reported {
            phase,
            hash: if target.rejected.is_some() {
                None
            } else {
                Some(*hash)
            },
            revision: target.revision,
            error,
            containers: BTreeMap::new(),
        };
        self.report(&reported, last, false);
        reported
    }

    fn report(&self, reported: &Reported, last: &mut Option<(Reported, Timestamp)>, removal: bool) {
        if last.as_ref().is_some_and(|(l, _)| l == reported) {
            return;
        }
        let since = match last.as_ref() {
            Some((l, at)) if l.phase == reported.phase && l.revision == reported.revision => *at,
            _ => Timestamp::now(),
        };
        if let Some(error) = &reported.error {
            tracing::warn!(deployment = %self.name, phase = ?reported.phase, %error, "deployment state");
        } else {
            tracing::info!(deployment = %self.name, phase = ?reported.phase, "deployment state");
        }
        if removal && reported.phase == Phase::Removed {
            let _ = self.reports.send(Report::Removed {
                deployment: self.name.clone(),
                state: to_state(reported, since),
            });
        } else {
            self.send_state(reported, since);
        }
        *last = Some((reported.clone(), since));
    }

    fn send_state(&self, reported: &Reported, since: Timestamp) {
        let _ = self.reports.send(Report::State {
            deployment: self.name.clone(),
            state: to_state(reported, since),
        });
    }
}

fn to_state(reported: &Reported, since: Timestamp) -> DeploymentState {
    let mut state = DeploymentState::new(reported.phase, since);
    state.payload_hash = reported.hash;
    state.desired_revision = (reported.revision > 0).then_some(reported.revision);
    if let Some(error) = &reported.error {
        state.set_last_error(error.clone());
    }
    state.container_ids = reported.containers.clone();
    state
}

#[cfg(test)]
mod tests;

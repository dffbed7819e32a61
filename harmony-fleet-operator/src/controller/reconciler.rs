//! The core's state, its entry point [`Reconciler::handle`], and the write plan's last step:
//! turning the writes decided while handling an input into effects, and their outcomes back
//! into state.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use harmony_fleet_contracts::device::DEVICE_ID_LABEL;
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};
use harmony_fleet_contracts::keys;
use jiff::Timestamp;

use super::cold_start::{CaughtUp, ConvergeReport};
use super::liveness::DeviceLive;
use super::ownership::{Cr, Owned};
use super::reports_snapshot::Snapshots;
use super::status::{Headline, PACE, Pacer};
use super::{CrKey, Effect, Input, Now, Rev};
use crate::aggregate::FleetState;
use crate::device_index::DeviceIndexes;
use crate::fleet::DesiredEvent;
use crate::index::{LabelSets, Labels, TargetIndex};
use crate::intern::Ids;
use crate::kv::KvOp;
use crate::metrics::Metrics;
use crate::write_quota::{self, StrayWrites};

/// How long index writes (and so change notices) may be held back while more inputs are
/// queued, so that a device whose keys several queued inputs change gets one index write and
/// one notice instead of one per input. Nothing is held when the queue is empty.
pub const INDEX_COALESCE: Duration = Duration::from_millis(100);

/// How long indexes wait at most while keys keep being decided and written: then they go
/// before the next keys, so that devices hear of their keys under a steady stream of changes.
/// Longer than [`INDEX_COALESCE`]: on a busy server every round of index writes rewrites the
/// index of each device touched since the last one.
pub const INDEX_MAX_HOLD: Duration = Duration::from_secs(1);

/// The most keys one [`Effect::WriteKeys`] carries: a fan-out to 100k devices is two batches,
/// then their indexes, then the notices.
pub const KEY_BATCH: usize = 65_536;

/// The most device indexes one [`Effect::WriteIndexes`] carries. Each is its own bytes (about
/// 1 KiB for a device holding ten deployments), held until the batch is acknowledged: a
/// fan-out to 100k devices in one batch held 100 MiB of them.
pub const INDEX_BATCH: usize = 8_192;

/// Keys decided and not acknowledged beyond which the shell waits for the writer before it
/// reads more inputs ([`Reconciler::writes_pending`]): what waits in memory is bounded (at 1.1M
/// keys twice this cost the 512 MiB goal its margin).
pub const MAX_PENDING_WRITES: usize = KEY_BATCH;

/// What the core is configured with.
#[derive(Clone, Debug)]
pub struct Settings {
    /// A device whose last heartbeat is older is offline.
    pub heartbeat_timeout: Duration,
    /// Whether `Device` resources are kept ([`Effect::Device`] is emitted).
    pub device_resources: bool,
    /// Stray `device-state` keys a device may write per window before it is blacklisted.
    pub stray_report_limit: u32,
    /// Start as a standby (leader election): follow everything, write nothing, until
    /// [`Input::Elected`].
    pub standby: bool,
}

/// The reconcile loop's state: everything the operator knows of the fleet.
pub struct Reconciler {
    pub(super) settings: Settings,
    /// Whether this replica writes (not a standby).
    pub(super) leader: bool,
    pub(super) metrics: Metrics,
    /// The time of the input being handled.
    pub(super) now: Now,
    /// Effects decided while handling the current input.
    pub(super) effects: Vec<Effect>,
    /// One shared copy of each id (every input's ids are swapped for it first).
    pub(super) ids: Ids,
    pub(super) index: TargetIndex<DeviceId, DeploymentName>,
    pub(super) fleet: FleetState<DeviceId, DeploymentName, Rev>,
    /// Per-device desired-state indexes (adr/0014), kept with every key written.
    pub(super) indexes: DeviceIndexes,
    pub(super) revisions: HashMap<Rev, Bytes>,
    pub(super) crs: HashMap<CrKey, Cr>,
    pub(super) claims: HashMap<DeploymentName, BTreeSet<(Option<Timestamp>, String)>>,
    pub(super) owned: HashMap<DeploymentName, Owned>,
    pub(super) devices: HashMap<DeviceId, DeviceLive>,
    pub(super) expiry: BTreeSet<(Timestamp, DeviceId)>,
    pub(super) caught_up: CaughtUp,
    pub(super) converged: bool,
    /// The cold start's summary, reported once its writes are done.
    pub(super) converging: Option<ConvergeReport>,
    /// Writes decided and not handed over yet, by key: while a write is in flight the next
    /// ones gather here (adr/0050). Ordered, so that batches go out in key order.
    pub(super) ops: BTreeMap<String, (DeploymentName, DeviceId, Option<Rev>)>,
    /// Writes handed to the shell, awaiting [`Input::KeysWritten`]: one batch at a time.
    pub(super) in_flight: HashMap<String, (DeploymentName, DeviceId, Option<Rev>)>,
    /// Whether indexes were handed to the shell, awaiting [`Input::IndexesWritten`].
    pub(super) indexes_in_flight: bool,
    /// More inputs are queued behind the current one ([`Reconciler::set_backlog`]).
    pub(super) backlog: bool,
    /// Since when index writes are held back to coalesce them ([`INDEX_COALESCE`]).
    pub(super) indexes_held_since: Option<Instant>,
    /// Writes that failed, retried on the next tick.
    pub(super) retry: HashMap<(DeploymentName, DeviceId), Option<Rev>>,
    /// Keys whose last write failed: it may have landed all the same, so until a later write
    /// of the key succeeds the core does not know what KV holds (`checkpoint`).
    pub(super) uncertain: HashSet<String>,
    /// Writes waiting for the payload bytes of their revision (`payloads`), by key.
    pub(super) parked: BTreeMap<String, (DeploymentName, DeviceId, Option<Rev>)>,
    /// Revisions whose bytes are being read back.
    pub(super) fetching: HashSet<Rev>,
    /// A write was acknowledged since the last checkpoint (`checkpoint`, adr/0051).
    pub(super) checkpoint_due: bool,
    /// The operator is stopping ([`Input::Drain`]): indexes are not held back.
    pub(super) draining: bool,
    /// Where the reports snapshots stand (adr/0052).
    pub(super) snapshots: Snapshots,
    /// Deployments whose rollout may step (held back by the pace until due).
    pub(super) rollout_dirty: HashSet<DeploymentName>,
    /// Resources whose status may have changed (held back by the pace until due).
    pub(super) status_dirty: HashSet<CrKey>,
    /// What the current input dirtied: only these are checked at its end, the rest waits for
    /// the wake-up or the tick (so an input costs O(what it touched), not O(deployments)).
    pub(super) touched_rollouts: Vec<DeploymentName>,
    /// As [`Self::touched_rollouts`], for statuses.
    pub(super) touched_statuses: Vec<CrKey>,
    /// Check every dirty rollout and status (the tick and the wake-up).
    pub(super) full_scan: bool,
    /// The earliest time a held-back status or rollout step is due.
    pub(super) wake: Option<Instant>,
    /// When statuses may be written (first change after quiet at once, then ≤ 1/s).
    pub(super) status_pacer: Pacer<CrKey>,
    /// The headline of each status as last written: a change of it is written at once.
    pub(super) headlines: HashMap<CrKey, Headline>,
    /// When a rollout may be stepped again on reports (same rule; a spec change steps at once).
    pub(super) rollout_pacer: Pacer<DeploymentName>,
    /// Deleted `Deployment`s whose finalizer is released once their keys are gone.
    pub(super) finalize: HashSet<CrKey>,
    /// Finalizer releases handed to the shell.
    pub(super) releasing: HashSet<CrKey>,
    /// CR keys seen since the watcher's last `Init` (to detect deletions across re-lists).
    pub(super) relist: Option<HashSet<CrKey>>,
    /// Blacklisted devices (annotation on their `Device` resource).
    pub(super) blacklist: HashSet<DeviceId>,
    /// Blacklisted devices seen since the Device watcher's last `Init`.
    pub(super) blacklist_relist: Option<HashSet<DeviceId>>,
    /// Latest labels of blacklisted devices, kept out of the index until released.
    pub(super) held_labels: HashMap<DeviceId, Labels>,
    /// Stray keys counted per device: too many, and the device is blacklisted.
    pub(super) stray_writes: StrayWrites,
    /// Labels each device reported and may claim (protected prefixes dropped), shared
    /// between devices reporting the same ones.
    pub(super) reported_labels: HashMap<DeviceId, Arc<Labels>>,
    /// The distinct label sets of [`Self::reported_labels`].
    pub(super) reported_sets: LabelSets,
    /// Labels set on `Device` resources by anyone but the operator: they win for targeting.
    pub(super) admin_labels: HashMap<DeviceId, Labels>,
}

impl Reconciler {
    /// An empty core; feed it `desired-state` with [`Reconciler::load_desired`] first.
    pub fn new(settings: Settings, metrics: Metrics) -> Self {
        let stray_writes =
            StrayWrites::new(settings.stray_report_limit, write_quota::DEFAULT_WINDOW);
        let leader = !settings.standby;
        metrics.leader.set(i64::from(leader));
        Self {
            leader,
            settings,
            metrics,
            now: Now::system(),
            effects: Vec::new(),
            ids: Ids::default(),
            index: TargetIndex::with_identity_label(DEVICE_ID_LABEL),
            fleet: FleetState::new(),
            indexes: DeviceIndexes::new(),
            revisions: HashMap::new(),
            crs: HashMap::new(),
            claims: HashMap::new(),
            owned: HashMap::new(),
            devices: HashMap::new(),
            expiry: BTreeSet::new(),
            caught_up: CaughtUp::default(),
            converged: false,
            converging: None,
            ops: BTreeMap::new(),
            in_flight: HashMap::new(),
            indexes_in_flight: false,
            backlog: false,
            indexes_held_since: None,
            retry: HashMap::new(),
            uncertain: HashSet::new(),
            parked: BTreeMap::new(),
            fetching: HashSet::new(),
            checkpoint_due: false,
            draining: false,
            snapshots: Snapshots::default(),
            rollout_dirty: HashSet::new(),
            status_dirty: HashSet::new(),
            touched_rollouts: Vec::new(),
            touched_statuses: Vec::new(),
            full_scan: false,
            wake: None,
            status_pacer: Pacer::new(PACE),
            headlines: HashMap::new(),
            rollout_pacer: Pacer::new(PACE),
            finalize: HashSet::new(),
            releasing: HashSet::new(),
            relist: None,
            blacklist: HashSet::new(),
            blacklist_relist: None,
            held_labels: HashMap::new(),
            stray_writes,
            reported_labels: HashMap::new(),
            reported_sets: LabelSets::default(),
            admin_labels: HashMap::new(),
        }
    }

    /// Handles one input at `now` and returns what to do. The outcome of
    /// [`Effect::ReleaseFinalizer`] must come back before the next watch event; those of
    /// [`Effect::WriteKeys`] and [`Effect::WriteIndexes`] may come back after later inputs
    /// (the shell writes while the loop goes on, adr/0050): the core hands over one write at a
    /// time, keys or indexes, and gathers the next one meanwhile.
    pub fn handle(&mut self, input: Input, now: Now) -> Vec<Effect> {
        self.now = now;
        self.full_scan = matches!(input, Input::Tick | Input::Wake);
        match input {
            Input::Cr(event) => self.on_cr(*event),
            Input::Info(event) => self.on_info(event),
            Input::ReportsStart(start) => self.on_reports_start(start),
            Input::State(event, seq) => {
                self.on_state(event);
                self.applied_report(seq);
            }
            Input::Heartbeat(event) => self.on_heartbeat(event),
            Input::Devices(event) => self.on_devices(*event),
            Input::Tick => self.on_tick(),
            // What is due is done by `finish`.
            Input::Wake => {}
            Input::KeysWritten(results) => self.on_keys_written(results),
            Input::IndexesWritten(results) => self.on_indexes_written(results),
            Input::RevisionFetched { rev, bytes } => self.on_revision_fetched(rev, bytes),
            Input::ReportsSaved { seq, ok } => self.on_reports_saved(seq, ok),
            Input::FinalizerReleased { key, outcome } => self.on_finalizer_released(key, outcome),
            Input::Desired(event) => self.on_desired(event),
            Input::Elected => self.on_elected(),
            Input::Drain => {
                self.draining = true;
                self.maybe_save_reports();
            }
        }
        // The last source to catch up converges the cold start at once, not on the tick.
        if !self.converged {
            self.maybe_converge();
        }
        if self.leader {
            self.finish();
        } else {
            self.standby_finish();
        }
        std::mem::take(&mut self.effects)
    }

    /// Whether the cold start is done (for a standby: its caches are warm).
    pub fn is_converged(&self) -> bool {
        self.converged
    }

    /// Whether this replica writes.
    pub fn is_leader(&self) -> bool {
        self.leader
    }

    /// Keys decided and not acknowledged yet (gathering or in flight): above
    /// [`MAX_PENDING_WRITES`], while a write is in flight, the shell reads only write outcomes,
    /// which bounds what waits in memory.
    pub fn writes_pending(&self) -> usize {
        self.ops.len() + self.in_flight.len()
    }

    /// Whether a write (keys or indexes) is in flight.
    pub fn writing(&self) -> bool {
        !self.in_flight.is_empty() || self.indexes_in_flight
    }

    /// Tells the core whether more inputs are queued behind the next one: index writes are
    /// then coalesced for up to [`INDEX_COALESCE`].
    pub fn set_backlog(&mut self, queued: bool) {
        self.backlog = queued;
    }

    /// A standby decides like a leader (so its state stays warm) but carries nothing out:
    /// writes, statuses, Events and `Device` updates are the leader's. It says when its caches
    /// caught up, so it counts as ready.
    fn standby_finish(&mut self) {
        self.effects.clear();
        self.ops.clear();
        self.retry.clear();
        self.uncertain.clear();
        self.parked.clear();
        self.status_dirty.clear();
        self.rollout_dirty.clear();
        self.touched_rollouts.clear();
        self.touched_statuses.clear();
        self.wake = None;
        if let Some(report) = self.converging.take() {
            self.report_converged(report);
        }
    }

    /// `desired-state`'s backlog is loaded by every replica; after it, a standby follows the
    /// leader's writes and a leader knows its own.
    fn on_desired(&mut self, event: DesiredEvent) {
        if !self.leader || !self.caught_up.desired {
            self.load_desired(event);
        }
    }

    /// Takes over: rollouts as the last leader's statuses left them, then the pass a cold
    /// start makes (missing keys written, orphans deleted, statuses, finalizers) — with every
    /// cache already warm.
    fn on_elected(&mut self) {
        if self.leader {
            return;
        }
        self.leader = true;
        self.metrics.leader.set(1);
        for owned in self.owned.values_mut() {
            let restored = self
                .crs
                .get(&owned.key)
                .and_then(|cr| cr.last_status.as_ref())
                .and_then(|s| s.rollout.as_ref())
                .and_then(super::status::restore_rollout);
            if let Some(rollout) = restored.filter(|r| r.target == owned.rollout.target) {
                owned.rollout = rollout;
            }
        }
        self.indexes.mark_all_dirty();
        self.checkpoint_due = true;
        if self.converged {
            self.converged = false;
            self.maybe_converge();
        }
        tracing::info!(converged = self.converged, "took over as leader");
    }

    pub(super) fn emit(&mut self, effect: Effect) {
        self.effects.push(effect);
    }

    /// The end of every input: hand the decided writes over; once nothing is in flight,
    /// release finalizers, report the cold start and write the statuses that are due.
    fn finish(&mut self) {
        if self.converged {
            self.step_due_rollouts();
        }
        // Before the next keys: the checkpoint vouches for what is acknowledged and indexed.
        self.maybe_checkpoint();
        self.flush_keys();
        if !self.in_flight.is_empty() {
            return;
        }
        self.flush_indexes();
        if self.indexes_in_flight {
            return;
        }
        if !self.converged {
            return;
        }
        self.release_finalizers();
        if let Some(report) = self.converging.take() {
            self.report_converged(report);
        }
        self.maybe_checkpoint();
        self.publish_due_statuses();
    }

    /// The writes decided so far, as one [`Effect::WriteKeys`] — once the write in flight (keys
    /// or indexes) is answered, so that writes of one key land in the order decided and an
    /// index is stored only after the keys it names.
    fn flush_keys(&mut self) {
        if self.ops.is_empty() || !self.in_flight.is_empty() || self.indexes_in_flight {
            return;
        }
        // Indexes held for [`INDEX_MAX_HOLD`] go before more keys, so that devices hear of
        // their keys while more are being decided.
        if self.converged && self.indexes_overdue() {
            return;
        }
        let mut batch = Vec::with_capacity(self.ops.len().min(KEY_BATCH));
        while batch.len() < KEY_BATCH {
            let Some((key, (deployment, device, rev))) = self.ops.pop_first() else {
                break;
            };
            let op = match &rev {
                Some(r) => match self.revisions.get(r) {
                    Some(bytes) => KvOp::Put(bytes.clone()),
                    None => {
                        if !self.park(key.clone(), deployment, device, *r) {
                            tracing::error!(key, revision = %r, "payload bytes of revision unknown and no key holds them; not writing");
                        }
                        continue;
                    }
                },
                None => KvOp::Delete,
            };
            batch.push((key.clone(), op));
            self.in_flight.insert(key, (deployment, device, rev));
        }
        if !batch.is_empty() {
            // In key order (`ops` is ordered): the same input gives the same effects.
            self.emit(Effect::WriteKeys(batch));
        }
    }

    /// The index writes pending (keys changed, or a cold start found a stale index). Before
    /// the cold start converged the picture is incomplete (orphans not collected yet): an index
    /// written then could name a key about to be deleted.
    fn flush_indexes(&mut self) {
        if !self.converged || self.indexes_in_flight {
            return;
        }
        if self.backlog && !self.draining && self.indexes.has_pending() {
            let now = self.mono();
            let since = *self.indexes_held_since.get_or_insert(now);
            if now.saturating_duration_since(since) < INDEX_COALESCE {
                return;
            }
        }
        let held_since = self.indexes_held_since.take();
        let writes = self.indexes.take_writes(INDEX_BATCH);
        if self.indexes.has_pending() {
            // The rest of the round has waited as long: it goes before more keys once overdue.
            self.indexes_held_since = Some(held_since.unwrap_or_else(|| self.mono()));
        }
        if writes.is_empty() {
            return;
        }
        let ops = writes
            .into_iter()
            .map(|w| (w.device, KvOp::Put(w.bytes)))
            .collect();
        self.indexes_in_flight = true;
        self.emit(Effect::WriteIndexes(ops));
    }

    /// Records the outcome of a [`Effect::WriteKeys`]: what succeeded is what KV holds now;
    /// what failed is retried on the next tick.
    fn on_keys_written(&mut self, results: Vec<(String, bool)>) {
        for (key, ok) in results {
            let Some((deployment, device, rev)) = self.in_flight.remove(&key) else {
                continue;
            };
            if ok {
                self.indexes.set(&device, &deployment, rev.as_ref());
                self.fleet.set_assigned(&deployment, &device, rev);
                self.retry.remove(&(deployment, device));
                if !self.uncertain.is_empty() {
                    self.uncertain.remove(&key);
                }
                self.checkpoint_due = true;
            } else {
                self.retry.insert((deployment, device), rev);
                self.uncertain.insert(key);
            }
        }
        // A write the shell did not answer for counts as failed.
        for (key, (deployment, device, rev)) in std::mem::take(&mut self.in_flight) {
            self.retry.insert((deployment, device), rev);
            self.uncertain.insert(key);
        }
        // The coalescing time of the indexes naming these keys starts now.
        if self.indexes.has_pending() && self.indexes_held_since.is_none() {
            self.indexes_held_since = Some(self.mono());
        }
    }

    /// Indexes pending for at least [`INDEX_MAX_HOLD`].
    fn indexes_overdue(&self) -> bool {
        self.indexes.has_pending()
            && self
                .indexes_held_since
                .is_some_and(|since| self.mono().saturating_duration_since(since) >= INDEX_MAX_HOLD)
    }

    /// Notices go out only for the indexes stored, so a device that lists on a notice reads
    /// the new index; a failed one is written again with the next change or tick.
    fn on_indexes_written(&mut self, results: Vec<(DeviceId, bool)>) {
        self.indexes_in_flight = false;
        let mut notify = Vec::new();
        for (device, ok) in results {
            if ok {
                self.checkpoint_due = true;
                notify.push(device);
            } else {
                self.indexes.failed(&device);
            }
        }
        if !notify.is_empty() {
            self.emit(Effect::Notify(notify));
        }
    }

    /// Records that the pair should hold `rev` (`None`: no key). Skipped when KV holds it —
    /// and known to: after a failed write of the key the decision is written whatever the
    /// core holds.
    pub(super) fn want(
        &mut self,
        deployment: &DeploymentName,
        device: &DeviceId,
        rev: Option<Rev>,
    ) {
        let key = keys::desired_key(device, deployment);
        if !self.parked.is_empty() {
            self.parked.remove(&key);
        }
        // What KV holds once the write in flight (if any) lands.
        let holds = match self.in_flight.get(&key) {
            Some((_, _, in_flight)) => in_flight.as_ref(),
            None => self.fleet.assigned(deployment, device),
        };
        if holds == rev.as_ref() && (self.uncertain.is_empty() || !self.uncertain.contains(&key)) {
            if self.ops.remove(&key).is_none() {
                self.metrics.kv_writes_skipped.inc();
            }
            return;
        }
        self.ops
            .insert(key, (deployment.clone(), device.clone(), rev));
    }

    /// Whether the pair has (or is about to get) a `desired-state` key. A write in flight
    /// counts: the device may read the key before its acknowledgement reaches the core.
    pub(super) fn is_assigned(&self, deployment: &DeploymentName, device: &DeviceId) -> bool {
        let key = keys::desired_key(device, deployment);
        self.fleet.assigned(deployment, device).is_some()
            || [
                self.ops.get(&key),
                self.in_flight.get(&key),
                self.parked.get(&key),
            ]
            .into_iter()
            .flatten()
            .any(|(_, _, rev)| rev.is_some())
    }

    /// When the shell should wake the core (with [`Input::Wake`]) for a status or rollout step
    /// held back by the pace; `None` when nothing is waiting.
    pub fn next_wake(&self) -> Option<Instant> {
        // While a write is in flight its answer wakes the core; an index held past its time
        // must not wake it again and again meanwhile.
        let held = self
            .indexes_held_since
            .filter(|_| !self.writing())
            .map(|since| since + INDEX_COALESCE);
        let wake = match (self.wake, held) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        wake.filter(|_| self.converged && self.leader)
    }

    /// `name`'s rollout may step: checked at the end of this input. Before the cold start
    /// converged there is nothing to note: convergence steps every rollout.
    pub(super) fn dirty_rollout(&mut self, name: DeploymentName) {
        if !self.converged {
            return;
        }
        self.rollout_dirty.insert(name.clone());
        self.touched_rollouts.push(name);
    }

    /// `key`'s status may have changed: checked at the end of this input.
    pub(super) fn dirty_status(&mut self, key: CrKey) {
        self.status_dirty.insert(key.clone());
        self.touched_statuses.push(key);
    }

    /// Something held back is due at `at`.
    pub(super) fn wake_at(&mut self, at: Instant) {
        self.wake = Some(self.wake.map_or(at, |w| w.min(at)));
    }

    /// Periodic work: heartbeat expiry, stray-key windows, retries, rollout steps, statuses.
    fn on_tick(&mut self) {
        if !self.converged {
            self.maybe_converge();
            if !self.converged {
                return;
            }
        }
        self.expire_heartbeats();
        self.maybe_save_reports();
        self.stray_writes.expire(self.now.mono);
        self.ids.prune();
        let retry: Vec<((DeploymentName, DeviceId), Option<Rev>)> = self.retry.drain().collect();
        for ((deployment, device), rev) in retry {
            let rev = if self.index.is_matched(&deployment, &device) {
                rev
            } else {
                None
            };
            self.want(&deployment, &device, rev);
        }
        self.finalize_pending();
    }

    /// The monotonic time of the input.
    pub(super) fn mono(&self) -> Instant {
        self.now.mono
    }
}

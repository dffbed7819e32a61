//! The reconcile loop, as a pure decision core ([`Reconciler`]) and a thin async shell
//! (`shell`).
//!
//! The core owns the whole in-memory fleet state. [`Reconciler::handle`] takes one [`Input`]
//! (a watch event, a tick, or the outcome of an effect it asked for) and returns the
//! [`Effect`]s to carry out: `desired-state` puts and deletes, per-device indexes and notices,
//! status patches, `Device` updates, finalizer changes, Events. It does no I/O and reads no
//! clock (the time comes with the input), so each input kind is unit-tested without servers.
//! The shell runs the watches, feeds the core in arrival order, carries out its effects and
//! feeds their outcomes back before the next event, so the core never has two opinions about
//! a key.
//!
//! What the core does, by module:
//! * `ownership`: `Deployment` resources → ownership of the fleet-wide name, revision,
//!   rollout, finalizer.
//! * `targeting`: `device-info` and labels set by people → targeting index → exactly the
//!   affected `desired-state` keys (the write plan), rollout steps.
//! * `reports`: `device-state` → aggregate; stray keys removed, a flooding device blacklisted.
//! * `liveness`: heartbeats → online / offline.
//! * `blacklist`: `Device` resources annotated [`BLACKLIST_ANNOTATION`]`=true` leave the
//!   targeting index (their keys are deleted) and come back with their latest labels.
//! * `cold_start`: `desired-state` (what KV holds), the CRs and the other buckets read from
//!   the beginning, side by side; nothing is written until all of them caught up. Then one
//!   full pass writes what is missing, deletes orphaned keys, and `/readyz` says `Converged`.
//! * `checkpoint`: once every write is acknowledged and indexed, a checkpoint that lets the
//!   next cold start read the indexes instead of every key (adr/0051).
//! * `reports_snapshot`: every report held, saved now and then with the `device-state`
//!   sequence it holds them up to, so that the next cold start reads the messages after it
//!   instead of every report (adr/0052).
//! * `payloads`: the bytes of revisions no CR produces any more, read back from a key that
//!   holds them when a write needs them.
//! * `status`: what a `Deployment`'s status says.
//!
//! **Deployment names are fleet-wide.** A `desired-state` key carries the CR name, not its
//! namespace, so two namespaces cannot both own `web`. The oldest claimant (creation time; on a
//! same-second tie the current owner, see `ownership::pick_owner`) owns the name; others get
//! `Ready=False, reason NameConflict` and write no keys. When the owner is deleted, the next
//! claimant takes over its keys.
//!
//! [`BLACKLIST_ANNOTATION`]: crate::crd::device::BLACKLIST_ANNOTATION

mod blacklist;
mod checkpoint;
mod cold_start;
mod liveness;
mod ownership;
mod payloads;
mod reconciler;
mod reports;
mod reports_io;
mod reports_snapshot;
mod shell;
mod status;
mod supervise;
mod targeting;
#[cfg(test)]
mod tests;
mod writer;

use std::time::Instant;

use bytes::Bytes;
use harmony_fleet_contracts::canonical::ContentHash;
use harmony_fleet_contracts::ids::DeviceId;
use jiff::Timestamp;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;

use crate::crd::deployment::{Deployment, DeploymentStatus};
use crate::crd::device::Device;
use crate::events::{FleetEvent, Regarding};
use crate::fleet::{self, DesiredEvent, HeartbeatEvent, InfoEvent, StateEvent};
use crate::kv::{Checkpoint, KvEvent, KvOp, ReportsSnapshot};
use crate::registry::DeviceUpdate;

pub use reconciler::{
    INDEX_COALESCE, INDEX_MAX_HOLD, KEY_BATCH, MAX_PENDING_WRITES, Reconciler, Settings,
};
pub use shell::{DRAIN_TIMEOUT, OperatorHandle, start};

/// A payload revision: the content hash of its canonical bytes.
pub type Rev = ContentHash;

/// Identity of a `Deployment` resource.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CrKey {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
}

/// The time an input is handled at: wall clock for what is compared with server times
/// (heartbeats, condition transitions), monotonic for windows.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Wall-clock time.
    pub wall: Timestamp,
    /// Monotonic time.
    pub mono: Instant,
}

impl Now {
    /// The system clocks now.
    pub fn system() -> Self {
        Self {
            wall: Timestamp::now(),
            mono: Instant::now(),
        }
    }
}

/// One input of the core: a watch event, the periodic tick, or the outcome of an effect.
#[derive(Debug)]
pub enum Input {
    /// The `Deployment` watch.
    Cr(Box<watcher::Event<Deployment>>),
    /// The `device-info` bucket, decoded in the watch's task ([`Input::info`]).
    Info(InfoEvent),
    /// Where the `device-state` read starts: sent once, before its first event.
    ReportsStart(ReportsStart),
    /// The `device-state` bucket, decoded in the watch's task ([`Input::state`]), with the
    /// stream sequence of its message (0 when it has none).
    State(StateEvent, u64),
    /// The `device-heartbeat` bucket, decoded in the watch's task ([`Input::heartbeat`]).
    Heartbeat(HeartbeatEvent),
    /// The `Device` watch (metadata only: blacklist annotation, labels set by people).
    Devices(Box<watcher::Event<PartialObjectMeta<Device>>>),
    /// Once a second: expiry, retries, rollout steps, statuses.
    Tick,
    /// A status or rollout step held back by the pace is due ([`Reconciler::next_wake`]).
    Wake,
    /// `desired-state`, decoded in the watch's task ([`Input::desired`]): its backlog at a
    /// cold start, then (for a standby) the leader's writes.
    Desired(DesiredEvent),
    /// This replica now holds the leader Lease: it takes over.
    Elected,
    /// The operator is stopping: write what is decided now, without holding indexes back, and
    /// the checkpoint after it ([`Reconciler::drained`] says when that is done).
    Drain,
    /// Outcome of [`Effect::WriteKeys`]: each key with whether its write succeeded.
    KeysWritten(Vec<(String, bool)>),
    /// Outcome of [`Effect::WriteIndexes`]: each device with whether its index was stored.
    IndexesWritten(Vec<(DeviceId, bool)>),
    /// Outcome of [`Effect::FetchRevision`]: the bytes read (`None`: no key, or the read
    /// failed).
    RevisionFetched {
        /// The revision asked for.
        rev: Rev,
        /// What the key held.
        bytes: Option<Bytes>,
    },
    /// Outcome of [`Effect::SaveReports`].
    ReportsSaved {
        /// The sequence the snapshot holds reports up to.
        seq: u64,
        /// Whether it was stored.
        ok: bool,
    },
    /// Outcome of [`Effect::ReleaseFinalizer`].
    FinalizerReleased {
        /// The resource.
        key: CrKey,
        /// What the API server said.
        outcome: PatchOutcome,
    },
}

impl Input {
    /// A `device-info` event, decoded.
    pub fn info(event: KvEvent) -> Self {
        Input::Info(fleet::decode_info(event))
    }

    /// A `device-state` event at stream sequence `seq`, decoded.
    pub fn state(event: KvEvent, seq: u64) -> Self {
        Input::State(fleet::decode_state(event), seq)
    }

    /// A `device-heartbeat` event, decoded.
    pub fn heartbeat(event: KvEvent) -> Self {
        Input::Heartbeat(fleet::decode_heartbeat(event))
    }

    /// A `desired-state` event, decoded (its payload hashed).
    pub fn desired(event: KvEvent) -> Self {
        Input::Desired(fleet::decode_desired(event))
    }

    /// The metrics label of this input.
    pub fn trigger(&self) -> &'static str {
        match self {
            Input::Cr(_) => "deployment",
            Input::Info(_) => "device-info",
            Input::State(..) | Input::ReportsStart(_) => "device-state",
            Input::Heartbeat(_) => "heartbeat",
            Input::Devices(_) => "blacklist",
            Input::Tick => "tick",
            Input::Wake => "wake",
            Input::Desired(_) => "desired-state",
            Input::Elected => "elected",
            Input::Drain => "drain",
            Input::KeysWritten(_) | Input::IndexesWritten(_) => "kv-written",
            Input::RevisionFetched { .. } => "kv-read",
            Input::ReportsSaved { .. } => "snapshot",
            Input::FinalizerReleased { .. } => "finalizer",
        }
    }
}

/// Where the `device-state` read starts (adr/0052).
#[derive(Debug)]
pub struct ReportsStart {
    /// When the `device-state` stream was created (Unix nanoseconds): saved snapshots name it.
    pub stream_created: u64,
    /// The snapshot the read starts after (its messages after the snapshot's sequence
    /// follow); `None`: every report follows.
    pub snapshot: Option<Box<ReportsSnapshot>>,
    /// Whether snapshots can be saved (the operator's store is open).
    pub save: bool,
}

/// What became of a patch the core asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchOutcome {
    /// Applied.
    Done,
    /// The resource no longer exists.
    Gone,
    /// Failed (conflict, API error): tried again later.
    Failed,
}

/// One thing the shell carries out for the core.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    /// Put or delete `desired-state` keys, in parallel; answer with [`Input::KeysWritten`].
    WriteKeys(Vec<(String, KvOp)>),
    /// Store per-device indexes (adr/0014); answer with [`Input::IndexesWritten`].
    WriteIndexes(Vec<(DeviceId, KvOp)>),
    /// Publish one change notice per device (after their indexes were stored).
    Notify(Vec<DeviceId>),
    /// Write the checkpoint (adr/0051): every write so far is acknowledged and named by an
    /// index. After the writes handed over before it, before any handed over after it; no
    /// answer.
    WriteCheckpoint(Checkpoint),
    /// Save the reports snapshot (adr/0052), replacing the last one; answer with
    /// [`Input::ReportsSaved`].
    SaveReports {
        /// The `device-state` sequence it holds reports up to.
        seq: u64,
        /// The encoded snapshot.
        bytes: Bytes,
    },
    /// Read the payload bytes of a revision no CR produces any more from a key that holds it
    /// (after a cold start from a checkpoint, adr/0051); answer with [`Input::RevisionFetched`].
    FetchRevision {
        /// The revision.
        rev: Rev,
        /// A `desired-state` key holding it.
        key: String,
    },
    /// Set the finalizers of a `Deployment` (adding ours), conditional on its resourceVersion.
    AddFinalizer {
        /// The resource.
        key: CrKey,
        /// The whole finalizer list to write.
        finalizers: Vec<String>,
        /// The resourceVersion it was read at.
        resource_version: Option<String>,
    },
    /// Remove our finalizer (its keys are gone); answer with [`Input::FinalizerReleased`].
    ReleaseFinalizer {
        /// The resource.
        key: CrKey,
        /// The whole finalizer list to write.
        finalizers: Vec<String>,
        /// The resourceVersion it was read at.
        resource_version: Option<String>,
    },
    /// Write a `Deployment`'s status (the shell may coalesce per resource).
    PatchStatus(CrKey, Box<DeploymentStatus>),
    /// Annotate a flooding device's `Device` as blacklisted, with the reason.
    BlacklistDevice {
        /// The device.
        device: DeviceId,
        /// Why, for the reason annotation.
        reason: String,
    },
    /// Delete a `device-state` key no assignment accounts for.
    RemoveStray(String),
    /// Tell the `Device` registry (server-side apply of `Device` resources).
    Device(DeviceUpdate),
    /// Kubernetes Events about an object.
    Events(Regarding, Vec<FleetEvent>),
    /// The cold start is done: `/readyz` says `Converged`.
    Converged,
}

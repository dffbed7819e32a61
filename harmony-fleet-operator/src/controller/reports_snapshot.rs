//! The reports snapshot (adr/0052): the leader saves every report it holds, with the
//! `device-state` sequence it holds them up to, so that the next cold start loads them in one
//! read and reads only the messages after that sequence.
//!
//! When: once the cold start converged (it has read every report, or a snapshot and what
//! came after it), then whenever the messages applied since the last snapshot are an eighth of
//! the reports held, it is at least [`SNAPSHOT_MIN_INTERVAL`] old and no input waits for the
//! loop (encoding 1.1M reports holds the loop ~0.25 s: not in the middle of a burst), or it is
//! [`SNAPSHOT_MAX_AGE`] old and anything changed, and when the operator stops. One save at a
//! time; a failed one is tried again after [`SNAPSHOT_MIN_INTERVAL`] (at once while
//! stopping). A crash loses nothing: the next start reads the older snapshot and more
//! messages, or every report.

use std::time::{Duration, Instant};

use super::reconciler::Reconciler;
use super::{Effect, ReportsStart};
use crate::aggregate::Report;
use crate::kv::operator_store::MAX_SNAPSHOT_BYTES;
use crate::kv::snapshot::{self, ReportsMark};

/// The shortest time between two snapshots while reports keep coming (a snapshot of 1.1M
/// reports costs the loop 0.3–0.4 s of encoding and nats-server 7.9 MB of writes).
pub const SNAPSHOT_MIN_INTERVAL: Duration = Duration::from_secs(30);

/// The longest a snapshot goes without a newer one while anything changed.
pub const SNAPSHOT_MAX_AGE: Duration = Duration::from_secs(300);

/// Where the snapshots stand.
#[derive(Debug, Default)]
pub(super) struct Snapshots {
    /// Creation time of the `device-state` stream read (None: no snapshot is saved, the
    /// operator has no store or the read has not started).
    origin: Option<u64>,
    /// Stream sequence of the last `device-state` message applied.
    applied: u64,
    /// Sequence the last snapshot saved (or loaded) holds reports up to.
    saved: u64,
    /// When the last snapshot was saved, loaded or failed.
    saved_at: Option<Instant>,
    /// Sequence of the snapshot being saved.
    saving: Option<u64>,
}

impl Snapshots {
    /// Whether a snapshot should be saved now, holding `held` reports (pure); `busy`: inputs
    /// wait for the loop.
    fn due(&self, held: usize, now: Instant, stopping: bool, busy: bool) -> bool {
        if self.origin.is_none() || self.saving.is_some() || self.applied <= self.saved {
            return false;
        }
        let age = self
            .saved_at
            .map_or(Duration::MAX, |at| now.saturating_duration_since(at));
        let behind = self.applied - self.saved;
        stopping
            || age >= SNAPSHOT_MAX_AGE
            || (!busy && age >= SNAPSHOT_MIN_INTERVAL && behind >= (held as u64 / 8).max(1))
    }

    /// Whether everything applied is saved, or no snapshot can be (the drain waits for it).
    pub(super) fn settled(&self) -> bool {
        self.origin.is_none() || (self.saving.is_none() && self.applied <= self.saved)
    }
}

impl Reconciler {
    /// Where the `device-state` read starts (before its first event): a snapshot's reports
    /// are loaded as if each had been read.
    pub(super) fn on_reports_start(&mut self, start: ReportsStart) {
        let now = self.mono();
        self.snapshots.origin = start.save.then_some(start.stream_created);
        let Some(snapshot) = start.snapshot else {
            return;
        };
        let (loaded, seq) = (snapshot.len(), snapshot.mark.seq);
        let devices: Vec<_> = snapshot
            .devices
            .into_iter()
            .map(|d| self.ids.device(d))
            .collect();
        for (name, reports) in snapshot.groups {
            let name = self.ids.deployment(name);
            for saved in reports {
                let (Some(device), Some(rev)) = (
                    devices.get(saved.device as usize),
                    snapshot.revisions.get(saved.rev as usize),
                ) else {
                    continue;
                };
                let (error, at) = saved.detail.map_or((None, None), |d| (d.error, d.at));
                let report = Report {
                    rev: *rev,
                    outcome: saved.outcome,
                    error,
                    at,
                };
                self.fleet.set_report(&name, device, Some(report));
            }
        }
        self.snapshots.applied = seq;
        self.snapshots.saved = seq;
        self.snapshots.saved_at = Some(now);
        tracing::info!(
            reports = loaded,
            devices = devices.len(),
            seq,
            "loaded the reports snapshot; reading device-state after it"
        );
    }

    /// A `device-state` message at stream sequence `seq` was applied.
    pub(super) fn applied_report(&mut self, seq: u64) {
        self.snapshots.applied = self.snapshots.applied.max(seq);
    }

    /// Saves a snapshot when one is due (the leader, once converged).
    pub(super) fn maybe_save_reports(&mut self) {
        if !self.leader || !self.converged {
            return;
        }
        let held = self.fleet.reported_count();
        if !self
            .snapshots
            .due(held, self.mono(), self.draining, self.backlog)
        {
            return;
        }
        let Some(stream_created) = self.snapshots.origin else {
            return;
        };
        let seq = self.snapshots.applied;
        let bytes = snapshot::encode(
            ReportsMark {
                stream_created,
                seq,
            },
            self.fleet.reports(),
        );
        if bytes.len() > MAX_SNAPSHOT_BYTES {
            tracing::warn!(
                bytes = bytes.len(),
                limit = MAX_SNAPSHOT_BYTES,
                "the reports snapshot is too large to save; cold starts read every report"
            );
            self.snapshots.origin = None;
            return;
        }
        tracing::info!(
            reports = held,
            bytes = bytes.len(),
            seq,
            "saving the reports snapshot"
        );
        self.snapshots.saving = Some(seq);
        self.emit(Effect::SaveReports {
            seq,
            bytes: bytes.into(),
        });
    }

    /// The outcome of [`Effect::SaveReports`].
    pub(super) fn on_reports_saved(&mut self, seq: u64, ok: bool) {
        self.snapshots.saving = None;
        self.snapshots.saved_at = Some(self.mono());
        if ok {
            self.snapshots.saved = self.snapshots.saved.max(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snapshots(applied: u64, saved: u64, age: Option<Duration>, now: Instant) -> Snapshots {
        Snapshots {
            origin: Some(1),
            applied,
            saved,
            saved_at: age.map(|a| now - a),
            saving: None,
        }
    }

    #[test]
    fn a_snapshot_is_due_after_an_eighth_of_the_reports_or_when_old_or_stopping() {
        let now = Instant::now() + SNAPSHOT_MAX_AGE * 2;
        let s = |applied, age| snapshots(applied, 1_000, age, now);
        let min = Some(SNAPSHOT_MIN_INTERVAL);
        assert!(
            s(1_000 + 100, None).due(800, now, false, false),
            "none saved yet"
        );
        assert!(
            s(1_000 + 100, min).due(800, now, false, false),
            "an eighth behind"
        );
        assert!(
            !s(1_000 + 99, min).due(800, now, false, false),
            "less than an eighth"
        );
        let young = Some(SNAPSHOT_MIN_INTERVAL / 2);
        assert!(
            !s(1_000 + 100, young).due(800, now, false, false),
            "too recent"
        );
        assert!(
            !s(1_000 + 100, min).due(800, now, false, true),
            "inputs wait for the loop"
        );
        assert!(
            s(1_000 + 1, Some(SNAPSHOT_MAX_AGE)).due(800, now, false, true),
            "old, however busy"
        );
        assert!(
            s(1_000 + 1, young).due(800, now, true, true),
            "stopping, however busy"
        );
        assert!(
            s(1_000 + 1, Some(SNAPSHOT_MAX_AGE)).due(800, now, false, false),
            "old"
        );
        assert!(s(1_000 + 1, young).due(800, now, true, false), "stopping");
        assert!(!s(1_000, None).due(800, now, true, false), "nothing new");
        let mut saving = s(2_000, None);
        saving.saving = Some(1_500);
        assert!(!saving.due(800, now, true, false), "one save at a time");
        assert!(!saving.settled());
        let mut no_store = s(2_000, None);
        no_store.origin = None;
        assert!(!no_store.due(800, now, true, false));
        assert!(no_store.settled(), "nothing to wait for without a store");
    }
}

//! Cold start: `desired-state` (the baseline every write is compared with), the CRs and the
//! other buckets are read from the beginning side by side, in whatever order their events
//! arrive (adr/0049). Nothing is written until all of them caught up; then one pass writes
//! what is missing and deletes orphaned keys, and once those writes are done `/readyz` says
//! `Converged`.

use std::time::Instant;

use harmony_fleet_contracts::canonical::ContentHash;
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};
use harmony_fleet_contracts::keys::{self, DesiredKey};

use super::reconciler::Reconciler;
use super::{CrKey, Effect};
use crate::fleet::DesiredEvent;

/// Which sources have delivered their backlog.
#[derive(Debug, Default)]
pub(super) struct CaughtUp {
    /// `desired-state`'s backlog is loaded.
    pub(super) desired: bool,
    pub(super) crs: bool,
    pub(super) info: bool,
    pub(super) state: bool,
    pub(super) heartbeat: bool,
    pub(super) blacklist: bool,
    /// `desired-state` keys loaded (from indexes read at a checkpoint, or read themselves).
    pub(super) desired_keys: usize,
    /// Indexes read at a checkpoint (adr/0051).
    pub(super) listed: usize,
}

impl CaughtUp {
    fn all(&self) -> bool {
        self.desired && self.crs && self.info && self.state && self.heartbeat && self.blacklist
    }
}

/// What the cold start's pass did, logged once its writes are done.
#[derive(Debug)]
pub(super) struct ConvergeReport {
    started: Instant,
    writes: usize,
    orphans: usize,
}

impl Reconciler {
    /// Loads one `desired-state` event (assignments, revisions, the per-device indexes
    /// stored): the backlog at a cold start, then a standby's view of the leader's writes;
    /// `true` once the backlog is read.
    pub fn load_desired(&mut self, event: DesiredEvent) -> bool {
        match event {
            DesiredEvent::Index { device, stored } => {
                let device = self.ids.device(device);
                self.indexes.load_stored(device, stored);
            }
            DesiredEvent::Listed {
                device,
                stored,
                index,
            } => {
                let device = self.ids.device(device);
                self.caught_up.listed += 1;
                match index {
                    Ok(index) => {
                        // Whole: the index is taken as what KV holds, nothing to compare.
                        let entries: Vec<(DeploymentName, ContentHash)> = index
                            .deployments
                            .into_iter()
                            .map(|(deployment, rev)| (self.ids.deployment(deployment), rev))
                            .collect();
                        for (deployment, rev) in &entries {
                            self.fleet.set_assigned(deployment, &device, Some(*rev));
                        }
                        self.caught_up.desired_keys += entries.len();
                        self.indexes.load_listed(device, stored, entries);
                    }
                    // Only a hand-written index can be unreadable: its device's keys from
                    // before the checkpoint stay unknown (adr/0051), and it is rewritten.
                    Err(reason) => {
                        tracing::warn!(%device, reason, "index at the checkpoint does not decode; this device's earlier keys are not known");
                        self.indexes.load_stored(device, Some(stored));
                    }
                }
            }
            DesiredEvent::Checkpoint => {}
            DesiredEvent::Key {
                key,
                value: Some((rev, bytes)),
            } => {
                let key = self.intern_desired(key);
                self.indexes.set(&key.device, &key.deployment, Some(&rev));
                self.revisions.entry(rev).or_insert(bytes);
                self.fleet
                    .set_assigned(&key.deployment, &key.device, Some(rev));
                self.caught_up.desired_keys += 1;
            }
            DesiredEvent::Key { key, value: None } => {
                let key = self.intern_desired(key);
                self.indexes.set(&key.device, &key.deployment, None);
                self.fleet.set_assigned(&key.deployment, &key.device, None);
            }
            DesiredEvent::Foreign { key, reason } => {
                tracing::warn!(key, reason, "ignoring foreign key in desired-state");
            }
            DesiredEvent::CaughtUp => {
                self.caught_up.desired = true;
                self.fleet.take_dirty();
                tracing::info!(
                    keys = self.caught_up.desired_keys,
                    indexes_listed = self.caught_up.listed,
                    "loaded desired-state"
                );
                return true;
            }
        }
        false
    }

    fn intern_desired(&mut self, key: DesiredKey) -> DesiredKey {
        DesiredKey {
            device: self.ids.device(key.device),
            deployment: self.ids.deployment(key.deployment),
        }
    }

    /// The full pass, once every source caught up: rollouts stepped, orphaned keys deleted,
    /// reports of pairs without a key removed, finalizers of deleted CRs pursued.
    pub(super) fn maybe_converge(&mut self) {
        if self.converged || !self.caught_up.all() {
            return;
        }
        self.converged = true;
        let started = self.mono();
        let names: Vec<DeploymentName> = self.owned.keys().cloned().collect();
        for name in &names {
            self.rollout_dirty.remove(name);
            self.step_rollout(name);
        }
        // Orphans: keys of deployments nobody owns, or of devices no longer matched.
        let orphans: Vec<(DeploymentName, DeviceId)> = self
            .fleet
            .assigned_pairs()
            .filter(|(k, _, _, matched)| !matched || !self.owned.contains_key(*k))
            .map(|(k, d, _, _)| (k.clone(), d.clone()))
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
            self.emit(Effect::RemoveStray(key));
        }
        self.finalize_pending();
        let keys: Vec<CrKey> = self.crs.keys().cloned().collect();
        for key in keys {
            self.dirty_status(key);
        }
        self.converging = Some(ConvergeReport {
            started,
            writes: self.ops.len(),
            orphans: orphan_count,
        });
    }

    /// The cold start's writes are done: ready.
    pub(super) fn report_converged(&mut self, report: ConvergeReport) {
        self.emit(Effect::Converged);
        // The next start reads from here (adr/0051).
        self.checkpoint_due = true;
        tracing::info!(
            deployments = self.owned.len(),
            devices = self.index.device_count(),
            writes = report.writes,
            orphans = report.orphans,
            took_ms = self
                .mono()
                .saturating_duration_since(report.started)
                .as_millis() as u64,
            leader = self.leader,
            "cold start converged"
        );
    }
}

//! `device-state`: what devices report, folded into the aggregate. A device reports only for
//! deployments assigned to it; anything else is removed, and a device that keeps writing such
//! keys is blacklisted.

use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::keys;
use harmony_fleet_contracts::state::Phase as StatePhase;

use super::Effect;
use super::reconciler::Reconciler;
use crate::aggregate::Report;
use crate::crd::device::BLACKLIST_ANNOTATION;
use crate::fleet::StateEvent;
use crate::rollout::Outcome;
use crate::write_quota::Verdict;

impl Reconciler {
    pub(super) fn on_state(&mut self, event: StateEvent) {
        let (k, report) = match event {
            StateEvent::CaughtUp => {
                self.caught_up.state = true;
                tracing::info!("read device-state");
                return;
            }
            StateEvent::Foreign(key) => {
                tracing::warn!(key, "ignoring foreign key in device-state");
                return;
            }
            // A device may write `state.<itself>.<anything>`: a key that is not a deployment
            // name is as stray as one of a deployment it lacks.
            StateEvent::Stray { device, key } => {
                if self.converged {
                    self.note_stray(&device, key);
                } else {
                    tracing::warn!(key, "ignoring foreign key in device-state");
                }
                return;
            }
            StateEvent::Unreadable { key, raw, reason } => {
                if self.converged && !self.is_assigned(&key.deployment, &key.device) {
                    self.note_stray(&key.device, raw);
                } else {
                    tracing::warn!(key = raw, reason, "ignoring unreadable device-state");
                }
                return;
            }
            StateEvent::Put { key, state } => {
                let report = state.payload_hash.map(|rev| Report {
                    rev,
                    outcome: match state.phase {
                        StatePhase::Running => Outcome::Succeeded,
                        StatePhase::Failed => Outcome::Failed,
                        _ => Outcome::InProgress,
                    },
                    error: state.last_error.clone(),
                    at: Some(state.last_change),
                });
                (key, report)
            }
            StateEvent::Delete(key) => (key, None),
        };
        let k = keys::StateKey {
            device: self.ids.device(k.device),
            deployment: self.ids.deployment(k.deployment),
        };
        let reported = report.is_some();
        self.fleet.set_report(&k.deployment, &k.device, report);
        // Before the cold start converged, assignments are not all known yet.
        if reported && self.converged && !self.is_assigned(&k.deployment, &k.device) {
            self.note_stray(&k.device, keys::state_key(&k.device, &k.deployment));
        }
    }

    /// Asks for the removal of `device`'s stray `device-state` key `key` and counts it: a
    /// device over the limit ([`crate::write_quota::StrayWrites`]) is blacklisted.
    pub(super) fn note_stray(&mut self, device: &DeviceId, key: String) {
        self.metrics.stray_reports.inc();
        let now = self.mono();
        if let Verdict::Exceeded { keys } = self.stray_writes.record(device, &key, now) {
            let reason = format!(
                "the operator blacklisted it: it wrote {keys} device-state keys for deployments not assigned to it within {}s (limit {}, --stray-report-limit); remove the annotation {BLACKLIST_ANNOTATION} to let it back",
                self.stray_writes.window().as_secs(),
                self.stray_writes.limit(),
            );
            tracing::warn!(device = %device, keys, "device floods device-state: blacklisting it");
            self.metrics.devices_flooding.inc();
            self.emit(Effect::BlacklistDevice {
                device: device.clone(),
                reason,
            });
        }
        self.emit(Effect::RemoveStray(key));
    }
}

//! Targeting and the write plan: `device-info` and the labels people set on `Device`s feed the
//! targeting index; its changes and the rollout steps decide exactly which `desired-state`
//! keys to put or delete.

use harmony_fleet_contracts::device::DEVICE_ID_LABEL;
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};

use super::Effect;
use super::reconciler::Reconciler;
use crate::events as fleet_events;
use crate::fleet::InfoEvent;
use crate::index::{Change, DeviceLabels, Labels};
use crate::labels;
use crate::registry::DeviceUpdate;
use crate::rollout::DeviceView;

impl Reconciler {
    pub(super) fn on_info(&mut self, event: InfoEvent) {
        match event {
            InfoEvent::CaughtUp => {
                self.caught_up.info = true;
                tracing::info!(devices = self.index.device_count(), "read device-info");
            }
            InfoEvent::Foreign(key) => tracing::warn!(key, "ignoring foreign key in device-info"),
            InfoEvent::Rejected { key, reason } => {
                tracing::warn!(
                    key,
                    reason,
                    "rejecting device-info; keeping the previous one"
                )
            }
            InfoEvent::Put(info) => {
                let device = self.ids.device(info.device_id.clone());
                let reported = labels::split_reported(&device, &info.labels);
                if !reported.ignored.is_empty() {
                    tracing::warn!(%device, ignored = ?reported.ignored, "ignoring reported labels under a protected prefix");
                }
                let apply = labels::to_apply(&reported.accepted, self.admin_labels.get(&device));
                // Kept without the identity label (added back where it is applied), so that
                // devices reporting the same labels share them.
                let mut accepted = reported.accepted;
                if accepted.get(DEVICE_ID_LABEL).map(String::as_str) == Some(device.as_str()) {
                    accepted.remove(DEVICE_ID_LABEL);
                }
                let shared = self.reported_sets.intern(accepted);
                if let Some(old) = self.reported_labels.insert(device.clone(), shared) {
                    self.reported_sets.release(old);
                }
                self.retarget(&device);
                self.metrics
                    .devices_known
                    .set(self.index.device_count() as i64);
                self.tell_registry(DeviceUpdate::Info {
                    id: device,
                    labels: apply,
                    ignored_labels: reported.ignored,
                    inventory: (&info.inventory).into(),
                    agent_version: info.agent_version.as_str().to_owned(),
                });
            }
            InfoEvent::Delete(device) => {
                let device = self.ids.device(device);
                self.held_labels.remove(&device);
                if let Some(old) = self.reported_labels.remove(&device) {
                    self.reported_sets.release(old);
                }
                let changes = self.index.remove_device(&device);
                self.apply_changes(changes);
                self.metrics
                    .devices_known
                    .set(self.index.device_count() as i64);
                self.tell_registry(DeviceUpdate::Removed { id: device });
            }
        }
    }

    /// Targets `device` on its labels now: accepted reported labels overlaid by labels set by
    /// people on its `Device` ([`labels::effective`]). A device that reported no info yet is
    /// not targeted; a blacklisted one keeps its labels aside until released.
    pub(super) fn retarget(&mut self, device: &DeviceId) {
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
    pub(super) fn set_admin_labels(&mut self, device: &DeviceId, admin: Option<Labels>) {
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
        if let Some(reported) = self.reported_labels.get(device) {
            let mut reported = (**reported).clone();
            reported.insert(DEVICE_ID_LABEL.to_owned(), device.to_string());
            let update = DeviceUpdate::Labels {
                id: device.clone(),
                labels: labels::to_apply(&reported, self.admin_labels.get(device)),
            };
            self.tell_registry(update);
        }
    }

    /// Hands an update to the `Device` registry, when `Device` resources are kept.
    pub(super) fn tell_registry(&mut self, update: DeviceUpdate) {
        if self.settings.device_resources {
            self.emit(Effect::Device(update));
        }
    }

    /// Hands an Event on `device`'s `Device` to the Event writer, once the operator has caught
    /// up (the blacklists found at start are no news).
    pub(super) fn tell_device(&mut self, device: &DeviceId, event: fleet_events::FleetEvent) {
        if self.converged {
            let regarding = fleet_events::Regarding::Device(device.clone());
            self.emit(Effect::Events(regarding, vec![event]));
        }
    }

    /// Turns index changes into writes: a device newly matched by a served deployment gets the
    /// revision a joiner gets; an unmatched one loses its key.
    pub(super) fn apply_changes(&mut self, changes: Vec<Change<DeviceId, DeploymentName>>) {
        for change in changes {
            match change {
                Change::Matched { device, deployment } => {
                    self.fleet.set_matched(&deployment, &device, true);
                    if self.converged
                        && self.fleet.assigned(&deployment, &device).is_none()
                        && let Some(owned) = self.owned.get(&deployment)
                    {
                        let rev = *owned.rollout.joiner_revision();
                        self.want(&deployment, &device, Some(rev));
                    }
                    self.dirty_rollout(deployment);
                }
                Change::Unmatched { device, deployment } => {
                    self.fleet.set_matched(&deployment, &device, false);
                    if self.converged {
                        self.want(&deployment, &device, None);
                    }
                    self.dirty_rollout(deployment);
                }
            }
        }
    }

    /// Runs one rollout step for a served deployment. O(devices it matches).
    pub(super) fn step_rollout(&mut self, name: &DeploymentName) {
        if !self.converged {
            return;
        }
        let Some(owned) = self.owned.get_mut(name) else {
            return;
        };
        let before = (owned.rollout.clone(), owned.progress.clone());
        let pairs = self.fleet.pairs_of(name);
        let index = &self.index;
        let empty = Labels::new();
        let step = owned.rollout.step(
            &owned.policy,
            index.matched(name).map(|d| {
                let pair = pairs.get(d);
                (
                    d,
                    DeviceView {
                        assigned: pair.assigned,
                        observed: pair.reported,
                        last_good: pair.last_good,
                        labels: index.labels(d).unwrap_or(DeviceLabels::plain(&empty)),
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
            self.dirty_status(key);
        }
        for (device, rev) in step.assign {
            self.want(name, &device, Some(rev));
        }
    }
}

//! The `Device` watch: the blacklist annotation takes a device out of targeting (its keys
//! go) until it is removed; labels people set on a `Device` win for targeting.

use std::collections::HashSet;

use harmony_fleet_contracts::ids::DeviceId;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher;

use super::reconciler::Reconciler;
use crate::crd::FIELD_MANAGER;
use crate::crd::device::Device;
use crate::events as fleet_events;
use crate::fleet;
use crate::labels;

/// The device a `Device` resource is, and whether it is blacklisted.
fn flagged(d: &PartialObjectMeta<Device>) -> Option<(DeviceId, bool)> {
    let id = DeviceId::new(d.metadata.name.clone()?).ok()?;
    Some((id, fleet::is_blacklisted(&d.metadata)))
}

impl Reconciler {
    pub(super) fn on_devices(&mut self, event: watcher::Event<PartialObjectMeta<Device>>) {
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
                    self.maybe_converge();
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
    fn on_device_labels(&mut self, d: &PartialObjectMeta<Device>) {
        let Some(id) = d.metadata.name.clone().and_then(|n| DeviceId::new(n).ok()) else {
            return;
        };
        let id = self.ids.device(id);
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
            if let Some(labels) = self.index.labels(&device).map(|l| l.to_labels()) {
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
}

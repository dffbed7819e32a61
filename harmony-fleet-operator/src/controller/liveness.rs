//! Heartbeats: a device is online while its last heartbeat is younger than the timeout.

use jiff::Timestamp;

use super::reconciler::Reconciler;
use crate::fleet::{self, HeartbeatEvent};
use crate::registry::DeviceUpdate;

/// What the core knows of a device's liveness.
#[derive(Debug, Default)]
pub(super) struct DeviceLive {
    pub(super) last_heartbeat: Option<Timestamp>,
    pub(super) online: bool,
}

impl Reconciler {
    pub(super) fn on_heartbeat(&mut self, event: HeartbeatEvent) {
        match event {
            HeartbeatEvent::CaughtUp => {
                self.caught_up.heartbeat = true;
                tracing::info!(devices = self.devices.len(), "read device-heartbeat");
            }
            HeartbeatEvent::Foreign(_) => {}
            HeartbeatEvent::Beat { device, at } => {
                let device = self.ids.device(device);
                let fresh =
                    fleet::is_online(Some(at), self.now.wall, self.settings.heartbeat_timeout);
                let live = self.devices.entry(device.clone()).or_default();
                if let Some(old) = live.last_heartbeat.replace(at) {
                    self.expiry.remove(&(old, device.clone()));
                }
                self.expiry.insert((at, device.clone()));
                if fresh && !live.online {
                    live.online = true;
                    self.metrics.devices_online.inc();
                }
                let online = live.online;
                // A heartbeat already stale when read (cold start) marks the device offline.
                self.fleet
                    .set_offline(&device, !online, self.index.deployments_of(&device));
                self.tell_registry(DeviceUpdate::Liveness {
                    id: device,
                    online,
                    last_heartbeat: Some(at),
                });
            }
            HeartbeatEvent::Gone(device) => {
                let device = self.ids.device(device);
                if let Some(live) = self.devices.remove(&device) {
                    if let Some(at) = live.last_heartbeat {
                        self.expiry.remove(&(at, device.clone()));
                    }
                    if live.online {
                        self.metrics.devices_online.dec();
                    }
                    self.fleet
                        .set_offline(&device, true, self.index.deployments_of(&device));
                    self.tell_registry(DeviceUpdate::Liveness {
                        id: device,
                        online: false,
                        last_heartbeat: live.last_heartbeat,
                    });
                }
            }
        }
    }

    /// Marks devices whose last heartbeat is older than the timeout offline (the rule of
    /// [`fleet::is_online`], applied in heartbeat order). O(expired).
    pub(super) fn expire_heartbeats(&mut self) {
        let Ok(timeout) = jiff::SignedDuration::try_from(self.settings.heartbeat_timeout) else {
            return;
        };
        let Ok(cutoff) = self.now.wall.checked_sub(timeout) else {
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
                self.tell_registry(DeviceUpdate::Liveness {
                    id: device,
                    online: false,
                    last_heartbeat: Some(at),
                });
            }
        }
    }
}

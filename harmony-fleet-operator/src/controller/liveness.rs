//! Heartbeats: a device is online while its last heartbeat is younger than the timeout.

use harmony_fleet_contracts::keys::HeartbeatKey;
use jiff::Timestamp;

use super::reconciler::Reconciler;
use crate::kv::KvEvent;
use crate::registry::DeviceUpdate;

/// What the core knows of a device's liveness.
#[derive(Debug, Default)]
pub(super) struct DeviceLive {
    pub(super) last_heartbeat: Option<Timestamp>,
    pub(super) online: bool,
}

impl Reconciler {
    pub(super) fn on_heartbeat(&mut self, event: KvEvent) {
        match event {
            KvEvent::CaughtUp => self.caught_up.heartbeat = true,
            KvEvent::Put { key, at, .. } => {
                let Ok(k) = HeartbeatKey::parse(&key) else {
                    return;
                };
                let fresh = self.age(at) < self.settings.heartbeat_timeout;
                let live = self.devices.entry(k.device.clone()).or_default();
                if let Some(old) = live.last_heartbeat.replace(at) {
                    self.expiry.remove(&(old, k.device.clone()));
                }
                self.expiry.insert((at, k.device.clone()));
                if fresh && !live.online {
                    live.online = true;
                    self.metrics.devices_online.inc();
                }
                let online = live.online;
                // A heartbeat already stale when read (cold start) marks the device offline.
                self.fleet
                    .set_offline(&k.device, !online, self.index.deployments_of(&k.device));
                self.tell_registry(DeviceUpdate::Liveness {
                    id: k.device,
                    online,
                    last_heartbeat: Some(at),
                });
            }
            KvEvent::Delete { key } => {
                let Ok(k) = HeartbeatKey::parse(&key) else {
                    return;
                };
                if let Some(live) = self.devices.remove(&k.device) {
                    if let Some(at) = live.last_heartbeat {
                        self.expiry.remove(&(at, k.device.clone()));
                    }
                    if live.online {
                        self.metrics.devices_online.dec();
                    }
                    self.fleet
                        .set_offline(&k.device, true, self.index.deployments_of(&k.device));
                    self.tell_registry(DeviceUpdate::Liveness {
                        id: k.device,
                        online: false,
                        last_heartbeat: live.last_heartbeat,
                    });
                }
            }
        }
    }

    /// Marks devices whose last heartbeat is older than the timeout offline. O(expired).
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

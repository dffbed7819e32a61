//! [`FleetView`]: what the real service keeps of the device buckets, and the reads the pages
//! make of it.
//!
//! Reading a 100k-device bucket per page view would not scale, so the real service folds the
//! ordered watches of `device-info`, `device-state` and `device-heartbeat` into this view
//! ([`FleetView::apply`]) and pages read it in memory. The reads are built to stay cheap at
//! that size: the device list filters through [`device_list::select`] on borrowed data and
//! builds summaries for the page's rows only, and the overview counts without cloning a
//! device. Whether a device is online or blacklisted depends on the moment and on the `Device`
//! resources, so a request brings them in a [`Liveness`].

use std::collections::{BTreeMap, HashMap, HashSet};

use harmony_fleet_contracts::device::DeviceInfo;
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};
use harmony_fleet_contracts::state::{DeploymentState, Phase};
use jiff::Timestamp;

use super::device_list::{self, DeviceFacts};
use super::{
    DevicePage, DeviceQuery, DeviceSummary, OVERVIEW_OFFLINE_LIMIT, Overview, PhaseCounts,
};
use crate::fleet::{self, HeartbeatEvent, InfoEvent, StateEvent};
use crate::index::Labels;
use crate::kv::KvEvent;

/// The device buckets as the dashboard's watches last saw them.
#[derive(Debug, Default)]
pub struct FleetView {
    info: BTreeMap<DeviceId, DeviceInfo>,
    heartbeats: HashMap<DeviceId, Timestamp>,
    states: HashMap<DeviceId, BTreeMap<DeploymentName, DeploymentState>>,
}

/// What decides, for one request, whether a device is online and whether it is blacklisted.
#[derive(Clone, Debug)]
pub struct Liveness {
    /// The request's time.
    pub now: Timestamp,
    /// A device is offline when its last heartbeat is older than this.
    pub heartbeat_timeout: std::time::Duration,
    /// Ids of devices whose `Device` resource carries the blacklist annotation.
    pub blacklisted: HashSet<String>,
}

impl Liveness {
    /// Whether a device last seen at `last_seen` is online now ([`fleet::is_online`]).
    pub fn online(&self, last_seen: Option<Timestamp>) -> bool {
        fleet::is_online(last_seen, self.now, self.heartbeat_timeout)
    }
}

/// One device of the view, read lazily for [`device_list::select`].
#[derive(Clone, Copy, Debug)]
pub struct ViewRow<'a> {
    view: &'a FleetView,
    info: &'a DeviceInfo,
    liveness: &'a Liveness,
}

impl DeviceFacts for ViewRow<'_> {
    fn id(&self) -> &DeviceId {
        &self.info.device_id
    }
    fn labels(&self) -> &Labels {
        &self.info.labels
    }
    fn online(&self) -> bool {
        self.liveness
            .online(self.view.last_seen(&self.info.device_id))
    }
    fn blacklisted(&self) -> bool {
        self.liveness
            .blacklisted
            .contains(self.info.device_id.as_str())
    }
    fn failing(&self) -> bool {
        self.view
            .states
            .get(&self.info.device_id)
            .is_some_and(|s| s.values().any(|s| s.phase == Phase::Failed))
    }
    fn text_fields(&self) -> [&str; 2] {
        [
            self.info.inventory.arch.as_str(),
            self.info.agent_version.as_str(),
        ]
    }
}

impl FleetView {
    /// Devices known (those with a `device-info`).
    pub fn len(&self) -> usize {
        self.info.len()
    }

    /// Whether no device is known.
    pub fn is_empty(&self) -> bool {
        self.info.is_empty()
    }

    /// Every device, by id.
    pub fn devices(&self) -> impl Iterator<Item = &DeviceInfo> {
        self.info.values()
    }

    /// One device's `device-info`.
    pub fn info(&self, id: &DeviceId) -> Option<&DeviceInfo> {
        self.info.get(id)
    }

    /// Server time of a device's last heartbeat.
    pub fn last_seen(&self, id: &DeviceId) -> Option<Timestamp> {
        self.heartbeats.get(id).copied()
    }

    /// What a device reports per deployment.
    pub fn states(&self, id: &DeviceId) -> Option<&BTreeMap<DeploymentName, DeploymentState>> {
        self.states.get(id)
    }

    /// The row of the devices page.
    pub fn summary(&self, info: &DeviceInfo, liveness: &Liveness) -> DeviceSummary {
        let id = &info.device_id;
        let last_seen = self.last_seen(id);
        let mut counts = PhaseCounts::default();
        for state in self.states.get(id).into_iter().flat_map(BTreeMap::values) {
            counts.add(state.phase);
        }
        DeviceSummary {
            id: id.clone(),
            labels: info.labels.clone(),
            online: liveness.online(last_seen),
            last_seen,
            blacklisted: liveness.blacklisted.contains(id.as_str()),
            agent_version: info.agent_version.as_str().to_owned(),
            arch: info.inventory.arch.clone(),
            deployments: counts,
        }
    }

    /// One page of the devices matching `query`.
    pub fn list(&self, query: &DeviceQuery, liveness: &Liveness) -> DevicePage {
        let rows = self.info.values().map(|info| ViewRow {
            view: self,
            info,
            liveness,
        });
        DevicePage::of(device_list::select(rows, query), |row| {
            self.summary(row.info, liveness)
        })
    }

    /// The overview's device counts and the first offline devices (deployment fields are
    /// left empty for the caller).
    pub fn overview(&self, liveness: &Liveness) -> Overview {
        let mut overview = Overview {
            devices_total: self.info.len(),
            ..Overview::default()
        };
        for info in self.info.values() {
            if liveness.blacklisted.contains(info.device_id.as_str()) {
                overview.devices_blacklisted += 1;
            }
            if liveness.online(self.last_seen(&info.device_id)) {
                overview.devices_online += 1;
            } else {
                overview.offline_total += 1;
                if overview.offline.len() < OVERVIEW_OFFLINE_LIMIT {
                    overview.offline.push(self.summary(info, liveness));
                }
            }
        }
        overview
    }

    /// Folds one event of `bucket`'s watch into the view. Unreadable values are skipped
    /// (the operator reports them; the dashboard shows what it can read).
    pub fn apply(&mut self, bucket: &str, event: KvEvent) {
        match bucket {
            "device-info" => match fleet::decode_info(event) {
                InfoEvent::Put(info) => {
                    self.info.insert(info.device_id.clone(), *info);
                }
                InfoEvent::Delete(device) => {
                    self.info.remove(&device);
                }
                InfoEvent::Rejected { key, reason } => {
                    tracing::debug!(key, reason, "dashboard keeps the previous device-info")
                }
                InfoEvent::CaughtUp | InfoEvent::Foreign(_) => {}
            },
            "device-state" => match fleet::decode_state(event) {
                StateEvent::Put { key, state } => {
                    self.states
                        .entry(key.device)
                        .or_default()
                        .insert(key.deployment, *state);
                }
                StateEvent::Delete(key) => {
                    if let Some(states) = self.states.get_mut(&key.device) {
                        states.remove(&key.deployment);
                    }
                }
                _ => {}
            },
            "device-heartbeat" => match fleet::decode_heartbeat(event) {
                HeartbeatEvent::Beat { device, at } => {
                    self.heartbeats.insert(device, at);
                }
                HeartbeatEvent::Gone(device) => {
                    self.heartbeats.remove(&device);
                }
                HeartbeatEvent::CaughtUp | HeartbeatEvent::Foreign(_) => {}
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use harmony_fleet_contracts::device::{AgentVersion, Inventory};
    use harmony_fleet_contracts::keys;

    use super::*;
    use crate::service::StatusFilter;

    fn put(view: &mut FleetView, bucket: &str, key: String, value: Vec<u8>, at: Timestamp) {
        view.apply(
            bucket,
            KvEvent::Put {
                key,
                value: value.into(),
                at,
            },
        );
    }

    fn device(view: &mut FleetView, i: usize, seen: Option<Timestamp>) -> DeviceId {
        let id = DeviceId::new(format!("dev-{i:03}")).expect("id");
        let info = DeviceInfo {
            device_id: id.clone(),
            labels: [("site".to_owned(), format!("s{}", i % 2))].into(),
            inventory: Inventory {
                hostname: id.to_string(),
                arch: "aarch64".into(),
                os: "linux".into(),
                os_release: None,
                kernel_version: None,
                cpu_count: 4,
                memory_bytes: 1 << 30,
            },
            agent_version: AgentVersion::new("0.1.0").expect("version"),
            boot_time: None,
            observed_at: Timestamp::UNIX_EPOCH,
        };
        let body = serde_json::to_vec(&info).expect("json");
        put(
            view,
            "device-info",
            keys::info_key(&id),
            body,
            Timestamp::UNIX_EPOCH,
        );
        if let Some(at) = seen {
            put(
                view,
                "device-heartbeat",
                keys::heartbeat_key(&id),
                b"{}".to_vec(),
                at,
            );
        }
        id
    }

    #[test]
    fn counts_and_lists_read_liveness_of_the_request() {
        let now = Timestamp::now();
        let mut view = FleetView::default();
        let mut ids = Vec::new();
        for i in 0..30 {
            // Every third device never sent a heartbeat, so it is offline.
            ids.push(device(&mut view, i, (i % 3 != 0).then_some(now)));
        }
        let state = DeploymentState::new(Phase::Failed, now);
        let key = keys::state_key(&ids[1], &"web".parse().expect("name"));
        put(
            &mut view,
            "device-state",
            key,
            serde_json::to_vec(&state).expect("json"),
            now,
        );
        let liveness = Liveness {
            now,
            heartbeat_timeout: std::time::Duration::from_secs(90),
            blacklisted: [ids[2].to_string()].into(),
        };
        let o = view.overview(&liveness);
        assert_eq!(
            (
                o.devices_total,
                o.devices_online,
                o.offline_total,
                o.devices_blacklisted
            ),
            (30, 20, 10, 1)
        );
        assert_eq!(o.offline.len(), 10);
        let page = view.list(
            &DeviceQuery {
                status: Some(StatusFilter::Failing),
                ..DeviceQuery::default()
            },
            &liveness,
        );
        assert_eq!(page.devices.len(), 1);
        assert_eq!(page.devices[0].deployments.failed, 1);
        let page = view.list(
            &DeviceQuery {
                per_page: 7,
                page: 2,
                status: Some(StatusFilter::Online),
                ..DeviceQuery::default()
            },
            &liveness,
        );
        assert_eq!(
            (page.total_matched, page.pages, page.devices.len()),
            (20, 3, 7)
        );
        assert!(page.devices.iter().all(|d| d.online));
        // An hour later every device is offline.
        let later = Liveness {
            now: now + jiff::SignedDuration::from_hours(1),
            ..liveness
        };
        assert_eq!(view.overview(&later).devices_online, 0);
    }
}

//! The device registry: keeps one `Device` resource per device in step with `device-info`
//! (labels, inventory) and with liveness (agent version, last heartbeat, online).
//!
//! The reconcile loop sends [`DeviceUpdate`]s; this task coalesces them per device (latest
//! wins), compares with what it last wrote (seeded from a LIST at start, so a restart writes
//! nothing that is already there) and writes by server-side apply with bounded concurrency.
//! `lastHeartbeat` of a device that stays online is refreshed as [`refresh`] decides: as
//! often as wanted on a small fleet (`LAST SEEN` shows seconds), within a write budget on a
//! large one; heartbeats never become one write each; `online` flips are written at once.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use futures::{StreamExt, stream};
use harmony_fleet_contracts::ids::DeviceId;
use jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;
use tokio::sync::mpsc;

use harmony_fleet_contracts::device::PROTECTED_LABEL_PREFIXES;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use crate::crd::device::{Device, DeviceStatus, Inventory, LABELS_ACCEPTED};
use crate::crd::{FIELD_MANAGER, GROUP};
use crate::metrics::Metrics;

pub mod refresh;

pub use refresh::{RefreshBudget, refresh_interval};

/// What the reconcile loop tells the registry.
#[derive(Clone, Debug, PartialEq)]
pub enum DeviceUpdate {
    /// `device-info` changed.
    Info {
        /// The device.
        id: DeviceId,
        /// The labels the operator applies: the reported ones it accepted, minus keys someone
        /// else set on the `Device` ([`crate::labels::to_apply`]).
        labels: BTreeMap<String, String>,
        /// Reported label keys ignored (protected prefixes).
        ignored_labels: Vec<String>,
        /// Its inventory.
        inventory: Inventory,
        /// Its agent version.
        agent_version: String,
    },
    /// Someone else's labels on the `Device` changed: the labels the operator applies now.
    Labels {
        /// The device.
        id: DeviceId,
        /// As in [`DeviceUpdate::Info`].
        labels: BTreeMap<String, String>,
    },
    /// A heartbeat arrived, or the device went offline.
    Liveness {
        /// The device.
        id: DeviceId,
        /// Whether the device is online.
        online: bool,
        /// Server time of its last heartbeat.
        last_heartbeat: Option<Timestamp>,
    },
    /// `device-info` was deleted (by the device itself: only agents write it). The `Device`
    /// stays, shown offline: only an admin removes a `Device` (with it, e.g., its blacklist).
    Removed {
        /// The device.
        id: DeviceId,
    },
}

/// What the registry last wrote for one device.
#[derive(Clone, Debug, Default, PartialEq)]
struct Written {
    exists: bool,
    labels: BTreeMap<String, String>,
    inventory: Inventory,
    status: DeviceStatus,
}

/// What `device-info` said, as the registry writes it.
#[derive(Clone, Debug)]
struct InfoUpdate {
    labels: BTreeMap<String, String>,
    ignored_labels: Vec<String>,
    inventory: Inventory,
    agent_version: String,
    /// When it was queued (the condition's transition time, if it changes).
    at: Timestamp,
}

/// Work queued for one device.
#[derive(Clone, Debug, Default)]
struct Pending {
    info: Option<InfoUpdate>,
    /// Labels to apply, when only someone else's labels changed.
    labels: Option<BTreeMap<String, String>>,
    liveness: Option<(bool, Option<Timestamp>)>,
    removed: bool,
}

/// Spawns the registry task; returns the sender the reconcile loop uses. Online/offline
/// flips it writes become Events on the `Device` through `events`.
pub fn spawn(
    client: kube::Client,
    metrics: Metrics,
    policy: RefreshPolicy,
    events: crate::events::Sender,
) -> (
    mpsc::UnboundedSender<DeviceUpdate>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(Api::all(client), metrics, policy, rx, events));
    (tx, task)
}

/// How often `lastHeartbeat` is refreshed ([`refresh`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RefreshPolicy {
    /// `--last-seen-refresh-secs`: the interval wanted.
    pub wanted: Duration,
    /// `--device-writes-per-sec`: refreshes a second, at most.
    pub per_sec: u32,
}

async fn run(
    api: Api<Device>,
    metrics: Metrics,
    policy: RefreshPolicy,
    mut rx: mpsc::UnboundedReceiver<DeviceUpdate>,
    events: crate::events::Sender,
) {
    let mut written = seed(&api).await;
    let mut budget = RefreshBudget::new(policy.per_sec, std::time::Instant::now());
    let mut pending: HashMap<DeviceId, Pending> = HashMap::new();
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(update) => queue(&mut pending, update),
                None => return,
            }
        }
        while let Ok(update) = rx.try_recv() {
            queue(&mut pending, update);
        }
        let batch: Vec<(DeviceId, Pending)> = pending.drain().collect();
        let refresh = refresh_interval(written.len(), policy.wanted, policy.per_sec);
        let now = std::time::Instant::now();
        let work: Vec<(DeviceId, Pending, Written)> = batch
            .into_iter()
            .filter_map(|(id, p)| {
                let before = written.get(&id).cloned().unwrap_or_default();
                let after = plan(&before, &p, refresh)?;
                let refresh_only = only_refreshes(&before, &after);
                tracing::trace!(device = %id, created = !before.exists, refresh_only, online = after.status.online, "Device write planned");
                // Over the budget a refresh is skipped: the next heartbeat asks again.
                (!refresh_only || budget.take(now)).then_some((id, p, after))
            })
            .collect();
        let results: Vec<(DeviceId, Pending, Option<Written>)> = stream::iter(work)
            .map(|(id, p, after)| {
                let api = api.clone();
                let metrics = metrics.clone();
                let before = written.get(&id).cloned().unwrap_or_default();
                async move {
                    let ok = write(&api, &metrics, &id, &before, &after).await;
                    (id, p, ok.then_some(after))
                }
            })
            .buffer_unordered(16)
            .collect()
            .await;
        let mut failed = false;
        for (id, p, after) in results {
            match after {
                Some(after) => {
                    let before = written
                        .get(&id)
                        .filter(|w| w.exists)
                        .map(|w| w.status.online);
                    if let Some(event) = crate::events::liveness(before, after.status.online) {
                        let _ = events
                            .send((crate::events::Regarding::Device(id.clone()), vec![event]));
                    }
                    written.insert(id, after);
                }
                None => {
                    failed = true;
                    pending.entry(id).or_insert(p);
                }
            }
        }
        if failed {
            // Give the API server a moment before retrying the failed writes.
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// Lists existing `Device` resources so a restart does not rewrite them.
async fn seed(api: &Api<Device>) -> HashMap<DeviceId, Written> {
    let mut out = HashMap::new();
    let mut params = ListParams::default().limit(500);
    loop {
        let list = match api.list(&params).await {
            Ok(list) => list,
            Err(e) => {
                tracing::warn!(error = %e, "listing Device resources failed; every device will be re-applied");
                return out;
            }
        };
        for device in &list.items {
            let Some(id) = device.metadata.name.as_deref().and_then(|n| n.parse().ok()) else {
                continue;
            };
            out.insert(
                id,
                Written {
                    exists: true,
                    // Only what the operator applied: labels people set are not ours, and
                    // counting them would re-apply every such device at each start.
                    labels: owned_labels(&device.metadata),
                    inventory: device.spec.inventory.clone(),
                    // `enrollment` belongs to the identity service (its own field manager):
                    // the registry never applies it.
                    status: DeviceStatus {
                        enrollment: None,
                        ..device.status.clone().unwrap_or_default()
                    },
                },
            );
        }
        match list.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return out,
        }
    }
}

/// The labels of `meta` that no one but the operator set ([`crate::labels::set_by_others`]).
fn owned_labels(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> BTreeMap<String, String> {
    let others = crate::labels::set_by_others(meta, FIELD_MANAGER);
    let mut labels = meta.labels.clone().unwrap_or_default();
    labels.retain(|k, _| !others.contains_key(k));
    labels
}

fn queue(pending: &mut HashMap<DeviceId, Pending>, update: DeviceUpdate) {
    match update {
        DeviceUpdate::Info {
            id,
            labels,
            ignored_labels,
            inventory,
            agent_version,
        } => {
            let p = pending.entry(id).or_default();
            p.removed = false;
            p.labels = None;
            p.info = Some(InfoUpdate {
                labels,
                ignored_labels,
                inventory,
                agent_version,
                at: Timestamp::now(),
            });
        }
        DeviceUpdate::Labels { id, labels } => {
            let p = pending.entry(id).or_default();
            p.labels = Some(labels);
        }
        DeviceUpdate::Liveness {
            id,
            online,
            last_heartbeat,
        } => {
            let p = pending.entry(id).or_default();
            p.liveness = Some((online, last_heartbeat));
        }
        DeviceUpdate::Removed { id } => {
            pending.insert(
                id,
                Pending {
                    removed: true,
                    ..Pending::default()
                },
            );
        }
    }
}

/// What to write for a device, or `None` when nothing changes (pure).
fn plan(before: &Written, p: &Pending, last_seen_refresh: Duration) -> Option<Written> {
    if p.removed {
        // A device cannot remove its own resource (and lift its blacklist annotation with
        // it) by deleting its info: it only goes offline.
        if !before.exists {
            return None;
        }
        let mut after = before.clone();
        after.status.online = false;
        return (after != *before).then_some(after);
    }
    let mut after = before.clone();
    if let Some(info) = &p.info {
        after.exists = true;
        after.labels = info.labels.clone();
        after.inventory = info.inventory.clone();
        after.status.agent_version = Some(info.agent_version.clone());
        let condition = labels_condition(&info.ignored_labels, &before.status.conditions, info.at);
        after.status.conditions = vec![condition];
    }
    if let Some(labels) = &p.labels
        && after.exists
    {
        after.labels = labels.clone();
    }
    if !after.exists {
        // Liveness of a device without device-info: nothing to attach it to yet.
        return None;
    }
    if let Some((online, last)) = p.liveness {
        after.status.online = online;
        let stale = match (
            before
                .status
                .last_heartbeat
                .as_deref()
                .and_then(|s| s.parse::<Timestamp>().ok()),
            last,
        ) {
            (_, None) => false,
            (None, Some(_)) => true,
            (Some(old), Some(new)) => {
                new.duration_since(old).unsigned_abs() >= last_seen_refresh
                    || online != before.status.online
            }
        };
        if stale && let Some(last) = last {
            after.status.last_heartbeat = Some(last.to_string());
        }
    }
    (after != *before).then_some(after)
}

/// Whether `after` only moves `lastHeartbeat` forward (what the refresh budget bounds).
fn only_refreshes(before: &Written, after: &Written) -> bool {
    before.status.last_heartbeat != after.status.last_heartbeat
        && Written {
            status: DeviceStatus {
                last_heartbeat: before.status.last_heartbeat.clone(),
                ..after.status.clone()
            },
            ..after.clone()
        } == *before
}

/// `LabelsAccepted`: `True`, or `False` naming the ignored keys and how to set them. Keeps
/// the previous transition time while the status stays the same.
fn labels_condition(ignored: &[String], before: &[Condition], at: Timestamp) -> Condition {
    let (status, reason, message) = if ignored.is_empty() {
        (
            "True",
            "Accepted",
            "every reported label is used for targeting".to_owned(),
        )
    } else {
        (
            "False",
            "ProtectedPrefix",
            format!(
                "ignored reported label(s) {}: devices may not claim keys under {}; set them with `kubectl label fleetdev <device> <key>=<value>`",
                ignored.join(", "),
                PROTECTED_LABEL_PREFIXES.join(", ")
            ),
        )
    };
    let since = before
        .iter()
        .find(|c| c.type_ == LABELS_ACCEPTED && c.status == status)
        .map(|c| c.last_transition_time.clone())
        .unwrap_or(Time(at));
    Condition {
        type_: LABELS_ACCEPTED.to_owned(),
        status: status.to_owned(),
        reason: reason.to_owned(),
        message,
        last_transition_time: since,
        observed_generation: None,
    }
}

async fn write(
    api: &Api<Device>,
    metrics: &Metrics,
    id: &DeviceId,
    before: &Written,
    after: &Written,
) -> bool {
    let name = id.as_str();
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let api_version = format!("{GROUP}/v1alpha1");
    if !before.exists || before.labels != after.labels || before.inventory != after.inventory {
        let body = json!({
            "apiVersion": api_version,
            "kind": "Device",
            "metadata": { "name": name, "labels": after.labels },
            "spec": { "inventory": after.inventory },
        });
        if let Err(e) = api.patch(name, &params, &Patch::Apply(body)).await {
            metrics.error("device_apply");
            tracing::warn!(device = name, error = %e, "applying Device failed");
            metrics.status_patch("device", false);
            return false;
        }
    }
    if !before.exists || before.status != after.status {
        let body = json!({
            "apiVersion": api_version,
            "kind": "Device",
            "status": after.status,
        });
        if let Err(e) = api.patch_status(name, &params, &Patch::Apply(body)).await {
            metrics.error("device_apply");
            tracing::warn!(device = name, error = %e, "applying Device status failed");
            metrics.status_patch("device", false);
            return false;
        }
    }
    metrics.status_patch("device", true);
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).expect("valid")
    }

    fn existing(online: bool, last: i64) -> Written {
        Written {
            exists: true,
            labels: BTreeMap::new(),
            inventory: Inventory::default(),
            status: DeviceStatus {
                agent_version: Some("1.0.0".into()),
                last_heartbeat: Some(ts(last).to_string()),
                online,
                conditions: Vec::new(),
                enrollment: None,
            },
        }
    }

    fn info(labels: &[(&str, &str)], ignored: &[&str]) -> Pending {
        Pending {
            info: Some(InfoUpdate {
                labels: labels
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                    .collect(),
                ignored_labels: ignored.iter().map(|k| (*k).to_owned()).collect(),
                inventory: Inventory::default(),
                agent_version: "1.0.0".into(),
                at: ts(2000),
            }),
            ..Pending::default()
        }
    }

    #[test]
    fn ignored_labels_are_named_in_a_condition_that_keeps_its_transition_time() {
        let after = plan(
            &Written::default(),
            &info(&[("site", "a")], &["fleet.nationtech.io/zone"]),
            REFRESH,
        )
        .expect("write");
        let c = &after.status.conditions[0];
        assert_eq!(
            (c.type_.as_str(), c.status.as_str()),
            ("LabelsAccepted", "False")
        );
        assert!(
            c.message.contains("fleet.nationtech.io/zone"),
            "{}",
            c.message
        );
        assert!(c.message.contains("kubectl label"), "{}", c.message);
        // The same report later: nothing to write.
        let mut again = info(&[("site", "a")], &["fleet.nationtech.io/zone"]);
        if let Some(i) = again.info.as_mut() {
            i.at = ts(3000);
        }
        assert_eq!(plan(&after, &again, REFRESH), None);
        // Fixed on the device: True, with a new transition time.
        let fixed = plan(&after, &info(&[("site", "a")], &[]), REFRESH).expect("write");
        assert_eq!(fixed.status.conditions[0].status, "True");
    }

    #[test]
    fn someone_elses_labels_change_only_the_applied_labels() {
        let before =
            plan(&Written::default(), &info(&[("site", "a")], &[]), REFRESH).expect("write");
        let p = Pending {
            labels: Some(BTreeMap::new()),
            ..Pending::default()
        };
        let after = plan(&before, &p, REFRESH).expect("write");
        assert!(after.labels.is_empty());
        assert_eq!(after.status, before.status);
        // Before any device-info, there is nothing to label.
        assert_eq!(plan(&Written::default(), &p, REFRESH), None);
    }

    fn liveness(online: bool, last: i64) -> Pending {
        Pending {
            liveness: Some((online, Some(ts(last)))),
            ..Pending::default()
        }
    }

    const REFRESH: Duration = Duration::from_secs(300);

    #[test]
    fn only_a_moved_last_heartbeat_counts_against_the_refresh_budget() {
        let before = existing(true, 1000);
        let refreshed = plan(&before, &liveness(true, 1300), REFRESH).expect("write");
        assert!(only_refreshes(&before, &refreshed));
        let offline = plan(&before, &liveness(false, 1300), REFRESH).expect("write");
        assert!(
            !only_refreshes(&before, &offline),
            "a flip is written at once"
        );
        let relabelled = plan(&before, &info(&[("site", "b")], &[]), REFRESH).expect("write");
        assert!(!only_refreshes(&before, &relabelled));
    }

    #[test]
    fn frequent_heartbeats_of_an_online_device_write_nothing() {
        assert_eq!(
            plan(&existing(true, 1000), &liveness(true, 1030), REFRESH),
            None
        );
    }

    #[test]
    fn last_seen_is_refreshed_after_the_interval() {
        let after = plan(&existing(true, 1000), &liveness(true, 1300), REFRESH).expect("write");
        assert_eq!(after.status.last_heartbeat, Some(ts(1300).to_string()));
    }

    #[test]
    fn going_offline_is_written_at_once() {
        let after = plan(&existing(true, 1000), &liveness(false, 1000), REFRESH).expect("write");
        assert!(!after.status.online);
    }

    #[test]
    fn liveness_before_info_is_not_written() {
        assert_eq!(plan(&Written::default(), &liveness(true, 1), REFRESH), None);
    }

    #[test]
    fn a_device_deleting_its_info_goes_offline_and_keeps_its_resource() {
        let p = Pending {
            removed: true,
            ..Pending::default()
        };
        assert_eq!(plan(&Written::default(), &p, REFRESH), None);
        let after = plan(&existing(true, 1), &p, REFRESH).expect("write");
        assert!(after.exists, "only an admin removes a Device");
        assert!(!after.status.online);
        assert_eq!(plan(&existing(false, 1), &p, REFRESH), None);
    }
}

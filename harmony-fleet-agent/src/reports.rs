//! What the agent writes back to NATS: `device-info` (at start, on every reconnect and when it
//! changes), `device-state` per deployment (on every phase change), and the heartbeat (on an
//! interval).
//!
//! The reporter keeps the latest state of every deployment and a "dirty" mark per key, so
//! nothing is lost while NATS is unreachable: when the connection comes back (a new link
//! generation) everything is published again — the other half of the two-way re-sync.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use bytes::Bytes;
use harmony_fleet_contracts::buckets::{DEVICE_HEARTBEAT, DEVICE_INFO, DEVICE_STATE};
use harmony_fleet_contracts::state::DeploymentState;
use harmony_fleet_contracts::{
    AgentVersion, DeploymentName, DeviceId, DeviceInfo, Heartbeat, keys,
};
use jiff::Timestamp;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::connection::Connection;
use crate::inventory;

/// How often unpublished reports are retried while connected.
const RETRY_INTERVAL: Duration = Duration::from_secs(2);

/// A report from a deployment worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Report {
    /// The deployment's state changed: publish it.
    State {
        /// Which deployment.
        deployment: DeploymentName,
        /// Its new state.
        state: DeploymentState,
    },
    /// The deployment was torn down: publish the `Removed` state, then delete the key.
    Removed {
        /// Which deployment.
        deployment: DeploymentName,
        /// The `Removed` state.
        state: DeploymentState,
    },
}

/// Static facts the reporter needs.
#[derive(Debug, Clone)]
pub struct ReporterSettings {
    /// This device.
    pub device: DeviceId,
    /// Labels from the config.
    pub labels: BTreeMap<String, String>,
    /// This agent's version.
    pub agent_version: AgentVersion,
    /// Heartbeat interval.
    pub heartbeat_interval: Duration,
    /// Where the backlog of unwritten state reports is shown.
    pub metrics: crate::metrics::Metrics,
    /// Notified after every heartbeat the server acknowledged (it confirms a self-upgrade,
    /// see [`crate::upgrade::confirm`]).
    pub heartbeat_published: Option<std::sync::Arc<tokio::sync::Notify>>,
}

/// One deployment's latest report and whether it still has to be written.
#[derive(Debug)]
struct Slot {
    state: DeploymentState,
    removed: bool,
    dirty: bool,
}

/// Build this device's info record now.
pub fn device_info(settings: &ReporterSettings) -> DeviceInfo {
    DeviceInfo {
        device_id: settings.device.clone(),
        labels: settings.labels.clone(),
        inventory: inventory::read_inventory(),
        agent_version: settings.agent_version.clone(),
        boot_time: inventory::boot_time(),
        observed_at: Timestamp::now(),
    }
}

/// Whether two infos differ in anything but the observation time.
fn info_changed(old: &DeviceInfo, new: &DeviceInfo) -> bool {
    old.labels != new.labels
        || old.inventory != new.inventory
        || old.agent_version != new.agent_version
        || old.boot_time != new.boot_time
}

/// Run the reporter until `shutdown`.
pub async fn run(
    connection: Connection,
    settings: ReporterSettings,
    mut reports: mpsc::UnboundedReceiver<Report>,
    shutdown: CancellationToken,
) {
    let mut link = connection.link();
    let mut slots: BTreeMap<DeploymentName, Slot> = BTreeMap::new();
    let mut published_info: Option<DeviceInfo> = None;
    let mut info_dirty = true;
    let mut heartbeat_due = true;
    let mut generation = 0;
    let mut heartbeat = tokio::time::interval(settings.heartbeat_interval);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retry = tokio::time::interval(RETRY_INTERVAL);
    retry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            report = reports.recv() => match report {
                Some(report) => absorb(&mut slots, report),
                None => return,
            },
            changed = link.changed() => {
                if changed.is_err() {
                    return;
                }
                let now = *link.borrow_and_update();
                if now.connected && now.generation != generation {
                    generation = now.generation;
                    tracing::info!("connected: publishing device info, states and heartbeat");
                    info_dirty = true;
                    heartbeat_due = true;
                    for slot in slots.values_mut() {
                        slot.dirty = true;
                    }
                }
            }
            _ = heartbeat.tick() => {
                heartbeat_due = true;
                let fresh = device_info(&settings);
                if published_info.as_ref().is_none_or(|old| info_changed(old, &fresh)) {
                    info_dirty = true;
                }
            }
            _ = retry.tick() => {}
        }
        // Drain whatever else is queued so a burst is published once.
        while let Ok(report) = reports.try_recv() {
            absorb(&mut slots, report);
        }
        settings
            .metrics
            .set_state_backlog(slots.values().filter(|s| s.dirty).count());
        if !link.borrow().connected {
            continue;
        }
        // A publish waits for the server's ack: it must not hold up a shutdown.
        let publish = async {
            if info_dirty {
                let info = device_info(&settings);
                match publish_json(
                    &connection,
                    DEVICE_INFO,
                    &keys::info_key(&settings.device),
                    &info,
                )
                .await
                {
                    Ok(()) => {
                        info_dirty = false;
                        published_info = Some(info);
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot publish device-info"),
                }
            }
            if heartbeat_due {
                let beat = Heartbeat::new(Timestamp::now(), settings.agent_version.clone());
                match publish_json(
                    &connection,
                    DEVICE_HEARTBEAT,
                    &keys::heartbeat_key(&settings.device),
                    &beat,
                )
                .await
                {
                    Ok(()) => {
                        heartbeat_due = false;
                        if let Some(published) = &settings.heartbeat_published {
                            published.notify_one();
                        }
                    }
                    Err(err) => tracing::warn!(error = %err, "cannot publish heartbeat"),
                }
            }
            flush_states(&connection, &settings.device, &mut slots).await;
        };
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = publish => {}
        }
        settings
            .metrics
            .set_state_backlog(slots.values().filter(|s| s.dirty).count());
    }
}

fn absorb(slots: &mut BTreeMap<DeploymentName, Slot>, report: Report) {
    let (deployment, state, removed) = match report {
        Report::State { deployment, state } => (deployment, state, false),
        Report::Removed { deployment, state } => (deployment, state, true),
    };
    slots.insert(
        deployment,
        Slot {
            state,
            removed,
            dirty: true,
        },
    );
}

async fn flush_states(
    connection: &Connection,
    device: &DeviceId,
    slots: &mut BTreeMap<DeploymentName, Slot>,
) {
    let mut forget = BTreeSet::new();
    for (deployment, slot) in slots.iter_mut().filter(|(_, s)| s.dirty) {
        let key = keys::state_key(device, deployment);
        let written = publish_json(connection, DEVICE_STATE, &key, &slot.state).await;
        let written = match written {
            Ok(()) if slot.removed => connection
                .kv_delete(DEVICE_STATE, &key)
                .await
                .map_err(ReportError::from),
            other => other,
        };
        match written {
            Ok(()) => {
                slot.dirty = false;
                if slot.removed {
                    forget.insert(deployment.clone());
                }
            }
            Err(err) => {
                tracing::warn!(%deployment, error = %err, "cannot publish device-state; will retry");
                // The connection is probably gone; the rest waits for the next attempt.
                break;
            }
        }
    }
    for deployment in forget {
        slots.remove(&deployment);
    }
}

async fn publish_json<T: serde::Serialize>(
    connection: &Connection,
    bucket: &str,
    key: &str,
    value: &T,
) -> Result<(), ReportError> {
    let bytes = serde_json::to_vec(value)?;
    connection.kv_put(bucket, key, Bytes::from(bytes)).await?;
    Ok(())
}

/// Why a report was not written.
#[derive(Debug, thiserror::Error)]
enum ReportError {
    /// The value did not serialise (a bug: reports always do).
    #[error("encoding the report: {0}")]
    Encode(#[from] serde_json::Error),
    /// The write failed.
    #[error(transparent)]
    Publish(#[from] crate::connection::PublishError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> ReporterSettings {
        ReporterSettings {
            device: "dev-1".parse().expect("device"),
            labels: BTreeMap::from([("site".into(), "plant-3".into())]),
            agent_version: AgentVersion::lossy("0.1.0"),
            heartbeat_interval: Duration::from_secs(30),
            metrics: crate::metrics::Metrics::new(),
            heartbeat_published: None,
        }
    }

    #[test]
    fn info_change_ignores_observation_time() {
        let a = device_info(&settings());
        let mut b = a.clone();
        b.observed_at = Timestamp::UNIX_EPOCH;
        assert!(!info_changed(&a, &b));
        b.labels.insert("rack".into(), "7".into());
        assert!(info_changed(&a, &b));
    }

    #[test]
    fn heartbeat_stays_under_the_contract_limit() {
        let beat = Heartbeat::new(Timestamp::now(), settings().agent_version);
        let bytes = serde_json::to_vec(&beat).expect("json");
        assert!(bytes.len() < harmony_fleet_contracts::heartbeat::MAX_SERIALIZED_LEN);
    }

    #[test]
    fn later_report_replaces_earlier_one() {
        let mut slots = BTreeMap::new();
        let name: DeploymentName = "web".parse().expect("name");
        let state = |phase| DeploymentState::new(phase, Timestamp::UNIX_EPOCH);
        absorb(
            &mut slots,
            Report::State {
                deployment: name.clone(),
                state: state(harmony_fleet_contracts::Phase::Pending),
            },
        );
        absorb(
            &mut slots,
            Report::Removed {
                deployment: name.clone(),
                state: state(harmony_fleet_contracts::Phase::Removed),
            },
        );
        assert_eq!(slots.len(), 1);
        assert!(slots[&name].removed && slots[&name].dirty);
    }
}

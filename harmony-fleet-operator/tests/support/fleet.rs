//! Devices as an agent shows them in the buckets (info and heartbeat), for the test binaries
//! that play the agents' side. Included with `#[path]` where used.

use anyhow::Result;
use harmony_fleet_contracts::device::{AgentVersion, DeviceInfo, Inventory};
use harmony_fleet_contracts::heartbeat::Heartbeat;
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::keys;
use harmony_fleet_operator::kv::FleetKv;
use jiff::Timestamp;

/// A heartbeat of `device`, now.
pub async fn beat(kv: &FleetKv, device: &DeviceId) -> Result<()> {
    let beat = Heartbeat::new(Timestamp::now(), AgentVersion::new("0.1.0")?);
    kv.heartbeat
        .put(
            keys::heartbeat_key(device),
            serde_json::to_vec(&beat)?.into(),
        )
        .await?;
    Ok(())
}

/// `device`'s info labelled `site=<site>`, and a heartbeat.
pub async fn put_device(kv: &FleetKv, device: &DeviceId, site: &str) -> Result<()> {
    let info = DeviceInfo {
        device_id: device.clone(),
        labels: [("site".to_owned(), site.to_owned())].into(),
        inventory: Inventory {
            hostname: device.to_string(),
            arch: "aarch64".into(),
            os: "linux".into(),
            os_release: None,
            kernel_version: None,
            cpu_count: 4,
            memory_bytes: 8 << 30,
        },
        agent_version: AgentVersion::new("0.1.0")?,
        boot_time: None,
        observed_at: Timestamp::now(),
    };
    kv.info
        .put(keys::info_key(device), serde_json::to_vec(&info)?.into())
        .await?;
    beat(kv, device).await
}

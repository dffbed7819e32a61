//! The agent's footprint: the real release `fleet-agent` binary's size on disk and its memory
//! once connected and idle (runtime off: no podman), against a real nats-server.

use std::path::{Path, PathBuf};
use std::time::Duration;

use harmony::local::{LocalNats, NatsOptions, ProcessSpec, SupervisedProcess};
use harmony_fleet_contracts::{DeviceId, keys};
use harmony_fleet_operator::kv::FleetKv;

use crate::error::{Error, Result};
use crate::procstat;
use crate::report::{Table, num};

/// Column names.
pub const COLUMNS: [&str; 6] = [
    "binary",
    "size MiB",
    "idle RSS MiB",
    "peak RSS MiB",
    "CPU s (start + 5 heartbeats)",
    "outcome",
];

/// Measures `binary`; fills `row` as it goes.
pub async fn run_one(binary: &Path, row: &mut [String]) -> Result<()> {
    let size = std::fs::metadata(binary)
        .map_err(|e| {
            Error::io(
                format!(
                    "reading {} (build it: cargo build --release -p harmony-fleet-agent)",
                    binary.display()
                ),
                e,
            )
        })?
        .len();
    row[1] = num(Some(size as f64 / (1024.0 * 1024.0)), 2);
    let nats = LocalNats::start(NatsOptions::default()).await?;
    let client = async_nats::connect(nats.url())
        .await
        .map_err(|e| Error::nats("connecting the bench client", e))?;
    let kv = FleetKv::open(client, true).await?;
    let dir = tempfile::tempdir().map_err(|e| Error::io("creating a temp dir", e))?;
    let device: DeviceId = "bench-agent-1"
        .parse()
        .map_err(|e| Error::Config(format!("device id: {e}")))?;
    let config = dir.path().join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "[agent]\ndevice_id = \"{device}\"\ndata_dir = \"{}\"\nruntime_enabled = false\nheartbeat_interval_secs = 1\n\n[nats]\nurls = [\"{}\"]\n\n[labels]\nsite = \"bench\"\n",
            dir.path().join("data").display(),
            nats.url()
        ),
    )
    .map_err(|e| Error::io("writing the agent config", e))?;
    let process = SupervisedProcess::spawn(
        ProcessSpec::new("fleet-agent (bench)", binary, dir.path().join("agent.log"))
            .arg("--config")
            .arg(&config)
            .env("RUST_LOG", "warn"),
    )?;
    // Idle = connected, info written, watch up, five heartbeats sent.
    let key = keys::heartbeat_key(&device);
    let first = std::cell::Cell::new(None::<u64>);
    crate::poll_until(
        "five heartbeats of the agent",
        Duration::from_secs(30),
        Duration::from_millis(100),
        || async {
            let revision = kv.heartbeat.entry(&key).await.ok()??.revision;
            let start = first.get().unwrap_or(revision);
            first.set(Some(start));
            (revision >= start + 5).then_some(())
        },
    )
    .await?;
    let s = procstat::sample(process.pid())?;
    row[2] = num(Some(s.rss_mib()), 2);
    row[3] = num(Some(s.peak_rss_mib()), 2);
    row[4] = num(Some(s.cpu_seconds), 2);
    drop(process);
    Ok(())
}

/// Measures the agent binary and writes `agent.csv`/`.md`.
pub async fn run(binary: &Path, out_dir: &Path) -> Result<Table> {
    let mut table = Table::new(&COLUMNS);
    let mut row = vec!["-".to_owned(); COLUMNS.len()];
    row[0] = binary.display().to_string();
    row[5] = match run_one(binary, &mut row).await {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("stopped: {e}"),
    };
    table.rows.push(row);
    println!("{}", table.markdown());
    table.write(out_dir, "agent")?;
    Ok(table)
}

/// Where `cargo build --release -p harmony-fleet-agent` puts the binary.
pub fn default_agent_binary() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("target"));
    target.join("release").join("fleet-agent")
}

//! The write budget: heartbeats of a large fleet (100k devices every 30 s ≈ 3.3k puts/s, state
//! written only on change, so heartbeats dominate) against one nats-server, with one
//! operator-like ordered watch reading the heartbeat bucket. Then the same server driven as
//! fast as it acknowledges: the ratio is the headroom. The load generator shares this
//! machine's cores with the server, so the saturated rate is a lower bound.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::StreamExt;
use harmony::local::LocalNats;

use crate::error::{Error, Result};
use crate::procstat;
use crate::report::{Table, num};
use crate::sim::{Fleet, SimConfig, WatchMode};
use crate::stats::Summary;

/// What to run.
#[derive(Clone, Debug)]
pub struct WriteOptions {
    /// Devices.
    pub devices: usize,
    /// Heartbeat interval.
    pub interval: Duration,
    /// Length of the steady-state window.
    pub window: Duration,
    /// Length of the saturation run.
    pub saturate: Duration,
    /// Devices per connection.
    pub devices_per_connection: usize,
    /// Where results go.
    pub out_dir: PathBuf,
}

/// Column names.
pub const COLUMNS: [&str; 16] = [
    "devices",
    "interval s",
    "connections",
    "target puts/s",
    "achieved puts/s",
    "watch deliveries/s",
    "ack p50 ms",
    "ack p99 ms",
    "nats CPU %",
    "nats RSS MiB",
    "saturated puts/s",
    "saturated nats CPU %",
    "saturated ack p99 ms",
    "headroom x",
    "nats peak MiB",
    "outcome",
];

/// Runs the write budget; fills `row` as it goes.
pub async fn run_one(opts: &WriteOptions, row: &mut [String]) -> Result<()> {
    let nats = LocalNats::start(crate::sim::nats_options(opts.devices)).await?;
    let pid = nats.pid().unwrap_or(0);
    let client = async_nats::connect(nats.url())
        .await
        .map_err(|e| Error::nats("connecting the bench client", e))?;
    let kv = crate::sim::fleet_buckets(client.clone(), opts.devices).await?;
    let mut config = SimConfig::new(nats.url(), opts.devices);
    config.devices_per_connection = opts.devices_per_connection;
    config.heartbeat_interval = Some(opts.interval);
    config.watch = WatchMode::Shared;
    let mut fleet = Fleet::start(config).await?;
    row[2] = fleet.connections().to_string();
    fleet.seed().await?;

    // The operator's reader of the heartbeat bucket.
    let delivered = Arc::new(AtomicU64::new(0));
    let counter = delivered.clone();
    let mut watch = kv
        .heartbeat
        .watch(">")
        .await
        .map_err(|e| Error::nats("watching device-heartbeat", e))?;
    let reader = tokio::spawn(async move {
        while let Some(entry) = watch.next().await {
            if entry.is_ok() {
                counter.fetch_add(1, Ordering::Relaxed);
            }
        }
    });

    let target = opts.devices as f64 / opts.interval.as_secs_f64();
    row[3] = num(Some(target), 0);
    fleet.start_heartbeats()?;
    // Let one tick of every connection pass before measuring (a warm-up window).
    tokio::time::sleep(Duration::from_secs(2)).await;
    fleet.tally().record_heartbeat_acks(true);
    let acked0 = fleet.tally().heartbeats_ok.load(Ordering::Relaxed);
    let seen0 = delivered.load(Ordering::Relaxed);
    let cpu0 = procstat::sample(pid)?;
    let t = Instant::now();
    tokio::time::sleep(opts.window).await; // a measurement window
    let elapsed = t.elapsed().as_secs_f64();
    let cpu1 = procstat::sample(pid)?;
    let acked = fleet.tally().heartbeats_ok.load(Ordering::Relaxed) - acked0;
    let seen = delivered.load(Ordering::Relaxed) - seen0;
    fleet.tally().record_heartbeat_acks(false);
    let s = Summary::of(&fleet.tally().heartbeat_acks());
    row[4] = num(Some(acked as f64 / elapsed), 0);
    row[5] = num(Some(seen as f64 / elapsed), 0);
    row[6] = num(Some(s.p50.as_secs_f64() * 1000.0), 1);
    row[7] = num(Some(s.p99.as_secs_f64() * 1000.0), 1);
    row[8] = num(
        Some(100.0 * (cpu1.cpu_seconds - cpu0.cpu_seconds) / elapsed),
        1,
    );
    row[9] = num(Some(cpu1.rss_mib()), 0);

    // Saturation.
    fleet.stop_heartbeats();
    let cpu0 = procstat::sample(pid)?;
    let t = Instant::now();
    let (acks, latencies) = fleet.saturate_heartbeats(opts.saturate).await?;
    let elapsed = t.elapsed().as_secs_f64();
    let cpu1 = procstat::sample(pid)?;
    let rate = acks as f64 / elapsed;
    row[10] = num(Some(rate), 0);
    row[11] = num(
        Some(100.0 * (cpu1.cpu_seconds - cpu0.cpu_seconds) / elapsed),
        1,
    );
    row[12] = num(Some(Summary::of(&latencies).p99.as_secs_f64() * 1000.0), 1);
    row[13] = num(Some(rate / target), 1);
    row[14] = num(Some(cpu1.peak_rss_mib()), 0);
    reader.abort();
    Ok(())
}

/// Runs the write budget and writes `writes.csv`/`.md`.
pub async fn run(opts: &WriteOptions) -> Result<Table> {
    let mut table = Table::new(&COLUMNS);
    let mut row = vec!["-".to_owned(); COLUMNS.len()];
    row[0] = opts.devices.to_string();
    row[1] = opts.interval.as_secs().to_string();
    row[15] = match run_one(opts, &mut row).await {
        Ok(()) => "ok".to_owned(),
        Err(e) => format!("stopped: {e}"),
    };
    table.rows.push(row);
    println!("{}", table.markdown());
    table.write(&opts.out_dir, "writes")?;
    Ok(table)
}

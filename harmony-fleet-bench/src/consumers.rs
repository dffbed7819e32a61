//! The consumer wall (MISSION.md §10), and what replaced it. For each device count, against a
//! fresh nats-server:
//!
//! 1. start one real agent delivery loop (`harmony_fleet_agent::watch::run`: change notices
//!    plus a listing of the per-device index, adr/0014; it used to be a JetStream consumer)
//!    per simulated device,
//!    many devices per connection, and time until every watch delivered its snapshot
//!    (`consumers` as the server counts them, from `/jsz`);
//! 2. measure the server's CPU while nothing changes (ordered consumers send idle
//!    heartbeats) and its memory;
//! 3. write desired-state changes for random devices at a steady rate and time each one from
//!    the write to the device's `device-state` report being acknowledged (p50/p99/max).
//!
//! The same steps run with [`WatchMode::Notify`] (change notice + direct get, no consumer).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use harmony::local::LocalNats;
use harmony::local::probe;
use harmony_fleet_contracts::canonical::ContentHash;
use harmony_fleet_contracts::notice::{self, DesiredIndex};
use harmony_fleet_contracts::{DeploymentName, DeviceId, keys};
use rand::seq::SliceRandom;

use crate::error::{Error, Result};
use crate::procstat;
use crate::report::{Table, num};
use crate::scale::score;
use crate::sim::{Fleet, SimConfig, WatchMode};
use crate::stats::Summary;

/// What to run.
#[derive(Clone, Debug)]
pub struct ConsumerOptions {
    /// Device counts.
    pub devices: Vec<usize>,
    /// Watch modes to compare.
    pub modes: Vec<WatchMode>,
    /// Devices per connection.
    pub devices_per_connection: usize,
    /// Desired-state changes written in the latency phase.
    pub changes: usize,
    /// Changes per second.
    pub rate: f64,
    /// Length of the idle CPU window.
    pub idle_window: Duration,
    /// Deadline for all watches to be ready (and for all changes to be answered).
    pub setup_timeout: Duration,
    /// After the changes, restart nats-server and time until every device listed again
    /// (the real agent's delivery only: [`WatchMode::PerDevice`]).
    pub restart: bool,
    /// Where results go.
    pub out_dir: PathBuf,
}

/// Column names.
pub const COLUMNS: [&str; 19] = [
    "mode",
    "devices",
    "connections",
    "watches ready",
    "server consumers",
    "setup s",
    "re-created",
    "nats CPU setup s",
    "nats idle CPU %",
    "nats CPU % at rate",
    "nats RSS MiB",
    "nats peak MiB",
    "changes",
    "p50 ms",
    "p99 ms",
    "outcome",
    "restart resync s",
    "restart nats CPU s",
    "restart nats peak MiB",
];

async fn jsz_consumers(monitor: SocketAddr) -> Option<u64> {
    let r = probe::http_get(monitor, "/jsz", Duration::from_secs(10))
        .await
        .ok()?;
    let v: serde_json::Value = serde_json::from_str(&r.body).ok()?;
    v.get("consumers")?.as_u64()
}

fn monitor_addr(nats: &LocalNats) -> Result<SocketAddr> {
    let url = nats.monitor_url();
    url.trim_start_matches("http://")
        .parse()
        .map_err(|e| Error::Config(format!("monitor URL {url}: {e}")))
}

/// Runs one (mode, devices) pair; fills `row` (cells by [`COLUMNS`]) as it goes.
pub async fn run_one(
    opts: &ConsumerOptions,
    mode: WatchMode,
    n: usize,
    row: &mut [String],
) -> Result<()> {
    let mut nats = LocalNats::start(crate::sim::nats_options(n)).await?;
    let pid = nats.pid().unwrap_or(0);
    let monitor = monitor_addr(&nats)?;
    let client = async_nats::connect(nats.url())
        .await
        .map_err(|e| Error::nats("connecting the bench client", e))?;
    let kv = crate::sim::fleet_buckets(client.clone(), n).await?;
    let desired = kv.desired.clone();

    let mut config = SimConfig::new(nats.url(), n);
    config.prefix = "w".to_owned();
    config.devices_per_connection = opts.devices_per_connection;
    config.heartbeat_interval = None;
    config.publish_info = false;
    config.answer_delay = Duration::ZERO;
    config.failure_rate = 0.0;
    config.watch = mode;
    if mode == WatchMode::PerDevice {
        // The operator gives every device an index (empty here) before the agents start.
        let empty = Bytes::from(DesiredIndex::default().to_bytes());
        let ids: Vec<_> = (0..n)
            .map(|i| crate::sim::device_id("w", i))
            .collect::<Result<_>>()?;
        futures::stream::iter(ids)
            .map(|id| {
                let (desired, empty) = (desired.clone(), empty.clone());
                async move { desired.put(notice::index_key(&id), empty).await }
            })
            .buffer_unordered(256)
            .try_collect::<Vec<_>>()
            .await
            .map_err(|e| Error::nats("writing the empty device indexes", e))?;
    }
    let before = procstat::sample(pid)?;
    let started = Instant::now();
    let fleet = Fleet::start(config).await?;
    row[2] = fleet.connections().to_string();
    let tally = fleet.tally().clone();
    let ready = crate::poll_until(
        &format!("{n} watches ready"),
        opts.setup_timeout,
        Duration::from_millis(100),
        || {
            let r = tally
                .watches_ready
                .load(std::sync::atomic::Ordering::Relaxed);
            async move { (r >= n).then_some(r) }
        },
    )
    .await;
    row[3] = tally
        .watches_ready
        .load(std::sync::atomic::Ordering::Relaxed)
        .to_string();
    row[4] = jsz_consumers(monitor)
        .await
        .map_or_else(|| "-".into(), |c| c.to_string());
    row[6] = tally
        .resyncs
        .load(std::sync::atomic::Ordering::Relaxed)
        .to_string();
    let after_setup = procstat::sample(pid)?;
    row[7] = num(Some(after_setup.cpu_seconds - before.cpu_seconds), 1);
    row[10] = num(Some(after_setup.rss_mib()), 0);
    row[11] = num(Some(after_setup.peak_rss_mib()), 0);
    ready?;
    row[5] = num(Some(started.elapsed().as_secs_f64()), 1);

    // Idle: nothing changes; measure the server's CPU over the window.
    let idle_start = procstat::sample(pid)?;
    let t = Instant::now();
    tokio::time::sleep(opts.idle_window).await; // a measurement window, not a synchronisation
    let idle_end = procstat::sample(pid)?;
    row[8] = num(
        Some(100.0 * (idle_end.cpu_seconds - idle_start.cpu_seconds) / t.elapsed().as_secs_f64()),
        1,
    );

    // Changes at a steady rate, each timed to its acknowledged report.
    let deployment: DeploymentName = "lat"
        .parse()
        .map_err(|e| Error::Config(format!("deployment name: {e}")))?;
    let ids: Vec<_> = (0..n)
        .map(|i| crate::sim::device_id("w", i))
        .collect::<Result<_>>()?;
    // Distinct devices in random order, so that no change overtakes another of the same key.
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut rand::rng());
    let change_start = procstat::sample(pid)?;
    let t = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / opts.rate.max(0.1)));
    for i in 0..opts.changes {
        ticker.tick().await;
        let device = &ids[order[i % n]];
        let value = Bytes::from(
            score(&format!("registry.local/lat:{i}"))
                .to_canonical_json()
                .map_err(|e| Error::Config(e.to_string()))?,
        );
        let key = keys::desired_key(device, &deployment);
        tally.start_probe(key.clone());
        let written = match mode {
            WatchMode::Notify => {
                crate::notify::put_and_notify(&desired, &client, device, &deployment, value).await
            }
            WatchMode::PerDevice => {
                put_as_the_operator(&desired, &client, device, &deployment, value).await
            }
            _ => desired
                .put(&key, value)
                .await
                .map(|_| ())
                .map_err(|e| Error::nats(format!("putting {key}"), e)),
        };
        if let Err(e) = written {
            tracing::warn!(error = %e, "change not written");
        }
    }
    let answered = crate::poll_until(
        "every change answered",
        Duration::from_secs(30),
        Duration::from_millis(50),
        || {
            let pending = tally.probes_pending();
            async move { (pending == 0).then_some(()) }
        },
    )
    .await;
    let change_end = procstat::sample(pid)?;
    row[9] = num(
        Some(
            100.0 * (change_end.cpu_seconds - change_start.cpu_seconds) / t.elapsed().as_secs_f64(),
        ),
        1,
    );
    row[10] = num(Some(change_end.rss_mib()), 0);
    row[11] = num(Some(change_end.peak_rss_mib()), 0);
    let s = Summary::of(&tally.probe_samples());
    row[12] = s.count.to_string();
    row[13] = num(Some(s.p50.as_secs_f64() * 1000.0), 1);
    row[14] = num(Some(s.p99.as_secs_f64() * 1000.0), 1);
    answered?;
    if opts.restart && mode == WatchMode::PerDevice {
        restart_and_resync(&mut nats, &tally, n, opts.setup_timeout, row).await?;
    }
    drop(fleet);
    Ok(())
}

/// Restarts the server under `n` connected devices and times until each listed again (one
/// re-sync per device after its reconnect), with the new server's CPU and peak memory.
async fn restart_and_resync(
    nats: &mut LocalNats,
    tally: &crate::sim::Tally,
    n: usize,
    timeout: Duration,
    row: &mut [String],
) -> Result<()> {
    use std::sync::atomic::Ordering::Relaxed;
    let before = tally.resyncs.load(Relaxed);
    let started = Instant::now();
    nats.restart().await?;
    let pid = nats.pid().unwrap_or(0);
    let resynced = crate::poll_until(
        &format!("{n} devices re-synced after the restart"),
        timeout,
        Duration::from_millis(100),
        || {
            let done = tally.resyncs.load(Relaxed).saturating_sub(before);
            async move { (done >= n).then_some(done) }
        },
    )
    .await;
    row[16] = num(Some(started.elapsed().as_secs_f64()), 1);
    let after = procstat::sample(pid)?;
    row[17] = num(Some(after.cpu_seconds), 1);
    row[18] = num(Some(after.peak_rss_mib()), 0);
    resynced.map(|_| ())
}

/// Runs every (mode, devices) pair, writing `consumers.csv`/`.md` after each.
pub async fn run(opts: &ConsumerOptions) -> Result<Table> {
    let mut table = Table::new(&COLUMNS);
    for &mode in &opts.modes {
        for &n in &opts.devices {
            tracing::info!(devices = n, ?mode, "consumer run starting");
            let mut row = vec!["-".to_owned(); COLUMNS.len()];
            row[0] = format!("{mode:?}");
            row[1] = n.to_string();
            row[15] = match run_one(opts, mode, n, &mut row).await {
                Ok(()) => "ok".to_owned(),
                Err(e) => format!("stopped: {e}"),
            };
            println!(
                "{}",
                Table {
                    headers: table.headers.clone(),
                    rows: vec![row.clone()]
                }
                .markdown()
            );
            table.rows.push(row);
            table.write(&opts.out_dir, "consumers")?;
        }
    }
    Ok(table)
}

/// What the operator does for one change (adr/0014): the key, then the device's index (here
/// the device holds only `deployment`), then the notice.
async fn put_as_the_operator(
    desired: &async_nats::jetstream::kv::Store,
    client: &async_nats::Client,
    device: &DeviceId,
    deployment: &DeploymentName,
    value: Bytes,
) -> Result<()> {
    let key = keys::desired_key(device, deployment);
    let mut index = DesiredIndex::default();
    index
        .deployments
        .insert(deployment.clone(), ContentHash::of_bytes(&value));
    desired
        .put(&key, value)
        .await
        .map_err(|e| Error::nats(format!("putting {key}"), e))?;
    desired
        .put(notice::index_key(device), Bytes::from(index.to_bytes()))
        .await
        .map_err(|e| Error::nats(format!("putting the index of {device}"), e))?;
    client
        .publish(notice::notify_subject(device), Bytes::new())
        .await
        .map_err(|e| Error::nats(format!("notifying {device}"), e))?;
    Ok(())
}

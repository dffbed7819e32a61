//! Smoke tests of the benches at toy sizes, against the real servers (seconds, not minutes):
//! the big runs are `cargo bench -p harmony-fleet-bench` / `fleet-bench` only.

use std::path::PathBuf;
use std::time::Duration;

use harmony_fleet_bench::consumers::{self, ConsumerOptions};
use harmony_fleet_bench::scale::{self, ControlPlane, ScaleOptions, ScaleRow};
use harmony_fleet_bench::sim::WatchMode;

#[tokio::test]
async fn fifty_devices_and_one_deployment_converge_through_the_operator() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let cp = ControlPlane::start().await?;
    let opts = ScaleOptions {
        devices: vec![50],
        deployments: vec![1],
        devices_per_connection: 20,
        sites: 5,
        answer_delay: Duration::from_millis(50),
        failure_rate: 0.1,
        heartbeat_interval: Duration::from_secs(1),
        phase_timeout: Duration::from_secs(60),
        device_resources: false,
        last_seen_refresh: None,
        device_writes_per_sec: None,
        steady_window: Duration::ZERO,
        nats_servers: 1,
        operator_exe: PathBuf::from(env!("CARGO_BIN_EXE_fleet-bench")),
        out_dir: out.path().to_owned(),
    };
    let mut row = ScaleRow {
        devices: 50,
        deployments: 1,
        ..ScaleRow::default()
    };
    scale::run_pair(&cp, &opts, 50, 1, &mut row).await?;
    assert_eq!(row.outcome, "ok");
    assert_eq!(row.connections, 3, "50 devices, 20 per connection");
    assert_eq!(row.keys, 10 + 50, "one site of five, then the fan-out");
    assert!(row.fanout_keys_s.is_some() && row.status_lag_s.is_some());
    assert!(row.operator_cpu_s.unwrap_or_default() > 0.0);
    assert_eq!(row.cold_start_writes, Some(0), "a restart rewrites nothing");
    let png = out.path().join("latency.png");
    scale::plot_rows(&[row], &png)?;
    assert!(std::fs::metadata(&png)?.len() > 1000);
    Ok(())
}

#[tokio::test]
async fn a_cluster_of_three_with_device_resources_measures_the_control_plane() -> anyhow::Result<()>
{
    let out = tempfile::tempdir()?;
    let cp = ControlPlane::start().await?;
    let opts = ScaleOptions {
        devices: vec![30],
        deployments: vec![1],
        devices_per_connection: 10,
        sites: 3,
        answer_delay: Duration::from_millis(50),
        failure_rate: 0.0,
        heartbeat_interval: Duration::from_secs(1),
        phase_timeout: Duration::from_secs(90),
        device_resources: true,
        last_seen_refresh: Some(Duration::from_secs(1)),
        device_writes_per_sec: Some(5),
        steady_window: Duration::from_secs(3),
        nats_servers: 3,
        operator_exe: PathBuf::from(env!("CARGO_BIN_EXE_fleet-bench")),
        out_dir: out.path().to_owned(),
    };
    let mut row = ScaleRow {
        devices: 30,
        deployments: 1,
        ..ScaleRow::default()
    };
    scale::run_pair(&cp, &opts, 30, 1, &mut row).await?;
    assert_eq!(row.outcome, "ok");
    assert_eq!(row.nats_servers, 3);
    assert_eq!(row.keys, 10 + 30, "one site of three, then the fan-out");
    assert!(row.devices_written_s.is_some(), "{row:?}");
    assert!(row.device_writes.unwrap_or_default() >= 30, "{row:?}");
    // Heartbeats every second, a refresh wanted every second, a budget of 5 a second: over
    // the 3 s window at most one second's burst plus 5/s (6.7/s), never one write a heartbeat.
    let steady = row.steady_device_writes_per_s.unwrap_or(f64::MAX);
    assert!(
        steady <= 7.0,
        "{steady} Device writes/s over a budget of 5: {row:?}"
    );
    assert!(row.apiserver_cpu_s.unwrap_or_default() > 0.0, "{row:?}");
    assert!(row.nats_cpu_s.unwrap_or_default() > 0.0, "{row:?}");
    assert_eq!(row.cold_start_writes, Some(0), "a restart rewrites nothing");
    Ok(())
}

#[tokio::test]
async fn agent_watches_and_change_notices_both_answer_every_change() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let opts = ConsumerOptions {
        devices: vec![50],
        modes: vec![WatchMode::PerDevice, WatchMode::Notify],
        devices_per_connection: 20,
        changes: 20,
        rate: 100.0,
        idle_window: Duration::from_millis(200),
        setup_timeout: Duration::from_secs(30),
        restart: true,
        out_dir: out.path().to_owned(),
    };
    for mode in [WatchMode::PerDevice, WatchMode::Notify] {
        let mut row = vec!["-".to_owned(); consumers::COLUMNS.len()];
        consumers::run_one(&opts, mode, 50, &mut row).await?;
        assert_eq!(row[3], "50", "{mode:?}: every watch ready");
        assert_eq!(row[12], "20", "{mode:?}: every change answered");
        assert_eq!(row[4], "0", "{mode:?}: no consumer at all");
        if mode == WatchMode::PerDevice {
            assert_ne!(row[16], "-", "every device re-synced after the restart");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_reconnect_storm_authenticates_every_device_in_each_mode() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let table =
        harmony_fleet_bench::reconnect::run(&harmony_fleet_bench::reconnect::ReconnectOptions {
            devices: 20,
            concurrency: 4,
            out_dir: out.path().to_owned(),
        })
        .await?;
    assert_eq!(
        table.rows.len(),
        3,
        "none, jwt and auth callout: {:?}",
        table.rows
    );
    for row in &table.rows {
        assert_eq!(row[1], "20", "{row:?}");
    }
    assert!(out.path().join("reconnect.csv").is_file());
    Ok(())
}

#[tokio::test]
async fn pre_approved_devices_enroll_through_the_operator() -> anyhow::Result<()> {
    let out = tempfile::tempdir()?;
    let table = harmony_fleet_bench::enroll::run(&harmony_fleet_bench::enroll::EnrollOptions {
        devices: 20,
        concurrency: 4,
        operator_exe: PathBuf::from(env!("CARGO_BIN_EXE_fleet-bench")),
        out_dir: out.path().to_owned(),
    })
    .await?;
    assert_eq!(table.rows.len(), 1);
    assert_eq!(table.rows[0][0], "20");
    Ok(())
}

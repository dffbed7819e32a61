//! `fleet-bench dashboard` (feature `dashboard`): the dashboard's server time with a large
//! fleet in its view.
//!
//! Everything on the request path is the production code: a real nats-server and control
//! plane, `N` simulated devices seeded into the real buckets by [`crate::sim`] (info and a
//! heartbeat each; every 50th device's heartbeat then deleted so it is offline, every 100th
//! reporting `Failed`), the real [`RealFleetService`] folding its watches into its view, and
//! the real router (`harmony_fleet_operator::web::app`, with its boundary and auth layers)
//! answering requests in process. Each sample is one request, from the call to the last byte
//! of the body: the server time a browser would wait for, without the network.
//!
//! Before timing, the overview's counts are checked against what was seeded: the page must
//! hold its numbers at this size, not only be fast.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use futures::{StreamExt, stream};
use harmony::local::LocalNats;
use harmony_fleet_contracts::keys;
use harmony_fleet_contracts::state::{DeploymentState, Phase};
use harmony_fleet_operator::kv::FleetKv;
use harmony_fleet_operator::service::FleetService;
use harmony_fleet_operator::service::real::{RealFleetService, RealOptions};
use harmony_fleet_operator::web::boundary::{AllowedHosts, CsrfToken};
use harmony_fleet_operator::web::{Assets, Auth, Boundary, Sessions, WebState, app};
use jiff::Timestamp;
use tower::ServiceExt;

use crate::error::{Error, Result};
use crate::report::{Table, num};
use crate::scale::ControlPlane;
use crate::sim::{Fleet, SimConfig, device_id};
use crate::stats::Summary;

/// What to run.
#[derive(Clone, Debug)]
pub struct DashboardOptions {
    /// Devices in the fleet view.
    pub devices: usize,
    /// Values of the `site` label.
    pub sites: usize,
    /// Timed requests per case (after a few untimed ones).
    pub samples: usize,
    /// Where `dashboard.csv` and `dashboard.md` go.
    pub out_dir: std::path::PathBuf,
}

/// Every `OFFLINE_EVERY`-th device has no heartbeat (offline).
pub const OFFLINE_EVERY: usize = 50;
/// Every `FAILING_EVERY`-th device reports `Failed`.
pub const FAILING_EVERY: usize = 100;
const LISTEN: &str = "127.0.0.1:18090";
const WARMUP: usize = 3;

/// The timed requests: (case, path, sent by HTMX for the results only).
pub fn cases() -> Vec<(&'static str, &'static str, bool)> {
    vec![
        ("overview", "/", false),
        ("devices, page 1", "/devices", false),
        ("devices, page 500", "/devices?page=500", false),
        ("devices, last page", "/devices?page=100000", false),
        ("devices, page 2 (HTMX)", "/devices?page=2", true),
        ("label site=site-7", "/devices?label=site%3Dsite-7", false),
        (
            "label site in (site-1, site-2), fleet=bench",
            "/devices?label=site%20in%20(site-1,site-2),fleet%3Dbench",
            false,
        ),
        ("status offline", "/devices?status=offline", false),
        (
            "status failing, page 3",
            "/devices?status=failing&page=3",
            false,
        ),
        ("text sim-4242", "/devices?q=sim-4242", true),
        ("text matching nothing", "/devices?q=nothing-here", false),
        (
            "label site!=site-1, online, text 77, page 2",
            "/devices?label=site!%3Dsite-1&status=online&q=77&page=2",
            false,
        ),
    ]
}

fn dashboard_error(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Config(format!("dashboard: {context}: {e}"))
}

/// Seeds the fleet, starts the real service and times every case.
pub async fn run(opts: &DashboardOptions) -> Result<Table> {
    if opts.devices == 0 || opts.samples == 0 {
        return Err(Error::Config(
            "--devices and --samples must be at least 1".into(),
        ));
    }
    let cp = ControlPlane::start().await?;
    let nats = LocalNats::start(crate::sim::nats_options(opts.devices)).await?;
    let client = async_nats::connect(nats.url())
        .await
        .map_err(|e| Error::nats("connecting the bench client", e))?;
    // The bench writes one report per hundred devices: `device-state` at the default capacity
    // is enough (see `fleet_buckets`).
    let kv = crate::sim::fleet_buckets(client.clone(), opts.devices).await?;

    let mut config = SimConfig::new(nats.url(), opts.devices);
    config.sites = opts.sites;
    let fleet = Fleet::start(config).await?;
    println!("{}", fleet.describe());
    let seeded = fleet.seed().await?;
    println!("seeded device-info and heartbeats in {seeded:.2?}");
    let offline = mark_offline_and_failing(&kv, opts.devices).await?;

    let started = Instant::now();
    let service = RealFleetService::start(
        client.clone(),
        cp.client().clone(),
        RealOptions {
            namespace: None,
            // Long enough that no seeded heartbeat expires during the run: the counts
            // checked below stay exact.
            heartbeat_timeout: Duration::from_secs(3600),
        },
    )
    .await
    .map_err(|e| dashboard_error("starting the service", e))?;
    service
        .wait_ready()
        .await
        .map_err(|e| dashboard_error("waiting for the view", e))?;
    println!(
        "dashboard view caught up with {} devices in {:.2?}",
        opts.devices,
        started.elapsed()
    );
    let overview = service
        .overview()
        .await
        .map_err(|e| dashboard_error("overview", e))?;
    let expected = (opts.devices, opts.devices - offline, offline);
    let got = (
        overview.devices_total,
        overview.devices_online,
        overview.offline_total,
    );
    if got != expected {
        return Err(dashboard_error(
            "overview counts",
            format!("(total, online, offline) = {got:?}, seeded {expected:?}"),
        ));
    }

    let router = app(WebState {
        service: Arc::new(service),
        assets: Assets::new(None, false),
        auth: Auth::Open,
        boundary: Boundary {
            hosts: AllowedHosts::new(
                LISTEN
                    .parse()
                    .map_err(|e| dashboard_error("listen address", e))?,
                &[],
            )
            .map_err(|e| dashboard_error("allow-list", e))?,
            csrf: CsrfToken::new("bench"),
        },
        sessions: Sessions::default(),
    });
    let mut table = Table::new(&[
        "devices", "request", "path", "matched", "body KiB", "p50 ms", "p99 ms", "max ms",
        "samples",
    ]);
    for (case, path, htmx) in cases() {
        let mut samples = Vec::with_capacity(opts.samples);
        let mut last = String::new();
        for i in 0..WARMUP + opts.samples {
            let t = Instant::now();
            last = request(&router, path, htmx).await?;
            if i >= WARMUP {
                samples.push(t.elapsed());
            }
        }
        if case == "overview" && !last.contains(&format!(">{}<", opts.devices)) {
            return Err(dashboard_error(
                "overview page",
                format!("does not show {} devices", opts.devices),
            ));
        }
        let matched = matched(&last).unwrap_or_else(|| "-".to_owned());
        let s = Summary::of(&samples);
        let ms = |d: Duration| num(Some(d.as_secs_f64() * 1000.0), 1);
        table.rows.push(vec![
            opts.devices.to_string(),
            case.to_owned(),
            format!("`{path}`"),
            matched,
            num(Some(last.len() as f64 / 1024.0), 0),
            ms(s.p50),
            ms(s.p99),
            ms(s.max),
            s.count.to_string(),
        ]);
        println!("{case}: p50 {} ms, p99 {} ms", ms(s.p50), ms(s.p99));
    }
    table.write(&opts.out_dir, "dashboard")?;
    println!("{}", table.markdown());
    drop(fleet);
    Ok(table)
}

/// Deletes the heartbeat of every [`OFFLINE_EVERY`]-th device and writes a `Failed` report for
/// every [`FAILING_EVERY`]-th. Returns how many devices are offline.
async fn mark_offline_and_failing(kv: &FleetKv, devices: usize) -> Result<usize> {
    let deployment = "bench-web"
        .parse()
        .map_err(|e| dashboard_error("deployment name", e))?;
    let mut state = DeploymentState::new(Phase::Failed, Timestamp::now());
    state.set_last_error("image registry.local/web:2 not found");
    let body = serde_json::to_vec(&state).map_err(|e| Error::json("device-state", e))?;
    let offline: Vec<usize> = (0..devices).step_by(OFFLINE_EVERY).collect();
    let failing: Vec<usize> = (0..devices).step_by(FAILING_EVERY).collect();
    let results: Vec<Result<()>> = stream::iter(
        offline
            .iter()
            .map(|i| (*i, true))
            .chain(failing.iter().map(|i| (*i, false))),
    )
    .map(|(i, heartbeat)| {
        let body = body.clone();
        let deployment = &deployment;
        async move {
            let id = device_id("sim", i)?;
            if heartbeat {
                kv.heartbeat
                    .delete(keys::heartbeat_key(&id))
                    .await
                    .map_err(|e| Error::nats("deleting a heartbeat", e))
            } else {
                kv.state
                    .put(keys::state_key(&id, deployment), body.into())
                    .await
                    .map(|_| ())
                    .map_err(|e| Error::nats("writing a device-state", e))
            }
        }
    })
    .buffer_unordered(256)
    .collect()
    .await;
    results.into_iter().collect::<Result<Vec<()>>>()?;
    Ok(offline.len())
}

async fn request(router: &axum::Router, path: &str, htmx: bool) -> Result<String> {
    let mut builder = Request::get(path).header(header::HOST, LISTEN);
    if htmx {
        builder = builder
            .header("hx-request", "true")
            .header("hx-target", "device-results");
    }
    let request = builder
        .body(Body::empty())
        .map_err(|e| dashboard_error("request", e))?;
    let response = router
        .clone()
        .oneshot(request)
        .await
        .map_err(|e| dashboard_error(path, e))?;
    if response.status() != StatusCode::OK {
        return Err(dashboard_error(path, response.status()));
    }
    let bytes = axum::body::to_bytes(response.into_body(), 64 << 20)
        .await
        .map_err(|e| dashboard_error(path, e))?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

/// The matched count a devices page reports (`data-total`).
fn matched(body: &str) -> Option<String> {
    let rest = &body[body.find("data-total=\"")? + "data-total=\"".len()..];
    Some(rest[..rest.find('"')?].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_matched_count_is_read_from_the_page() {
        assert_eq!(
            matched(r#"<p data-total="1234">1234 matching"#).as_deref(),
            Some("1234")
        );
        assert_eq!(matched("<p>overview</p>"), None);
    }

    #[test]
    fn every_case_is_a_dashboard_page() {
        for (_, path, _) in cases() {
            assert!(path == "/" || path.starts_with("/devices"), "{path}");
        }
    }
}

//! The harmony fleet operator: turns `Deployment` resources into one `desired-state` entry per
//! matching device in NATS KV, folds what devices report back into `Deployment` status and
//! `Device` resources, and offers a typed client for the device command verbs.
//!
//! | module | holds |
//! |---|---|
//! | [`crd`] | the `Deployment` and `Device` resources (schema, CEL rules, `gen-crd`) |
//! | [`index`] | pure: label selectors → device sets, incremental |
//! | [`rollout`] | pure: the rollout state machine (batches, budget, failure criteria) |
//! | [`events`] | Kubernetes Events on Deployments (rollout) and Devices (liveness, blacklist): pure transitions, a budget, the writer |
//! | [`aggregate`] | pure: per-deployment counts and failing devices |
//! | [`fleet`] | pure: the fleet buckets decoded once for the controller and the dashboard, the liveness rule, the blacklist check |
//! | [`device_index`] | pure: the per-device desired-state index written before each notice |
//! | [`labels`] | pure: which labels target a device (reported, protected prefixes, set by people) |
//! | [`write_quota`] | pure: stray `device-state` keys per device, and when that is flooding |
//! | [`kv`] | NATS adapter: buckets, ordered watches, the `desired-state` writer |
//! | [`registry`] | `Device` resources by server-side apply |
//! | [`identity`] | device credentials: enrollment, renewal, revocation (NATS JWTs) |
//! | [`leader`] | leader election on a Lease: one replica writes, standbys keep caches warm |
//! | [`controller`] | the reconcile loop: a pure core (`handle(input) -> effects`, by job: ownership, targeting, reports, liveness, blacklist, cold start, status) and the async shell that carries out its effects |
//! | [`commands`] | `ping` / `exec` / `logs` client |
//! | [`metrics`], [`http`] | Prometheus metrics, `/healthz`, `/readyz`, `/metrics` |
//! | [`config`], [`error`] | flags and environment, the error type |
//! | `service` | (feature `web-frontend`) `FleetService`: the dashboard's view of the fleet, mock and real |
//! | `web` | (feature `web-frontend`) the dashboard: pages, live logs (SSE), shell (WebSocket) |
//!
//! It does not depend on `harmony`.

pub mod aggregate;
pub mod commands;
pub mod config;
pub mod controller;
pub mod crd;
pub mod device_index;
pub mod error;
pub mod events;
pub mod fleet;
pub mod http;
pub mod identity;
pub mod index;
pub mod intern;
pub mod kv;
pub mod labels;
pub mod leader;
pub mod metrics;
pub mod registry;
mod revisions;
pub mod rollout;
#[cfg(feature = "web-frontend")]
pub mod service;
#[cfg(feature = "web-frontend")]
pub mod web;
pub mod write_quota;

pub use controller::{OperatorHandle, start};
pub use error::{Error, Result};

use config::Config;
use http::{AppState, Readiness};
use metrics::Metrics;

/// Runs the operator until a fatal error or Ctrl-C / SIGTERM: Kubernetes client from the
/// environment (`KUBECONFIG` or in-cluster), NATS, HTTP endpoints, reconcile loop.
pub async fn run(config: Config) -> Result<()> {
    let client = kube::Client::try_default().await.map_err(|e| {
        Error::kube(
            "building a client from KUBECONFIG or the in-cluster config",
            e,
        )
    })?;
    let nats = kv::connect(&config.nats).await?;
    let metrics = Metrics::new();
    let readiness = Readiness::default();
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    tracing::info!(listen = %config.listen, namespace = config.namespace.as_deref().unwrap_or("<all>"), "starting");
    let app = http::app(AppState {
        readiness: readiness.clone(),
        metrics: metrics.clone(),
    });
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let dashboard = start_dashboard(&config, &nats, &client).await?;
    let _identity = match &config.identity {
        Some(identity) => {
            let service = identity::IdentityService::from_config(
                identity,
                &config.nats,
                nats.clone(),
                client.clone(),
            )
            .await?;
            tracing::info!(
                "identity service on: enrollment, renewal and revocation of device credentials"
            );
            Some(service)
        }
        None => None,
    };
    let mut operator = start(config, client, nats, metrics, readiness).await?;
    let result = tokio::select! {
        r = operator.wait_ref() => r,
        _ = shutdown_signal() => {
            tracing::info!("shutting down");
            Ok(())
        }
    };
    // Stops every task, then gives the leader Lease up so that a standby takes over at once.
    operator.shutdown().await;
    server.abort();
    if let Some(dashboard) = dashboard {
        dashboard.abort();
    }
    result
}

/// The dashboard next to the operator, when `--web-listen` is set.
#[cfg(feature = "web-frontend")]
async fn start_dashboard(
    config: &Config,
    nats: &async_nats::Client,
    client: &kube::Client,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    let Some(web) = &config.web else {
        return Ok(None);
    };
    web::serve::spawn_for_run(
        web.listen,
        &web.access,
        nats.clone(),
        client.clone(),
        config.namespace.clone(),
        config.heartbeat_timeout,
    )
    .await
    .map(Some)
}

/// Without the `web-frontend` feature `--web-listen` cannot be honoured; the operator still
/// runs (the dashboard is optional), and says so loudly.
#[cfg(not(feature = "web-frontend"))]
async fn start_dashboard(
    config: &Config,
    _nats: &async_nats::Client,
    _client: &kube::Client,
) -> Result<Option<tokio::task::JoinHandle<()>>> {
    if let Some(web) = &config.web {
        tracing::warn!(listen = %web.listen, "--web-listen / FLEET_WEB_LISTEN is set but this operator was built without the dashboard: rebuild with --features web-frontend; serving no dashboard");
    }
    Ok(None)
}

/// Resolves on Ctrl-C or SIGTERM.
pub(crate) async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

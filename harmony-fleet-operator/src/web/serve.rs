//! Starting the dashboard: `serve-web` (mock or real) and the dashboard that `run` serves
//! next to the operator when `--web-listen` is set.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use super::{Assets, Auth, Boundary, Sessions, WebState, app};
use crate::config::{NatsConfig, ServeWebArgs, WebAccessArgs};
use crate::error::{Error, Result};
use crate::kv;
use crate::service::real::{RealFleetService, RealOptions};
use crate::service::{FleetService, mock::MockFleetService};

/// Who may come in, the boundary every request crosses first, and the sessions.
fn access(args: &WebAccessArgs, addr: SocketAddr) -> Result<(Auth, Boundary, Sessions)> {
    let auth = Auth::from_settings(
        args.token.clone(),
        args.basic_auth.clone(),
        args.allow_unauthenticated,
        addr,
    )
    .map_err(|e| Error::Config(e.to_string()))?;
    let boundary =
        Boundary::new(addr, &args.public_urls).map_err(|e| Error::Config(e.to_string()))?;
    if addr.ip().is_unspecified() && args.public_urls.is_empty() {
        tracing::warn!(
            %addr,
            "the dashboard listens on every address but answers only loopback host names: set --web-public-url to the URL people use"
        );
    }
    if args.session_minutes == 0 {
        return Err(Error::Config(
            "--web-session-minutes must be at least 1 (default 480, 8 hours)".into(),
        ));
    }
    let sessions = Sessions::new(Duration::from_secs(args.session_minutes.saturating_mul(60)));
    Ok((auth, boundary, sessions))
}

async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Bind { addr, source })
}

/// Serves the dashboard for `service` on `listener` until the future is dropped.
pub async fn serve(
    listener: TcpListener,
    service: Arc<dyn FleetService>,
    assets: Assets,
    (auth, boundary, sessions): (Auth, Boundary, Sessions),
) -> Result<()> {
    let router = app(WebState {
        service,
        assets,
        auth,
        boundary,
        sessions,
    });
    // The client address feeds the sign-in rate limit.
    axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
    .map_err(|e| Error::Config(format!("dashboard server failed: {e}")))
}

/// `serve-web`: until Ctrl-C / SIGTERM.
pub async fn serve_web(args: ServeWebArgs) -> Result<()> {
    let ServeWebArgs {
        listen,
        mock,
        css_from,
        live_reload,
        nats_urls,
        nats_user,
        nats_password,
        namespace,
        heartbeat_timeout_secs,
        access: access_args,
    } = args;
    let access = access(&access_args, listen)?;
    let assets = Assets::new(css_from, live_reload);
    let urls: Vec<String> = nats_urls
        .into_iter()
        .map(|u| u.trim().to_owned())
        .filter(|u| !u.is_empty())
        .collect();
    // The real service must outlive the server: it owns the watch tasks.
    let service: Arc<dyn FleetService> = if mock {
        tracing::info!("serving seeded mock data (--mock)");
        Arc::new(MockFleetService::new())
    } else {
        if urls.is_empty() {
            return Err(Error::Config(
                "serve-web needs a fleet to show: pass --mock for seeded demo data, or --nats-url (FLEET_NATS_URL, plus --nats-user/--nats-password when NATS requires them) with a Kubernetes config (KUBECONFIG or in-cluster)".into(),
            ));
        }
        let credentials = match (nats_user, nats_password) {
            (Some(u), Some(p)) => Some((u, p)),
            (None, None) => None,
            _ => {
                return Err(Error::Config(
                    "give both --nats-user and --nats-password (FLEET_NATS_USER / FLEET_NATS_PASSWORD), or neither".into(),
                ));
            }
        };
        let client = kube::Client::try_default().await.map_err(|e| {
            Error::kube(
                "serve-web without --mock needs Kubernetes: set KUBECONFIG or run in-cluster",
                e,
            )
        })?;
        let nats = kv::connect(&NatsConfig {
            urls,
            credentials,
            creds_file: None,
            ca_file: None,
        })
        .await?;
        Arc::new(
            start_real(
                nats,
                client,
                namespace,
                Duration::from_secs(heartbeat_timeout_secs.max(1)),
            )
            .await?,
        )
    };
    let listener = bind(listen).await?;
    tracing::info!(%listen, "dashboard listening");
    tokio::select! {
        r = serve(listener, service, assets, access) => r,
        _ = crate::shutdown_signal() => Ok(()),
    }
}

async fn start_real(
    nats: async_nats::Client,
    client: kube::Client,
    namespace: Option<String>,
    heartbeat_timeout: Duration,
) -> Result<RealFleetService> {
    RealFleetService::start(
        nats,
        client,
        RealOptions {
            namespace: namespace.filter(|n| !n.is_empty()),
            heartbeat_timeout,
        },
    )
    .await
    .map_err(|e| Error::Config(format!("starting the dashboard's fleet view: {e}")))
}

/// The dashboard inside `run`: binds now (so a bad address fails the start), serves in a
/// task. The task owns the service; abort it to stop both.
pub async fn spawn_for_run(
    listen: SocketAddr,
    access_args: &WebAccessArgs,
    nats: async_nats::Client,
    client: kube::Client,
    namespace: Option<String>,
    heartbeat_timeout: Duration,
) -> Result<tokio::task::JoinHandle<()>> {
    let access = access(access_args, listen)?;
    let listener = bind(listen).await?;
    let service = Arc::new(start_real(nats, client, namespace, heartbeat_timeout).await?);
    tracing::info!(%listen, "dashboard listening");
    Ok(tokio::spawn(async move {
        if let Err(e) = serve(listener, service, Assets::new(None, false), access).await {
            tracing::error!(error = %e, "dashboard stopped");
        }
    }))
}

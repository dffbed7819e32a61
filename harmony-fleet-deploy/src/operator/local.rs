//! [`FleetOperatorScore`] on `LocalTopology`: the same CRDs and RBAC as in a cluster,
//! applied to the local control plane, and the operator as a supervised process that talks to
//! the API server *as its service account* (a TokenRequest token), so the local install proves
//! the RBAC is sufficient — a missing rule fails here, not first in production.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use harmony::capability::{K8sClient, ProcessSupervisor};
use harmony::interpret::{InterpretError, Outcome};
use harmony::inventory::Inventory;
use harmony::local::probe;
use harmony::local::{ProcessChange, ProcessSpec};
use harmony::topologies::LocalTopology;
use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube::api::PostParams;
use kube::config::{AuthInfo, Kubeconfig, NamedAuthInfo};

use super::FleetOperatorScore;
use super::objects::{self, NAME};
use crate::binaries;
use crate::error::DeployError;
use crate::files::write_private;
use crate::nats::NatsEndpoint;
use crate::trust::LocalTrust;
use crate::wait::{self, Poll};

/// The operator's process name under the supervisor.
pub const PROCESS: &str = NAME;
/// Lifetime of the service-account token the local operator uses.
const TOKEN_SECONDS: i64 = 7 * 24 * 3600;

/// Where the local operator answers `/healthz`, `/readyz` and `/metrics`.
pub fn http_addr(topology: &LocalTopology) -> Result<SocketAddr, InterpretError> {
    let port = topology.reserve_port(PROCESS)?;
    Ok(SocketAddr::from(([127, 0, 0, 1], port)))
}

pub(super) async fn deploy(
    score: &FleetOperatorScore,
    inventory: &Inventory,
    topology: &LocalTopology,
) -> Result<Outcome, InterpretError> {
    let state = topology.state_dir().to_owned();
    let endpoint = NatsEndpoint::load_local(&state)?;
    let (trust, _) = LocalTrust::load_or_create(&state)?;
    let client = topology.k8s_client().await?;
    // The objects are the cluster's (CRDs, RBAC) so the local install proves the RBAC; the
    // local operator authenticates to NATS with its .creds file (operator mode, adr/0016).
    let objects = objects::objects(score);

    let mut applier = objects.apply_access(&client, inventory, topology).await?;

    let addr = http_addr(topology)?;
    let dir = state.join("operator");
    let kubeconfig = dir.join("kubeconfig");
    let running = topology.process_status(PROCESS).is_some_and(|s| s.running);
    if !running || !kubeconfig.is_file() {
        write_service_account_kubeconfig(&client, score, &topology.kubeconfig_path(), &kubeconfig)
            .await?;
    }
    let program = binaries::OPERATOR.locate()?;
    let mut spec = ProcessSpec::new(PROCESS, program, dir.join("operator.log"))
        .arg("run")
        .arg(format!("--listen={addr}"))
        .arg(format!("--nats-url={}", endpoint.urls.join(",")))
        .arg(format!(
            "--heartbeat-timeout-secs={}",
            score.heartbeat_timeout_secs
        ))
        .env("KUBECONFIG", &kubeconfig)
        .env("FLEET_NATS_CREDS", trust.operator_creds_path())
        .env("FLEET_IDENTITY_SIGNER", trust.signer_path())
        .env("FLEET_IDENTITY_SYSTEM_CREDS", trust.system_creds_path())
        .env("RUST_LOG", "info")
        // A new control plane (new certificates, new port) must restart the operator.
        .env(
            "FLEET_CONTROL_PLANE",
            control_plane_server(&topology.kubeconfig_path()),
        )
        .stop_timeout(Duration::from_secs(10));
    if let Some(ca) = &endpoint.ca_file {
        spec = spec.env("FLEET_NATS_CA", ca);
    }
    if let Some(lifetime) = score.credential_lifetime_secs {
        spec = spec.arg(format!("--credential-lifetime-secs={lifetime}"));
    }
    if let Some(watch) = &score.watch_namespace {
        spec = spec.arg(format!("--namespace={watch}"));
    }
    if let Some(port) = score.dashboard_port {
        spec = spec.arg(format!("--web-listen=127.0.0.1:{port}"));
    }
    let change = topology.ensure_process(spec).await?;
    if change != ProcessChange::Unchanged {
        applier.record(&Outcome::success(format!("operator process: {change:?}")));
    }

    wait_converged(topology, addr, score.smoke_timeout).await?;
    if let Some(port) = score.dashboard_port {
        let web = SocketAddr::from(([127, 0, 0, 1], port));
        wait::until(
            "the dashboard to answer GET /",
            score.smoke_timeout,
            || async move {
                match probe::http_get(web, "/", Duration::from_secs(2)).await {
                    Ok(response) if response.status == 200 => Poll::Ready(()),
                    Ok(response) => Poll::Pending(format!("HTTP {}", response.status)),
                    Err(e) => Poll::Pending(e),
                }
            },
        )
        .await?;
    }
    let mut message = format!("operator converged (http://{addr}/readyz)");
    if let Some(port) = score.dashboard_port {
        message.push_str(&format!(", dashboard http://127.0.0.1:{port}/"));
    }
    Ok(applier.outcome(message))
}

/// Polls the operator's `/readyz` until it says `Converged`; fails early if the process exits.
pub async fn wait_converged(
    topology: &LocalTopology,
    addr: SocketAddr,
    deadline: Duration,
) -> Result<(), InterpretError> {
    wait::until(
        "the operator's /readyz to say Converged",
        deadline,
        || async move {
            if let Some(status) = topology.process_status(PROCESS)
                && !status.running
            {
                return Poll::Failed(format!(
                    "the operator exited; last lines of {}:\n{}",
                    status.log_file.display(),
                    harmony::local::process::log_tail(&status.log_file, 20)
                ));
            }
            match probe::http_get(addr, "/readyz", Duration::from_secs(2)).await {
                Ok(response) if response.status == 200 && response.body.contains("Converged") => {
                    Poll::Ready(())
                }
                Ok(response) => {
                    Poll::Pending(format!("{} {}", response.status, response.body.trim()))
                }
                Err(e) => Poll::Pending(e),
            }
        },
    )
    .await
}

fn control_plane_server(admin_kubeconfig: &Path) -> String {
    Kubeconfig::read_from(admin_kubeconfig)
        .ok()
        .and_then(|k| k.clusters.into_iter().next())
        .and_then(|c| c.cluster)
        .and_then(|c| c.server)
        .unwrap_or_default()
}

/// A kubeconfig for the operator's service account: the admin kubeconfig's cluster with a
/// TokenRequest token as the only credential.
async fn write_service_account_kubeconfig(
    client: &kube::Client,
    score: &FleetOperatorScore,
    admin: &Path,
    out: &Path,
) -> Result<(), InterpretError> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), &score.namespace);
    let request = TokenRequest {
        spec: TokenRequestSpec {
            expiration_seconds: Some(TOKEN_SECONDS),
            ..TokenRequestSpec::default()
        },
        ..TokenRequest::default()
    };
    let token = accounts
        .create_token_request(NAME, &PostParams::default(), &request)
        .await
        .map_err(|source| InterpretError::Kube {
            action: "token request for".into(),
            object: format!("ServiceAccount {}/{NAME}", score.namespace),
            source,
        })?
        .status
        .map(|s| s.token)
        .ok_or_else(|| {
            InterpretError::failed("the API server returned a TokenRequest without a token")
        })?;
    let mut kubeconfig = Kubeconfig::read_from(admin)
        .map_err(|e| InterpretError::failed(format!("reading {}: {e}", admin.display())))?;
    let user = format!("system:serviceaccount:{}:{NAME}", score.namespace);
    kubeconfig.auth_infos = vec![NamedAuthInfo {
        name: user.clone(),
        auth_info: Some(AuthInfo {
            token: Some(token.into()),
            ..AuthInfo::default()
        }),
        other: Default::default(),
    }];
    for context in &mut kubeconfig.contexts {
        if let Some(context) = context.context.as_mut() {
            context.user = Some(user.clone());
        }
    }
    let text = serde_json::to_vec_pretty(&kubeconfig)
        .map_err(|e| InterpretError::failed(format!("serialising the operator kubeconfig: {e}")))?;
    write_private(out, &text).map_err(|e: DeployError| e.into())
}

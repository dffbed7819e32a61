//! What the operator's integration tests share: one real control plane per test binary with
//! the CRDs installed, and polling with a deadline.

use std::future::Future;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use harmony::local::{ControlPlaneOptions, LocalControlPlane};
use harmony_fleet_operator::crd;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};

pub const DEADLINE: Duration = Duration::from_secs(30);

static KUBECONFIG: OnceLock<std::result::Result<PathBuf, String>> = OnceLock::new();

/// Starts the control plane once, on a thread that keeps it alive for the whole binary.
pub fn kubeconfig() -> Result<PathBuf> {
    KUBECONFIG
        .get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let runtime = match tokio::runtime::Runtime::new() {
                    Ok(r) => r,
                    Err(e) => {
                        let _ = tx.send(Err(e.to_string()));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let started = async {
                        let cp = LocalControlPlane::start(ControlPlaneOptions::default()).await?;
                        let client = cp.client().await?;
                        install_crds(&client).await?;
                        anyhow::Ok(cp)
                    }
                    .await;
                    match started {
                        Ok(cp) => {
                            let _ = tx.send(Ok(cp.kubeconfig_path().to_owned()));
                            std::future::pending::<()>().await;
                            drop(cp);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(format!("{e:#}")));
                        }
                    }
                });
            });
            rx.recv()
                .unwrap_or_else(|_| Err("control plane thread died".to_owned()))
        })
        .clone()
        .map_err(|e| anyhow::anyhow!("starting the local control plane: {e}"))
}

async fn install_crds(client: &kube::Client) -> Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crd::crds() {
        let name = crd.metadata.name.clone().context("CRD name")?;
        api.patch(
            &name,
            &PatchParams::apply("fleet-operator-tests").force(),
            &Patch::Apply(&crd),
        )
        .await?;
        eventually(&format!("CRD {name} established"), || async {
            let crd = api.get(&name).await.ok()?;
            crd.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Established" && c.status == "True")
                .then_some(())
        })
        .await?;
    }
    Ok(())
}

/// Polls `probe` every 100 ms until it returns `Some`, or fails after [`DEADLINE`] naming
/// what was awaited.
pub async fn eventually<T, F, Fut>(what: &str, mut probe: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        if let Some(v) = probe().await {
            return Ok(v);
        }
        if tokio::time::Instant::now() > deadline {
            bail!("timed out after {DEADLINE:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

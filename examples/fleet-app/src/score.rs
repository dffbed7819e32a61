//! [`AppConfigScore`]: this project's own Score. It renders the greeter's config, keeps it in
//! a ConfigMap beside the app's fleet Deployment (so `kubectl get cm` shows what the devices
//! run), and blocks until the API server returns exactly that config.

use std::collections::BTreeMap;
use std::time::Duration;

use async_trait::async_trait;
use harmony::capability::K8sClient;
use harmony::interpret::{Interpret, InterpretError, InterpretStatus, Outcome, StatusCell};
use harmony::inventory::Inventory;
use harmony::score::Score;
use harmony::scores::{Change, apply_object};
use harmony::topology::Topology;
use harmony_fleet_deploy::FleetDeploymentScore;
use harmony_fleet_deploy::wait::{self, Poll};
use harmony_fleet_types::crd::deployment::TargetSelector;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::Api;
use kube::api::ObjectMeta;
use serde::Serialize;

use crate::config::{AppConfig, ConfigError, RenderedConfig};

/// The field manager of this project's applies.
pub const FIELD_MANAGER: &str = "fleet-app";

/// The annotation carrying the digest of the rendered config.
pub const DIGEST_ANNOTATION: &str = "fleet-app.example.com/config-digest";

/// The greeter's config, rendered and stored in ConfigMap `<namespace>/<name>-config`.
///
/// **Topologies**: every topology with a Kubernetes API ([`K8sClient`]), so `LocalTopology`
/// and `K8sAnywhereTopology` alike.
///
/// **Blocks on**: reading the ConfigMap back with the rendered environment and digest, within
/// [`timeout`](Self::timeout).
///
/// **Errors**: an invalid config fails before anything is written (`InvalidInput` naming the
/// field); an apply the API server refuses is a `Kube` error naming the object; a ConfigMap
/// that does not read back as written by the deadline fails naming it and what was seen.
#[derive(Debug, Clone, Serialize)]
pub struct AppConfigScore {
    /// The app's settings.
    pub config: AppConfig,
    /// How long the stored config may take to read back.
    pub timeout: Duration,
}

impl AppConfigScore {
    /// The Score of `config`, with a 30 second deadline.
    pub fn new(config: AppConfig) -> Self {
        AppConfigScore {
            config,
            timeout: Duration::from_secs(30),
        }
    }

    /// The fleet Deployment running this config on the devices `selector` matches, named as
    /// the app. Fails like the Score would on an invalid config.
    pub fn fleet_deployment(
        &self,
        selector: TargetSelector,
    ) -> Result<FleetDeploymentScore, ConfigError> {
        Ok(FleetDeploymentScore::new(
            self.config.namespace.clone(),
            self.config.name.clone(),
            selector,
            self.config.payload()?,
        ))
    }

    fn describe(&self) -> String {
        format!(
            "AppConfigScore {}/{}",
            self.config.namespace, self.config.name
        )
    }

    fn config_map(&self, rendered: &RenderedConfig) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                name: Some(self.config.config_map_name()),
                namespace: Some(self.config.namespace.clone()),
                labels: Some(BTreeMap::from([(
                    "app.kubernetes.io/name".to_owned(),
                    self.config.name.clone(),
                )])),
                annotations: Some(BTreeMap::from([(
                    DIGEST_ANNOTATION.to_owned(),
                    rendered.digest.clone(),
                )])),
                ..ObjectMeta::default()
            },
            data: Some(rendered.env.clone()),
            ..ConfigMap::default()
        }
    }
}

impl<T: Topology + K8sClient> Score<T> for AppConfigScore {
    fn name(&self) -> String {
        self.describe()
    }

    fn create_interpret(&self) -> Box<dyn Interpret<T>> {
        Box::new(AppConfigInterpret {
            score: self.clone(),
            status: StatusCell::default(),
        })
    }
}

struct AppConfigInterpret {
    score: AppConfigScore,
    status: StatusCell,
}

#[async_trait]
impl<T: Topology + K8sClient> Interpret<T> for AppConfigInterpret {
    async fn execute(
        &self,
        _inventory: &Inventory,
        topology: &T,
    ) -> Result<Outcome, InterpretError> {
        self.status
            .track(async {
                let rendered = self
                    .score
                    .config
                    .render()
                    .map_err(|e| InterpretError::invalid_input(e.field, e.reason))?;
                let client = topology.k8s_client().await?;
                store(&self.score, &rendered, &client).await
            })
            .await
    }

    fn name(&self) -> String {
        self.score.describe()
    }

    fn status(&self) -> InterpretStatus {
        self.status.get()
    }
}

/// Applies the namespace and the ConfigMap, then waits until the ConfigMap reads back as
/// rendered.
async fn store(
    score: &AppConfigScore,
    rendered: &RenderedConfig,
    client: &kube::Client,
) -> Result<Outcome, InterpretError> {
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(score.config.namespace.clone()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    // Created when missing, never re-applied: the namespace may be someone else's.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let ns_created = match namespaces.get_opt(&score.config.namespace).await {
        Ok(Some(_)) => false,
        Ok(None) => {
            apply_object(client, &namespace, FIELD_MANAGER).await?;
            true
        }
        Err(source) => {
            return Err(InterpretError::Kube {
                action: "get of".to_owned(),
                object: format!("Namespace {}", score.config.namespace),
                source,
            });
        }
    };
    let stored = apply_object(client, &score.config_map(rendered), FIELD_MANAGER).await?;

    let api: Api<ConfigMap> = Api::namespaced(client.clone(), &score.config.namespace);
    let name = score.config.config_map_name();
    let awaited = format!("{} to hold config {}", stored.description, rendered.digest);
    wait::until(&awaited, score.timeout, || {
        let (api, name) = (&api, &name);
        async move {
            match api.get_opt(name).await {
                Ok(Some(cm)) => {
                    let digest = cm
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(DIGEST_ANNOTATION));
                    if cm.data.as_ref() == Some(&rendered.env) && digest == Some(&rendered.digest) {
                        Poll::Ready(())
                    } else {
                        Poll::Pending(format!("config {digest:?} with data {:?}", cm.data))
                    }
                }
                Ok(None) => Poll::Pending("no such ConfigMap".to_owned()),
                Err(e) => Poll::Pending(format!("get failed: {e}")),
            }
        }
    })
    .await?;

    let keys: Vec<&str> = rendered.env.keys().map(String::as_str).collect();
    let message = format!(
        "{} {}: config {} ({})",
        stored.change,
        stored.description,
        rendered.digest,
        keys.join(", ")
    );
    let mut outcome = if ns_created || stored.change != Change::Unchanged {
        Outcome::success(message)
    } else {
        Outcome::noop(message)
    };
    if ns_created {
        outcome = outcome.with_details([format!("created Namespace {}", score.config.namespace)]);
    }
    Ok(outcome)
}

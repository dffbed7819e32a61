//! [`CrdScore`]: installs CustomResourceDefinitions generated from Rust types.

use std::time::Duration;

use async_trait::async_trait;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;
use kube::runtime::wait::{Condition, await_condition, conditions};
use serde::Serialize;
use tokio::time::Instant;
use tracing::debug;

use super::k8s_resource::{Change, DEFAULT_FIELD_MANAGER, apply_object};
use crate::capability::K8sClient;
use crate::interpret::{Interpret, InterpretError, InterpretStatus, Outcome, StatusCell};
use crate::inventory::Inventory;
use crate::score::Score;
use crate::topology::Topology;

/// How long [`CrdScore`] waits, in total, for its CRDs to become `Established` unless told
/// otherwise. The API server usually needs well under a second.
pub const DEFAULT_ESTABLISH_TIMEOUT: Duration = Duration::from_secs(60);

/// Desired state: these CRDs are installed and served.
///
/// Takes the CRDs as values generated from Rust types (`MyResource::crd()` from
/// `#[derive(CustomResource)]`), so the schema never drifts from the code. Applies each by
/// server-side apply, then waits until the API server reports every one `Established`, so that
/// the Score after it can create custom objects at once.
///
/// **Topologies**: every topology with [`K8sClient`] (`LocalTopology`, `K8sAnywhereTopology`);
/// on one without it the Score does not compile.
///
/// **Blocks on**: every CRD's `Established` condition, within
/// [`establish_timeout`](Self::establish_timeout) counted after the last apply.
///
/// **Errors**: `InvalidInput` naming `crds` when the list is empty (or `field_manager` when it
/// is unusable); `Kube` naming the CRD
/// whose apply fails; `Timeout` naming the CRD not established by the deadline; `Watch` when
/// watching it fails. A second run stores nothing and reports [`Outcome::noop`].
///
/// ```
/// use harmony::scores::CrdScore;
/// use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
///
/// // Usually `MyResource::crd()` from `#[derive(kube::CustomResource)]`.
/// let crds: Vec<CustomResourceDefinition> = Vec::new();
/// let score = CrdScore::new(crds).with_field_manager("my-deployer");
/// # let _ = score;
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct CrdScore {
    /// The CRDs to install.
    pub crds: Vec<CustomResourceDefinition>,
    /// The server-side apply field manager.
    pub field_manager: String,
    /// Deadline for all CRDs together to become `Established`, counted after the last apply.
    pub establish_timeout: Duration,
}

impl CrdScore {
    /// Installs `crds` with the [`DEFAULT_FIELD_MANAGER`] and [`DEFAULT_ESTABLISH_TIMEOUT`].
    pub fn new(crds: Vec<CustomResourceDefinition>) -> Self {
        Self {
            crds,
            field_manager: DEFAULT_FIELD_MANAGER.to_string(),
            establish_timeout: DEFAULT_ESTABLISH_TIMEOUT,
        }
    }

    /// Applies with `field_manager` instead.
    #[must_use]
    pub fn with_field_manager(mut self, field_manager: impl Into<String>) -> Self {
        self.field_manager = field_manager.into();
        self
    }

    /// Waits at most `timeout` for the CRDs to become `Established`.
    #[must_use]
    pub fn with_establish_timeout(mut self, timeout: Duration) -> Self {
        self.establish_timeout = timeout;
        self
    }

    fn crd_names(&self) -> Vec<&str> {
        self.crds
            .iter()
            .map(|crd| crd.metadata.name.as_deref().unwrap_or("<unnamed>"))
            .collect()
    }

    fn describe(&self) -> String {
        match self.crds.as_slice() {
            [] => "CRDs (none)".to_string(),
            [_] => format!("CRD {}", self.crd_names().join("")),
            _ => format!("CRDs {}", self.crd_names().join(", ")),
        }
    }
}

impl<T: Topology + K8sClient> Score<T> for CrdScore {
    fn name(&self) -> String {
        self.describe()
    }

    fn create_interpret(&self) -> Box<dyn Interpret<T>> {
        Box::new(CrdInterpret {
            score: self.clone(),
            status: StatusCell::default(),
        })
    }
}

struct CrdInterpret {
    score: CrdScore,
    status: StatusCell,
}

impl CrdInterpret {
    async fn install(&self, client: kube::Client) -> Result<Outcome, InterpretError> {
        if self.score.crds.is_empty() {
            return Err(InterpretError::invalid_input(
                "crds",
                "is empty; pass `MyResource::crd()` for each custom resource type to install",
            ));
        }
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        let mut changed = false;
        let mut details = Vec::with_capacity(self.score.crds.len());
        let mut pending = Vec::new();
        for crd in &self.score.crds {
            let applied = apply_object(&client, crd, &self.score.field_manager).await?;
            changed |= applied.change != Change::Unchanged;
            details.push(format!("{} {}", applied.change, applied.description));
            if !conditions::is_crd_established().matches_object(Some(&applied.object)) {
                pending.push(applied.object.metadata.name.unwrap_or_default());
            }
        }

        let timeout = self.score.establish_timeout;
        let deadline = Instant::now() + timeout;
        for name in pending {
            debug!(crd = %name, "waiting for CRD to be Established");
            let awaited = format!(
                "CRD {name} to be Established; see its conditions with `kubectl describe crd {name}`"
            );
            match tokio::time::timeout_at(
                deadline,
                await_condition(api.clone(), &name, conditions::is_crd_established()),
            )
            .await
            {
                Ok(Ok(_)) => {}
                Ok(Err(source)) => return Err(InterpretError::Watch { awaited, source }),
                Err(_elapsed) => {
                    return Err(InterpretError::Timeout {
                        awaited,
                        deadline: timeout,
                    });
                }
            }
        }

        let count = self.score.crds.len();
        let outcome = if changed {
            Outcome::success(format!("applied {count} CRD(s), all Established"))
        } else {
            Outcome::noop(format!("{count} CRD(s) already installed and Established"))
        };
        Ok(outcome.with_details(details))
    }
}

#[async_trait]
impl<T: Topology + K8sClient> Interpret<T> for CrdInterpret {
    async fn execute(
        &self,
        _inventory: &Inventory,
        topology: &T,
    ) -> Result<Outcome, InterpretError> {
        self.status
            .track(async {
                let client = topology.k8s_client().await?;
                self.install(client).await
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

#[cfg(test)]
mod tests {
    use kube::api::ObjectMeta;

    use super::*;

    fn crd(name: &str) -> CustomResourceDefinition {
        CustomResourceDefinition {
            metadata: ObjectMeta {
                name: Some(name.into()),
                ..ObjectMeta::default()
            },
            ..CustomResourceDefinition::default()
        }
    }

    #[test]
    fn names_the_crds_it_installs() {
        assert_eq!(
            CrdScore::new(vec![crd("foos.example.com")]).describe(),
            "CRD foos.example.com"
        );
        assert_eq!(
            CrdScore::new(vec![crd("foos.example.com"), crd("bars.example.com")]).describe(),
            "CRDs foos.example.com, bars.example.com"
        );
    }

    #[tokio::test]
    async fn rejects_an_empty_crd_list() {
        let interpret = CrdInterpret {
            score: CrdScore::new(Vec::new()),
            status: StatusCell::default(),
        };
        let client = kube::Client::try_from(kube::Config::new(
            "http://127.0.0.1:1".parse().expect("uri"),
        ))
        .expect("client");
        let err = interpret.install(client).await.expect_err("empty");
        assert!(
            matches!(err, InterpretError::InvalidInput { ref field, .. } if field == "crds"),
            "{err:?}"
        );
    }
}

//! [`K8sResourceScore`] and the server-side apply it is built on ([`apply_object`]).

use std::fmt::{self, Debug};

use async_trait::async_trait;
use kube::api::{Api, Patch, PatchParams};
use kube::core::{ClusterResourceScope, NamespaceResourceScope, ResourceScope};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::debug;

use crate::capability::K8sClient;
use crate::interpret::{Interpret, InterpretError, InterpretStatus, Outcome, StatusCell};
use crate::inventory::Inventory;
use crate::score::Score;
use crate::topology::Topology;

/// The field manager harmony applies with unless a Score names its own. Server-side apply
/// records which manager owns which field; one stable name per tool keeps ownership readable
/// in `kubectl get -o yaml --show-managed-fields`.
pub const DEFAULT_FIELD_MANAGER: &str = "harmony";

/// The API server's limit on a field manager's length.
const MAX_FIELD_MANAGER_LEN: usize = 128;

/// Desired state: this object exists with these fields, owned by `field_manager`.
///
/// Works for any typed object (k8s-openapi types and `#[derive(CustomResource)]` types),
/// namespaced or cluster-scoped. A namespaced object must carry `metadata.namespace`: the Score
/// does not fall back to the kubeconfig's default namespace, so it means the same thing on every
/// cluster. Fields the object leaves out are not touched (server-side apply), and `force` takes
/// ownership of fields another manager set, because a Score is the source of truth for what it
/// lists.
///
/// **Topologies**: every topology with [`K8sClient`] (`LocalTopology`, `K8sAnywhereTopology`);
/// on one without it the Score does not compile.
///
/// **Blocks on**: the API server's answer to the apply: the object it returns is the one it
/// stored (a kind with its own readiness, like a Deployment, needs a Score that waits for it).
///
/// **Errors**: `InvalidInput` naming `metadata.name` (missing), `metadata.namespace` (missing
/// on a namespaced kind, set on a cluster-scoped one) or `field_manager` (empty or too long);
/// `Kube` naming the object when the get or the apply fails. A second run stores nothing and
/// reports [`Outcome::noop`].
///
/// ```
/// use harmony::scores::K8sResourceScore;
/// use k8s_openapi::api::core::v1::ConfigMap;
/// use kube::api::ObjectMeta;
///
/// let score = K8sResourceScore::new(ConfigMap {
///     metadata: ObjectMeta {
///         name: Some("settings".into()),
///         namespace: Some("default".into()),
///         ..ObjectMeta::default()
///     },
///     data: Some([("mode".to_string(), "fast".to_string())].into()),
///     ..ConfigMap::default()
/// })
/// .with_field_manager("my-deployer");
/// # let _ = score;
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct K8sResourceScore<K> {
    /// The object, as it should be.
    pub object: K,
    /// The server-side apply field manager.
    pub field_manager: String,
}

impl<K> K8sResourceScore<K> {
    /// Applies `object` with the [`DEFAULT_FIELD_MANAGER`].
    pub fn new(object: K) -> Self {
        Self {
            object,
            field_manager: DEFAULT_FIELD_MANAGER.to_string(),
        }
    }

    /// Applies with `field_manager` instead.
    #[must_use]
    pub fn with_field_manager(mut self, field_manager: impl Into<String>) -> Self {
        self.field_manager = field_manager.into();
        self
    }
}

impl<T, K> Score<T> for K8sResourceScore<K>
where
    T: Topology + K8sClient,
    K: Resource + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default,
    K::Scope: ApplyScope,
{
    fn name(&self) -> String {
        describe_object(&self.object)
    }

    fn create_interpret(&self) -> Box<dyn Interpret<T>> {
        Box::new(K8sResourceInterpret {
            score: self.clone(),
            status: StatusCell::default(),
        })
    }
}

struct K8sResourceInterpret<K> {
    score: K8sResourceScore<K>,
    status: StatusCell,
}

#[async_trait]
impl<T, K> Interpret<T> for K8sResourceInterpret<K>
where
    T: Topology + K8sClient,
    K: Resource + Clone + Debug + Serialize + DeserializeOwned + Send + Sync + 'static,
    K::DynamicType: Default,
    K::Scope: ApplyScope,
{
    async fn execute(
        &self,
        _inventory: &Inventory,
        topology: &T,
    ) -> Result<Outcome, InterpretError> {
        self.status
            .track(async {
                let client = topology.k8s_client().await?;
                let applied =
                    apply_object(&client, &self.score.object, &self.score.field_manager).await?;
                Ok(applied.outcome())
            })
            .await
    }

    fn name(&self) -> String {
        describe_object(&self.score.object)
    }

    fn status(&self) -> InterpretStatus {
        self.status.get()
    }
}

/// What a server-side apply did to the object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// The object did not exist.
    Created,
    /// The object existed and the apply changed it (its resourceVersion moved).
    Updated,
    /// The object already had every applied field; the API server stored nothing.
    Unchanged,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Change::Created => "created",
            Change::Updated => "updated",
            Change::Unchanged => "unchanged",
        })
    }
}

/// The result of [`apply_object`].
#[derive(Debug, Clone)]
pub struct Applied<K> {
    /// The object as the API server stored it.
    pub object: K,
    /// What changed.
    pub change: Change,
    /// The object, described as `Kind namespace/name` or `Kind name`.
    pub description: String,
}

impl<K> Applied<K> {
    /// An [`Outcome`] saying what happened to the object (`Noop` when unchanged).
    pub fn outcome(&self) -> Outcome {
        let message = format!("{} {}", self.change, self.description);
        match self.change {
            Change::Unchanged => Outcome::noop(message),
            Change::Created | Change::Updated => Outcome::success(message),
        }
    }
}

/// Chooses the API endpoint for an object from its kind's scope, known at compile time.
///
/// Implemented for namespaced and cluster-scoped kinds. A namespaced object without a namespace,
/// or a cluster-scoped one with a namespace, is rejected naming `metadata.namespace`.
pub trait ApplyScope: ResourceScope + sealed::Sealed {
    /// The [`Api`] through which an object of kind `K` with `namespace` is read and applied.
    fn api_for<K>(
        client: kube::Client,
        namespace: Option<&str>,
        description: &str,
    ) -> Result<Api<K>, InterpretError>
    where
        K: Resource<Scope = Self>,
        K::DynamicType: Default;
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::NamespaceResourceScope {}
    impl Sealed for super::ClusterResourceScope {}
}

impl ApplyScope for NamespaceResourceScope {
    fn api_for<K>(
        client: kube::Client,
        namespace: Option<&str>,
        description: &str,
    ) -> Result<Api<K>, InterpretError>
    where
        K: Resource<Scope = Self>,
        K::DynamicType: Default,
    {
        match namespace {
            Some(namespace) if !namespace.is_empty() => Ok(Api::namespaced(client, namespace)),
            _ => Err(InterpretError::invalid_input(
                "metadata.namespace",
                format!(
                    "is missing on {description}, a namespaced kind; set it explicitly (harmony \
                     does not fall back to the kubeconfig's default namespace)"
                ),
            )),
        }
    }
}

impl ApplyScope for ClusterResourceScope {
    fn api_for<K>(
        client: kube::Client,
        namespace: Option<&str>,
        description: &str,
    ) -> Result<Api<K>, InterpretError>
    where
        K: Resource<Scope = Self>,
        K::DynamicType: Default,
    {
        match namespace {
            Some(namespace) if !namespace.is_empty() => Err(InterpretError::invalid_input(
                "metadata.namespace",
                format!("is `{namespace}` on {description}, a cluster-scoped kind; remove it"),
            )),
            _ => Ok(Api::all(client)),
        }
    }
}

/// Describes an object as `Kind namespace/name` (or `Kind name` without a namespace), for
/// Score names and messages.
pub fn describe_object<K>(object: &K) -> String
where
    K: Resource,
    K::DynamicType: Default,
{
    let kind = K::kind(&K::DynamicType::default()).into_owned();
    let name = object.meta().name.as_deref().unwrap_or("<unnamed>");
    match object.meta().namespace.as_deref() {
        Some(namespace) if !namespace.is_empty() => format!("{kind} {namespace}/{name}"),
        _ => format!("{kind} {name}"),
    }
}

/// Server-side applies `object` as `field_manager` (forcing ownership of conflicting fields)
/// and reports whether the API server changed anything.
///
/// Change detection compares `metadata.resourceVersion` before and after: the API server
/// stores nothing, and keeps the version, when an apply changes no field.
pub async fn apply_object<K>(
    client: &kube::Client,
    object: &K,
    field_manager: &str,
) -> Result<Applied<K>, InterpretError>
where
    K: Resource + Clone + Debug + Serialize + DeserializeOwned,
    K::DynamicType: Default,
    K::Scope: ApplyScope,
{
    let description = describe_object(object);
    if field_manager.is_empty() || field_manager.len() > MAX_FIELD_MANAGER_LEN {
        return Err(InterpretError::invalid_input(
            "field_manager",
            format!(
                "must be 1 to {MAX_FIELD_MANAGER_LEN} bytes long, got {} bytes (applying \
                 {description})",
                field_manager.len()
            ),
        ));
    }
    let name = match object.meta().name.as_deref() {
        Some(name) if !name.is_empty() => name,
        _ => {
            return Err(InterpretError::invalid_input(
                "metadata.name",
                format!("is missing on {description}; every applied object needs a name"),
            ));
        }
    };
    let api: Api<K> = <K::Scope as ApplyScope>::api_for(
        client.clone(),
        object.meta().namespace.as_deref(),
        &description,
    )?;

    let kube_error = |action: &str| {
        let object = description.clone();
        let action = action.to_string();
        move |source| InterpretError::Kube {
            action,
            object,
            source,
        }
    };
    let before = api
        .get_opt(name)
        .await
        .map_err(kube_error("get of"))?
        .and_then(|existing| existing.resource_version());
    let params = PatchParams::apply(field_manager).force();
    let stored = api
        .patch(name, &params, &Patch::Apply(object))
        .await
        .map_err(kube_error("server-side apply of"))?;
    let after = stored.resource_version();
    let change = match before {
        None => Change::Created,
        Some(before) if Some(&before) == after.as_ref() => Change::Unchanged,
        Some(_) => Change::Updated,
    };
    debug!(object = %description, %change, field_manager, "applied");
    Ok(Applied {
        object: stored,
        change,
        description,
    })
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
    use kube::api::ObjectMeta;

    use super::*;

    fn meta(name: &str, namespace: Option<&str>) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.into()),
            namespace: namespace.map(Into::into),
            ..ObjectMeta::default()
        }
    }

    #[test]
    fn describes_namespaced_and_cluster_objects() {
        let config_map = ConfigMap {
            metadata: meta("settings", Some("apps")),
            ..ConfigMap::default()
        };
        let namespace = Namespace {
            metadata: meta("apps", None),
            ..Namespace::default()
        };
        assert_eq!(describe_object(&config_map), "ConfigMap apps/settings");
        assert_eq!(describe_object(&namespace), "Namespace apps");
    }

    #[test]
    fn unchanged_apply_is_a_noop_outcome() {
        let applied = Applied {
            object: (),
            change: Change::Unchanged,
            description: "ConfigMap apps/settings".into(),
        };
        let outcome = applied.outcome();
        assert!(!outcome.changed());
        assert_eq!(outcome.message, "unchanged ConfigMap apps/settings");
    }

    /// A client whose requests can never be sent; the validations below fail before any.
    fn offline_client() -> kube::Client {
        let config = kube::Config::new("http://127.0.0.1:1".parse().expect("uri"));
        kube::Client::try_from(config).expect("client")
    }

    #[tokio::test]
    async fn rejects_namespaced_object_without_namespace() {
        let object = ConfigMap {
            metadata: meta("settings", None),
            ..ConfigMap::default()
        };
        let err = apply_object(&offline_client(), &object, DEFAULT_FIELD_MANAGER)
            .await
            .expect_err("namespace missing");
        assert!(
            matches!(err, InterpretError::InvalidInput { ref field, .. } if field == "metadata.namespace"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn rejects_cluster_scoped_object_with_namespace() {
        let object = Namespace {
            metadata: meta("apps", Some("default")),
            ..Namespace::default()
        };
        let err = apply_object(&offline_client(), &object, DEFAULT_FIELD_MANAGER)
            .await
            .expect_err("cluster-scoped with namespace");
        assert!(err.to_string().contains("cluster-scoped"), "{err}");
    }

    #[tokio::test]
    async fn rejects_object_without_name() {
        let object = ConfigMap {
            metadata: ObjectMeta {
                namespace: Some("apps".into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        };
        let err = apply_object(&offline_client(), &object, DEFAULT_FIELD_MANAGER)
            .await
            .expect_err("name missing");
        assert!(
            matches!(err, InterpretError::InvalidInput { ref field, .. } if field == "metadata.name"),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn rejects_empty_field_manager() {
        let object = ConfigMap {
            metadata: meta("settings", Some("apps")),
            ..ConfigMap::default()
        };
        let err = apply_object(&offline_client(), &object, "")
            .await
            .expect_err("empty manager");
        assert!(
            matches!(err, InterpretError::InvalidInput { ref field, .. } if field == "field_manager"),
            "{err:?}"
        );
    }
}

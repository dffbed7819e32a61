//! The Kubernetes objects of the operator, built from [`FleetOperatorScore`].
//!
//! RBAC is least privilege, derived from what the operator does: it reads and patches fleet
//! `Deployment`s (status, finalizer), and owns `Device` resources (server-side apply, status,
//! delete of stale ones). Nothing else.

use std::collections::BTreeMap;

use harmony::capability::K8sClient;
use harmony::interpret::InterpretError;
use harmony::inventory::Inventory;
use harmony::score::Score;
use harmony::scores::CrdScore;
use harmony::topology::Topology;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvFromSource, EnvVar, HTTPGetAction, Namespace,
    PodSecurityContext, PodSpec, PodTemplateSpec, Probe, Secret, SecretEnvSource, SecurityContext,
    ServiceAccount,
};
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, PolicyRule, RoleRef, Subject};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::FleetOperatorScore;
use crate::k8s::{self, Applier};

/// Name of the operator's service account, roles, Secret and Deployment.
pub const NAME: &str = "harmony-fleet-operator";
/// The Secret holding the operator's NATS settings as environment variables.
pub const NATS_SECRET: &str = "harmony-fleet-operator-nats";
/// The port of `/healthz`, `/readyz` and `/metrics` in the pod.
pub const HTTP_PORT: u16 = 8080;
/// The dashboard port in the pod.
pub const WEB_PORT: u16 = 18080;
const FLEET_GROUP: &str = "fleet.nationtech.io";

/// The operator's NATS connection, as its Secret carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatsSettings {
    /// Server URLs.
    pub urls: Vec<String>,
    /// User.
    pub user: String,
    /// Password.
    pub password: String,
}

/// Every object the install applies, in order.
#[derive(Debug, Clone)]
pub struct OperatorObjects {
    /// `Deployment` and `Device` CRDs.
    pub crds: Vec<CustomResourceDefinition>,
    /// The namespace.
    pub namespace: Namespace,
    /// The service account.
    pub service_account: ServiceAccount,
    /// What the operator may do.
    pub cluster_role: ClusterRole,
    /// The grant.
    pub cluster_role_binding: ClusterRoleBinding,
    /// NATS settings.
    pub nats_secret: Secret,
    /// The workload (applied in clusters only; a local process on `LocalTopology`).
    pub deployment: Deployment,
}

impl OperatorObjects {
    /// Applies everything but the workload — CRDs (waiting until established), namespace,
    /// service account, RBAC and the NATS Secret — the part the local and cluster installs
    /// share. Returns the applier holding what changed.
    pub async fn apply_access<T>(
        &self,
        client: &kube::Client,
        inventory: &Inventory,
        topology: &T,
    ) -> Result<Applier, InterpretError>
    where
        T: Topology + K8sClient + 'static,
    {
        let mut applier = Applier::default();
        let crds = CrdScore::new(self.crds.clone()).with_field_manager(crate::FIELD_MANAGER);
        let crd_outcome = Score::<T>::create_interpret(&crds)
            .execute(inventory, topology)
            .await?;
        applier.record(&crd_outcome);
        applier.apply(client, &self.namespace).await?;
        applier.apply(client, &self.service_account).await?;
        applier.apply(client, &self.cluster_role).await?;
        applier.apply(client, &self.cluster_role_binding).await?;
        applier.apply(client, &self.nats_secret).await?;
        Ok(applier)
    }
}

fn rule(resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(vec![FLEET_GROUP.to_owned()]),
        resources: Some(resources.iter().map(|s| (*s).to_owned()).collect()),
        verbs: verbs.iter().map(|s| (*s).to_owned()).collect(),
        ..PolicyRule::default()
    }
}

/// The operator's permissions.
pub fn policy_rules() -> Vec<PolicyRule> {
    vec![
        rule(
            &["deployments"],
            &["get", "list", "watch", "patch", "update"],
        ),
        rule(&["deployments/status"], &["get", "patch", "update"]),
        rule(&["deployments/finalizers"], &["update"]),
        rule(
            &["devices"],
            &[
                "get", "list", "watch", "create", "patch", "update", "delete",
            ],
        ),
        rule(&["devices/status"], &["get", "patch", "update"]),
        // The dashboard's audit trail: Events on Devices (`kubectl describe fleetdev`).
        PolicyRule {
            api_groups: Some(vec!["events.k8s.io".to_owned()]),
            resources: Some(vec!["events".to_owned()]),
            verbs: vec!["create".to_owned(), "patch".to_owned()],
            ..PolicyRule::default()
        },
    ]
}

/// The objects for `score` talking to NATS with `nats`.
pub fn objects(score: &FleetOperatorScore, nats: &NatsSettings) -> OperatorObjects {
    let ns = score.namespace.as_str();
    let mut env = BTreeMap::from([
        ("FLEET_NATS_URL".to_owned(), nats.urls.join(",")),
        ("FLEET_NATS_USER".to_owned(), nats.user.clone()),
        ("FLEET_NATS_PASSWORD".to_owned(), nats.password.clone()),
    ]);
    if let Some(watch) = &score.watch_namespace {
        env.insert("FLEET_NAMESPACE".to_owned(), watch.clone());
    }
    let mut args = vec![
        "run".to_owned(),
        format!("--listen=0.0.0.0:{HTTP_PORT}"),
        format!("--heartbeat-timeout-secs={}", score.heartbeat_timeout_secs),
        "--log-json".to_owned(),
    ];
    let mut ports = vec![ContainerPort {
        name: Some("http".into()),
        container_port: i32::from(HTTP_PORT),
        ..ContainerPort::default()
    }];
    if score.dashboard_port.is_some() {
        args.push(format!("--web-listen=0.0.0.0:{WEB_PORT}"));
        ports.push(ContainerPort {
            name: Some("web".into()),
            container_port: i32::from(WEB_PORT),
            ..ContainerPort::default()
        });
    }
    let probe = |path: &str| Probe {
        http_get: Some(HTTPGetAction {
            path: Some(path.to_owned()),
            port: IntOrString::String("http".into()),
            ..HTTPGetAction::default()
        }),
        period_seconds: Some(10),
        ..Probe::default()
    };
    let container = Container {
        name: "operator".into(),
        image: Some(score.image.clone()),
        args: Some(args),
        env_from: Some(vec![EnvFromSource {
            secret_ref: Some(SecretEnvSource {
                name: NATS_SECRET.into(),
                ..SecretEnvSource::default()
            }),
            ..EnvFromSource::default()
        }]),
        env: Some(vec![EnvVar {
            name: "RUST_LOG".into(),
            value: Some("info".into()),
            ..EnvVar::default()
        }]),
        ports: Some(ports),
        readiness_probe: Some(probe("/readyz")),
        liveness_probe: Some(probe("/healthz")),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".into()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        ..Container::default()
    };
    OperatorObjects {
        crds: harmony_fleet_operator::crd::crds(),
        namespace: Namespace {
            metadata: k8s::meta(ns, None, NAME),
            ..Namespace::default()
        },
        service_account: ServiceAccount {
            metadata: k8s::meta(NAME, Some(ns), NAME),
            ..ServiceAccount::default()
        },
        cluster_role: ClusterRole {
            metadata: k8s::meta(NAME, None, NAME),
            rules: Some(policy_rules()),
            ..ClusterRole::default()
        },
        cluster_role_binding: ClusterRoleBinding {
            metadata: k8s::meta(NAME, None, NAME),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "ClusterRole".into(),
                name: NAME.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: NAME.into(),
                namespace: Some(ns.to_owned()),
                ..Subject::default()
            }]),
        },
        nats_secret: Secret {
            metadata: k8s::meta(NATS_SECRET, Some(ns), NAME),
            data: Some(
                env.into_iter()
                    .map(|(k, v)| (k, ByteString(v.into_bytes())))
                    .collect(),
            ),
            ..Secret::default()
        },
        deployment: Deployment {
            metadata: k8s::meta(NAME, Some(ns), NAME),
            spec: Some(DeploymentSpec {
                replicas: Some(1),
                selector: LabelSelector {
                    match_labels: Some(BTreeMap::from([(
                        "app.kubernetes.io/name".to_owned(),
                        NAME.to_owned(),
                    )])),
                    ..LabelSelector::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(k8s::labels(NAME)),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        service_account_name: Some(NAME.into()),
                        containers: vec![container],
                        security_context: Some(PodSecurityContext {
                            run_as_non_root: Some(true),
                            run_as_user: Some(65532),
                            ..PodSecurityContext::default()
                        }),
                        ..PodSpec::default()
                    }),
                },
                ..DeploymentSpec::default()
            }),
            ..Deployment::default()
        },
    }
}

//! The Kubernetes objects of the operator, built from [`FleetOperatorScore`].
//!
//! RBAC is least privilege, derived from what the operator does: it reads and patches fleet
//! `Deployment`s (status, finalizer), and owns `Device` resources (server-side apply, status,
//! delete of stale ones); in the fleet namespace only, it reads bootstrap token Secrets and
//! updates their usage count (a namespaced `Role`, adr/0020), and holds its leader Lease
//! (another `Role`, adr/0024). Nothing else.
//!
//! In a cluster the operator's NATS identity and settings come from the Secret
//! [`OPERATOR_SECRET`], which `FleetNatsScore` issues (adr/0019): files mounted read-only,
//! settings as environment variables.

use std::collections::BTreeMap;

use harmony::capability::K8sClient;
use harmony::interpret::InterpretError;
use harmony::inventory::Inventory;
use harmony::score::Score;
use harmony::scores::CrdScore;
use harmony::topology::Topology;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Capabilities, Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, KeyToPath,
    Namespace, ObjectFieldSelector, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
    SecretKeySelector, SecretVolumeSource, SecurityContext, ServiceAccount, Volume, VolumeMount,
};
use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use harmony_fleet_operator::leader::LeaderConfig;

use super::FleetOperatorScore;
use crate::k8s::{self, Applier};
pub use crate::trust::cluster::OPERATOR_SECRET;
use crate::trust::cluster::operator_keys;

/// Name of the operator's service account, roles and Deployment.
pub const NAME: &str = "harmony-fleet-operator";
/// Where the pod mounts the files of [`OPERATOR_SECRET`].
pub const NATS_DIR: &str = "/etc/fleet-operator/nats";
/// The user the operator runs as (and the group that may read its mounted Secret).
const RUN_AS: i64 = 65532;
/// The port of `/healthz`, `/readyz` and `/metrics` in the pod.
pub const HTTP_PORT: u16 = 8080;
/// The dashboard port in the pod.
pub const WEB_PORT: u16 = 18080;
const FLEET_GROUP: &str = "fleet.nationtech.io";

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
    /// What the operator may do in the fleet namespace: bootstrap token Secrets.
    pub token_role: Role,
    /// The grant of [`Self::token_role`].
    pub token_role_binding: RoleBinding,
    /// What the operator may do in the fleet namespace: its leader Lease.
    pub leader_role: Role,
    /// The grant of [`Self::leader_role`].
    pub leader_role_binding: RoleBinding,
    /// The workload (applied in clusters only; a local process on `LocalTopology`).
    pub deployment: Deployment,
}

impl OperatorObjects {
    /// Applies everything but the workload — CRDs (waiting until established), namespace,
    /// service account and RBAC — the part the local and cluster installs share. Returns the applier holding what changed.
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
        applier.apply(client, &self.token_role).await?;
        applier.apply(client, &self.token_role_binding).await?;
        applier.apply(client, &self.leader_role).await?;
        applier.apply(client, &self.leader_role_binding).await?;
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

/// The operator's permissions in the fleet namespace: read a bootstrap token Secret and
/// count a use (`get`, `update`; no `list` or `watch`: it reads only the token it is shown).
pub fn token_rules() -> Vec<PolicyRule> {
    vec![PolicyRule {
        api_groups: Some(vec![String::new()]),
        resources: Some(vec!["secrets".to_owned()]),
        verbs: vec!["get".to_owned(), "update".to_owned()],
        ..PolicyRule::default()
    }]
}

/// The operator's permissions in the fleet namespace for leader election: its Lease only
/// (`create` cannot be limited by name; `get` and `update` are).
pub fn leader_rules() -> Vec<PolicyRule> {
    let rule = |verbs: &[&str], names: Option<Vec<String>>| PolicyRule {
        api_groups: Some(vec!["coordination.k8s.io".to_owned()]),
        resources: Some(vec!["leases".to_owned()]),
        resource_names: names,
        verbs: verbs.iter().map(|v| (*v).to_owned()).collect(),
        ..PolicyRule::default()
    };
    vec![
        rule(&["create"], None),
        rule(
            &["get", "update"],
            Some(vec![LeaderConfig::DEFAULT_NAME.to_owned()]),
        ),
    ]
}

/// Name of the operator's namespaced `Role` and `RoleBinding` for its leader Lease.
pub const LEADER_ROLE: &str = "harmony-fleet-operator-leader-election";

/// Name of the operator's namespaced `Role` and `RoleBinding` for bootstrap tokens.
pub const TOKEN_ROLE: &str = "harmony-fleet-operator-bootstrap-tokens";

fn from_secret(name: &str, key: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            secret_key_ref: Some(SecretKeySelector {
                name: OPERATOR_SECRET.to_owned(),
                key: key.to_owned(),
                optional: Some(false),
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

/// An environment variable from a field of the Pod (`metadata.name`, …).
fn from_pod(name: &str, field: &str) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                field_path: field.to_owned(),
                ..ObjectFieldSelector::default()
            }),
            ..EnvVarSource::default()
        }),
        ..EnvVar::default()
    }
}

fn value(name: &str, value: impl Into<String>) -> EnvVar {
    EnvVar {
        name: name.to_owned(),
        value: Some(value.into()),
        ..EnvVar::default()
    }
}

/// The objects for `score`.
pub fn objects(score: &FleetOperatorScore) -> OperatorObjects {
    let ns = score.namespace.as_str();
    let file = |key: &str| format!("{NATS_DIR}/{key}");
    let mut env = vec![
        value("RUST_LOG", "info"),
        from_secret("FLEET_NATS_URL", operator_keys::URL),
        value("FLEET_NATS_CREDS", file(operator_keys::CREDS)),
        value("FLEET_NATS_CA", file(operator_keys::CA)),
        value("FLEET_IDENTITY_SIGNER", file(operator_keys::SIGNER)),
        value(
            "FLEET_IDENTITY_SYSTEM_CREDS",
            file(operator_keys::SYSTEM_CREDS),
        ),
        // Only the operator reaches NATS inside the cluster: it creates the buckets.
        value("FLEET_CREATE_BUCKETS", "true"),
        from_secret("FLEET_BUCKET_REPLICAS", operator_keys::BUCKET_REPLICAS),
        from_secret("FLEET_FLEET_CAPACITY", operator_keys::FLEET_CAPACITY),
        // Bootstrap tokens live in the fleet namespace, where `token_role` lets it read them.
        value("FLEET_TOKEN_NAMESPACE", ns),
        // Replicas elect a leader on a Lease in the fleet namespace (`leader_role`), each
        // known by its Pod name.
        value("FLEET_LEADER_ELECT", "true"),
        value("FLEET_LEADER_ELECT_NAMESPACE", ns),
        from_pod("POD_NAME", "metadata.name"),
        from_pod("POD_NAMESPACE", "metadata.namespace"),
    ];
    if let Some(watch) = &score.watch_namespace {
        env.push(value("FLEET_NAMESPACE", watch.clone()));
    }
    if let Some(secs) = score.credential_lifetime_secs {
        env.push(value("FLEET_CREDENTIAL_LIFETIME_SECS", secs.to_string()));
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
        env: Some(env),
        ports: Some(ports),
        volume_mounts: Some(vec![VolumeMount {
            name: "nats".into(),
            mount_path: NATS_DIR.into(),
            read_only: Some(true),
            ..VolumeMount::default()
        }]),
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
        token_role: Role {
            metadata: k8s::meta(TOKEN_ROLE, Some(ns), NAME),
            rules: Some(token_rules()),
        },
        token_role_binding: RoleBinding {
            metadata: k8s::meta(TOKEN_ROLE, Some(ns), NAME),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: TOKEN_ROLE.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: NAME.into(),
                namespace: Some(ns.to_owned()),
                ..Subject::default()
            }]),
        },
        leader_role: Role {
            metadata: k8s::meta(LEADER_ROLE, Some(ns), NAME),
            rules: Some(leader_rules()),
        },
        leader_role_binding: RoleBinding {
            metadata: k8s::meta(LEADER_ROLE, Some(ns), NAME),
            role_ref: RoleRef {
                api_group: "rbac.authorization.k8s.io".into(),
                kind: "Role".into(),
                name: LEADER_ROLE.into(),
            },
            subjects: Some(vec![Subject {
                kind: "ServiceAccount".into(),
                name: NAME.into(),
                namespace: Some(ns.to_owned()),
                ..Subject::default()
            }]),
        },
        deployment: Deployment {
            metadata: k8s::meta(NAME, Some(ns), NAME),
            spec: Some(DeploymentSpec {
                replicas: Some(i32::try_from(score.replicas.max(1)).unwrap_or(i32::MAX)),
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
                        volumes: Some(vec![Volume {
                            name: "nats".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(OPERATOR_SECRET.into()),
                                items: Some(
                                    [
                                        operator_keys::CREDS,
                                        operator_keys::SYSTEM_CREDS,
                                        operator_keys::SIGNER,
                                        operator_keys::CA,
                                    ]
                                    .into_iter()
                                    .map(|key| KeyToPath {
                                        key: key.to_owned(),
                                        path: key.to_owned(),
                                        mode: None,
                                    })
                                    .collect(),
                                ),
                                // Owner and the pod's group only (fsGroup below).
                                default_mode: Some(0o440),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        }]),
                        security_context: Some(PodSecurityContext {
                            run_as_non_root: Some(true),
                            run_as_user: Some(RUN_AS),
                            fs_group: Some(RUN_AS),
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

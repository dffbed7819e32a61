//! [`FleetNatsScore`] on a cluster: a StatefulSet of `nats-server` (1 or 3 replicas, routes
//! between the pods for JetStream replication, mutually authenticated by certificate), its
//! Services, and the Secrets of [`crate::trust::cluster`]: the chain of trust (operator mode,
//! adr/0016: the configuration names no device), the TLS CA and certificate, the operator's
//! identity and the agents' bootstrap identity (adr/0019). Clients must use TLS.

use std::collections::BTreeMap;
use std::path::Path;

use harmony::capability::K8sClient;
use harmony::interpret::{InterpretError, Outcome};
use harmony::local::nats::{ClusterSection, NatsTls, ServerConfig};
use harmony::topologies::K8sAnywhereTopology;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetSpec};
use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EnvVar, EnvVarSource, HTTPGetAction, Namespace, ObjectFieldSelector,
    PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSpec, PodTemplateSpec, Probe, Secret,
    SecretVolumeSource, Service, ServicePort, ServiceSpec, Volume, VolumeMount,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use sha2::Digest as _;

use super::FleetNatsScore;
use crate::k8s::{self, Applier};
use crate::trust::cluster::{
    self as trust_cluster, BOOTSTRAP_SECRET, ClusterTrust, OPERATOR_SECRET, OperatorSettings,
    SERVER_TLS_SECRET,
};

/// The client Service (and StatefulSet) name.
pub const SERVICE: &str = "fleet-nats";
/// The headless Service giving each pod a stable DNS name for routes.
pub const HEADLESS_SERVICE: &str = "fleet-nats-headless";
/// The Secret holding `nats.conf`.
pub const CONFIG_SECRET: &str = "fleet-nats-config";
/// Where the pod mounts [`SERVER_TLS_SECRET`].
const TLS_DIR: &str = "/etc/nats/tls";
const COMPONENT: &str = "fleet-nats";
const CLIENT_PORT: u16 = 4222;
const ROUTE_PORT: u16 = 6222;
const MONITOR_PORT: u16 = 8222;
/// Pod template annotation holding the SHA-256 of `nats.conf`.
pub const CONFIG_SHA256_ANNOTATION: &str = "fleet.nationtech.io/config-sha256";
/// Replaced by `$POD_NAME` in the rendered file: nats-server expands environment variables
/// that appear unquoted, and each pod needs its own server name.
const POD_NAME_PLACEHOLDER: &str = "__POD_NAME__";

/// Every object the cluster install applies, in order.
#[derive(Debug, Clone)]
pub struct NatsObjects {
    /// The namespace.
    pub namespace: Namespace,
    /// [`CONFIG_SECRET`].
    pub config: Secret,
    /// [`HEADLESS_SERVICE`].
    pub headless: Service,
    /// [`SERVICE`].
    pub client: Service,
    /// The servers.
    pub statefulset: StatefulSet,
}

/// The objects for `score`, trusting `trust`'s operator. The configuration is the same text on
/// every run: no device, no credential, only the operator's and the accounts' public JWTs.
pub fn objects(
    score: &FleetNatsScore,
    trust: &ClusterTrust,
) -> Result<NatsObjects, InterpretError> {
    let ns = score.namespace.as_str();
    let replicas = score.replicas.count();
    let auth = trust.trust().auth_config();
    let tls = NatsTls {
        cert_file: Path::new(TLS_DIR).join("tls.crt"),
        key_file: Path::new(TLS_DIR).join("tls.key"),
        ca_file: Path::new(TLS_DIR).join("ca.crt"),
    };
    let cluster = (replicas > 1).then(|| ClusterSection {
        name: COMPONENT.to_owned(),
        port: ROUTE_PORT,
        routes: (0..replicas)
            .map(|i| format!("nats-route://{SERVICE}-{i}.{HEADLESS_SERVICE}.{ns}.svc:{ROUTE_PORT}"))
            .collect(),
    });
    let text = ServerConfig {
        server_name: POD_NAME_PLACEHOLDER,
        host: "0.0.0.0",
        port: CLIENT_PORT,
        monitor_port: MONITOR_PORT,
        store_dir: Path::new("/data/jetstream"),
        max_file_store: Some(score.storage_bytes()),
        cluster: cluster.as_ref(),
        auth: Some(&auth),
        tls: Some(&tls),
    }
    .render()
    .map_err(|e| InterpretError::failed(format!("rendering the NATS configuration: {e}")))?
    .replace(&format!("\"{POD_NAME_PLACEHOLDER}\""), "$POD_NAME");

    let config_sha256 = hex::encode(sha2::Sha256::digest(text.as_bytes()));
    let selector = BTreeMap::from([("app.kubernetes.io/name".to_owned(), COMPONENT.to_owned())]);
    let port = |name: &str, port: u16| ServicePort {
        name: Some(name.to_owned()),
        port: i32::from(port),
        target_port: Some(IntOrString::Int(i32::from(port))),
        ..ServicePort::default()
    };
    let container = Container {
        name: "nats".into(),
        image: Some(score.image.clone()),
        args: Some(vec!["--config".into(), "/etc/nats/nats.conf".into()]),
        env: Some(vec![EnvVar {
            name: "POD_NAME".into(),
            value_from: Some(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.name".into(),
                    ..ObjectFieldSelector::default()
                }),
                ..EnvVarSource::default()
            }),
            ..EnvVar::default()
        }]),
        ports: Some(vec![
            ContainerPort {
                name: Some("client".into()),
                container_port: i32::from(CLIENT_PORT),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("route".into()),
                container_port: i32::from(ROUTE_PORT),
                ..ContainerPort::default()
            },
            ContainerPort {
                name: Some("monitor".into()),
                container_port: i32::from(MONITOR_PORT),
                ..ContainerPort::default()
            },
        ]),
        readiness_probe: Some(Probe {
            http_get: Some(HTTPGetAction {
                path: Some("/healthz?js-enabled-only=true".into()),
                port: IntOrString::Int(i32::from(MONITOR_PORT)),
                ..HTTPGetAction::default()
            }),
            period_seconds: Some(5),
            ..Probe::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: "/etc/nats".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tls".into(),
                mount_path: TLS_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "data".into(),
                mount_path: "/data".into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    Ok(NatsObjects {
        namespace: Namespace {
            metadata: k8s::meta(ns, None, COMPONENT),
            ..Namespace::default()
        },
        config: Secret {
            metadata: k8s::meta(CONFIG_SECRET, Some(ns), COMPONENT),
            data: Some(BTreeMap::from([(
                "nats.conf".to_owned(),
                ByteString(text.into_bytes()),
            )])),
            ..Secret::default()
        },
        headless: Service {
            metadata: k8s::meta(HEADLESS_SERVICE, Some(ns), COMPONENT),
            spec: Some(ServiceSpec {
                cluster_ip: Some("None".into()),
                publish_not_ready_addresses: Some(true),
                selector: Some(selector.clone()),
                ports: Some(vec![
                    port("client", CLIENT_PORT),
                    port("route", ROUTE_PORT),
                    port("monitor", MONITOR_PORT),
                ]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        },
        client: Service {
            metadata: k8s::meta(SERVICE, Some(ns), COMPONENT),
            spec: Some(ServiceSpec {
                selector: Some(selector.clone()),
                ports: Some(vec![port("client", CLIENT_PORT)]),
                ..ServiceSpec::default()
            }),
            ..Service::default()
        },
        statefulset: StatefulSet {
            metadata: k8s::meta(SERVICE, Some(ns), COMPONENT),
            spec: Some(StatefulSetSpec {
                replicas: Some(i32::try_from(replicas).unwrap_or(1)),
                service_name: Some(HEADLESS_SERVICE.into()),
                pod_management_policy: Some("Parallel".into()),
                selector: LabelSelector {
                    match_labels: Some(selector),
                    ..LabelSelector::default()
                },
                template: PodTemplateSpec {
                    metadata: Some(ObjectMeta {
                        labels: Some(k8s::labels(COMPONENT)),
                        // A changed configuration (routes to new members, storage) is a changed
                        // template, so every server restarts with it, one at a time; the
                        // Secret alone would reach new pods only.
                        annotations: Some(BTreeMap::from([(
                            CONFIG_SHA256_ANNOTATION.to_owned(),
                            config_sha256.clone(),
                        )])),
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![container],
                        volumes: Some(vec![
                            Volume {
                                name: "config".into(),
                                secret: Some(SecretVolumeSource {
                                    secret_name: Some(CONFIG_SECRET.into()),
                                    ..SecretVolumeSource::default()
                                }),
                                ..Volume::default()
                            },
                            Volume {
                                name: "tls".into(),
                                secret: Some(SecretVolumeSource {
                                    secret_name: Some(SERVER_TLS_SECRET.into()),
                                    default_mode: Some(0o400),
                                    ..SecretVolumeSource::default()
                                }),
                                ..Volume::default()
                            },
                        ]),
                        ..PodSpec::default()
                    }),
                },
                volume_claim_templates: Some(vec![PersistentVolumeClaim {
                    metadata: ObjectMeta {
                        name: Some("data".into()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(PersistentVolumeClaimSpec {
                        access_modes: Some(vec!["ReadWriteOnce".into()]),
                        resources: Some(VolumeResourceRequirements {
                            requests: Some(BTreeMap::from([(
                                "storage".to_owned(),
                                Quantity(score.storage_bytes().to_string()),
                            )])),
                            ..VolumeResourceRequirements::default()
                        }),
                        ..PersistentVolumeClaimSpec::default()
                    }),
                    ..PersistentVolumeClaim::default()
                }]),
                ..StatefulSetSpec::default()
            }),
            ..StatefulSet::default()
        },
    })
}

/// The installed servers, if any.
async fn installed(
    client: &kube::Client,
    namespace: &str,
) -> Result<Option<StatefulSet>, InterpretError> {
    let api: kube::Api<StatefulSet> = kube::Api::namespaced(client.clone(), namespace);
    api.get_opt(SERVICE).await.map_err(|e| {
        InterpretError::failed(format!(
            "reading StatefulSet {namespace}/{SERVICE}: {e}; check the kubeconfig's access"
        ))
    })
}

/// The volume size of installed servers, if their StatefulSet says one.
fn volume_bytes(set: &StatefulSet) -> Option<u64> {
    let claim = set
        .spec
        .as_ref()?
        .volume_claim_templates
        .as_ref()?
        .first()?;
    let requests = claim.spec.as_ref()?.resources.as_ref()?.requests.as_ref()?;
    quantity_bytes(&requests.get("storage")?.0)
}

/// Bytes of a Kubernetes storage quantity (`2147483648`, `2Gi`, `500M`); `None` for forms a
/// volume size does not take (fractions, exponents, milli).
pub fn quantity_bytes(quantity: &str) -> Option<u64> {
    let split = quantity
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(quantity.len());
    let (digits, suffix) = quantity.split_at(split);
    let unit: u64 = match suffix {
        "" => 1,
        "k" => 1_000,
        "M" => 1_000_000,
        "G" => 1_000_000_000,
        "T" => 1_000_000_000_000,
        "Ki" => 1 << 10,
        "Mi" => 1 << 20,
        "Gi" => 1 << 30,
        "Ti" => 1 << 40,
        _ => return None,
    };
    digits.parse::<u64>().ok()?.checked_mul(unit)
}

/// The URLs clients in the cluster use (TLS required).
pub fn client_urls(namespace: &str) -> Vec<String> {
    vec![format!("tls://{SERVICE}.{namespace}.svc:{CLIENT_PORT}")]
}

pub(super) async fn deploy(
    score: &FleetNatsScore,
    topology: &K8sAnywhereTopology,
) -> Result<Outcome, InterpretError> {
    let client = topology.k8s_client().await?;
    let mut applier = Applier::default();
    let ns = score.namespace.as_str();
    let namespace = Namespace {
        metadata: k8s::meta(ns, None, COMPONENT),
        ..Namespace::default()
    };
    applier.apply(&client, &namespace).await?;
    // Before anything changes: the configuration and the operator's settings follow the
    // replica count.
    let installed_set = installed(&client, ns).await?;
    let installed_count = installed_set
        .as_ref()
        .and_then(|set| set.spec.as_ref()?.replicas)
        .and_then(|n| usize::try_from(n).ok());
    super::check_server_count(
        installed_count,
        score.replicas.count(),
        &format!(
            "install the new NATS in another namespace and move the devices to it; deleting the \
             StatefulSet {SERVICE} and its PVCs data-{SERVICE}-* loses the fleet's desired state \
             and reports"
        ),
    )?;
    let (trust, created) = ClusterTrust::load_or_create(&client, ns).await?;
    for detail in created {
        applier.note(detail);
    }
    let names = ClusterTrust::server_names(ns, SERVICE, HEADLESS_SERVICE);
    trust
        .ensure(
            &client,
            &mut applier,
            SERVER_TLS_SECRET,
            trust.server_tls(&names),
        )
        .await?;
    let settings = OperatorSettings {
        urls: client_urls(ns),
        bucket_replicas: score.replicas.count(),
        fleet_capacity: score.fleet_capacity,
    };
    trust
        .ensure(
            &client,
            &mut applier,
            OPERATOR_SECRET,
            trust.operator_secret(&settings),
        )
        .await?;
    trust
        .ensure(
            &client,
            &mut applier,
            BOOTSTRAP_SECRET,
            trust.bootstrap_secret(),
        )
        .await?;
    let kept;
    let score = match installed_set.as_ref().and_then(volume_bytes) {
        Some(bytes) if bytes != score.storage_bytes() => {
            applier.note(format!(
                "the servers keep their {bytes}-byte volumes ({} asked): a StatefulSet's volume claims cannot change; to grow them, resize the PVCs data-{SERVICE}-* and set `storage` to match",
                score.storage_bytes()
            ));
            kept = FleetNatsScore {
                storage: Some(bytes),
                ..score.clone()
            };
            &kept
        }
        _ => score,
    };
    let objects = objects(score, &trust)?;
    applier.apply(&client, &objects.config).await?;
    applier.apply(&client, &objects.headless).await?;
    applier.apply(&client, &objects.client).await?;
    applier.apply(&client, &objects.statefulset).await?;
    k8s::wait_statefulset_ready(
        &client,
        ns,
        SERVICE,
        i32::try_from(score.replicas.count()).unwrap_or(1),
        &k8s::selector(COMPONENT),
        score.smoke_timeout,
    )
    .await?;
    Ok(applier.outcome(format!(
        "NATS StatefulSet {ns}/{SERVICE} ready with {} replica(s) (TLS, operator mode; CA in Secret {})",
        score.replicas.count(),
        trust_cluster::CA_SECRET,
    )))
}

#[cfg(test)]
mod tests {
    use super::quantity_bytes;

    #[test]
    fn reads_volume_sizes_as_kubernetes_writes_them() {
        assert_eq!(quantity_bytes("2147483648"), Some(2 << 30));
        assert_eq!(quantity_bytes("2Gi"), Some(2 << 30));
        assert_eq!(quantity_bytes("1Gi"), Some(1 << 30));
        assert_eq!(quantity_bytes("500M"), Some(500_000_000));
        assert_eq!(quantity_bytes("1.5Gi"), None);
        assert_eq!(quantity_bytes("1e9"), None);
        assert_eq!(quantity_bytes("Gi"), None);
        assert_eq!(quantity_bytes("99999999999Ti"), None);
    }
}

//! [`FleetNatsScore`] on a cluster: a StatefulSet of `nats-server` (1 or 3 replicas, routes
//! between the pods for JetStream replication), its Services, the configuration Secret (users
//! from the contract's templates) and the credentials Secret the other components read.

use std::collections::BTreeMap;
use std::path::Path;

use harmony::capability::K8sClient;
use harmony::interpret::{InterpretError, Outcome};
use harmony::local::nats::{ClusterSection, ServerConfig};
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
use kube::Api;

use super::{FleetNatsScore, auth};
use crate::credentials::FleetCredentials;
use crate::k8s::{self, Applier};

/// The client Service (and StatefulSet) name.
pub const SERVICE: &str = "fleet-nats";
/// The headless Service giving each pod a stable DNS name for routes.
pub const HEADLESS_SERVICE: &str = "fleet-nats-headless";
/// The Secret holding [`FleetCredentials`] as `credentials.json`.
pub const CREDENTIALS_SECRET: &str = "fleet-nats-credentials";
/// The Secret holding `nats.conf`.
pub const CONFIG_SECRET: &str = "fleet-nats-config";
/// Key of the credentials in [`CREDENTIALS_SECRET`].
pub const CREDENTIALS_KEY: &str = "credentials.json";
const COMPONENT: &str = "fleet-nats";
const CLIENT_PORT: u16 = 4222;
const ROUTE_PORT: u16 = 6222;
const MONITOR_PORT: u16 = 8222;
/// Replaced by `$POD_NAME` in the rendered file: nats-server expands environment variables
/// that appear unquoted, and each pod needs its own server name.
const POD_NAME_PLACEHOLDER: &str = "__POD_NAME__";

/// Every object the cluster install applies, in order.
#[derive(Debug, Clone)]
pub struct NatsObjects {
    /// The namespace.
    pub namespace: Namespace,
    /// [`CREDENTIALS_SECRET`].
    pub credentials: Secret,
    /// [`CONFIG_SECRET`].
    pub config: Secret,
    /// [`HEADLESS_SERVICE`].
    pub headless: Service,
    /// [`SERVICE`].
    pub client: Service,
    /// The servers.
    pub statefulset: StatefulSet,
}

/// The objects for `score` with `credentials`.
pub fn objects(
    score: &FleetNatsScore,
    credentials: &FleetCredentials,
) -> Result<NatsObjects, InterpretError> {
    let ns = score.namespace.as_str();
    let replicas = score.replicas.count();
    let auth = auth::auth_config(credentials);
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
        cluster: cluster.as_ref(),
        auth: Some(&auth),
        tls: None,
    }
    .render()
    .map_err(|e| InterpretError::failed(format!("rendering the NATS configuration: {e}")))?
    .replace(&format!("\"{POD_NAME_PLACEHOLDER}\""), "$POD_NAME");

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
        credentials: Secret {
            metadata: k8s::meta(CREDENTIALS_SECRET, Some(ns), COMPONENT),
            data: Some(BTreeMap::from([(
                CREDENTIALS_KEY.to_owned(),
                ByteString(credentials.to_json().into_bytes()),
            )])),
            ..Secret::default()
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
                        ..ObjectMeta::default()
                    }),
                    spec: Some(PodSpec {
                        containers: vec![container],
                        volumes: Some(vec![Volume {
                            name: "config".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(CONFIG_SECRET.into()),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        }]),
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
                                Quantity("1Gi".into()),
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

/// The installation's credentials: read from [`CREDENTIALS_SECRET`] when it exists (so a
/// re-run never rotates passwords), generated otherwise; missing devices are enrolled.
pub async fn credentials(
    client: &kube::Client,
    namespace: &str,
    devices: &[harmony_fleet_contracts::DeviceId],
) -> Result<FleetCredentials, InterpretError> {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let existing = secrets
        .get_opt(CREDENTIALS_SECRET)
        .await
        .map_err(|source| InterpretError::Kube {
            action: "get of".into(),
            object: format!("Secret {namespace}/{CREDENTIALS_SECRET}"),
            source,
        })?;
    let mut credentials = match existing
        .as_ref()
        .and_then(|s| s.data.as_ref())
        .and_then(|d| d.get(CREDENTIALS_KEY))
    {
        Some(bytes) => FleetCredentials::from_json(
            &bytes.0,
            Path::new(&format!("Secret {namespace}/{CREDENTIALS_SECRET}")),
        )?,
        None => FleetCredentials::generate(&[]),
    };
    credentials.enroll(devices);
    Ok(credentials)
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
    let credentials = credentials(&client, ns, &score.devices).await?;
    let objects = objects(score, &credentials)?;
    applier.apply(&client, &objects.credentials).await?;
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
        "NATS StatefulSet {ns}/{SERVICE} ready with {} replica(s)",
        score.replicas.count()
    )))
}

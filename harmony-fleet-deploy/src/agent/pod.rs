//! [`FleetAgentScore`] with [`PodAgent`]: the agent as a one-replica Deployment per device,
//! its configuration in a Secret. The pod runs podman inside, so it is privileged; a real edge
//! node would rather run the agent on the host.
//!
//! Identity as on any device (adr/0016, adr/0019): the agent makes its own key in its data
//! directory, a `hostPath` on the node so the key outlives the Pod, and asks to enroll with
//! the bootstrap identity mounted from Secret [`BOOTSTRAP_SECRET`] (with the CA it verifies
//! NATS against). With [`PodAgent::pre_approve`] the Score approves the key the Pod asks with,
//! as the admin who created it would; otherwise the request waits for `device approve`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use harmony::capability::K8sClient;
use harmony::interpret::{InterpretError, Outcome};
use harmony::topology::Topology;
use harmony_fleet_operator::crd::Device;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, PodSpec, PodTemplateSpec, Secret, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::Api;

use super::config::{AgentConfig, AgentCredentials};
use super::{FleetAgentScore, PodAgent};
use crate::devices;
use crate::k8s::{self, Applier};
use crate::nats::NatsEndpoint;
use crate::trust::cluster::{self as trust_cluster, BOOTSTRAP_SECRET, bootstrap_keys};
use crate::wait::{self, Poll};

const COMPONENT: &str = "fleet-agent";
/// Where the pod mounts [`BOOTSTRAP_SECRET`].
const BOOTSTRAP_DIR: &str = "/etc/fleet-agent/nats";
/// The agent's data directory in the pod.
const DATA_DIR: &str = "/var/lib/fleet-agent";
/// podman's storage in the agent's container (an emptyDir: containerd's root is overlayfs).
const CONTAINERS_STORAGE: &str = "/var/lib/containers";
/// The node directory holding each Pod device's data (its key included).
pub const HOST_DATA_ROOT: &str = "/var/lib/harmony-fleet/agents";

/// The name of a device's Deployment and Secret.
pub fn object_name(score: &FleetAgentScore) -> String {
    format!("fleet-agent-{}", score.device_id)
}

/// The device's Secret (`agent.toml`, which holds no credential) and Deployment.
pub fn objects(score: &FleetAgentScore, pod: &PodAgent) -> (Secret, Deployment) {
    let name = object_name(score);
    let ns = pod.namespace.as_str();
    let bootstrap = PathBuf::from(BOOTSTRAP_DIR);
    let endpoint = NatsEndpoint::in_cluster(ns, Some(bootstrap.join(bootstrap_keys::CA)));
    let config = AgentConfig {
        device_id: score.device_id.to_string(),
        data_dir: PathBuf::from(DATA_DIR),
        heartbeat_interval_secs: score.heartbeat_interval_secs,
        nats_urls: endpoint.urls,
        nats_ca: endpoint.ca_file,
        labels: score.labels.clone(),
        credentials: AgentCredentials::Nkey {
            bootstrap_creds: bootstrap.join(bootstrap_keys::CREDS),
        },
        podman: BTreeMap::new(),
    };
    let mut labels = k8s::labels(COMPONENT);
    labels.insert(
        "fleet.nationtech.io/device".into(),
        score.device_id.to_string(),
    );
    let selector = BTreeMap::from([
        ("app.kubernetes.io/name".to_owned(), COMPONENT.to_owned()),
        (
            "fleet.nationtech.io/device".to_owned(),
            score.device_id.to_string(),
        ),
    ]);
    let meta = ObjectMeta {
        labels: Some(labels.clone()),
        ..k8s::meta(&name, Some(ns), COMPONENT)
    };
    let secret = Secret {
        metadata: meta.clone(),
        data: Some(BTreeMap::from([(
            "agent.toml".to_owned(),
            ByteString(config.render().into_bytes()),
        )])),
        ..Secret::default()
    };
    let container = Container {
        name: "agent".into(),
        image: Some(pod.image.clone()),
        args: Some(vec![
            "run".into(),
            "--config".into(),
            "/etc/fleet-agent/agent.toml".into(),
        ]),
        security_context: Some(SecurityContext {
            privileged: Some(true),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            VolumeMount {
                name: "config".into(),
                mount_path: "/etc/fleet-agent".into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "bootstrap".into(),
                mount_path: BOOTSTRAP_DIR.into(),
                read_only: Some(true),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "data".into(),
                mount_path: DATA_DIR.into(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "containers".into(),
                mount_path: CONTAINERS_STORAGE.into(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };
    let deployment = Deployment {
        metadata: meta,
        spec: Some(DeploymentSpec {
            replicas: Some(1),
            strategy: Some(k8s_openapi::api::apps::v1::DeploymentStrategy {
                type_: Some("Recreate".into()),
                ..Default::default()
            }),
            selector: LabelSelector {
                match_labels: Some(selector),
                ..LabelSelector::default()
            },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(vec![
                        Volume {
                            name: "config".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(name.clone()),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        Volume {
                            name: "bootstrap".into(),
                            secret: Some(SecretVolumeSource {
                                secret_name: Some(BOOTSTRAP_SECRET.into()),
                                default_mode: Some(0o400),
                                ..SecretVolumeSource::default()
                            }),
                            ..Volume::default()
                        },
                        // The device's disk: its key must outlive the Pod (another key under
                        // the same id is refused).
                        Volume {
                            name: "data".into(),
                            host_path: Some(HostPathVolumeSource {
                                path: format!("{HOST_DATA_ROOT}/{}", score.device_id),
                                type_: Some("DirectoryOrCreate".into()),
                            }),
                            ..Volume::default()
                        },
                        // podman's image and container storage: not on the container's own
                        // overlay root (podman: "'overlay' is not supported over overlayfs").
                        Volume {
                            name: "containers".into(),
                            empty_dir: Some(Default::default()),
                            ..Volume::default()
                        },
                    ]),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    };
    (secret, deployment)
}

pub(super) async fn deploy<T: Topology + K8sClient>(
    score: &FleetAgentScore,
    pod: &PodAgent,
    topology: &T,
) -> Result<Outcome, InterpretError> {
    let client = topology.k8s_client().await?;
    let ns = pod.namespace.as_str();
    let device = &score.device_id;
    trust_cluster::require_issued(&client, ns, BOOTSTRAP_SECRET).await?;
    let (secret, deployment) = objects(score, pod);
    let mut applier = Applier::default();
    applier.apply(&client, &secret).await?;
    applier.apply(&client, &deployment).await?;
    let name = object_name(score);
    k8s::wait_deployment_available(
        &client,
        ns,
        &name,
        &format!("fleet.nationtech.io/device={device}"),
        score.smoke_timeout,
    )
    .await?;
    let devices_api: Api<Device> = Api::all(client.clone());
    if pod.pre_approve {
        let current = devices_api
            .get_opt(device.as_str())
            .await
            .map_err(|source| InterpretError::Kube {
                action: "get of".into(),
                object: format!("Device {device}"),
                source,
            })?;
        if current.as_ref().is_none_or(|d| d.spec.public_key.is_none()) {
            let key = wait::until(
                &format!(
                    "device {device} to ask to enroll (its Pod's agent makes its key and asks)"
                ),
                score.smoke_timeout,
                || {
                    let api = devices_api.clone();
                    async move {
                        match api.get_opt(device.as_str()).await {
                            Ok(Some(found)) if devices::is_pending(&found) => {
                                match devices::key_to_approve(&found, None) {
                                    Ok(key) => Poll::Ready(key),
                                    Err(e) => Poll::Failed(e.to_string()),
                                }
                            }
                            Ok(_) => Poll::Pending("no enrollment request yet".into()),
                            Err(e) => Poll::Pending(e.to_string()),
                        }
                    }
                },
            )
            .await?;
            devices::approve(&client, device.as_str(), Some(&key)).await?;
            applier.note(format!("key {key} of device {device} approved"));
        }
    }
    wait::until(
        &format!("device {device} to be online (Device.status.online)"),
        score.smoke_timeout,
        || {
            let api = devices_api.clone();
            async move {
                match api.get_opt(device.as_str()).await {
                    Ok(Some(found)) if found.status.as_ref().is_some_and(|s| s.online) => {
                        Poll::Ready(())
                    }
                    Ok(Some(found)) if devices::is_pending(&found) => Poll::Pending(
                        "its enrollment waits for approval: `harmony-fleet-deploy device approve`"
                            .into(),
                    ),
                    Ok(_) => Poll::Pending("not online yet".into()),
                    Err(e) => Poll::Pending(e.to_string()),
                }
            }
        },
    )
    .await?;
    Ok(applier.outcome(format!(
        "agent Deployment {ns}/{name} available, device {device} online"
    )))
}

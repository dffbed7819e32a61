//! [`FleetAgentScore`] with [`PodAgent`]: the agent as a one-replica Deployment per device,
//! its configuration (with the device's NATS credentials) in a Secret. The pod runs podman
//! inside, so it is privileged; a real edge node would rather run the agent on the host.

use std::collections::BTreeMap;
use std::path::PathBuf;

use harmony::capability::K8sClient;
use harmony::interpret::{InterpretError, Outcome};
use harmony::topology::Topology;
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{
    Container, EmptyDirVolumeSource, PodSpec, PodTemplateSpec, Secret, SecretVolumeSource,
    SecurityContext, Volume, VolumeMount,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};

use super::config::AgentConfig;
use super::{FleetAgentScore, PodAgent};
use crate::credentials::Login;
use crate::error::DeployError;
use crate::k8s::{self, Applier};
use crate::nats::{NatsEndpoint, cluster as nats_cluster};

const COMPONENT: &str = "fleet-agent";

/// The name of a device's Deployment and Secret.
pub fn object_name(score: &FleetAgentScore) -> String {
    format!("fleet-agent-{}", score.device_id)
}

/// The device's Secret (`agent.toml`) and Deployment.
pub fn objects(score: &FleetAgentScore, pod: &PodAgent, login: Login) -> (Secret, Deployment) {
    let name = object_name(score);
    let ns = pod.namespace.as_str();
    let config = AgentConfig {
        device_id: score.device_id.to_string(),
        data_dir: PathBuf::from("/var/lib/fleet-agent"),
        heartbeat_interval_secs: score.heartbeat_interval_secs,
        nats_urls: NatsEndpoint::in_cluster(ns).urls,
        nats_ca: None,
        labels: score.labels.clone(),
        credentials: super::config::AgentCredentials::Password(login),
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
                name: "data".into(),
                mount_path: "/var/lib/fleet-agent".into(),
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
                            name: "data".into(),
                            empty_dir: Some(EmptyDirVolumeSource::default()),
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
    let credentials = nats_cluster::credentials(&client, ns, &[]).await?;
    let login =
        credentials
            .device(&score.device_id)
            .ok_or_else(|| DeployError::DeviceNotEnrolled {
                device: score.device_id.to_string(),
            })?;
    let (secret, deployment) = objects(score, pod, login);
    let mut applier = Applier::default();
    applier.apply(&client, &secret).await?;
    applier.apply(&client, &deployment).await?;
    let name = object_name(score);
    k8s::wait_deployment_available(
        &client,
        ns,
        &name,
        &format!("fleet.nationtech.io/device={}", score.device_id),
        score.smoke_timeout,
    )
    .await?;
    Ok(applier.outcome(format!("agent Deployment {ns}/{name} available")))
}

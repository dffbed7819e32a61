//! The cluster Scores applied to a real kube-apiserver (the local control plane). There is no
//! kubelet here, so pods never run: each Score must fail its smoke test with a message saying
//! what it waited for, and the objects it applied are checked as the API server stored them.

use std::time::Duration;

use harmony::interpret::{InterpretError, Outcome};
use harmony::inventory::Inventory;
use harmony::local::{ControlPlaneOptions, LocalControlPlane};
use harmony::score::Score;
use harmony::topologies::K8sAnywhereTopology;
use harmony::topology::Topology;
use harmony_fleet_contracts::DeviceId;
use harmony_fleet_deploy::agent::{FleetAgentScore, PodAgent};
use harmony_fleet_deploy::nats::{FleetNatsScore, NatsReplicas, cluster as nats_cluster};
use harmony_fleet_deploy::operator::FleetOperatorScore;
use harmony_fleet_deploy::operator::objects::NAME;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{Secret, Service};
use k8s_openapi::api::rbac::v1::ClusterRole;
use kube::Api;

async fn run(
    score: &dyn Score<K8sAnywhereTopology>,
    topology: &K8sAnywhereTopology,
) -> Result<Outcome, InterpretError> {
    score
        .create_interpret()
        .execute(&Inventory::new("test"), topology)
        .await
}

fn device(id: &str) -> DeviceId {
    id.parse().expect("device id")
}

#[tokio::test]
async fn cluster_scores_apply_every_object_and_fail_clearly_without_a_kubelet() {
    let plane = LocalControlPlane::start(ControlPlaneOptions::default())
        .await
        .expect("control plane");
    let topology = K8sAnywhereTopology::from_kubeconfig(plane.kubeconfig_path());
    topology.ensure_ready().await.expect("topology");
    let client = plane.client().await.expect("client");
    let ns = "fleet-system";

    // NATS: three replicas, two enrolled devices.
    let mut nats = FleetNatsScore::new(vec![device("pi-1"), device("pi-2")])
        .with_replicas(NatsReplicas::Three);
    nats.smoke_timeout = Duration::from_secs(2);
    let err = run(&nats, &topology).await.expect_err("no kubelet").chain();
    assert!(
        err.contains("StatefulSet fleet-system/fleet-nats to have 3 ready replica(s)"),
        "{err}"
    );
    let sets: Api<StatefulSet> = Api::namespaced(client.clone(), ns);
    let set = sets.get("fleet-nats").await.expect("statefulset stored");
    let spec = set.spec.expect("spec");
    assert_eq!(spec.replicas, Some(3));
    assert_eq!(spec.service_name.as_deref(), Some("fleet-nats-headless"));
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let config = secrets
        .get(nats_cluster::CONFIG_SECRET)
        .await
        .expect("config");
    let conf = String::from_utf8(config.data.expect("data")["nats.conf"].0.clone()).expect("utf8");
    assert!(conf.contains("server_name: $POD_NAME"), "{conf}");
    assert!(
        conf.contains("fleet-nats-2.fleet-nats-headless.fleet-system.svc:6222"),
        "{conf}"
    );
    assert!(conf.contains("\"pi-2\""), "device user missing: {conf}");
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services.get("fleet-nats").await.expect("client service");
    services
        .get("fleet-nats-headless")
        .await
        .expect("headless service");

    // A second run keeps the stored objects (and the generated passwords) as they are.
    let before = sets
        .get("fleet-nats")
        .await
        .expect("get")
        .metadata
        .resource_version;
    let credentials_before = secrets
        .get(nats_cluster::CREDENTIALS_SECRET)
        .await
        .expect("get")
        .data;
    let _ = run(&nats, &topology).await;
    let after = sets
        .get("fleet-nats")
        .await
        .expect("get")
        .metadata
        .resource_version;
    assert_eq!(before, after, "a second apply changed the StatefulSet");
    let credentials_after = secrets
        .get(nats_cluster::CREDENTIALS_SECRET)
        .await
        .expect("get")
        .data;
    assert_eq!(
        credentials_before, credentials_after,
        "passwords were rotated"
    );

    // Operator: CRDs, RBAC, Secret, Deployment.
    let operator = FleetOperatorScore {
        image: "registry.example/harmony-fleet-operator:1.0".into(),
        smoke_timeout: Duration::from_secs(2),
        ..FleetOperatorScore::default()
    };
    let err = run(&operator, &topology)
        .await
        .expect_err("no kubelet")
        .chain();
    assert!(
        err.contains("Deployment fleet-system/harmony-fleet-operator to be available"),
        "{err}"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), ns);
    let stored = deployments.get(NAME).await.expect("operator deployment");
    let pod = stored.spec.expect("spec").template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some(NAME));
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/harmony-fleet-operator:1.0")
    );
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role = roles.get(NAME).await.expect("cluster role");
    // What the API server stored, against the permissions written out here (not against
    // `policy_rules()` itself): a widened or narrowed rule fails this line.
    let stored: Vec<(Vec<String>, Vec<String>, Vec<String>)> = role
        .rules
        .expect("rules")
        .into_iter()
        .map(|r| {
            (
                r.api_groups.unwrap_or_default(),
                r.resources.unwrap_or_default(),
                r.verbs,
            )
        })
        .collect();
    let rule = |resource: &str, verbs: &[&str]| {
        (
            vec!["fleet.nationtech.io".to_owned()],
            vec![resource.to_owned()],
            verbs.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        stored,
        vec![
            rule("deployments", &["get", "list", "watch", "patch", "update"]),
            rule("deployments/status", &["get", "patch", "update"]),
            rule("deployments/finalizers", &["update"]),
            rule(
                "devices",
                &[
                    "get", "list", "watch", "create", "patch", "update", "delete"
                ]
            ),
            rule("devices/status", &["get", "patch", "update"]),
            (
                vec!["events.k8s.io".to_owned()],
                vec!["events".to_owned()],
                vec!["create".to_owned(), "patch".to_owned()],
            ),
        ]
    );
    let nats_secret = secrets
        .get("harmony-fleet-operator-nats")
        .await
        .expect("nats secret");
    let data = nats_secret.data.expect("data");
    assert_eq!(data["FLEET_NATS_USER"].0, b"fleet-operator");
    assert_eq!(
        String::from_utf8_lossy(&data["FLEET_NATS_URL"].0),
        "nats://fleet-nats.fleet-system.svc:4222"
    );

    // Agents as Pods: an enrolled device gets its Deployment; an unknown one a clear error.
    let mut agent = FleetAgentScore::pod(device("pi-1"), Default::default(), PodAgent::default());
    agent.smoke_timeout = Duration::from_secs(1);
    let err = run(&agent, &topology)
        .await
        .expect_err("no kubelet")
        .chain();
    assert!(err.contains("fleet-agent-pi-1 to be available"), "{err}");
    let agent_deployment = deployments
        .get("fleet-agent-pi-1")
        .await
        .expect("agent deployment");
    assert_eq!(agent_deployment.spec.and_then(|s| s.replicas), Some(1));
    let agent_config = secrets.get("fleet-agent-pi-1").await.expect("agent secret");
    let toml =
        String::from_utf8(agent_config.data.expect("data")["agent.toml"].0.clone()).expect("utf8");
    harmony_fleet_agent::config::Config::parse(&toml, std::path::Path::new("agent.toml"))
        .expect("the agent accepts the generated configuration");

    let stranger = FleetAgentScore::pod(device("pi-9"), Default::default(), PodAgent::default());
    let err = run(&stranger, &topology)
        .await
        .expect_err("not enrolled")
        .chain();
    assert!(err.contains("device `pi-9` has no NATS user"), "{err}");

    let local = FleetAgentScore::local(device("pi-1"), Default::default());
    let err = run(&local, &topology)
        .await
        .expect_err("local on a cluster")
        .chain();
    assert!(err.contains("FleetAgentTarget::Pod"), "{err}");
}

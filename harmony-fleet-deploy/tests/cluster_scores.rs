//! The cluster Scores applied to a real kube-apiserver (the local control plane). There is no
//! kubelet here, so pods never run: each Score must fail its smoke test with a message saying
//! what it waited for, and the objects it applied are checked as the API server stored them:
//! operator-mode NATS over TLS (adr/0019), no password or device anywhere, roots created once.

use std::time::Duration;

use harmony::interpret::{InterpretError, Outcome};
use harmony::inventory::Inventory;
use harmony::local::certs::CaPem;
use harmony::local::{ControlPlaneOptions, LocalControlPlane};
use harmony::score::Score;
use harmony::topologies::K8sAnywhereTopology;
use harmony::topology::Topology;
use harmony_fleet_contracts::DeviceId;
use harmony_fleet_deploy::agent::{FleetAgentScore, PodAgent};
use harmony_fleet_deploy::nats::{FleetNatsScore, NatsReplicas, cluster as nats_cluster};
use harmony_fleet_deploy::operator::FleetOperatorScore;
use harmony_fleet_deploy::operator::objects::{LEADER_ROLE, NAME, TOKEN_ROLE};
use harmony_fleet_deploy::trust::cluster::{
    BOOTSTRAP_SECRET, CA_SECRET, OPERATOR_SECRET, SERVER_TLS_SECRET, TRUST_SECRET, operator_keys,
};
use k8s_openapi::ByteString;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret, Service};
use k8s_openapi::api::rbac::v1::{ClusterRole, Role, RoleBinding};
use kube::Api;
use kube::api::PostParams;

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

fn text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().expect("data")[key].0.clone()).expect("utf8")
}

/// A role's rules as (API groups, resources, verbs), to compare with literal expectations.
fn rule_triples(
    rules: Option<Vec<k8s_openapi::api::rbac::v1::PolicyRule>>,
) -> Vec<(Vec<String>, Vec<String>, Vec<String>)> {
    rules
        .expect("rules")
        .into_iter()
        .map(|r| {
            (
                r.api_groups.unwrap_or_default(),
                r.resources.unwrap_or_default(),
                r.verbs,
            )
        })
        .collect()
}

fn version(secret: &Secret) -> Option<String> {
    secret.metadata.resource_version.clone()
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
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);

    // Components before NATS: the identity NATS issues is missing, and the error says so.
    let operator = FleetOperatorScore {
        image: "registry.example/harmony-fleet-operator:1.0".into(),
        smoke_timeout: Duration::from_secs(2),
        ..FleetOperatorScore::default()
    };
    let err = run(&operator, &topology)
        .await
        .expect_err("NATS first")
        .chain();
    assert!(
        err.contains("harmony-fleet-operator-nats does not exist: FleetNatsScore issues it"),
        "{err}"
    );

    // The platform's own CA, created before the install: NATS' certificate chains to it.
    let namespaces: Api<Namespace> = Api::all(client.clone());
    namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: kube::api::ObjectMeta {
                    name: Some(ns.into()),
                    ..Default::default()
                },
                ..Namespace::default()
            },
        )
        .await
        .expect("namespace");
    let platform_ca = CaPem::generate("platform-ca").expect("ca");
    secrets
        .create(
            &PostParams::default(),
            &Secret {
                metadata: kube::api::ObjectMeta {
                    name: Some(CA_SECRET.into()),
                    ..Default::default()
                },
                type_: Some("kubernetes.io/tls".into()),
                data: Some(
                    [
                        (
                            "tls.crt".to_owned(),
                            ByteString(platform_ca.cert.clone().into_bytes()),
                        ),
                        (
                            "tls.key".to_owned(),
                            ByteString(platform_ca.key.clone().into_bytes()),
                        ),
                    ]
                    .into(),
                ),
                ..Secret::default()
            },
        )
        .await
        .expect("CA secret");

    // NATS: three replicas.
    let mut nats = FleetNatsScore::new().with_replicas(NatsReplicas::Three);
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
    let volumes = spec.template.spec.expect("pod").volumes.expect("volumes");
    assert!(
        volumes
            .iter()
            .any(|v| v.secret.as_ref().and_then(|s| s.secret_name.as_deref())
                == Some(SERVER_TLS_SECRET)),
        "the servers mount their certificate: {volumes:?}"
    );
    let config = secrets
        .get(nats_cluster::CONFIG_SECRET)
        .await
        .expect("config");
    let conf = text(&config, "nats.conf");
    assert!(conf.contains("server_name: $POD_NAME"), "{conf}");
    assert!(
        conf.contains("fleet-nats-2.fleet-nats-headless.fleet-system.svc:6222"),
        "{conf}"
    );
    assert!(conf.contains("operator:"), "operator mode: {conf}");
    // The servers restart on a new configuration (e.g. 1 → 3 replicas): its digest is in the
    // pod template. Their storage is explicit and matches their volumes (adr/0042).
    let digest = spec
        .template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .and_then(|a| a.get(nats_cluster::CONFIG_SHA256_ANNOTATION))
        .cloned();
    {
        use sha2::Digest as _;
        assert_eq!(
            digest,
            Some(hex::encode(sha2::Sha256::digest(conf.as_bytes()))),
            "the pod template carries the configuration's digest"
        );
    }
    assert!(
        conf.contains(&format!("max_file_store: {}", nats.storage_bytes())),
        "{conf}"
    );
    assert!(conf.contains("resolver"), "{conf}");
    assert!(
        conf.contains("/etc/nats/tls/tls.crt"),
        "TLS for clients: {conf}"
    );
    assert!(
        conf.contains("verify: true"),
        "routes verify each other: {conf}"
    );
    for absent in ["password", "pi-1", "SEED"] {
        assert!(!conf.contains(absent), "{absent} in nats.conf: {conf}");
    }
    let tls = secrets.get(SERVER_TLS_SECRET).await.expect("server tls");
    assert_eq!(
        text(&tls, "ca.crt"),
        platform_ca.cert,
        "issued by the platform's CA"
    );
    let operator_secret = secrets
        .get(OPERATOR_SECRET)
        .await
        .expect("operator identity");
    assert_eq!(
        text(&operator_secret, operator_keys::URL),
        "tls://fleet-nats.fleet-system.svc:4222"
    );
    assert_eq!(text(&operator_secret, operator_keys::BUCKET_REPLICAS), "3");
    assert!(text(&operator_secret, operator_keys::CREDS).contains("BEGIN NATS USER JWT"));
    let bootstrap = secrets
        .get(BOOTSTRAP_SECRET)
        .await
        .expect("bootstrap identity");
    assert!(text(&bootstrap, "bootstrap.creds").contains("BEGIN NATS USER JWT"));
    assert_eq!(text(&bootstrap, "ca.crt"), platform_ca.cert);
    let services: Api<Service> = Api::namespaced(client.clone(), ns);
    services.get("fleet-nats").await.expect("client service");
    services
        .get("fleet-nats-headless")
        .await
        .expect("headless service");

    // A second run changes nothing: no new trust, no re-issued identity, same StatefulSet.
    let versions = |names: &'static [&'static str]| {
        let secrets = secrets.clone();
        async move {
            let mut out = Vec::new();
            for name in names {
                out.push(version(&secrets.get(name).await.expect("secret")));
            }
            out
        }
    };
    const KEPT: &[&str] = &[
        TRUST_SECRET,
        CA_SECRET,
        SERVER_TLS_SECRET,
        OPERATOR_SECRET,
        BOOTSTRAP_SECRET,
        nats_cluster::CONFIG_SECRET,
    ];
    let before = versions(KEPT).await;
    let set_before = sets
        .get("fleet-nats")
        .await
        .expect("get")
        .metadata
        .resource_version;
    let _ = run(&nats, &topology).await;
    assert_eq!(
        before,
        versions(KEPT).await,
        "a second run rewrote a Secret"
    );
    let set_after = sets
        .get("fleet-nats")
        .await
        .expect("get")
        .metadata
        .resource_version;
    assert_eq!(
        set_before, set_after,
        "a second apply changed the StatefulSet"
    );

    // Operator: CRDs, RBAC, the Deployment mounting its identity.
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
    let spec = stored.spec.expect("spec");
    assert_eq!(spec.replicas, Some(2), "two replicas, one leader");
    let pod = spec.template.spec.expect("pod spec");
    assert_eq!(pod.service_account_name.as_deref(), Some(NAME));
    assert_eq!(
        pod.containers[0].image.as_deref(),
        Some("registry.example/harmony-fleet-operator:1.0")
    );
    let env: Vec<(String, Option<String>)> = pod.containers[0]
        .env
        .clone()
        .unwrap_or_default()
        .into_iter()
        .map(|e| (e.name, e.value))
        .collect();
    for (name, value) in [
        (
            "FLEET_NATS_CREDS",
            "/etc/fleet-operator/nats/operator.creds",
        ),
        ("FLEET_NATS_CA", "/etc/fleet-operator/nats/ca.crt"),
        (
            "FLEET_IDENTITY_SIGNER",
            "/etc/fleet-operator/nats/signer.json",
        ),
        ("FLEET_CREATE_BUCKETS", "true"),
        ("FLEET_TOKEN_NAMESPACE", ns),
        ("FLEET_LEADER_ELECT", "true"),
        ("FLEET_LEADER_ELECT_NAMESPACE", ns),
    ] {
        assert!(
            env.contains(&(name.to_owned(), Some(value.to_owned()))),
            "{name}={value} missing: {env:?}"
        );
    }
    assert!(
        pod.volumes.expect("volumes").iter().any(|v| v
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            == Some(OPERATOR_SECRET))
    );
    let roles: Api<ClusterRole> = Api::all(client.clone());
    let role = roles.get(NAME).await.expect("cluster role");
    // What the API server stored, against the permissions written out here (not against
    // `policy_rules()` itself): a widened or narrowed rule fails this line.
    let stored = rule_triples(role.rules);
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
    // Secrets only in the fleet namespace, and only get/update (bootstrap tokens, adr/0020).
    let token_role = Api::<Role>::namespaced(client.clone(), ns)
        .get(TOKEN_ROLE)
        .await
        .expect("token role");
    let stored = rule_triples(token_role.rules);
    assert_eq!(
        stored,
        vec![(
            vec![String::new()],
            vec!["secrets".to_owned()],
            vec!["get".to_owned(), "update".to_owned()],
        )]
    );
    let binding = Api::<RoleBinding>::namespaced(client.clone(), ns)
        .get(TOKEN_ROLE)
        .await
        .expect("token role binding");
    assert_eq!(
        (
            binding.role_ref.kind.as_str(),
            binding.role_ref.name.as_str()
        ),
        ("Role", TOKEN_ROLE)
    );
    let subject = &binding.subjects.expect("subjects")[0];
    assert_eq!(
        (subject.name.as_str(), subject.namespace.as_deref()),
        (NAME, Some(ns))
    );
    // Leader election: create a Lease, and get/update only the operator's own (adr/0024).
    let leader_role = Api::<Role>::namespaced(client.clone(), ns)
        .get(LEADER_ROLE)
        .await
        .expect("leader role");
    let rules = leader_role.rules.expect("rules");
    let lease = |verbs: &[&str], names: Option<Vec<String>>| {
        (
            vec!["coordination.k8s.io".to_owned()],
            vec!["leases".to_owned()],
            names,
            verbs.iter().map(|v| (*v).to_owned()).collect::<Vec<_>>(),
        )
    };
    assert_eq!(
        rules
            .into_iter()
            .map(|r| (
                r.api_groups.unwrap_or_default(),
                r.resources.unwrap_or_default(),
                r.resource_names,
                r.verbs
            ))
            .collect::<Vec<_>>(),
        vec![
            lease(&["create"], None),
            lease(
                &["get", "update"],
                Some(vec!["harmony-fleet-operator".to_owned()])
            ),
        ]
    );
    let binding = Api::<RoleBinding>::namespaced(client.clone(), ns)
        .get(LEADER_ROLE)
        .await
        .expect("leader role binding");
    assert_eq!(binding.role_ref.name, LEADER_ROLE);
    // As the operator's ServiceAccount (impersonated): its own Lease may be created, read and
    // updated; another Lease in the namespace may not be updated (RBAC cannot limit `create`
    // by name, so creating is allowed).
    let kubeconfig =
        kube::config::Kubeconfig::read_from(plane.kubeconfig_path()).expect("kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("config");
    config.auth_info.impersonate = Some(format!("system:serviceaccount:{ns}:{NAME}"));
    let operator = kube::Client::try_from(config).expect("impersonating client");
    let lease = |name: &str| Lease {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Lease::default()
    };
    let as_admin: Api<Lease> = Api::namespaced(client.clone(), ns);
    let as_operator: Api<Lease> = Api::namespaced(operator, ns);
    as_admin
        .create(&PostParams::default(), &lease("someone-else"))
        .await
        .expect("another component's Lease");
    let mut own = as_operator
        .create(&PostParams::default(), &lease(NAME))
        .await
        .expect("the operator creates its Lease");
    own.spec = Some(Default::default());
    as_operator
        .replace(NAME, &PostParams::default(), &own)
        .await
        .expect("the operator updates its own Lease");
    let mut other = as_admin.get("someone-else").await.expect("get as admin");
    other.spec = Some(Default::default());
    match as_operator
        .replace("someone-else", &PostParams::default(), &other)
        .await
    {
        Err(kube::Error::Api(status)) => assert_eq!(status.code, 403, "{status:?}"),
        other => panic!("the operator updated another Lease: {other:?}"),
    }

    // Agents as Pods: the agent makes its own key and enrolls with the bootstrap identity.
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
    let agent_spec = agent_deployment.spec.expect("spec");
    assert_eq!(agent_spec.replicas, Some(1));
    let agent_volumes = agent_spec
        .template
        .spec
        .expect("pod")
        .volumes
        .expect("volumes");
    assert!(
        agent_volumes.iter().any(|v| v
            .host_path
            .as_ref()
            .is_some_and(|h| h.path == "/var/lib/harmony-fleet/agents/pi-1")),
        "the key lives on the node's disk: {agent_volumes:?}"
    );
    let agent_config = secrets.get("fleet-agent-pi-1").await.expect("agent secret");
    let toml = text(&agent_config, "agent.toml");
    assert!(toml.contains("type = \"nkey\""), "{toml}");
    assert!(toml.contains("ca_file"), "{toml}");
    assert!(
        toml.contains("tls://fleet-nats.fleet-system.svc:4222"),
        "{toml}"
    );
    assert!(!toml.contains("password"), "{toml}");
    harmony_fleet_agent::config::Config::parse(&toml, std::path::Path::new("agent.toml"))
        .expect("the agent accepts the generated configuration");

    let elsewhere = FleetAgentScore::pod(
        device("pi-9"),
        Default::default(),
        PodAgent {
            namespace: "no-fleet-here".into(),
            ..PodAgent::default()
        },
    );
    let err = run(&elsewhere, &topology)
        .await
        .expect_err("no NATS in that namespace")
        .chain();
    assert!(
        err.contains("no-fleet-here/fleet-agent-bootstrap does not exist"),
        "{err}"
    );

    let local = FleetAgentScore::local(device("pi-1"), Default::default());
    let err = run(&local, &topology)
        .await
        .expect_err("local on a cluster")
        .chain();
    assert!(err.contains("FleetAgentTarget::Pod"), "{err}");
}

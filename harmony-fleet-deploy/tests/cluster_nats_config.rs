//! The cluster install's NATS configuration, run by a real nats-server: the same `nats.conf`
//! and Secrets `FleetNatsScore` writes for a one-replica cluster (adr/0019), with only the
//! paths and ports a Pod would have rewritten to a temporary directory and free loopback ports.
//! Proves what a kubelet-less test of stored objects cannot: the server starts in operator mode
//! over TLS, the operator's mounted identity connects and creates the buckets as
//! `--create-buckets` does, the agents' bootstrap identity can do nothing but ask to enroll,
//! and a client that does not trust the CA is refused.

use std::path::Path;
use std::time::Duration;

use async_nats::ConnectOptions;
use bytes::Bytes;
use harmony::local::bins::{self, BinLocator};
use harmony::local::certs::CaPem;
use harmony::local::{ProcessSpec, SupervisedProcess, ports, probe};
use harmony_fleet_contracts::buckets::DESIRED_STATE;
use harmony_fleet_contracts::{identity, jetstream as js_api};
use harmony_fleet_deploy::nats::{FleetNatsScore, cluster as nats_cluster};
use harmony_fleet_deploy::trust::cluster::{
    ClusterTrust, OperatorSettings, bootstrap_keys, operator_keys,
};
use harmony_fleet_deploy::trust::{Trust, TrustMaterial};
use harmony_fleet_operator::kv::{BucketLayout, FleetKv};
use k8s_openapi::api::core::v1::Secret;

fn text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().expect("data")[key].0.clone()).expect("utf8")
}

/// Replaces `from` (which must be there: the test follows the renderer) with `to`.
fn rewrite(conf: String, from: &str, to: &str) -> String {
    assert!(
        conf.contains(from),
        "nats.conf no longer has {from:?}:\n{conf}"
    );
    conf.replace(from, to)
}

async fn connect(
    url: &str,
    creds: &str,
    ca: Option<&Path>,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    connect_with(url, creds, ca, ConnectOptions::new()).await
}

async fn connect_with(
    url: &str,
    creds: &str,
    ca: Option<&Path>,
    options: ConnectOptions,
) -> Result<async_nats::Client, async_nats::ConnectError> {
    let mut options = options
        .credentials(creds)
        .expect("creds parse")
        .require_tls(true)
        .connection_timeout(Duration::from_secs(5));
    if let Some(ca) = ca {
        options = options.add_root_certificates(ca.to_owned());
    }
    options.connect(url).await
}

#[tokio::test]
async fn the_cluster_configuration_runs_on_a_real_nats_server() {
    let ns = "fleet-system";
    let trust = ClusterTrust::from_parts(
        ns,
        Trust::open(TrustMaterial::generate().expect("trust"), "test").expect("open"),
        CaPem::generate("test-ca").expect("ca"),
    );
    let score = FleetNatsScore::new();
    let objects = nats_cluster::objects(&score, &trust).expect("objects");
    let names =
        ClusterTrust::server_names(ns, nats_cluster::SERVICE, nats_cluster::HEADLESS_SERVICE);
    let tls = trust.server_tls(&names).build().expect("server tls");
    let operator = trust
        .operator_secret(&OperatorSettings {
            urls: nats_cluster::client_urls(ns),
            bucket_replicas: 1,
            fleet_capacity: 100,
        })
        .build()
        .expect("operator identity");
    let bootstrap = trust
        .bootstrap_secret()
        .build()
        .expect("bootstrap identity");

    // What the Pod mounts, under a temporary root.
    let dir = tempfile::tempdir().expect("tmp");
    let tls_dir = dir.path().join("tls");
    std::fs::create_dir_all(&tls_dir).expect("mkdir");
    for key in ["tls.crt", "tls.key", "ca.crt"] {
        std::fs::write(tls_dir.join(key), text(&tls, key)).expect("write");
    }
    let picked = ports::free_ports(2).expect("ports");
    let (port, monitor) = (picked[0], picked[1]);
    let conf = text(&objects.config, "nats.conf");
    let conf = rewrite(conf, "/etc/nats/tls", &tls_dir.display().to_string());
    let conf = rewrite(
        conf,
        "/data/jetstream",
        &dir.path().join("js").display().to_string(),
    );
    let conf = rewrite(conf, "0.0.0.0:4222", &format!("127.0.0.1:{port}"));
    let conf = rewrite(conf, "0.0.0.0:8222", &format!("127.0.0.1:{monitor}"));
    let conf_path = dir.path().join("nats.conf");
    std::fs::write(&conf_path, conf).expect("write conf");
    let program = BinLocator::from_env()
        .locate(bins::NATS_SERVER)
        .expect("nats-server installed (scripts/install-deps.sh)");
    let _server = SupervisedProcess::spawn(
        ProcessSpec::new("nats-cluster-conf", program, dir.path().join("nats.log"))
            .arg("--config")
            .arg(&conf_path)
            .env("POD_NAME", "fleet-nats-0"),
    )
    .expect("nats-server starts");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let healthy = probe::http_get(
            ([127, 0, 0, 1], monitor).into(),
            "/healthz?js-enabled-only=true",
            Duration::from_secs(2),
        )
        .await
        .is_ok_and(|r| r.status == 200);
        if healthy {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nats-server with the cluster configuration did not become healthy; log:\n{}",
            harmony::local::process::log_tail(&dir.path().join("nats.log"), 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The certificate names `localhost` too, so a loopback client verifies it by name.
    let url = format!("tls://localhost:{port}");
    let ca_file = dir.path().join("ca.crt");
    std::fs::write(&ca_file, text(&operator, operator_keys::CA)).expect("write ca");

    // The operator, as its Deployment mounts it: creates the buckets and uses them.
    let client = connect(&url, &text(&operator, operator_keys::CREDS), Some(&ca_file))
        .await
        .expect("the operator's identity connects over TLS");
    let kv = FleetKv::open_or_create(
        client.clone(),
        Some(BucketLayout {
            replicas: 1,
            fleet_capacity: 100,
        }),
    )
    .await
    .expect("the operator creates the buckets");
    kv.desired
        .put("pi-1.web", Bytes::from_static(b"{}"))
        .await
        .expect("put");

    // The servers' storage is what the volume holds (2 GiB for the default fleet), whatever
    // the disk's free space; a fleet it cannot hold is refused with what to change.
    let volume = objects.statefulset.spec.as_ref().and_then(|spec| {
        spec.volume_claim_templates.as_ref()?[0]
            .spec
            .as_ref()?
            .resources
            .as_ref()?
            .requests
            .as_ref()?
            .get("storage")
            .cloned()
    });
    assert_eq!(volume.map(|q| q.0), Some(score.storage_bytes().to_string()));
    assert_eq!(score.storage_bytes(), 2 << 30);
    let conf = text(&objects.config, "nats.conf");
    assert!(
        conf.contains(&format!("max_file_store: {}", 2u64 << 30)),
        "{conf}"
    );
    let too_big = harmony_fleet_operator::kv::ensure_buckets(
        &async_nats::jetstream::new(client.clone()),
        1,
        10_000_000,
    )
    .await
    .expect_err("ten million devices do not fit 2 GiB");
    let message = too_big.to_string();
    assert!(
        matches!(too_big, harmony_fleet_operator::Error::Storage { .. })
            && message.contains("device-info")
            && message.contains("--fleet-capacity"),
        "{message}"
    );

    // The agents' bootstrap identity: it may ask to enroll, and read nothing.
    let (tx, mut violations) = tokio::sync::mpsc::unbounded_channel();
    let watching = ConnectOptions::new()
        .custom_inbox_prefix(identity::BOOTSTRAP_INBOX_PREFIX)
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(error) = event {
                    let _ = tx.send(error.to_string());
                }
            }
        });
    let agent = connect_with(
        &url,
        &text(&bootstrap, bootstrap_keys::CREDS),
        Some(&ca_file),
        watching,
    )
    .await
    .expect("the bootstrap identity connects");
    agent
        .publish(identity::ENROLL_SUBJECT, Bytes::new())
        .await
        .expect("publish");
    let read = js_api::direct_get(DESIRED_STATE, "pi-1.web");
    let answer = tokio::time::timeout(
        Duration::from_secs(2),
        agent.request(read.clone(), Bytes::new()),
    )
    .await;
    assert!(
        !matches!(answer, Ok(Ok(_))),
        "the bootstrap identity read a desired-state key: {answer:?}"
    );
    let violation = tokio::time::timeout(Duration::from_secs(5), violations.recv())
        .await
        .expect("a permissions violation within 5 s")
        .expect("the connection's events");
    assert!(
        violation.to_lowercase().contains("permissions violation") && violation.contains(&read),
        "the first refusal is the read, not the enrollment request: {violation}"
    );

    // A client that does not trust the fleet's CA is refused: the server is verified.
    let err = connect(&url, &text(&operator, operator_keys::CREDS), None)
        .await
        .expect_err("an unknown CA must fail");
    assert!(
        format!("{err:?}").contains("UnknownIssuer") || format!("{err}").contains("certificate"),
        "{err:?}"
    );
}

//! `harmony-fleet-deploy token create|list` against a real kube-apiserver: the Secret has the
//! type, name and data the operator reads (adr/0020), and the listing never shows the secret.

use std::time::Duration;

use harmony::local::{ControlPlaneOptions, LocalControlPlane};
use harmony_fleet_contracts::bootstrap_token::{SECRET_TYPE, TokenRecord};
use harmony_fleet_deploy::tokens;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::Api;
use kube::api::PostParams;

#[tokio::test]
async fn token_create_writes_the_secret_the_operator_reads_and_list_hides_the_secret() {
    let plane = LocalControlPlane::start(ControlPlaneOptions::default())
        .await
        .expect("control plane");
    let client = plane.client().await.expect("client");
    let ns = "fleet-system";

    // Without the namespace: the error names the flag.
    let err = tokens::create(&client, ns, Duration::from_secs(3600), 2)
        .await
        .expect_err("no namespace yet")
        .to_string();
    assert!(err.contains("--namespace"), "{err}");

    let namespace: Namespace =
        serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).expect("ns");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .expect("namespace");
    let record = tokens::create(&client, ns, Duration::from_secs(3600), 2)
        .await
        .expect("created");

    let stored = Api::<Secret>::namespaced(client.clone(), ns)
        .get(&record.id.secret_name())
        .await
        .expect("stored");
    assert_eq!(stored.type_.as_deref(), Some(SECRET_TYPE));
    let data = stored
        .data
        .expect("data")
        .into_iter()
        .map(|(k, v)| (k, v.0))
        .collect();
    let read = TokenRecord::from_data(&record.id.secret_name(), &data).expect("operator reads it");
    assert_eq!(read, record);

    let rows = tokens::list(&client, ns).await.expect("list");
    assert_eq!(rows.len(), 1);
    assert_eq!(
        (rows[0].id.as_str(), rows[0].usages.as_str()),
        (record.id.as_str(), "0/2")
    );
    assert!(rows[0].usable);
    assert!(!format!("{rows:?}").contains(&record.secret));
}

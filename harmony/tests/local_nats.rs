//! LocalNats against a real nats-server: JetStream KV across a restart on the same store,
//! generated users and permissions, a three-node cluster, and clean shutdown.

use std::path::Path;
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::StreamExt;
use harmony::local::nats::{
    AllowResponses, NatsAccount, NatsAuthConfig, NatsPermissions, NatsUser, SubjectPermission,
};
use harmony::local::{LocalNats, LocalNatsCluster, NatsOptions};

const DEADLINE: Duration = Duration::from_secs(30);

async fn next_entry(watch: &mut kv::Watch) -> kv::Entry {
    tokio::time::timeout(DEADLINE, watch.next())
        .await
        .expect("a watch event within the deadline")
        .expect("watch stream open")
        .expect("watch entry")
}

async fn history(store: &kv::Store, key: &str) -> Vec<(kv::Operation, Bytes)> {
    store
        .history(key)
        .await
        .expect("history")
        .map(|e| {
            let e = e.expect("history entry");
            (e.operation, e.value)
        })
        .collect()
        .await
}

#[tokio::test]
async fn kv_put_watch_delete_and_history_survive_a_restart_on_the_same_store() {
    let mut nats = LocalNats::start(NatsOptions::default())
        .await
        .expect("nats-server starts");
    eprintln!("nats-server ready in {:?}", nats.startup_time());
    let url = nats.url();
    let client = async_nats::ConnectOptions::new()
        .retry_on_initial_connect()
        .connect(&url)
        .await
        .expect("connect");
    let js = jetstream::new(client.clone());
    let store = js
        .create_key_value(kv::Config {
            bucket: "restart-test".into(),
            history: 10,
            ..Default::default()
        })
        .await
        .expect("bucket");

    let mut watch = store.watch_all().await.expect("watch");
    store.put("dev1.app", "v1".into()).await.expect("put v1");
    store.put("dev1.app", "v2".into()).await.expect("put v2");
    store.delete("dev1.app").await.expect("delete");
    let seen: Vec<(kv::Operation, Bytes)> = [
        next_entry(&mut watch).await,
        next_entry(&mut watch).await,
        next_entry(&mut watch).await,
    ]
    .into_iter()
    .map(|e| (e.operation, e.value))
    .collect();
    assert_eq!(
        seen,
        vec![
            (kv::Operation::Put, Bytes::from("v1")),
            (kv::Operation::Put, Bytes::from("v2")),
            (kv::Operation::Delete, Bytes::new()),
        ]
    );
    assert_eq!(history(&store, "dev1.app").await.len(), 3);
    drop(watch);

    let old_pid = nats.pid().expect("running");
    nats.stop().await;
    assert!(!nats.is_running());
    assert!(
        !Path::new(&format!("/proc/{old_pid}")).exists(),
        "old server still alive"
    );

    nats.restart().await.expect("restart on the same store");
    assert_eq!(nats.url(), url, "clients reconnect to the same URL");
    eprintln!("nats-server restarted in {:?}", nats.startup_time());

    // The same client reconnects by itself; KV state and history come back from the store.
    let deadline = Instant::now() + DEADLINE;
    let store = loop {
        match js.get_key_value("restart-test").await {
            Ok(store) => break store,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "bucket not back after restart: {e}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(store.get("dev1.app").await.expect("get"), None);
    assert_eq!(
        history(&store, "dev1.app").await,
        vec![
            (kv::Operation::Put, Bytes::from("v1")),
            (kv::Operation::Put, Bytes::from("v2")),
            (kv::Operation::Delete, Bytes::new()),
        ]
    );
    let mut watch = store
        .watch_with_history("dev1.app")
        .await
        .expect("watch with history");
    let last = next_entry(&mut watch).await;
    assert_eq!(last.operation, kv::Operation::Delete);
    let revision = store.put("dev1.app", "v3".into()).await.expect("put v3");
    let entry = next_entry(&mut watch).await;
    assert_eq!(
        (entry.operation, entry.value, entry.revision),
        (kv::Operation::Put, Bytes::from("v3"), revision)
    );
}

/// Returns once the server has processed everything `client` sent before (e.g. a SUB): the
/// server handles one connection's commands in order.
async fn round_trip(client: &async_nats::Client) {
    let inbox = client.new_inbox();
    let mut echo = client.subscribe(inbox.clone()).await.expect("subscribe");
    client.publish(inbox, Bytes::new()).await.expect("publish");
    tokio::time::timeout(DEADLINE, echo.next())
        .await
        .expect("round trip within the deadline")
        .expect("echo");
}

fn user(name: &str, permissions: Option<NatsPermissions>) -> NatsUser {
    NatsUser {
        user: name.into(),
        password: format!("{name}-secret"),
        permissions,
    }
}

#[tokio::test]
async fn generated_users_get_their_permissions() {
    let device = NatsPermissions {
        publish: Some(SubjectPermission {
            allow: vec!["state.dev1.>".into()],
            deny: vec![],
        }),
        subscribe: Some(SubjectPermission {
            allow: vec!["commands.dev1.>".into()],
            deny: vec![],
        }),
        allow_responses: Some(AllowResponses::Single),
    };
    let auth = NatsAuthConfig {
        accounts: vec![NatsAccount {
            name: "FLEET".into(),
            jetstream: true,
            users: vec![user("operator", None), user("dev1", Some(device))],
        }],
        ..NatsAuthConfig::default()
    };
    let nats = LocalNats::start(NatsOptions {
        auth: Some(auth),
        ..NatsOptions::default()
    })
    .await
    .expect("nats-server starts with the generated config");

    let wrong = async_nats::ConnectOptions::with_user_and_password("dev1".into(), "nope".into())
        .connect(nats.url())
        .await;
    assert!(wrong.is_err(), "a wrong password must be rejected");

    let operator = async_nats::ConnectOptions::with_user_and_password(
        "operator".into(),
        "operator-secret".into(),
    )
    .connect(nats.url())
    .await
    .expect("operator connects");
    let (errors_tx, mut errors) = tokio::sync::mpsc::unbounded_channel();
    let dev1 =
        async_nats::ConnectOptions::with_user_and_password("dev1".into(), "dev1-secret".into())
            .event_callback(move |event| {
                let errors_tx = errors_tx.clone();
                async move {
                    if let async_nats::Event::ServerError(e) = event {
                        let _ = errors_tx.send(e.to_string());
                    }
                }
            })
            .connect(nats.url())
            .await
            .expect("device connects");

    // Request/reply: the device answers on the operator's inbox through allow_responses only.
    let mut commands = dev1
        .subscribe("commands.dev1.>")
        .await
        .expect("allowed subscribe");
    let responder = tokio::spawn({
        let dev1 = dev1.clone();
        async move {
            let request = commands.next().await.expect("a command");
            let reply = request.reply.expect("a reply subject");
            dev1.publish(reply, "pong".into()).await.expect("reply");
            dev1.flush().await.expect("flush");
        }
    });
    // `flush` does not wait for the server: retry until the device's subscription is known.
    let deadline = Instant::now() + DEADLINE;
    let answer = loop {
        match operator.request("commands.dev1.ping", "ping".into()).await {
            Ok(answer) => break answer,
            Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                assert!(Instant::now() < deadline, "the device never subscribed");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("request failed: {e}"),
        }
    };
    assert_eq!(answer.payload, Bytes::from("pong"));
    responder.await.expect("responder");

    // An allowed publish is delivered; a publish outside the device's subjects is refused.
    let mut state = operator.subscribe("state.>").await.expect("subscribe");
    round_trip(&operator).await;
    dev1.publish("state.dev1.app", "ok".into())
        .await
        .expect("publish");
    let message = tokio::time::timeout(DEADLINE, state.next())
        .await
        .expect("delivered within the deadline")
        .expect("message");
    assert_eq!(message.subject.as_str(), "state.dev1.app");
    dev1.publish("state.dev2.app", "spoof".into())
        .await
        .expect("publish is buffered");
    dev1.flush().await.expect("flush");
    let error = tokio::time::timeout(DEADLINE, errors.recv())
        .await
        .expect("a permissions violation within the deadline")
        .expect("error");
    assert!(
        error.to_lowercase().contains("permissions violation"),
        "{error}"
    );
    assert!(error.contains("state.dev2.app"), "{error}");

    // JetStream is enabled for the account.
    let js = jetstream::new(operator);
    js.create_key_value(kv::Config {
        bucket: "auth-test".into(),
        ..Default::default()
    })
    .await
    .expect("JetStream available in the account");
}

#[tokio::test]
async fn a_paused_server_answers_nothing_until_resumed() {
    let mut nats = LocalNats::start(NatsOptions::default())
        .await
        .expect("start");
    let client = async_nats::connect(nats.url()).await.expect("connect");
    let mut echo = client.subscribe("echo").await.expect("subscribe");
    round_trip(&client).await;

    nats.pause().expect("pause");
    client
        .publish("echo", "while paused".into())
        .await
        .expect("buffered");
    let frozen = tokio::time::timeout(Duration::from_millis(500), echo.next()).await;
    assert!(frozen.is_err(), "a paused server delivered a message");

    nats.resume().expect("resume");
    let message = tokio::time::timeout(DEADLINE, echo.next())
        .await
        .expect("delivered after resume")
        .expect("message");
    assert_eq!(message.payload, Bytes::from("while paused"));
}

#[tokio::test]
async fn dropping_the_server_stops_it_and_removes_its_data_dir() {
    let nats = LocalNats::start(NatsOptions::default())
        .await
        .expect("start");
    let pid = nats.pid().expect("running");
    let dir = nats.data_dir().to_owned();
    assert!(dir.join("jetstream").is_dir());
    drop(nats);
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "nats-server {pid} still alive"
    );
    assert!(!dir.exists(), "{} not removed", dir.display());
}

#[tokio::test]
async fn a_three_node_cluster_keeps_replicated_kv_through_the_loss_of_a_node() {
    let mut cluster = LocalNatsCluster::start(3, NatsOptions::default())
        .await
        .expect("cluster starts");
    let urls = cluster.urls();
    assert_eq!(urls.len(), 3);
    let client = async_nats::ConnectOptions::new()
        .connect(urls.clone())
        .await
        .expect("connect");
    let js = jetstream::new(client);
    let deadline = Instant::now() + DEADLINE;
    let store = loop {
        match js
            .create_key_value(kv::Config {
                bucket: "replicated".into(),
                num_replicas: 3,
                ..Default::default()
            })
            .await
        {
            Ok(store) => break store,
            Err(e) => {
                assert!(Instant::now() < deadline, "R3 bucket not created: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    };
    store.put("k", "before".into()).await.expect("put");

    let node = cluster.node_mut(0).expect("node 0");
    node.stop().await;
    let deadline = Instant::now() + DEADLINE;
    loop {
        match store.put("k", "during".into()).await {
            Ok(_) => break,
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "no write quorum with 2 of 3: {e}"
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    let node = cluster.node_mut(0).expect("node 0");
    node.restart().await.expect("node rejoins");
    assert_eq!(
        store.get("k").await.expect("get"),
        Some(Bytes::from("during"))
    );
}

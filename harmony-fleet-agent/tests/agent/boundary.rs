//! The device boundary on a real nats-server: connected as device A with the contract's
//! template, every JetStream API and KV subject that would reach device B, read other keys,
//! or create a consumer is refused by the server — each refusal observed as the server's own
//! permissions violation, not as a timeout — while A's own subjects keep working.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use async_nats::jetstream;
use bytes::Bytes;
use harmony_fleet_contracts::buckets::{
    self, DESIRED_STATE, DEVICE_HEARTBEAT, DEVICE_INFO, DEVICE_STATE,
};
use harmony_fleet_contracts::commands::Verb;
use harmony_fleet_contracts::{DeviceId, device_inbox_prefix, jetstream as js, keys, notice};
use tokio::sync::mpsc;

use super::{DEVICE_PASSWORD, Fleet};

/// How long the server gets to answer a forbidden request with a violation.
const VIOLATION_DEADLINE: Duration = Duration::from_secs(5);

/// A device connection that records the server's errors.
struct DeviceClient {
    client: async_nats::Client,
    errors: mpsc::UnboundedReceiver<String>,
}

impl DeviceClient {
    async fn connect(url: &str, device: &DeviceId) -> Result<Self> {
        let (tx, errors) = mpsc::unbounded_channel();
        let client = async_nats::ConnectOptions::with_user_and_password(
            device.to_string(),
            DEVICE_PASSWORD.into(),
        )
        .custom_inbox_prefix(device_inbox_prefix(device))
        .event_callback(move |event| {
            let tx = tx.clone();
            async move {
                if let async_nats::Event::ServerError(e) = event {
                    let _ = tx.send(e.to_string());
                }
            }
        })
        .connect(url)
        .await
        .context("device connects")?;
        Ok(Self { client, errors })
    }

    /// Waits for the server's violation naming `subject`.
    async fn refused(&mut self, what: &str, subject: &str) -> Result<()> {
        let deadline = tokio::time::Instant::now() + VIOLATION_DEADLINE;
        loop {
            let error = tokio::time::timeout_at(deadline, self.errors.recv())
                .await
                .with_context(|| {
                    format!(
                        "{what} {subject}: no permissions violation within {VIOLATION_DEADLINE:?}"
                    )
                })?
                .context("connection closed")?;
            if error.contains("Permissions Violation") && error.contains(subject) {
                return Ok(());
            }
        }
    }

    async fn publish_refused(&mut self, subject: &str, body: &str) -> Result<()> {
        self.client
            .publish(subject.to_owned(), Bytes::from(body.to_owned()))
            .await?;
        self.client.flush().await?;
        self.refused("publish", subject).await
    }

    async fn subscribe_refused(&mut self, subject: &str) -> Result<()> {
        let _sub = self.client.subscribe(subject.to_owned()).await?;
        self.client.flush().await?;
        self.refused("subscribe", subject).await
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_reaches_nothing_of_another_device_and_no_jetstream_api() -> Result<()> {
    let fleet = Fleet::start_with_devices("dev-a", &["dev-b"]).await?;
    let a = fleet.device.clone();
    let b: DeviceId = "dev-b".parse()?;
    // B has state worth stealing: a payload, an index, reports.
    fleet
        .desired
        .put(
            keys::desired_key(&b, &"web".parse()?),
            Bytes::from_static(b"{\"secret\":1}"),
        )
        .await?;
    fleet
        .desired
        .put(
            notice::index_key(&b),
            Bytes::from_static(b"{\"deployments\":{}}"),
        )
        .await?;
    fleet
        .states
        .put(
            keys::state_key(&b, &"web".parse()?),
            Bytes::from_static(b"{}"),
        )
        .await?;

    let mut dev = DeviceClient::connect(&fleet.nats.url(), &a).await?;
    let web = "web".parse()?;
    let stream = |bucket: &str| buckets::stream_name(bucket);
    let mut publishes: Vec<(String, String)> = Vec::new();
    let mut add = |subject: String, body: &str| publishes.push((subject, body.to_owned()));
    // Reads of B's keys, and reads whose subject hides in the body.
    add(
        js::direct_get(DESIRED_STATE, &keys::desired_key(&b, &web)),
        "",
    );
    add(js::direct_get(DESIRED_STATE, &notice::index_key(&b)), "");
    add(js::direct_get(DEVICE_INFO, &keys::info_key(&b)), "");
    add(js::direct_get(DEVICE_STATE, &keys::state_key(&b, &web)), "");
    add(
        js::direct_get(DEVICE_HEARTBEAT, &keys::heartbeat_key(&b)),
        "",
    );
    add(js::direct_get(DESIRED_STATE, ">"), "");
    add(js::direct_get(DESIRED_STATE, notice::CHECKPOINT_KEY), "");
    add(
        format!("$JS.API.DIRECT.GET.{}", stream(DESIRED_STATE)),
        r#"{"multi_last":["$KV.desired-state.>"],"batch":100}"#,
    );
    // Consumers: any name, any filter (its own too), any delivery subject.
    let deliver_elsewhere = format!(
        r#"{{"stream_name":"{}","config":{{"name":"x1","deliver_subject":"{}","filter_subject":"{}"}}}}"#,
        stream(DESIRED_STATE),
        keys::command_subject(&b, Verb::Exec),
        js::desired_watch_filter(&a)
    );
    add(
        js::consumer_create(DESIRED_STATE, "x1", &js::desired_watch_filter(&a)),
        &deliver_elsewhere,
    );
    add(
        js::consumer_create(DESIRED_STATE, "x2", &js::desired_watch_filter(&b)),
        "{}",
    );
    add(
        js::consumer_create(DESIRED_STATE, "x3", "$KV.desired-state.>"),
        "{}",
    );
    for bucket in buckets::ALL.map(|s| s.name) {
        add(js::consumer_create_unfiltered(bucket), "{}");
        add(
            format!("$JS.API.CONSUMER.DURABLE.CREATE.{}.d1", stream(bucket)),
            "{}",
        );
        for op in [
            "INFO",
            "PURGE",
            "DELETE",
            "UPDATE",
            "MSG.GET",
            "MSG.DELETE",
            "SNAPSHOT",
        ] {
            add(format!("$JS.API.STREAM.{op}.{}", stream(bucket)), "{}");
        }
        add(js::flow_control(bucket).replace(">", "c.i"), "");
        add(js::ack(bucket).replace(">", "c.1.1.1.1.1"), "");
    }
    add("$JS.API.STREAM.NAMES".into(), "{}");
    add("$JS.API.STREAM.LIST".into(), "{}");
    add("$JS.API.INFO".into(), "");
    add("$JS.API.CONSUMER.LIST.KV_desired-state".into(), "{}");
    // Writes to B's keys, and to desired state at all (the operator's).
    add(
        buckets::kv_subject(DEVICE_STATE, &keys::state_key(&b, &web)),
        "{}",
    );
    add(buckets::kv_subject(DEVICE_INFO, &keys::info_key(&b)), "{}");
    add(
        buckets::kv_subject(DEVICE_HEARTBEAT, &keys::heartbeat_key(&b)),
        "{}",
    );
    add(
        buckets::kv_subject(DESIRED_STATE, &keys::desired_key(&a, &web)),
        "{}",
    );
    add(
        buckets::kv_subject(DESIRED_STATE, &notice::index_key(&a)),
        "{}",
    );
    add(
        buckets::kv_subject(DESIRED_STATE, &keys::desired_key(&b, &web)),
        "{}",
    );
    // The operator's checkpoint: a forged one would hide keys from its next start.
    add(
        buckets::kv_subject(DESIRED_STATE, notice::CHECKPOINT_KEY),
        r#"{"format":1,"devices":0}"#,
    );
    // The operator's own store (adr/0052): a forged reports snapshot would hide reports from
    // its next start, and reading it would list every device.
    let operator_store = buckets::operator_store_stream();
    add(
        format!("$O.{}.M.cmVwb3J0cw==", buckets::OPERATOR_STORE),
        "{}",
    );
    add(format!("$O.{}.C.x", buckets::OPERATOR_STORE), "HFRS");
    add(
        format!("$JS.API.DIRECT.GET.{operator_store}"),
        r#"{"seq":1}"#,
    );
    add(format!("$JS.API.CONSUMER.CREATE.{operator_store}"), "{}");
    // Commands and notices: B's, and spoofed ones of its own.
    add(
        keys::command_subject(&b, Verb::Exec),
        r#"{"command":["id"]}"#,
    );
    add(
        keys::command_subject(&a, Verb::Exec),
        r#"{"command":["id"]}"#,
    );
    add(notice::notify_subject(&b), "");
    add(notice::notify_subject(&a), "");
    for (subject, body) in &publishes {
        dev.publish_refused(subject, body).await?;
    }
    for subject in [
        keys::command_serve_pattern(&b),
        notice::notify_subject(&b),
        notice::NOTIFY_ALL.to_owned(),
        format!("{}.>", device_inbox_prefix(&b)),
        "_INBOX.>".to_owned(),
        "$KV.>".to_owned(),
        buckets::kv_subject(DESIRED_STATE, &keys::desired_device_pattern(&a)),
        ">".to_owned(),
    ] {
        dev.subscribe_refused(&subject).await?;
    }

    // Nothing was created, and B's data is intact.
    let admin_js = jetstream::new(fleet.admin.clone());
    for bucket in buckets::ALL.map(|s| s.name) {
        let mut s = admin_js.get_stream(stream(bucket)).await?;
        let consumers = s.info().await?.state.consumer_count;
        if consumers != 0 {
            bail!("{consumers} consumer(s) on {bucket} after the device's attempts");
        }
    }
    let kept = fleet.states.get(keys::state_key(&b, &web)).await?;
    assert_eq!(kept.as_deref(), Some(&b"{}"[..]));

    // Positive control: A's own subjects work through the same connection.
    let own_index = js::direct_get(DESIRED_STATE, &notice::index_key(&a));
    let reply = dev.client.request(own_index, Bytes::new()).await?;
    assert_eq!(
        reply.status,
        Some(async_nats::StatusCode::NOT_FOUND),
        "own index: not written yet, but readable"
    );
    let ack = jetstream::new(dev.client.clone())
        .publish(
            buckets::kv_subject(DEVICE_STATE, &keys::state_key(&a, &web)),
            Bytes::from_static(b"{}"),
        )
        .await?
        .await?;
    assert!(ack.sequence > 0);
    let _notices = dev.client.subscribe(notice::notify_subject(&a)).await?;
    let _commands = dev
        .client
        .subscribe(keys::command_serve_pattern(&a))
        .await?;
    dev.client.flush().await?;
    assert!(
        dev.errors.try_recv().is_err(),
        "A's own subjects raised a violation"
    );
    Ok(())
}

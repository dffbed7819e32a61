//! A nats-server in operator mode trusting a fresh [`TrustChain`], and clients of it
//! (included with `#[path]` by the tests that need it).

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Result;
use async_nats::{ConnectOptions, Event};
use harmony::local::nats::{NatsAuthConfig, NatsOperatorTrust};
use harmony::local::{LocalNats, NatsOptions};
use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::permissions::device_inbox_prefix;
use harmony_fleet_contracts::trust::TrustChain;
use nkeys::KeyPair;
use tokio::sync::mpsc;

pub fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

/// A nats-server that trusts `chain`, with nothing about any user in its configuration.
pub async fn trusted_nats(chain: &TrustChain) -> Result<LocalNats> {
    let t = now();
    let auth = NatsAuthConfig {
        system_account: Some(chain.system_account()),
        operator: Some(NatsOperatorTrust {
            jwt: chain.operator_jwt(t)?,
            preload: vec![
                (chain.system_account(), chain.system_account_jwt(t)?),
                (
                    chain.fleet_account(),
                    chain.fleet_account_jwt(BTreeMap::new(), t)?,
                ),
            ],
        }),
        ..NatsAuthConfig::default()
    };
    Ok(LocalNats::start(NatsOptions {
        auth: Some(auth),
        ..NatsOptions::default()
    })
    .await?)
}

/// `options` with every client event sent to the returned receiver.
pub fn watched(options: ConnectOptions) -> (ConnectOptions, mpsc::UnboundedReceiver<Event>) {
    let (tx, rx) = mpsc::unbounded_channel();
    let options = options.event_callback(move |event| {
        let tx = tx.clone();
        async move {
            let _ = tx.send(event);
        }
    });
    (options, rx)
}

/// Connects with a `.creds` file's text.
pub async fn connect_creds(url: &str, creds: &str) -> Result<async_nats::Client> {
    Ok(ConnectOptions::new()
        .credentials(creds)?
        .connect(url)
        .await?)
}

/// Options of a device connecting with `jwt` and its own key (one reconnect attempt).
pub fn device_options(device: &DeviceId, key: Arc<KeyPair>, jwt: String) -> ConnectOptions {
    ConnectOptions::with_jwt(jwt, move |nonce| {
        let key = key.clone();
        async move { key.sign(&nonce).map_err(async_nats::AuthError::new) }
    })
    .custom_inbox_prefix(device_inbox_prefix(device))
    .max_reconnects(1)
}

/// How many `Disconnected` events are queued.
pub fn disconnects(events: &mut mpsc::UnboundedReceiver<Event>) -> usize {
    let mut n = 0;
    while let Ok(event) = events.try_recv() {
        if matches!(event, Event::Disconnected) {
            n += 1;
        }
    }
    n
}

/// Sends `request` as the bootstrap user `bootstrap` and reads the operator's answer.
pub async fn ask(
    bootstrap: &async_nats::Client,
    request: &harmony_fleet_contracts::identity::EnrollRequest,
) -> Result<harmony_fleet_contracts::identity::EnrollReply> {
    let reply = bootstrap
        .request(
            harmony_fleet_contracts::identity::ENROLL_SUBJECT,
            serde_json::to_vec(request)?.into(),
        )
        .await?;
    Ok(serde_json::from_slice(&reply.payload)?)
}

/// Deletes the `Device` `name`, its credential finalizer first (best effort: cleanup).
pub async fn remove_device(devices: &kube::Api<harmony_fleet_operator::crd::Device>, name: &str) {
    use kube::api::{Patch, PatchParams};
    let _ = devices
        .patch(
            name,
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"metadata": {"finalizers": null}})),
        )
        .await;
    let _ = devices.delete(name, &Default::default()).await;
}

/// The inventory a test device reports, named `hostname`.
pub fn inventory(hostname: &str) -> harmony_fleet_contracts::device::Inventory {
    harmony_fleet_contracts::device::Inventory {
        hostname: hostname.into(),
        arch: "aarch64".into(),
        os: "linux".into(),
        os_release: None,
        kernel_version: None,
        cpu_count: 4,
        memory_bytes: 1 << 30,
    }
}

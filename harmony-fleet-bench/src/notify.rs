//! The alternative to one JetStream consumer per device (the "consumer wall", adr/0012):
//! the writer of `desired-state` also publishes a change notice on a plain core-NATS subject,
//! `desired-notify.<device>` (payload: the deployment name), and the device reads the key
//! with a KV direct get (`$JS.API.DIRECT.GET.KV_desired-state.$KV.desired-state.<key>`).
//! A core subscription costs the server an interest entry, not a consumer with its own state,
//! delivery loop and idle heartbeats.
//!
//! A notice can be lost (the device is disconnected when it is sent), so a real agent built on
//! this also lists its keys on every (re)connect (`multi_last` direct get of
//! `$KV.desired-state.<device>.>`) and periodically; the bench measures the steady state: the
//! subscription cost and the notice → direct get → report latency.

use std::sync::atomic::Ordering;

use async_nats::jetstream;
use bytes::Bytes;
use futures::StreamExt;
use harmony_fleet_contracts::buckets::DESIRED_STATE;
use harmony_fleet_contracts::{DeploymentName, DeviceId, keys};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::sim::{Responder, SimConfig};

/// Subject of the change notices of `device`.
pub fn notify_subject(device: &DeviceId) -> String {
    format!("desired-notify.{device}")
}

/// Writes `value` under `<device>.<deployment>` and then publishes the change notice.
pub async fn put_and_notify(
    store: &jetstream::kv::Store,
    client: &async_nats::Client,
    device: &DeviceId,
    deployment: &DeploymentName,
    value: Bytes,
) -> Result<()> {
    let key = keys::desired_key(device, deployment);
    store
        .put(&key, value)
        .await
        .map_err(|e| Error::nats(format!("putting {key}"), e))?;
    client
        .publish(notify_subject(device), Bytes::from(deployment.to_string()))
        .await
        .map_err(|e| Error::nats(format!("notifying {device}"), e))
}

/// One core subscription per device; each notice is answered by a direct get and a report.
pub(crate) async fn start_device_listeners(
    clients: &[async_nats::Client],
    responder: &Responder,
    config: &SimConfig,
    cancel: CancellationToken,
) -> Result<Vec<JoinHandle<()>>> {
    let mut tasks = Vec::new();
    let mut stores = Vec::new();
    for client in clients {
        let js = jetstream::new(client.clone());
        stores.push(
            js.get_key_value(DESIRED_STATE)
                .await
                .map_err(|e| Error::nats("opening bucket desired-state", e))?,
        );
    }
    for (index, id) in responder.ids().iter().enumerate() {
        let k = index / config.devices_per_connection;
        let mut sub = clients[k]
            .subscribe(notify_subject(id))
            .await
            .map_err(|e| Error::nats(format!("subscribing to notices of {id}"), e))?;
        let store = stores[k].clone();
        let responder = responder.clone();
        let id = id.clone();
        let cancel = cancel.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    () = cancel.cancelled() => return,
                    msg = sub.next() => match msg { Some(m) => m, None => return },
                };
                let Ok(name) = std::str::from_utf8(&msg.payload) else {
                    continue;
                };
                let Ok(deployment) = name.parse::<DeploymentName>() else {
                    continue;
                };
                let key = keys::desired_key(&id, &deployment);
                match store.entry(&key).await {
                    Ok(Some(entry)) => {
                        responder.on_desired(index, deployment, entry.value, entry.revision)
                    }
                    Ok(None) => {}
                    Err(e) => tracing::warn!(error = %e, key, "direct get failed"),
                }
            }
        }));
    }
    for client in clients {
        client
            .flush()
            .await
            .map_err(|e| Error::nats("flushing notice subscriptions", e))?;
    }
    responder
        .tally_ref()
        .watches_ready
        .fetch_add(responder.ids().len(), Ordering::Relaxed);
    Ok(tasks)
}

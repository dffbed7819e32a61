//! The watch of this device's `desired-state` keys (`<device>.>`): one lightweight ordered
//! push consumer, delivering the last value of every key first (a [`WatchEvent::Snapshot`]),
//! then each change as it happens.
//!
//! Watchers silently vanishing when the server restarts are a known failure of NATS clients, so
//! this loop never trusts a consumer to live forever: whenever the stream ends, errors, or the
//! connection comes back (a new [`Link`](crate::connection::Link) generation), the consumer is
//! dropped and created again from history. Each (re)creation produces a fresh snapshot; the
//! receiver compares it with what it holds by KV revision, so nothing is lost (keys deleted
//! while we were away are missing from the snapshot) and nothing is wrongly replayed (revisions
//! not newer than the held one are ignored).
//!
//! The consumer is created by hand (not `Store::watch_with_history`) for two reasons: it has a
//! name, so the create request's subject carries the filter and a per-device permission can
//! allow exactly it; and its initial pending count tells when the snapshot is complete, even
//! when it is empty.

use std::time::Duration;

use async_nats::jetstream::consumer::push::{Ordered, OrderedConfig};
use async_nats::jetstream::consumer::{DeliverPolicy, ReplayPolicy};
use async_nats::jetstream::{self, Message};
use bytes::Bytes;
use futures::StreamExt;
use harmony_fleet_contracts::DeviceId;
use harmony_fleet_contracts::buckets::{self, DESIRED_STATE};
use harmony_fleet_contracts::jetstream as contract_js;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::connection::{Connection, wait_connected};

/// Header carrying the KV operation on delete/purge markers.
const KV_OPERATION_HEADER: &str = "KV-Operation";
/// Header carrying the reason of server-generated markers (TTL expiry, `Nats-Marker-Reason`).
const MARKER_REASON_HEADER: &str = "Nats-Marker-Reason";
/// Longest wait for a snapshot to complete before the consumer is recreated.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(30);

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOperation {
    /// A value was written.
    Put,
    /// The key was deleted (tombstone).
    Delete,
    /// The key was purged.
    Purge,
}

/// One KV record of the device's desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRecord {
    /// The key without the bucket prefix (`<device>.<deployment>`).
    pub key: String,
    /// KV revision (stream sequence).
    pub revision: u64,
    /// Put, delete or purge.
    pub operation: KvOperation,
    /// The value (empty for deletes).
    pub value: Bytes,
}

/// What the watch delivers to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The complete current state of the device's keys (latest record per key, deletes
    /// included); keys absent here no longer exist.
    Snapshot(Vec<KvRecord>),
    /// One change after the snapshot.
    Change(KvRecord),
}

fn operation_of(message: &Message) -> KvOperation {
    let Some(headers) = message.headers.as_ref() else {
        return KvOperation::Put;
    };
    if let Some(op) = headers.get(KV_OPERATION_HEADER) {
        return match op.as_str() {
            "DEL" => KvOperation::Delete,
            "PURGE" => KvOperation::Purge,
            _ => KvOperation::Put,
        };
    }
    match headers.get(MARKER_REASON_HEADER).map(|v| v.as_str()) {
        Some("MaxAge" | "Purge") => KvOperation::Purge,
        Some("Remove") => KvOperation::Delete,
        _ => KvOperation::Put,
    }
}

/// Turn a consumer message into a record; also returns how many messages are still pending.
fn record_of(message: &Message, prefix: &str) -> Option<(KvRecord, u64)> {
    let info = message.info().ok()?;
    let key = message.subject.strip_prefix(prefix)?.to_owned();
    Some((
        KvRecord {
            key,
            revision: info.stream_sequence,
            operation: operation_of(message),
            value: message.payload.clone(),
        },
        info.pending,
    ))
}

/// Why one watch attempt ended.
#[derive(Debug, thiserror::Error)]
enum WatchEnd {
    #[error("cannot create the desired-state consumer: {0}")]
    Create(String),
    #[error("desired-state consumer failed: {0}")]
    Stream(String),
    #[error("desired-state consumer ended")]
    Ended,
    #[error("the snapshot did not complete within {0:?}")]
    SnapshotTimeout(Duration),
    #[error("reconnected; re-syncing from history")]
    Reconnected,
    #[error("the agent stopped consuming watch events")]
    ReceiverGone,
    #[error("shutting down")]
    Shutdown,
}

/// Run the watch until `shutdown`, sending events to `events`.
pub async fn run(
    connection: Connection,
    device: DeviceId,
    events: mpsc::Sender<WatchEvent>,
    shutdown: CancellationToken,
) {
    let mut link = connection.link();
    let mut attempt: u32 = 0;
    loop {
        let generation = tokio::select! {
            () = shutdown.cancelled() => return,
            generation = wait_connected(&mut link) => match generation {
                Some(generation) => generation,
                None => return,
            },
        };
        let ended = watch_once(&connection, &device, generation, &events, &shutdown).await;
        match ended {
            WatchEnd::Shutdown | WatchEnd::ReceiverGone => return,
            WatchEnd::Reconnected => {
                attempt = 0;
                tracing::info!("{ended}");
                continue;
            }
            other => {
                tracing::warn!(error = %other, "desired-state watch interrupted; recreating it")
            }
        }
        attempt = attempt.saturating_add(1);
        let delay = Duration::from_millis(250u64 << attempt.min(5)).min(Duration::from_secs(5));
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

async fn create_consumer(
    jetstream: &jetstream::Context,
    device: &DeviceId,
) -> Result<(Ordered, u64), WatchEnd> {
    let filter = contract_js::desired_watch_filter(device);
    // The deliver subject is a fresh inbox under the device's prefix; its last token is a
    // unique id, reused to name the consumer.
    let deliver_subject = jetstream.client().new_inbox();
    let unique = deliver_subject.rsplit('.').next().unwrap_or("watch");
    let name = contract_js::watch_consumer_name(device, unique);
    let config = OrderedConfig {
        name: Some(name),
        deliver_subject: deliver_subject.clone(),
        description: Some(format!("fleet agent {device}: desired-state watch")),
        filter_subject: filter,
        deliver_policy: DeliverPolicy::LastPerSubject,
        replay_policy: ReplayPolicy::Instant,
        ..Default::default()
    };
    let consumer = jetstream
        .create_consumer_on_stream(config, buckets::stream_name(DESIRED_STATE))
        .await
        .map_err(|err| WatchEnd::Create(err.to_string()))?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer
        .messages()
        .await
        .map_err(|err| WatchEnd::Create(err.to_string()))?;
    Ok((messages, pending))
}

async fn watch_once(
    connection: &Connection,
    device: &DeviceId,
    generation: u64,
    events: &mpsc::Sender<WatchEvent>,
    shutdown: &CancellationToken,
) -> WatchEnd {
    let prefix = buckets::kv_subject(DESIRED_STATE, "");
    let mut link = connection.link();
    let created = tokio::select! {
        () = shutdown.cancelled() => return WatchEnd::Shutdown,
        created = create_consumer(connection.jetstream(), device) => created,
    };
    let (mut messages, mut pending) = match created {
        Ok(created) => created,
        Err(end) => return end,
    };
    tracing::debug!(pending, "desired-state consumer created");

    // Phase 1: the snapshot (last record per key). Complete when nothing is pending.
    let mut snapshot = Vec::new();
    let snapshot_deadline = tokio::time::Instant::now() + SNAPSHOT_TIMEOUT;
    while pending > 0 {
        let next = tokio::select! {
            () = shutdown.cancelled() => return WatchEnd::Shutdown,
            () = tokio::time::sleep_until(snapshot_deadline) => {
                return WatchEnd::SnapshotTimeout(SNAPSHOT_TIMEOUT);
            }
            next = messages.next() => next,
        };
        match next {
            None => return WatchEnd::Ended,
            Some(Err(err)) => return WatchEnd::Stream(err.to_string()),
            Some(Ok(message)) => match record_of(&message, &prefix) {
                Some((record, left)) => {
                    pending = left;
                    snapshot.push(record);
                }
                None => tracing::warn!(subject = %message.subject, "unreadable KV message skipped"),
            },
        }
    }
    if events.send(WatchEvent::Snapshot(snapshot)).await.is_err() {
        return WatchEnd::ReceiverGone;
    }

    // Phase 2: live changes, until something forces a re-creation.
    loop {
        let next = tokio::select! {
            () = shutdown.cancelled() => return WatchEnd::Shutdown,
            changed = link.wait_for(|l| l.generation != generation) => {
                return if changed.is_ok() { WatchEnd::Reconnected } else { WatchEnd::Shutdown };
            }
            next = messages.next() => next,
        };
        match next {
            None => return WatchEnd::Ended,
            Some(Err(err)) => return WatchEnd::Stream(err.to_string()),
            Some(Ok(message)) => match record_of(&message, &prefix) {
                Some((record, _)) => {
                    if events.send(WatchEvent::Change(record)).await.is_err() {
                        return WatchEnd::ReceiverGone;
                    }
                }
                None => tracing::warn!(subject = %message.subject, "unreadable KV message skipped"),
            },
        }
    }
}

//! NATS adapter: connection, the four fleet KV buckets, ordered watches from the beginning of
//! each bucket, and the `desired-state` writer.
//!
//! Watches deliver the latest value of every key first (the backlog), then live updates, in
//! stream order. [`KvEvent::CaughtUp`] marks the end of the backlog, so the controller knows
//! when its cold-start picture of the fleet is complete.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{Stream, StreamExt, stream};
use harmony_fleet_contracts::binaries;
use harmony_fleet_contracts::buckets::{self, BucketSpec};
use jiff::Timestamp;
use tokio::sync::mpsc;

mod checkpoint;
mod forward;
pub mod operator_store;
pub mod snapshot;
mod watch;

pub use checkpoint::{Checkpoint, DesiredRead};
pub use forward::{FORWARD_BATCH, forward};
pub use snapshot::{ReportsMark, ReportsSnapshot};

use watch::Start;

use crate::config::NatsConfig;
use crate::error::{Error, Result};
use crate::metrics::Metrics;

/// One event of a bucket watch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEvent {
    /// A key got a value.
    Put {
        /// The key.
        key: String,
        /// The value bytes.
        value: Bytes,
        /// Server time of the write.
        at: Timestamp,
    },
    /// A key was deleted or purged.
    Delete {
        /// The key.
        key: String,
    },
    /// Every value that existed when the watch started has been delivered.
    CaughtUp,
}

/// Connects to NATS with automatic reconnect.
pub async fn connect(config: &NatsConfig) -> Result<async_nats::Client> {
    let mut options = async_nats::ConnectOptions::new()
        .name("harmony-fleet-operator")
        .retry_on_initial_connect()
        .connection_timeout(Duration::from_secs(5));
    if let Some((user, password)) = &config.credentials {
        options = options.user_and_password(user.clone(), password.clone());
    }
    if let Some(path) = &config.creds_file {
        options = with_creds_file(options, path)?;
    }
    if let Some(ca) = &config.ca_file {
        options = options.add_root_certificates(ca.clone()).require_tls(true);
    }
    let addrs = config
        .urls
        .iter()
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| Error::Config(format!("NATS URL `{u}` is invalid: {e}")))
        })
        .collect::<Result<Vec<_>>>()?;
    options
        .connect(addrs)
        .await
        .map_err(|e| Error::nats(format!("connecting to {}", config.urls.join(",")), e))
}

/// `options` authenticating with the `.creds` file at `path`.
pub fn with_creds_file(
    options: async_nats::ConnectOptions,
    path: &std::path::Path,
) -> Result<async_nats::ConnectOptions> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Error::Config(format!(
            "reading the NATS credentials file {}: {e}",
            path.display()
        ))
    })?;
    options.credentials(&text).map_err(|e| {
        Error::Config(format!(
            "NATS credentials file {} is not a .creds file: {e}",
            path.display()
        ))
    })
}

/// The four fleet buckets.
#[derive(Clone, Debug)]
pub struct FleetKv {
    /// The connection the buckets were opened on.
    pub client: async_nats::Client,
    /// `desired-state` (written by the operator).
    pub desired: kv::Store,
    /// `device-info`.
    pub info: kv::Store,
    /// `device-state`.
    pub state: kv::Store,
    /// `device-heartbeat`.
    pub heartbeat: kv::Store,
}

/// How [`FleetKv::open_or_create`] creates a missing bucket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BucketLayout {
    /// Replicas of each bucket's stream.
    pub replicas: usize,
    /// Devices the agent-written buckets' byte limits are sized for.
    pub fleet_capacity: u64,
}

impl Default for BucketLayout {
    fn default() -> Self {
        BucketLayout {
            replicas: 1,
            fleet_capacity: buckets::DEFAULT_FLEET_CAPACITY,
        }
    }
}

impl FleetKv {
    /// Opens the buckets; creates missing ones from the contract's specs (one replica, the
    /// default capacity) when `create` is set.
    pub async fn open(client: async_nats::Client, create: bool) -> Result<Self> {
        Self::open_or_create(client, create.then(BucketLayout::default)).await
    }

    /// Opens the buckets; creates missing ones with `create`'s layout when given.
    pub async fn open_or_create(
        client: async_nats::Client,
        create: Option<BucketLayout>,
    ) -> Result<Self> {
        let js = jetstream::new(client.clone());
        let kv = Self {
            client,
            desired: open_bucket(&js, &buckets::DESIRED_STATE_SPEC, create).await?,
            info: open_bucket(&js, &buckets::DEVICE_INFO_SPEC, create).await?,
            state: open_bucket(&js, &buckets::DEVICE_STATE_SPEC, create).await?,
            heartbeat: open_bucket(&js, &buckets::DEVICE_HEARTBEAT_SPEC, create).await?,
        };
        // The operator only creates the agent builds' store (deploy tooling fills it); a
        // missing one is no reason not to run. Its own store is opened where it is used.
        if let Some(layout) = create {
            if let Err(e) = ensure_binaries(&js, layout.replicas).await {
                tracing::warn!(bucket = binaries::AGENT_BINARIES, error = %e, "cannot create the agent builds' object store; self-upgrades will fail until it exists");
            }
            if let Err(e) = operator_store::ensure(&js, layout.replicas).await {
                tracing::warn!(bucket = buckets::OPERATOR_STORE, error = %e, "cannot create the operator's object store; every cold start reads every report");
            }
        }
        Ok(kv)
    }

    /// Watches every key of `store`, one of these buckets: its latest values, one
    /// [`KvEvent::CaughtUp`], then live changes (`kv/watch.rs`, adr/0046).
    pub async fn watch(
        &self,
        store: &kv::Store,
    ) -> Result<impl Stream<Item = Result<KvEvent>> + Send + 'static + use<>> {
        watch::watch(&self.client, store, ">", Start::Latest).await
    }

    /// Watches `device-state` as [`FleetKv::watch`] does, each event with its stream sequence;
    /// with `after`, from the message after that sequence (what a reports snapshot does not
    /// hold, adr/0052) instead of the latest value of every key.
    pub async fn watch_reports(
        &self,
        after: Option<u64>,
    ) -> Result<impl Stream<Item = Result<(KvEvent, u64)>> + Send + 'static + use<>> {
        let from = after.map_or(Start::Latest, Start::After);
        watch::watch_sequenced(&self.client, &self.state, ">", from).await
    }

    /// Reads `desired-state` for a cold start (`kv/checkpoint.rs`, adr/0051): with a
    /// checkpoint, its indexes and the messages after it; without, every key. With `follow`,
    /// live changes after the backlog.
    pub async fn watch_desired(
        &self,
        follow: bool,
    ) -> Result<impl Stream<Item = Result<DesiredRead>> + Send + 'static + use<>> {
        checkpoint::watch_desired(&self.client, &self.desired, follow).await
    }
}

async fn open_bucket(
    js: &jetstream::Context,
    spec: &BucketSpec,
    create: Option<BucketLayout>,
) -> Result<kv::Store> {
    match (js.get_key_value(spec.name).await, create) {
        (Ok(store), _) => Ok(store),
        (Err(e), Some(layout)) => {
            tracing::info!(bucket = spec.name, replicas = layout.replicas, reason = %e, "creating missing KV bucket");
            ensure_bucket(js, spec, layout.replicas, layout.fleet_capacity).await?;
            js.get_key_value(spec.name)
                .await
                .map_err(|e| Error::nats(format!("opening bucket {}", spec.name), e))
        }
        (Err(_), None) => Err(Error::MissingBucket {
            bucket: spec.name.to_owned(),
        }),
    }
}

/// What [`ensure_bucket`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BucketChange {
    /// The stream did not exist.
    Created,
    /// The stream existed with other settings; they were updated.
    Updated,
    /// The stream already had these settings.
    Unchanged,
}

/// The JetStream stream behind a fleet bucket, exactly as the contract says: history,
/// value size, direct get, rollups only where [`BucketSpec::allow_rollup`] allows them
/// (`async_nats`'s `create_key_value` always enables rollups, which would let one device wipe
/// every device's entries of an agent-written bucket), and on agent-written buckets a byte
/// limit for a fleet of `capacity` devices ([`BucketSpec::max_bytes`]; new writes beyond it
/// are refused, stored ones are kept).
pub fn bucket_stream_config(
    spec: &BucketSpec,
    replicas: usize,
    capacity: u64,
) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: buckets::stream_name(spec.name),
        description: Some(spec.description.to_owned()),
        subjects: vec![format!("$KV.{}.>", spec.name)],
        max_messages_per_subject: spec.history,
        max_message_size: spec.max_value_size,
        max_bytes: spec.max_bytes(capacity),
        storage: jetstream::stream::StorageType::File,
        allow_rollup: spec.allow_rollup,
        deny_delete: true,
        deny_purge: false,
        allow_direct: spec.allow_direct,
        num_replicas: replicas.max(1),
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Creates the bucket's stream, or updates it when its settings differ from the contract's
/// (e.g. more replicas, or a larger fleet `capacity`). Idempotent.
pub async fn ensure_bucket(
    js: &jetstream::Context,
    spec: &BucketSpec,
    replicas: usize,
    capacity: u64,
) -> Result<BucketChange> {
    let wanted = bucket_stream_config(spec, replicas, capacity);
    ensure_stream(js, &wanted, spec.name, capacity).await
}

/// The stream of the `agent-binaries` object store ([`binaries`]), with the contract's byte
/// limit.
pub fn binaries_stream_config(replicas: usize) -> jetstream::stream::Config {
    object_store_config(
        binaries::AGENT_BINARIES,
        "harmony fleet: agent builds by SHA-256, for self-upgrade (written by deploy tooling, read by devices)",
        binaries::BUCKET_MAX_BYTES,
        replicas,
    )
}

/// The stream of object store `bucket` as `async_nats`' `create_object_store` makes it: chunk
/// and metadata subjects, rollups for the metadata, direct get; `max_bytes` -1 for no limit.
pub(crate) fn object_store_config(
    bucket: &str,
    description: &str,
    max_bytes: i64,
    replicas: usize,
) -> jetstream::stream::Config {
    jetstream::stream::Config {
        name: format!("OBJ_{bucket}"),
        description: Some(description.to_owned()),
        subjects: vec![format!("$O.{bucket}.C.>"), format!("$O.{bucket}.M.>")],
        max_bytes,
        // Unlimited, as the server stores "unset": compared on every run.
        max_messages_per_subject: -1,
        max_message_size: -1,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        allow_direct: true,
        num_replicas: replicas.max(1),
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    }
}

/// Creates the `agent-binaries` object store, or updates its stream to the contract's settings.
pub async fn ensure_binaries(js: &jetstream::Context, replicas: usize) -> Result<BucketChange> {
    let wanted = binaries_stream_config(replicas);
    ensure_stream(js, &wanted, binaries::AGENT_BINARIES, 0).await
}

/// Creates `wanted`, or updates the stream when the settings the fleet cares about differ.
async fn ensure_stream(
    js: &jetstream::Context,
    wanted: &jetstream::stream::Config,
    bucket: &str,
    capacity: u64,
) -> Result<BucketChange> {
    let context = |what: &str| format!("{what} the stream of bucket {bucket}");
    match js.get_stream(&wanted.name).await {
        Ok(mut stream) => {
            let info = stream
                .info()
                .await
                .map_err(|e| Error::nats(context("reading"), e))?;
            let current = &info.config;
            let same = current.max_messages_per_subject == wanted.max_messages_per_subject
                && current.max_message_size == wanted.max_message_size
                && current.max_bytes == wanted.max_bytes
                && current.allow_rollup == wanted.allow_rollup
                && current.allow_direct == wanted.allow_direct
                && current.num_replicas == wanted.num_replicas
                && current.subjects == wanted.subjects;
            if same {
                return Ok(BucketChange::Unchanged);
            }
            js.update_stream(wanted)
                .await
                .map_err(|e| stream_error(bucket, capacity, wanted, context("updating"), e))?;
            Ok(BucketChange::Updated)
        }
        Err(e)
            if matches!(
                e.kind(),
                jetstream::context::GetStreamErrorKind::JetStream(ref js_error)
                    if js_error.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND
            ) =>
        {
            js.create_stream(wanted)
                .await
                .map_err(|e| stream_error(bucket, capacity, wanted, context("creating"), e))?;
            Ok(BucketChange::Created)
        }
        Err(e) => Err(Error::nats(context("looking up"), e)),
    }
}

/// A refused stream create or update; a byte limit the server's storage cannot hold is
/// [`Error::Storage`], which says what to change.
fn stream_error(
    bucket: &str,
    capacity: u64,
    wanted: &jetstream::stream::Config,
    context: String,
    e: jetstream::context::CreateStreamError,
) -> Error {
    match e.kind() {
        jetstream::context::CreateStreamErrorKind::JetStream(ref js_error)
            if js_error.error_code() == jetstream::ErrorCode::STORAGE_RESOURCES_EXCEEDED =>
        {
            Error::Storage {
                bucket: bucket.to_owned(),
                reserved: wanted.max_bytes,
                capacity,
                wanted: buckets::jetstream_storage_bytes(capacity),
                source: e.into(),
            }
        }
        _ => Error::nats(context, e),
    }
}

/// [`ensure_bucket`] for the four fleet buckets, in contract order, then [`ensure_binaries`]
/// and the operator's own store ([`operator_store`]).
pub async fn ensure_buckets(
    js: &jetstream::Context,
    replicas: usize,
    capacity: u64,
) -> Result<Vec<(&'static str, BucketChange)>> {
    let mut changes = Vec::with_capacity(buckets::ALL.len() + 1);
    for spec in &buckets::ALL {
        changes.push((
            spec.name,
            ensure_bucket(js, spec, replicas, capacity).await?,
        ));
    }
    changes.push((
        binaries::AGENT_BINARIES,
        ensure_binaries(js, replicas).await?,
    ));
    changes.push((
        buckets::OPERATOR_STORE,
        operator_store::ensure(js, replicas).await?,
    ));
    Ok(changes)
}

/// Removes `device-state` keys sent to it (stray reports, see `write_quota`), up to 64 at a
/// time, off the reconcile loop: a device writing thousands of them must not slow the loop
/// that counts them. A failed delete is retried three times, 200 ms apart.
pub fn spawn_stray_remover(
    store: kv::Store,
    metrics: Metrics,
) -> (mpsc::UnboundedSender<String>, tokio::task::JoinHandle<()>) {
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let task = tokio::spawn(async move {
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|key| (key, rx)) })
            .for_each_concurrent(64, |key| {
                let (store, metrics) = (store.clone(), metrics.clone());
                async move {
                    for attempt in 1..=3 {
                        match store.delete(&key).await {
                            Ok(()) => {
                                metrics.kv_write("delete-stray-state", true);
                                return;
                            }
                            Err(e) => {
                                metrics.kv_write("delete-stray-state", false);
                                metrics.error("kv_delete");
                                tracing::warn!(key, attempt, error = %e, "removing a stray device-state key failed");
                                tokio::time::sleep(Duration::from_millis(200)).await;
                            }
                        }
                    }
                }
            })
            .await;
    });
    (tx, task)
}

/// One `desired-state` operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvOp {
    /// Write these bytes.
    Put(Bytes),
    /// Delete the key.
    Delete,
}

/// Writes `desired-state` keys with bounded concurrency, and publishes the change notices
/// that tell devices to list again (adr/0014).
#[derive(Clone, Debug)]
pub struct DesiredWriter {
    store: kv::Store,
    client: async_nats::Client,
    metrics: Metrics,
    concurrency: usize,
}

impl DesiredWriter {
    /// A writer on the `desired-state` store; notices go out on `client`.
    pub fn new(store: kv::Store, client: async_nats::Client, metrics: Metrics) -> Self {
        Self {
            store,
            client,
            metrics,
            // Puts wait for their JetStream ack; a fan-out to 100k devices is bound by how
            // many are in flight (128 → 1024: the server acks faster than one round trip per
            // eighth of a batch).
            concurrency: 1024,
        }
    }

    /// Publishes one change notice per device (core NATS, no ack: a lost notice is repaired
    /// by the device's next listing), then flushes so they leave now.
    pub async fn notify(&self, devices: &[harmony_fleet_contracts::DeviceId]) {
        if devices.is_empty() {
            return;
        }
        for device in devices {
            let subject = harmony_fleet_contracts::notice::notify_subject(device);
            if let Err(e) = self.client.publish(subject, Bytes::new()).await {
                self.metrics.error("notice");
                tracing::warn!(%device, error = %e, "change notice not sent; the device lists on its timer");
            }
        }
        if let Err(e) = self.client.flush().await {
            self.metrics.error("notice");
            tracing::warn!(error = %e, "flushing change notices failed");
        }
        self.metrics.notices_sent.inc_by(devices.len() as u64);
    }

    /// Writes the checkpoint (adr/0051); whether it was stored. A lost one only means the next
    /// cold start reads from the one before.
    pub async fn put_checkpoint(&self, checkpoint: &Checkpoint) -> bool {
        let key = harmony_fleet_contracts::notice::CHECKPOINT_KEY;
        let result = self.store.put(key, checkpoint.to_bytes()).await;
        self.metrics.kv_write("checkpoint", result.is_ok());
        match result {
            Ok(sequence) => {
                tracing::debug!(sequence, devices = checkpoint.devices, "checkpoint written");
                true
            }
            Err(e) => {
                self.metrics.error("kv_write");
                tracing::warn!(error = %e, "writing the checkpoint failed; the next settled moment writes it");
                false
            }
        }
    }

    /// The bytes `key` holds (`None`: no key, or the read failed, which is logged).
    pub async fn fetch(&self, key: &str) -> Option<Bytes> {
        match self.store.get(key).await {
            Ok(value) => value,
            Err(e) => {
                self.metrics.error("kv_read");
                tracing::warn!(key, error = %e, "reading a desired-state key failed");
                None
            }
        }
    }

    /// Applies every operation (in parallel, at most one per key is expected) and returns,
    /// in any order, `(key, op, ok)` for each.
    pub async fn apply(&self, ops: Vec<(String, KvOp)>) -> Vec<(String, KvOp, bool)> {
        stream::iter(ops)
            .map(|(key, op)| async move {
                let result = match &op {
                    KvOp::Put(bytes) => self.store.put(&key, bytes.clone()).await.map(|_| ()).map_err(|e| e.to_string()),
                    KvOp::Delete => self.store.delete(&key).await.map_err(|e| e.to_string()),
                };
                let name = match op {
                    KvOp::Put(_) => "put",
                    KvOp::Delete => "delete",
                };
                if let Err(e) = &result {
                    self.metrics.error("kv_write");
                    tracing::warn!(key, op = name, error = %e, "desired-state write failed; will retry");
                }
                self.metrics.kv_write(name, result.is_ok());
                (key, op, result.is_ok())
            })
            .buffer_unordered(self.concurrency)
            .collect()
            .await
    }
}

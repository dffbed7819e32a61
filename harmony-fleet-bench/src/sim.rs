//! The fleet simulator: `N` devices speaking the real wire contract (MISSION.md §5) to a real
//! nats-server, many devices per connection.
//!
//! Each simulated device
//! * writes `device-info` (`info.<device>`, labels `fleet=bench`, `site=site-<i mod sites>`)
//!   once at start,
//! * writes a heartbeat (`heartbeat.<device>`) every interval, spread evenly over the interval,
//! * answers every `desired-state` put for it with one `device-state` report
//!   (`state.<device>.<deployment>`, hash of the bytes received, their KV revision) after a
//!   uniformly random delay, `Failed` for a deterministic share of keys (the failure rate),
//!   `Running` otherwise — state is written only on change, like the agent.
//!
//! How devices see their desired state is the [`WatchMode`]: one bucket-wide watch for the
//! whole simulator (cheap; what the scale runs use, so they measure the operator and not the
//! consumer count), or one real agent watch per device (`harmony_fleet_agent::watch`, a
//! JetStream consumer each: the consumer-wall bench), or the notification alternative of
//! [`crate::notify`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures::{StreamExt, stream};
use harmony_fleet_agent::watch::{self, KvOperation, WatchEvent};
use harmony_fleet_contracts::buckets::{self, DESIRED_STATE, DEVICE_HEARTBEAT, DEVICE_INFO};
use harmony_fleet_contracts::keys::{self, DesiredKey};
use harmony_fleet_contracts::state::{DeploymentState, Phase};
use harmony_fleet_contracts::{
    AgentVersion, ContentHash, DeploymentName, DeviceId, DeviceInfo, Heartbeat, Inventory,
};
use jiff::Timestamp;
use rand::Rng;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::error::{Error, Result};
use crate::notify;

/// Agent version the simulated devices report.
pub const SIM_AGENT_VERSION: &str = "0.1.0-sim";
/// Label every simulated device carries (`fleet=bench`).
pub const FLEET_LABEL: (&str, &str) = ("fleet", "bench");
/// Label key whose value spreads devices over sites (`site=site-<i mod sites>`).
pub const SITE_LABEL: &str = "site";

/// How simulated devices learn their desired state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum WatchMode {
    /// One bucket-wide ordered watch for the whole simulator, dispatched in process.
    Shared,
    /// One real agent delivery loop per device (`harmony_fleet_agent::watch::run`: notices and
    /// the per-device index, adr/0014; a JetStream consumer per device before that).
    PerDevice,
    /// Change notices on a plain subject + KV direct get ([`crate::notify`]); no consumer.
    Notify,
}

/// What to simulate.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// `nats://` URL of the server; comma separated for the members of a cluster (connections
    /// are spread over them round-robin).
    pub nats_url: String,
    /// Number of devices.
    pub devices: usize,
    /// Devices sharing one NATS connection.
    pub devices_per_connection: usize,
    /// Device ids are `<prefix>-<index>`.
    pub prefix: String,
    /// Devices are spread over this many `site` label values.
    pub sites: usize,
    /// Heartbeat interval; `None`: no heartbeats.
    pub heartbeat_interval: Option<Duration>,
    /// Whether devices write `device-info` at start.
    pub publish_info: bool,
    /// Longest simulated time to apply a desired state (uniform in `[0, max]`).
    pub answer_delay: Duration,
    /// Share of `(device, deployment)` pairs that report `Failed` (0.0–1.0).
    pub failure_rate: f64,
    /// How devices see their desired state.
    pub watch: WatchMode,
    /// Most writes awaiting their JetStream ack at once (seeding, answers, saturation).
    pub in_flight: usize,
}

impl SimConfig {
    /// A config for `devices` devices at `nats_url` with the defaults of the scale runs.
    pub fn new(nats_url: impl Into<String>, devices: usize) -> Self {
        Self {
            nats_url: nats_url.into(),
            devices,
            devices_per_connection: 1000,
            prefix: "sim".to_owned(),
            sites: 100,
            heartbeat_interval: Some(Duration::from_secs(30)),
            publish_info: true,
            answer_delay: Duration::from_millis(500),
            failure_rate: 0.01,
            watch: WatchMode::Shared,
            in_flight: 2048,
        }
    }

    /// Number of connections the simulator opens.
    pub fn connections(&self) -> usize {
        self.devices
            .div_ceil(self.devices_per_connection.max(1))
            .max(1)
    }

    fn validate(&self) -> Result<()> {
        if self.devices == 0 || self.devices_per_connection == 0 || self.sites == 0 {
            return Err(Error::Config(
                "devices, devices per connection and sites must be at least 1".into(),
            ));
        }
        if !(0.0..=1.0).contains(&self.failure_rate) {
            return Err(Error::Config(format!(
                "failure rate {} is outside 0.0–1.0",
                self.failure_rate
            )));
        }
        if self.heartbeat_interval.is_some_and(|i| i.is_zero()) {
            return Err(Error::Config("heartbeat interval must be > 0".into()));
        }
        Ok(())
    }
}

/// Devices a simulated fleet of `devices` sizes its buckets for: the fleet, at least the
/// default capacity.
pub fn capacity_for(devices: usize) -> u64 {
    (devices as u64).max(buckets::DEFAULT_FLEET_CAPACITY)
}

/// A local nats-server whose JetStream storage holds the buckets of a fleet of `devices`
/// ([`buckets::jetstream_storage_bytes`]; their byte limits are reservations the server must
/// fit, adr/0018).
pub fn nats_options(devices: usize) -> harmony::local::NatsOptions {
    harmony::local::NatsOptions {
        max_file_store: Some(buckets::jetstream_storage_bytes(capacity_for(devices))),
        ..harmony::local::NatsOptions::default()
    }
}

/// Opens the fleet buckets, creating them sized for `devices` (adr/0018: the byte limits of
/// the agent-written ones follow the fleet capacity, and the default, 10k, refuses a larger
/// simulated fleet's writes with "maximum bytes exceeded"). The server must have the storage
/// ([`nats_options`]).
pub async fn fleet_buckets(
    client: async_nats::Client,
    devices: usize,
) -> Result<harmony_fleet_operator::kv::FleetKv> {
    fleet_buckets_replicated(client, devices, 1).await
}

/// [`fleet_buckets`] with `replicas` replicas of each bucket (3 on a cluster).
pub async fn fleet_buckets_replicated(
    client: async_nats::Client,
    devices: usize,
    replicas: usize,
) -> Result<harmony_fleet_operator::kv::FleetKv> {
    let js = jetstream::new(client.clone());
    harmony_fleet_operator::kv::ensure_buckets(&js, replicas, capacity_for(devices)).await?;
    Ok(harmony_fleet_operator::kv::FleetKv::open(client, false).await?)
}

/// The id of simulated device `index`.
pub fn device_id(prefix: &str, index: usize) -> Result<DeviceId> {
    format!("{prefix}-{index}")
        .parse()
        .map_err(|e| Error::Config(format!("device id prefix `{prefix}`: {e}")))
}

/// The index of a simulated device id, `None` for other devices.
pub fn device_index(prefix: &str, id: &str) -> Option<usize> {
    id.strip_prefix(prefix)?.strip_prefix('-')?.parse().ok()
}

/// The `site` label value of device `index`.
pub fn site_of(index: usize, sites: usize) -> String {
    format!("site-{}", index % sites.max(1))
}

/// Whether the report of `state_key` is a simulated failure (deterministic, so a bench knows
/// the expected counts): FNV-1a of the key against the rate.
pub fn fails(state_key: &str, rate: f64) -> bool {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in state_key.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    ((h % 1_000_000) as f64) < rate * 1_000_000.0
}

/// What the simulator saw and did for one deployment.
#[derive(Clone, Debug, Default)]
pub struct DeploymentTally {
    /// Latest desired revision delivered per device index.
    pub delivered: HashMap<u32, u64>,
    /// Devices whose report was acknowledged by JetStream: index → (failed, revision).
    pub answered: HashMap<u32, (bool, u64)>,
    /// First and last delivery.
    pub first_delivery: Option<Instant>,
    /// Last delivery.
    pub last_delivery: Option<Instant>,
    /// Last acknowledged report.
    pub last_answer: Option<Instant>,
}

/// Counts of one deployment, cheap to copy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Devices whose key was delivered.
    pub delivered: usize,
    /// Devices whose report is written.
    pub answered: usize,
    /// Of those, reports `Failed`.
    pub failed: usize,
    /// Last delivery.
    pub last_delivery: Option<Instant>,
    /// Last acknowledged report.
    pub last_answer: Option<Instant>,
}

impl DeploymentTally {
    fn counts(&self) -> Counts {
        Counts {
            delivered: self.delivered.len(),
            answered: self.answered.len(),
            failed: self.answered.values().filter(|(f, _)| *f).count(),
            last_delivery: self.last_delivery,
            last_answer: self.last_answer,
        }
    }
}

/// Everything the simulator counts, shared by its tasks and read by the benches.
#[derive(Debug, Default)]
pub struct Tally {
    deployments: Mutex<HashMap<String, DeploymentTally>>,
    /// Heartbeats acknowledged.
    pub heartbeats_ok: AtomicU64,
    /// Heartbeats whose write failed.
    pub heartbeats_failed: AtomicU64,
    /// Reports acknowledged.
    pub states_ok: AtomicU64,
    /// Reports whose write failed (after retries).
    pub states_failed: AtomicU64,
    /// Devices whose watch delivered its first snapshot.
    pub watches_ready: AtomicUsize,
    /// Snapshots after the first (a watch was re-created).
    pub resyncs: AtomicUsize,
    record_heartbeat_acks: AtomicBool,
    heartbeat_acks: Mutex<Vec<Duration>>,
    probes: Mutex<HashMap<String, Instant>>,
    probe_samples: Mutex<Vec<Duration>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Tally {
    /// Counts of `deployment` (zero when never seen).
    pub fn counts(&self, deployment: &str) -> Counts {
        lock(&self.deployments)
            .get(deployment)
            .map(DeploymentTally::counts)
            .unwrap_or_default()
    }

    /// Counts of every deployment seen.
    pub fn all_counts(&self) -> HashMap<String, Counts> {
        lock(&self.deployments)
            .iter()
            .map(|(k, v)| (k.clone(), v.counts()))
            .collect()
    }

    /// Starts (or stops) keeping heartbeat ack latencies; starting clears the old ones.
    pub fn record_heartbeat_acks(&self, on: bool) {
        if on {
            lock(&self.heartbeat_acks).clear();
        }
        self.record_heartbeat_acks.store(on, Ordering::Relaxed);
    }

    /// Heartbeat ack latencies kept since [`Tally::record_heartbeat_acks`].
    pub fn heartbeat_acks(&self) -> Vec<Duration> {
        lock(&self.heartbeat_acks).clone()
    }

    /// Registers a latency probe: the report for desired key `key` is timed from now.
    pub fn start_probe(&self, key: String) {
        lock(&self.probes).insert(key, Instant::now());
    }

    /// Latencies of finished probes (desired write → report acknowledged).
    pub fn probe_samples(&self) -> Vec<Duration> {
        lock(&self.probe_samples).clone()
    }

    /// Probes still waiting for their report.
    pub fn probes_pending(&self) -> usize {
        lock(&self.probes).len()
    }

    /// Records a delivery; returns `false` when this revision was already handled.
    fn delivered(&self, deployment: &str, index: u32, revision: u64) -> bool {
        let mut map = lock(&self.deployments);
        let t = map.entry(deployment.to_owned()).or_default();
        let now = Instant::now();
        t.first_delivery.get_or_insert(now);
        t.last_delivery = Some(now);
        match t.delivered.insert(index, revision) {
            Some(old) if old >= revision => {
                t.delivered.insert(index, old);
                false
            }
            _ => true,
        }
    }

    fn answered(&self, deployment: &str, key: &str, index: u32, failed: bool, revision: u64) {
        let now = Instant::now();
        {
            let mut map = lock(&self.deployments);
            let t = map.entry(deployment.to_owned()).or_default();
            t.answered.insert(index, (failed, revision));
            t.last_answer = Some(now);
        }
        if let Some(start) = lock(&self.probes).remove(key) {
            lock(&self.probe_samples).push(now - start);
        }
    }
}

/// Writes device reports; shared by every watch mode.
#[derive(Clone, Debug)]
pub(crate) struct Responder {
    js: Arc<Vec<jetstream::Context>>,
    ids: Arc<Vec<DeviceId>>,
    tally: Arc<Tally>,
    per_connection: usize,
    answer_delay: Duration,
    failure_rate: f64,
    permits: Arc<Semaphore>,
}

impl Responder {
    pub(crate) fn ids(&self) -> &[DeviceId] {
        &self.ids
    }

    pub(crate) fn tally_ref(&self) -> &Tally {
        &self.tally
    }

    pub(crate) fn index_of(&self, prefix: &str, device: &str) -> Option<usize> {
        device_index(prefix, device).filter(|i| *i < self.ids.len())
    }

    /// A desired-state put for device `index` was delivered: answer it (in a task).
    pub(crate) fn on_desired(
        &self,
        index: usize,
        deployment: DeploymentName,
        value: Bytes,
        revision: u64,
    ) {
        let Ok(index32) = u32::try_from(index) else {
            return;
        };
        if !self.tally.delivered(deployment.as_str(), index32, revision) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let delay = if this.answer_delay.is_zero() {
                Duration::ZERO
            } else {
                rand::rng().random_range(Duration::ZERO..=this.answer_delay)
            };
            if !delay.is_zero() {
                // The simulated time to apply the desired state, not a synchronisation.
                tokio::time::sleep(delay).await;
            }
            let Ok(_permit) = this.permits.acquire().await else {
                return;
            };
            let device = &this.ids[index];
            let state_key = keys::state_key(device, &deployment);
            let failed = fails(&state_key, this.failure_rate);
            let mut state = DeploymentState::new(
                if failed {
                    Phase::Failed
                } else {
                    Phase::Running
                },
                Timestamp::now(),
            );
            state.payload_hash = Some(ContentHash::of_bytes(&value));
            state.desired_revision = Some(revision);
            if failed {
                state.set_last_error("simulated failure (fleet-sim --failure-rate)");
            }
            let Ok(body) = serde_json::to_vec(&state) else {
                return;
            };
            let js = &this.js[index / this.per_connection];
            let subject = buckets::kv_subject(buckets::DEVICE_STATE, &state_key);
            for attempt in 0..3u32 {
                match put(js, subject.clone(), Bytes::from(body.clone())).await {
                    Ok(()) => {
                        this.tally.states_ok.fetch_add(1, Ordering::Relaxed);
                        let desired = keys::desired_key(device, &deployment);
                        this.tally.answered(
                            deployment.as_str(),
                            &desired,
                            index32,
                            failed,
                            revision,
                        );
                        return;
                    }
                    Err(e) if attempt < 2 => {
                        tracing::debug!(error = %e, subject, "report failed; retrying");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, subject, "report failed");
                        this.tally.states_failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        });
    }
}

/// Publishes `value` to `subject` and waits for the JetStream ack.
pub(crate) async fn put(js: &jetstream::Context, subject: String, value: Bytes) -> Result<()> {
    let ack = js
        .publish(subject.clone(), value)
        .await
        .map_err(|e| Error::nats(format!("publishing {subject}"), e))?;
    ack.await
        .map_err(|e| Error::nats(format!("ack of {subject}"), e))?;
    Ok(())
}

/// A running simulated fleet. Dropping it stops every task and closes its connections.
#[derive(Debug)]
pub struct Fleet {
    config: SimConfig,
    responder: Responder,
    clients: Vec<async_nats::Client>,
    _agent_connections: Vec<harmony_fleet_agent::connection::Connection>,
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    heartbeat_tasks: Vec<JoinHandle<()>>,
}

impl Drop for Fleet {
    fn drop(&mut self) {
        self.cancel.cancel();
        for t in self.tasks.iter().chain(&self.heartbeat_tasks) {
            t.abort();
        }
    }
}

fn agent_config(url: &str, name: &str) -> Result<harmony_fleet_agent::Config> {
    let text = format!(
        "[agent]\ndevice_id = \"{name}\"\ndata_dir = \"/nonexistent/fleet-sim\"\nruntime_enabled = false\n\n[nats]\nurls = [\"{url}\"]\n"
    );
    harmony_fleet_agent::Config::parse(&text, std::path::Path::new("<fleet-sim>"))
        .map_err(|e| Error::Config(e.to_string()))
}

impl Fleet {
    /// Connects, starts the watches and returns; call [`Fleet::seed`] next, then
    /// [`Fleet::start_heartbeats`].
    pub async fn start(config: SimConfig) -> Result<Self> {
        config.validate()?;
        let ids: Vec<DeviceId> = (0..config.devices)
            .map(|i| device_id(&config.prefix, i))
            .collect::<Result<_>>()?;
        let ids = Arc::new(ids);
        let cancel = CancellationToken::new();
        let mut clients = Vec::new();
        let mut agent_connections = Vec::new();
        let mut js = Vec::new();
        for k in 0..config.connections() {
            if config.watch == WatchMode::PerDevice {
                let url = crate::servers::url_for_connection(&config.nats_url, k);
                let agent = agent_config(url, &format!("{}-conn-{k}", config.prefix))?;
                let connection = harmony_fleet_agent::connection::Connection::connect(
                    &agent,
                    &format!("_INBOX_{}_{k}", config.prefix),
                    None,
                )
                .await
                .map_err(|e| Error::nats("connecting an agent connection", e))?;
                let mut link = connection.link();
                crate::poll_until(
                    "agent connection to NATS",
                    Duration::from_secs(30),
                    Duration::from_millis(20),
                    || {
                        let up = link.borrow_and_update().connected;
                        async move { up.then_some(()) }
                    },
                )
                .await?;
                clients.push(connection.client().clone());
                js.push(connection.jetstream().clone());
                agent_connections.push(connection);
            } else {
                let url = crate::servers::url_for_connection(&config.nats_url, k);
                let client = async_nats::ConnectOptions::new()
                    .name(format!("fleet-sim {} conn {k}", config.prefix))
                    .connect(url)
                    .await
                    .map_err(|e| Error::nats(format!("connecting to {url}"), e))?;
                js.push(jetstream::new(client.clone()));
                clients.push(client);
            }
        }
        let tally = Arc::new(Tally::default());
        let responder = Responder {
            js: Arc::new(js),
            ids: ids.clone(),
            tally,
            per_connection: config.devices_per_connection,
            answer_delay: config.answer_delay,
            failure_rate: config.failure_rate,
            permits: Arc::new(Semaphore::new(config.in_flight.max(1))),
        };
        let mut fleet = Self {
            config,
            responder,
            clients,
            _agent_connections: agent_connections,
            cancel,
            tasks: Vec::new(),
            heartbeat_tasks: Vec::new(),
        };
        match fleet.config.watch {
            WatchMode::Shared => fleet.start_shared_watch().await?,
            WatchMode::PerDevice => fleet.start_device_watches(),
            WatchMode::Notify => {
                let tasks = notify::start_device_listeners(
                    &fleet.clients,
                    &fleet.responder,
                    &fleet.config,
                    fleet.cancel.clone(),
                )
                .await?;
                fleet.tasks.extend(tasks);
            }
        }
        Ok(fleet)
    }

    /// What it counts.
    pub fn tally(&self) -> &Arc<Tally> {
        &self.responder.tally
    }

    /// Number of NATS connections in use.
    pub fn connections(&self) -> usize {
        self.clients.len()
    }

    /// The configuration.
    pub fn config(&self) -> &SimConfig {
        &self.config
    }

    /// The first connection (for benches that write on the operator's behalf).
    pub fn client(&self) -> &async_nats::Client {
        &self.clients[0]
    }

    /// One line saying what runs.
    pub fn describe(&self) -> String {
        format!(
            "fleet-sim: {} devices over {} NATS connections ({} per connection), watch mode {:?}, heartbeat {}, answer delay ≤ {:?}, failure rate {}",
            self.config.devices,
            self.connections(),
            self.config.devices_per_connection,
            self.config.watch,
            self.config
                .heartbeat_interval
                .map_or("off".to_owned(), |i| format!("every {i:?}")),
            self.config.answer_delay,
            self.config.failure_rate,
        )
    }

    async fn start_shared_watch(&mut self) -> Result<()> {
        let js = self.responder.js[0].clone();
        let store = js
            .get_key_value(DESIRED_STATE)
            .await
            .map_err(|e| Error::nats("opening bucket desired-state", e))?;
        let responder = self.responder.clone();
        let prefix = self.config.prefix.clone();
        let cancel = self.cancel.clone();
        let mut watch = store
            .watch_with_history(">")
            .await
            .map_err(|e| Error::nats("watching desired-state", e))?;
        self.tasks.push(tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    () = cancel.cancelled() => return,
                    next = watch.next() => next,
                };
                match next {
                    Some(Ok(entry)) => {
                        if entry.operation != kv::Operation::Put {
                            continue;
                        }
                        let Ok(key) = DesiredKey::parse(&entry.key) else {
                            continue;
                        };
                        if let Some(i) = responder.index_of(&prefix, key.device.as_str()) {
                            responder.on_desired(i, key.deployment, entry.value, entry.revision);
                        }
                    }
                    Some(Err(e)) => tracing::warn!(error = %e, "shared desired-state watch error"),
                    None => {
                        tracing::warn!("shared desired-state watch ended; re-creating it");
                        match store.watch_with_history(">").await {
                            Ok(w) => watch = w,
                            Err(e) => {
                                tracing::error!(error = %e, "cannot re-create the watch");
                                return;
                            }
                        }
                    }
                }
            }
        }));
        Ok(())
    }

    fn start_device_watches(&mut self) {
        for (index, id) in self.responder.ids.iter().enumerate() {
            let connection =
                self._agent_connections[index / self.config.devices_per_connection].clone();
            let (tx, mut rx) = mpsc::channel::<WatchEvent>(16);
            self.tasks.push(tokio::spawn(watch::run(
                connection,
                id.clone(),
                watch::WatchSettings::default(),
                tx,
                self.cancel.clone(),
            )));
            let responder = self.responder.clone();
            let tally = self.responder.tally.clone();
            self.tasks.push(tokio::spawn(async move {
                let mut first = true;
                while let Some(event) = rx.recv().await {
                    let records = match event {
                        WatchEvent::Snapshot(records) | WatchEvent::Rebased(records) => {
                            if first {
                                tally.watches_ready.fetch_add(1, Ordering::Relaxed);
                                first = false;
                            } else {
                                tally.resyncs.fetch_add(1, Ordering::Relaxed);
                            }
                            records
                        }
                        WatchEvent::Change(record) => vec![record],
                    };
                    for record in records {
                        if record.operation != KvOperation::Put {
                            continue;
                        }
                        if let Ok(key) = DesiredKey::parse(&record.key) {
                            responder.on_desired(
                                index,
                                key.deployment,
                                record.value,
                                record.revision,
                            );
                        }
                    }
                }
            }));
        }
    }

    /// Writes `device-info` and a first heartbeat of every device (as configured), waiting
    /// for every ack. Returns how long it took.
    pub async fn seed(&self) -> Result<Duration> {
        let started = Instant::now();
        let version =
            AgentVersion::new(SIM_AGENT_VERSION).map_err(|e| Error::Config(e.to_string()))?;
        let results: Vec<Result<()>> = stream::iter(0..self.config.devices)
            .map(|i| {
                let version = version.clone();
                async move {
                    let js = &self.responder.js[i / self.config.devices_per_connection];
                    let id = &self.responder.ids[i];
                    if self.config.publish_info {
                        let info = self.device_info(i, version.clone());
                        let body = serde_json::to_vec(&info)
                            .map_err(|e| Error::json("encoding device-info", e))?;
                        put(
                            js,
                            buckets::kv_subject(DEVICE_INFO, &keys::info_key(id)),
                            body.into(),
                        )
                        .await?;
                    }
                    if self.config.heartbeat_interval.is_some() {
                        put(js, heartbeat_subject(id), heartbeat_body(&version)?).await?;
                    }
                    Ok(())
                }
            })
            .buffer_unordered(self.config.in_flight.max(1))
            .collect()
            .await;
        let failed = results.iter().filter(|r| r.is_err()).count();
        if let Some(Err(e)) = results.into_iter().find(Result::is_err) {
            return Err(Error::nats(
                format!(
                    "seeding: {failed} of {} devices failed",
                    self.config.devices
                ),
                e,
            ));
        }
        Ok(started.elapsed())
    }

    fn device_info(&self, index: usize, agent_version: AgentVersion) -> DeviceInfo {
        let id = self.responder.ids[index].clone();
        DeviceInfo {
            labels: [
                (FLEET_LABEL.0.to_owned(), FLEET_LABEL.1.to_owned()),
                (SITE_LABEL.to_owned(), site_of(index, self.config.sites)),
            ]
            .into_iter()
            .collect(),
            inventory: Inventory {
                hostname: id.to_string(),
                arch: "aarch64".into(),
                os: "linux".into(),
                os_release: Some("Debian GNU/Linux 12 (bookworm)".into()),
                kernel_version: Some("6.6.51+rpt-rpi-2712".into()),
                cpu_count: 4,
                memory_bytes: 8 << 30,
            },
            device_id: id,
            agent_version,
            boot_time: None,
            observed_at: Timestamp::now(),
        }
    }

    /// Starts the heartbeat loops (one per connection), spreading each connection's devices
    /// evenly over the interval. No-op without an interval.
    pub fn start_heartbeats(&mut self) -> Result<()> {
        let Some(interval) = self.config.heartbeat_interval else {
            return Ok(());
        };
        let version =
            AgentVersion::new(SIM_AGENT_VERSION).map_err(|e| Error::Config(e.to_string()))?;
        let tick = Duration::from_millis(20);
        for (k, js) in self.responder.js.iter().enumerate() {
            let first = k * self.config.devices_per_connection;
            let last = (first + self.config.devices_per_connection).min(self.config.devices);
            let ids: Vec<DeviceId> = self.responder.ids[first..last].to_vec();
            let per_tick = ids.len() as f64 * tick.as_secs_f64() / interval.as_secs_f64();
            let js = js.clone();
            let tally = self.responder.tally.clone();
            let cancel = self.cancel.clone();
            let version = version.clone();
            self.heartbeat_tasks.push(tokio::spawn(async move {
                let mut ticker = tokio::time::interval(tick);
                ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                let mut due = 0.0f64;
                let mut next = 0usize;
                loop {
                    tokio::select! {
                        () = cancel.cancelled() => return,
                        _ = ticker.tick() => {}
                    }
                    due += per_tick;
                    let mut batch = Vec::new();
                    while due >= 1.0 {
                        due -= 1.0;
                        let id = &ids[next % ids.len()];
                        next += 1;
                        let Ok(body) = heartbeat_body(&version) else {
                            continue;
                        };
                        let sent = Instant::now();
                        match js.publish(heartbeat_subject(id), body).await {
                            Ok(ack) => batch.push((sent, ack)),
                            Err(_) => {
                                tally.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                    if batch.is_empty() {
                        continue;
                    }
                    let tally = tally.clone();
                    tokio::spawn(async move {
                        for (sent, ack) in batch {
                            match ack.await {
                                Ok(_) => {
                                    tally.heartbeats_ok.fetch_add(1, Ordering::Relaxed);
                                    if tally.record_heartbeat_acks.load(Ordering::Relaxed) {
                                        lock(&tally.heartbeat_acks).push(sent.elapsed());
                                    }
                                }
                                Err(_) => {
                                    tally.heartbeats_failed.fetch_add(1, Ordering::Relaxed);
                                }
                            }
                        }
                    });
                }
            }));
        }
        Ok(())
    }

    /// Stops the heartbeat loops.
    pub fn stop_heartbeats(&mut self) {
        for t in self.heartbeat_tasks.drain(..) {
            t.abort();
        }
    }

    /// Writes heartbeats as fast as the server acknowledges them for `duration` (at most
    /// `in_flight` unacknowledged), round-robin over the devices. Returns (acks, latencies).
    pub async fn saturate_heartbeats(&self, duration: Duration) -> Result<(u64, Vec<Duration>)> {
        let version =
            AgentVersion::new(SIM_AGENT_VERSION).map_err(|e| Error::Config(e.to_string()))?;
        let connections = self.responder.js.len();
        let window = (self.config.in_flight / connections).max(8);
        let deadline = Instant::now() + duration;
        let tasks: Vec<JoinHandle<(u64, Vec<Duration>)>> = (0..connections)
            .map(|k| {
                let js = self.responder.js[k].clone();
                let first = k * self.config.devices_per_connection;
                let last = (first + self.config.devices_per_connection).min(self.config.devices);
                let ids: Vec<DeviceId> = self.responder.ids[first..last].to_vec();
                let version = version.clone();
                tokio::spawn(async move {
                    let mut pending = stream::FuturesUnordered::new();
                    let mut acked = 0u64;
                    let mut latencies = Vec::new();
                    let mut next = 0usize;
                    while Instant::now() < deadline {
                        while pending.len() < window {
                            let id = &ids[next % ids.len()];
                            next += 1;
                            let Ok(body) = heartbeat_body(&version) else {
                                break;
                            };
                            let sent = Instant::now();
                            match js.publish(heartbeat_subject(id), body).await {
                                Ok(ack) => pending.push(async move { (sent, ack.await.is_ok()) }),
                                Err(_) => break,
                            }
                        }
                        if let Some((sent, true)) = pending.next().await {
                            acked += 1;
                            latencies.push(sent.elapsed());
                        }
                    }
                    while let Some((sent, ok)) = pending.next().await {
                        if ok {
                            acked += 1;
                            latencies.push(sent.elapsed());
                        }
                    }
                    (acked, latencies)
                })
            })
            .collect();
        let mut total = 0;
        let mut all = Vec::new();
        for t in tasks {
            let (n, mut l) = t
                .await
                .map_err(|e| Error::Config(format!("saturation task failed: {e}")))?;
            total += n;
            all.append(&mut l);
        }
        Ok((total, all))
    }
}

fn heartbeat_subject(id: &DeviceId) -> String {
    buckets::kv_subject(DEVICE_HEARTBEAT, &keys::heartbeat_key(id))
}

fn heartbeat_body(version: &AgentVersion) -> Result<Bytes> {
    serde_json::to_vec(&Heartbeat::new(Timestamp::now(), version.clone()))
        .map(Bytes::from)
        .map_err(|e| Error::json("encoding a heartbeat", e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_ids_round_trip_their_index() {
        let id = device_id("sim", 4711).unwrap();
        assert_eq!(id.as_str(), "sim-4711");
        assert_eq!(device_index("sim", id.as_str()), Some(4711));
        assert_eq!(device_index("sim", "other-1"), None);
        assert_eq!(device_index("sim", "simx-1"), None);
    }

    #[test]
    fn failures_are_deterministic_and_near_the_rate() {
        let n = 100_000;
        let failed = (0..n)
            .filter(|i| fails(&format!("state.sim-{i}.web"), 0.01))
            .count();
        assert!((800..1200).contains(&failed), "{failed}");
        assert!(!fails("state.sim-1.web", 0.0));
        assert!(fails("state.sim-1.web", 1.0));
        assert_eq!(fails("state.sim-7.web", 0.5), fails("state.sim-7.web", 0.5));
    }

    #[test]
    fn connections_cover_every_device() {
        let mut c = SimConfig::new("nats://x", 2500);
        c.devices_per_connection = 1000;
        assert_eq!(c.connections(), 3);
        c.devices = 1000;
        assert_eq!(c.connections(), 1);
    }

    #[test]
    fn tally_ignores_old_revisions() {
        let t = Tally::default();
        assert!(t.delivered("web", 1, 10));
        assert!(!t.delivered("web", 1, 10));
        assert!(!t.delivered("web", 1, 9));
        assert!(t.delivered("web", 1, 11));
        assert_eq!(t.counts("web").delivered, 1);
    }
}

//! [`Agent`]: wires the loops together — offline restore, NATS connection, desired-state
//! watch, deployment supervisor and workers, reporter, command server — and stops them on a
//! shutdown token.
//!
//! Start-up order is what makes the agent offline-first: the state kept on disk is restored
//! (workloads adopted or restarted) *before* NATS is even tried, and the client connects in the
//! background, so a device that boots without network runs its last known workloads.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use harmony_fleet_contracts::{AgentVersion, device_inbox_prefix};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::commands::{self, CommandContext};
use crate::config::{Config, Credentials};
use crate::connection::Connection;
use crate::deployments::{Supervisor, WorkerSettings};
use crate::error::Error;
use crate::identity::{self, Credential};
use crate::metrics::Metrics;
use crate::reports::{self, ReporterSettings};
use crate::runtime::{ContainerRuntime, PodmanCli};
use crate::store::Store;
use crate::upgrade::install::HostUpgrader;
use crate::upgrade::{Exit, ExitRequest, SelfImage};
use crate::watch;
use crate::watch::WatchEvent;

/// How long the loops get to finish after shutdown is requested. Every loop stops at its next
/// await on the token (in-flight reconciles and NATS requests included), so this is only a
/// backstop that keeps a stop under the 2 s a service manager is promised (adr/0022).
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1200);

/// How long the last flush of buffered NATS writes may take on the way out (a disconnected
/// client would wait for the server).
const FINAL_FLUSH: Duration = Duration::from_millis(300);

/// How long the agent waits before asking again after a refused enrollment or a failed
/// renewal.
const IDENTITY_RETRY: Duration = Duration::from_secs(30);

/// How this device enrolls (again); a refusal because it is blacklisted sends an empty desired
/// state to `workloads` (the supervisor's input), which stops them.
fn enroller(config: &Config, workloads: mpsc::Sender<WatchEvent>) -> identity::Enroller {
    identity::Enroller {
        urls: config.nats.urls.clone(),
        ca_file: config.nats.ca_file.clone(),
        bootstrap_creds: match &config.credentials {
            Some(Credentials::Nkey {
                bootstrap_creds, ..
            }) => bootstrap_creds.clone(),
            _ => None,
        },
        bootstrap_token: match &config.credentials {
            Some(Credentials::Nkey {
                bootstrap_token, ..
            }) => bootstrap_token.clone(),
            _ => None,
        },
        device: config.agent.device_id.clone(),
        inventory: crate::inventory::read_inventory(),
        workloads: Some(workloads),
    }
}

/// The device's credential: the stored one, or one obtained by enrolling (which waits for an
/// admin's approval). `None` when `shutdown` came first.
async fn own_credential(
    config: &Config,
    enroller: &identity::Enroller,
    bootstrap_creds: Option<&std::path::Path>,
    shutdown: &CancellationToken,
) -> Result<Option<Credential>, Error> {
    let data_dir = &config.agent.data_dir;
    let key = Arc::new(identity::load_or_create_key(data_dir)?);
    if let Some(token) = identity::load_credential(data_dir, &key) {
        return Ok(Some(Credential::new(key, token)));
    }
    let Some(bootstrap) = bootstrap_creds else {
        return Err(identity::IdentityError::NoBootstrap {
            credential: data_dir.join(identity::CREDENTIAL_FILE),
        }
        .into());
    };
    let token = identity::enroll(enroller, bootstrap, &key, IDENTITY_RETRY, shutdown).await?;
    let Some(token) = token else {
        return Ok(None);
    };
    identity::save_credential(data_dir, &token)?;
    Ok(Some(Credential::new(key, token)))
}

/// The agent's version as reported in `device-info`, heartbeats and `ping`
/// ([`crate::version::current`]: the stamped version, else the crate's).
pub fn agent_version() -> AgentVersion {
    AgentVersion::lossy(&crate::version::current())
}

/// The device agent. Build it from a validated [`Config`], then [`run`](Agent::run) it.
#[derive(Debug, Clone)]
pub struct Agent {
    config: Config,
    config_path: Option<PathBuf>,
}

impl Agent {
    /// An agent for this configuration.
    pub fn new(config: Config) -> Self {
        Self {
            config,
            config_path: None,
        }
    }

    /// The file the configuration was loaded from: a new build's self-test reads it
    /// (self-upgrade fails without it).
    pub fn with_config_path(mut self, path: PathBuf) -> Self {
        self.config_path = Some(path);
        self
    }

    /// Run with the podman CLI runtime until `shutdown` is cancelled (or the agent stops
    /// itself, see [`Exit`]). Containers keep running after the agent stops: stopping the
    /// agent never stops workloads.
    pub async fn run(self, shutdown: CancellationToken) -> Result<Exit, Error> {
        let runtime = Arc::new(PodmanCli::new(self.config.podman_options()));
        self.run_with_runtime(runtime, shutdown).await
    }

    /// Run with any runtime (the seam used by tests of the wiring).
    pub async fn run_with_runtime<R: ContainerRuntime>(
        self,
        runtime: Arc<R>,
        shutdown: CancellationToken,
    ) -> Result<Exit, Error> {
        let started = Instant::now();
        let config = self.config;
        let exit = ExitRequest::new(shutdown.clone());
        let image = Arc::new(SelfImage::default());
        let (client_tx, client_rx) = tokio::sync::watch::channel(None);
        let heartbeat_published = Arc::new(tokio::sync::Notify::new());
        let upgrader = Arc::new(HostUpgrader::new(
            config.agent.data_dir.clone(),
            self.config_path.clone(),
            image.clone(),
            client_rx,
            exit.clone(),
        ));
        let device = config.agent.device_id.clone();
        tracing::info!(%device, version = %agent_version(), "fleet agent starting");

        let metrics = Metrics::new();
        let store = Store::open(&config.agent.data_dir)?;
        let held = store.load()?;
        let (report_tx, report_rx) = mpsc::unbounded_channel();
        let stop = shutdown.child_token();
        let mut supervisor = Supervisor::new(
            device.clone(),
            runtime.clone(),
            store,
            held,
            report_tx,
            WorkerSettings {
                reconcile_interval: config.reconcile_interval(),
                runtime_enabled: config.agent.runtime_enabled,
                metrics: metrics.clone(),
                upgrader,
            },
            stop.clone(),
        );
        // Offline-first: workloads come back from disk before NATS is tried.
        supervisor.restore();
        // The supervisor runs before the device has a credential: a refusal because the
        // device is blacklisted stops its workloads through it.
        let (watch_tx, watch_rx) = mpsc::channel(64);
        let mut tasks = JoinSet::new();
        tasks.spawn(supervisor.run(watch_rx));
        // A newly installed binary is on probation until its first heartbeat.
        tasks.spawn(crate::upgrade::confirm::run(
            config.agent.data_dir.clone(),
            image,
            heartbeat_published.clone(),
            exit.clone(),
            stop.clone(),
        ));
        {
            let watch_tx = watch_tx.downgrade();
            metrics.probe_queue("watch-events", move || {
                watch_tx.upgrade().map_or(0, |tx| {
                    u64::try_from(tx.max_capacity() - tx.capacity()).unwrap_or(u64::MAX)
                })
            });
        }
        // Metrics are served offline too; a bad address is logged, never fatal: workloads
        // matter more than their metrics.
        if let Some(address) = config.metrics.listen {
            match crate::metrics::bind(address).await {
                Ok(listener) => {
                    tasks.spawn(crate::metrics::serve(
                        listener,
                        metrics.clone(),
                        stop.clone(),
                    ));
                }
                Err(err) => tracing::error!(error = %err, "metrics are off"),
            }
        }
        if let Some(path) = config.metrics.textfile.clone() {
            tasks.spawn(crate::metrics::textfile_loop(
                path,
                Duration::from_secs(config.metrics.textfile_interval_secs),
                metrics.clone(),
                stop.clone(),
            ));
        }
        let enroller = enroller(&config, watch_tx.clone());

        let credential = match &config.credentials {
            Some(Credentials::Nkey {
                bootstrap_creds, ..
            }) => {
                match own_credential(&config, &enroller, bootstrap_creds.as_deref(), &shutdown)
                    .await?
                {
                    Some(credential) => Some(credential),
                    None => {
                        // Stopped while enrolling.
                        stop.cancel();
                        drain(&mut tasks).await;
                        return Ok(exit.outcome());
                    }
                }
            }
            _ => None,
        };
        let connection =
            Connection::connect(&config, &device_inbox_prefix(&device), credential.as_ref())
                .await?;
        client_tx.send_replace(Some(connection.client().clone()));
        tasks.spawn(count_reconnects(
            connection.link(),
            metrics.clone(),
            stop.clone(),
        ));
        tasks.spawn(watch::run(
            connection.clone(),
            device.clone(),
            watch::WatchSettings {
                resync_interval: config.resync_interval(),
            },
            watch_tx,
            stop.clone(),
        ));
        if let Some(credential) = credential {
            tasks.spawn(identity::maintain(
                connection.client().clone(),
                credential,
                enroller,
                config.agent.data_dir.clone(),
                IDENTITY_RETRY,
                stop.clone(),
            ));
        }
        tasks.spawn(reports::run(
            connection.clone(),
            ReporterSettings {
                device: device.clone(),
                labels: config.labels.clone(),
                agent_version: agent_version(),
                heartbeat_interval: config.heartbeat_interval(),
                metrics: metrics.clone(),
                heartbeat_published: Some(heartbeat_published),
            },
            report_rx,
            stop.clone(),
        ));
        tasks.spawn(commands::serve(
            connection.clone(),
            Arc::new(CommandContext {
                device: device.clone(),
                agent_version: agent_version(),
                started,
                runtime,
                sessions: Default::default(),
            }),
            stop.clone(),
        ));

        shutdown.cancelled().await;
        let stopping = Instant::now();
        tracing::info!("fleet agent stopping (containers keep running)");
        stop.cancel();
        drain(&mut tasks).await;
        match tokio::time::timeout(FINAL_FLUSH, connection.client().flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => tracing::debug!(error = %err, "final flush"),
            Err(_) => tracing::debug!("final flush did not finish within {FINAL_FLUSH:?}"),
        }
        let outcome = exit.outcome();
        tracing::info!(elapsed = ?stopping.elapsed(), exit = ?outcome, "fleet agent stopped");
        Ok(outcome)
    }
}

/// Counts every connection after the first as a reconnect.
async fn count_reconnects(
    mut link: tokio::sync::watch::Receiver<crate::connection::Link>,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    let mut seen = link.borrow_and_update().generation;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            changed = link.changed() => if changed.is_err() { return },
        }
        let generation = link.borrow_and_update().generation;
        if generation > seen {
            // Generation 1 is the first connection; every later one is a reconnect.
            let reconnects = generation - seen.max(1);
            for _ in 0..reconnects {
                metrics.nats_reconnect();
            }
            seen = generation;
        }
    }
}

/// Waits up to [`SHUTDOWN_GRACE`] for the agent's loops to end (their token is cancelled),
/// then aborts the rest.
async fn drain<T: 'static>(tasks: &mut JoinSet<T>) {
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("some agent loops did not stop within {SHUTDOWN_GRACE:?}; aborting them");
        tasks.abort_all();
    }
}

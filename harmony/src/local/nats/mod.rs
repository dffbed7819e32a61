//! [`LocalNats`]: a real nats-server with JetStream on a free loopback port, its own store
//! directory and a generated configuration (see [`config`]); stoppable and restartable on the
//! same store and port, for fault tests. [`LocalNatsCluster`]: three such servers joined by
//! routes, for JetStream replication and node-loss tests.

pub mod config;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use config::{
    AllowResponses, ClusterSection, NatsAccount, NatsAuthCallout, NatsAuthConfig,
    NatsOperatorTrust, NatsPermissions, NatsTls, NatsUser, ServerConfig, SubjectPermission,
};

use crate::local::bins::{self, BinLocator};
use crate::local::data_dir::DataDir;
use crate::local::error::{LocalError, Result};
use crate::local::ports::{self, START_ATTEMPTS};
use crate::local::probe;
use crate::local::process::{LOG_TAIL_LINES, ProcessSpec, SupervisedProcess};

const PROBE_INTERVAL: Duration = Duration::from_millis(50);
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// How to start a [`LocalNats`] (or each member of a [`LocalNatsCluster`]).
#[derive(Debug, Clone)]
pub struct NatsOptions {
    /// Directory for the JetStream store, configuration and log. `None`: a fresh temporary
    /// directory.
    pub data_dir: Option<PathBuf>,
    /// Keep a caller-given `data_dir` when the server is dropped.
    pub keep_data_dir: bool,
    /// Accounts, users and permissions; `None`: no authentication.
    pub auth: Option<NatsAuthConfig>,
    /// The server's name (JetStream needs unique names in a cluster).
    pub server_name: String,
    /// Where `nats-server` is looked up.
    pub bins: BinLocator,
    /// Deadline for the server to report healthy.
    pub ready_timeout: Duration,
    /// JetStream file storage (`max_file_store`, bytes): what stream byte limits may reserve
    /// and data may fill. Default 4 GiB, the same on every machine; `None`: nats-server's own
    /// default, 75% of the disk's free space at start.
    pub max_file_store: Option<u64>,
}

impl Default for NatsOptions {
    fn default() -> Self {
        NatsOptions {
            data_dir: None,
            keep_data_dir: false,
            auth: None,
            server_name: "harmony-local".to_owned(),
            bins: BinLocator::from_env(),
            ready_timeout: Duration::from_secs(30),
            max_file_store: Some(4 << 30),
        }
    }
}

/// A nats-server with JetStream, killed when dropped.
#[derive(Debug)]
pub struct LocalNats {
    process: Option<SupervisedProcess>,
    program: PathBuf,
    options: NatsOptions,
    port: u16,
    monitor_port: u16,
    cluster: Option<ClusterSection>,
    startup_time: Duration,
    // Last: removed only after the process is stopped.
    dir: DataDir,
}

impl LocalNats {
    /// Starts nats-server with JetStream on free loopback ports and waits until it reports
    /// JetStream enabled (`/healthz?js-enabled-only=true`).
    pub async fn start(options: NatsOptions) -> Result<Self> {
        let mut last_error = None;
        for attempt in 1..=START_ATTEMPTS {
            let mut nats = Self::prepare(options.clone(), None)?;
            nats.spawn()?;
            match nats.wait_healthy(true).await {
                Ok(()) => return Ok(nats),
                Err(e) if attempt < START_ATTEMPTS && nats.lost_port_race() => {
                    tracing::debug!(port = nats.port, "nats-server lost its port; retrying");
                    last_error = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_error.unwrap_or_else(|| LocalError::Config("no start attempt was made".into())))
    }

    /// Directories and ports picked, configuration not yet written, nothing started.
    fn prepare(options: NatsOptions, cluster: Option<ClusterSection>) -> Result<Self> {
        let program = options.bins.locate(bins::NATS_SERVER)?;
        let dir = match &options.data_dir {
            Some(path) => DataDir::given(path, options.keep_data_dir)?,
            None => DataDir::temporary("nats")?,
        };
        let picked = ports::free_ports(2)?;
        Ok(LocalNats {
            process: None,
            program,
            options,
            port: picked[0],
            monitor_port: picked[1],
            cluster,
            startup_time: Duration::ZERO,
            dir,
        })
    }

    /// `nats://127.0.0.1:<port>`: the client URL (stable across restarts).
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The client port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:<port>` of the monitoring endpoint (`/varz`, `/jsz`, `/healthz`).
    pub fn monitor_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.monitor_port)
    }

    /// The directory holding the JetStream store, configuration file and log.
    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The JetStream store directory (kept across [`LocalNats::restart`]).
    pub fn store_dir(&self) -> PathBuf {
        self.dir.path().join("jetstream")
    }

    /// The generated configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.conf")
    }

    /// The server's log file.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats-server.log")
    }

    /// The server's pid while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(SupervisedProcess::pid)
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        self.process
            .as_mut()
            .is_some_and(SupervisedProcess::is_running)
    }

    /// How long the last (re)start took until the server was healthy.
    pub fn startup_time(&self) -> Duration {
        self.startup_time
    }

    /// Stops the server (SIGTERM, then SIGKILL); the store and ports are kept for
    /// [`LocalNats::restart`].
    pub async fn stop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop().await;
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open but nothing is answered, as when a
    /// network partition cuts devices off. Undo with [`LocalNats::resume`].
    pub fn pause(&mut self) -> Result<()> {
        match self.process.as_mut() {
            Some(process) => process.pause(),
            None => Err(self.not_running()),
        }
    }

    /// Lets a paused server run again (SIGCONT).
    pub fn resume(&mut self) -> Result<()> {
        match self.process.as_mut() {
            Some(process) => process.resume(),
            None => Err(self.not_running()),
        }
    }

    /// Starts the server again on the same store, port and configuration (stopping it first if
    /// it runs), and waits until it is healthy. Clients reconnect to the same [`LocalNats::url`].
    pub async fn restart(&mut self) -> Result<()> {
        self.stop().await;
        let deadline = Instant::now() + self.options.ready_timeout;
        loop {
            self.spawn()?;
            match self.wait_healthy(self.cluster.is_none()).await {
                Ok(()) => return Ok(()),
                // The old socket may linger a moment; the port must stay the same.
                Err(e) if self.lost_port_race() && Instant::now() < deadline => {
                    tracing::debug!(port = self.port, error = %e, "port still busy; retrying restart");
                    self.stop().await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn(&mut self) -> Result<()> {
        let store_dir = self.store_dir();
        let text = ServerConfig {
            host: "127.0.0.1",
            server_name: &self.options.server_name,
            port: self.port,
            monitor_port: self.monitor_port,
            store_dir: &store_dir,
            max_file_store: self.options.max_file_store,
            cluster: self.cluster.as_ref(),
            auth: self.options.auth.as_ref(),
            tls: None,
        }
        .render()?;
        let config_path = self.config_path();
        std::fs::write(&config_path, text)
            .map_err(|e| LocalError::io(format!("writing {}", config_path.display()), e))?;
        let spec = ProcessSpec::new(
            format!("nats-server {}", self.options.server_name),
            &self.program,
            self.log_path(),
        )
        .arg("--config")
        .arg(&config_path);
        self.process = Some(SupervisedProcess::spawn(spec)?);
        Ok(())
    }

    /// Waits for `/healthz`; `js_enabled_only` skips the JetStream-cluster-is-current check
    /// (a lone server, or a cluster member whose peers are not up yet).
    async fn wait_healthy(&mut self, js_enabled_only: bool) -> Result<()> {
        let started = Instant::now();
        let addr = SocketAddr::from(([127, 0, 0, 1], self.monitor_port));
        let path = if js_enabled_only {
            "/healthz?js-enabled-only=true"
        } else {
            "/healthz"
        };
        let timeout = self.options.ready_timeout;
        let Some(process) = self.process.as_mut() else {
            return Err(self.not_running());
        };
        process
            .wait_ready(timeout, PROBE_INTERVAL, || async move {
                let response = probe::http_get(addr, path, PROBE_TIMEOUT).await?;
                if response.status == 200 {
                    Ok(())
                } else {
                    Err(format!(
                        "{path} answered {}: {}",
                        response.status, response.body
                    ))
                }
            })
            .await?;
        self.startup_time = started.elapsed();
        tracing::info!(
            name = %self.options.server_name,
            url = %self.url(),
            startup_ms = self.startup_time.as_millis() as u64,
            "local nats-server ready"
        );
        Ok(())
    }

    fn not_running(&self) -> LocalError {
        LocalError::NotRunning {
            name: format!("nats-server {}", self.options.server_name),
        }
    }

    fn lost_port_race(&self) -> bool {
        self.process
            .as_ref()
            .is_some_and(|p| ports::is_addr_in_use(&p.log_tail(LOG_TAIL_LINES)))
    }
}

impl Drop for LocalNats {
    fn drop(&mut self) {
        if let Some(mut process) = self.process.take() {
            process.stop_blocking();
        }
    }
}

/// Three (or more) nats-servers with JetStream joined by routes into one cluster, each with its
/// own store; single members can be stopped and restarted to test node loss.
#[derive(Debug)]
pub struct LocalNatsCluster {
    nodes: Vec<LocalNats>,
}

/// The cluster name every member of a [`LocalNatsCluster`] uses.
pub const CLUSTER_NAME: &str = "harmony-local";

impl LocalNatsCluster {
    /// Starts `size` servers (at least 3 for JetStream replication) named `<server_name>-<i>`,
    /// each routing to the others, and waits until every one reports JetStream current.
    /// `options.data_dir`, when given, gets one sub-directory per member.
    pub async fn start(size: usize, options: NatsOptions) -> Result<Self> {
        if size == 0 {
            return Err(LocalError::Config(
                "a NATS cluster needs at least one server".into(),
            ));
        }
        let route_ports = ports::free_ports(size)?;
        let mut nodes = Vec::with_capacity(size);
        for (i, &route_port) in route_ports.iter().enumerate() {
            let name = format!("{}-{}", options.server_name, i + 1);
            let member = NatsOptions {
                data_dir: options.data_dir.as_ref().map(|d| d.join(&name)),
                server_name: name,
                ..options.clone()
            };
            let cluster = ClusterSection {
                name: CLUSTER_NAME.to_owned(),
                port: route_port,
                routes: route_ports
                    .iter()
                    .filter(|&&p| p != route_port)
                    .map(|p| format!("nats-route://127.0.0.1:{p}"))
                    .collect(),
            };
            let mut node = LocalNats::prepare(member, Some(cluster))?;
            node.spawn()?;
            nodes.push(node);
        }
        // All members run before any is asked: JetStream needs a quorum to become current.
        for node in &mut nodes {
            node.wait_healthy(false).await?;
        }
        Ok(LocalNatsCluster { nodes })
    }

    /// Every member's client URL (give them all to a client for failover).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(LocalNats::url).collect()
    }

    /// The members.
    pub fn nodes(&self) -> &[LocalNats] {
        &self.nodes
    }

    /// One member, to stop or restart it.
    pub fn node_mut(&mut self, index: usize) -> Option<&mut LocalNats> {
        self.nodes.get_mut(index)
    }

    /// Stops every member.
    pub async fn stop(&mut self) {
        for node in &mut self.nodes {
            node.stop().await;
        }
    }
}

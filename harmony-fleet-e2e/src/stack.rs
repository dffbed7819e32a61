//! [`Stack`]: one fleet per test binary, brought up with the production Scores on
//! `LocalTopology` — local control plane, NATS, the operator, N device agents, each device
//! with its own podman storage and network namespace — and the handles tests use on it.
//!
//! Leftovers of an earlier run of the same test binary (processes, containers, device
//! networks, state) are pruned before bring-up; stale `e2e-*` namespaces too.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_nats::jetstream::{self, kv};
use futures::TryStreamExt as _;
use harmony::capability::{K8sClient, ProcessSupervisor};
use harmony::interpret::Outcome;
use harmony::inventory::Inventory;
use harmony::local::netns::DeviceNetwork;
use harmony::local::podman::ContainerSummary;
use harmony::local::{SupervisionMode, probe};
use harmony::score::Score;
use harmony::topologies::LocalTopology;
use harmony::topology::Topology;
use harmony_fleet_agent::runtime::LABEL_DEPLOYMENT;
use harmony_fleet_contracts::DeviceId;
use harmony_fleet_contracts::buckets::DESIRED_STATE;
use harmony_fleet_deploy::agent::local as agent_local;
use harmony_fleet_deploy::local::{self, LocalDevice, LocalFleet};
use harmony_fleet_deploy::nats::{NatsEndpoint, NatsReplicas, smoke};
use harmony_fleet_deploy::trust::LocalTrust;
use harmony_fleet_operator::commands::CommandsClient;
use tokio::sync::{OnceCell, RwLock, RwLockReadGuard, RwLockWriteGuard};

use crate::namespace::{self, TestNamespace};
use crate::restore::Restore;

/// What a test binary's stack is made of.
#[derive(Debug, Clone, Copy)]
pub struct StackOptions {
    /// Names the state directory (one per test binary, so binaries never share one).
    pub name: &'static str,
    /// Number of device agents (`local-1` …).
    pub devices: usize,
    /// One NATS server or a three-node cluster.
    pub nats_replicas: NatsReplicas,
    /// Labels: the e2e ones (`site=e2e`, `tier=a|b`) or, when `true`, exactly those
    /// `local up` gives (`site=local`, …), for tests of the README's walk-through.
    pub walkthrough_labels: bool,
    /// Lifetime of device credentials; `None`: the operator's default (30 days).
    pub credential_lifetime_secs: Option<u64>,
    /// Serve the operator's dashboard on a free loopback port, as `local up` does (the
    /// operator binary must be built with `--features web-frontend`).
    pub dashboard: bool,
}

/// The running fleet and the handles tests use.
pub struct Stack {
    topology: LocalTopology,
    /// The fleet description the Scores came from.
    pub fleet: LocalFleet,
    /// Where everything lives (logs included).
    pub state_dir: PathBuf,
    /// Admin client of the local control plane.
    pub kube: kube::Client,
    /// Admin NATS client.
    pub nats: async_nats::Client,
    /// The fleet's chain of trust (NATS JWTs).
    pub trust: LocalTrust,
    /// NATS URLs.
    pub endpoint: NatsEndpoint,
    /// How long bring-up took.
    pub bring_up: Duration,
    faults: RwLock<()>,
}

/// The runtime bring-up and the stack's clients live on, for the whole test binary.
static RUNTIME: LazyLock<tokio::runtime::Runtime> = LazyLock::new(|| {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("e2e-stack")
        .enable_all()
        .build()
        .unwrap_or_else(|e| panic!("the e2e stack runtime could not start: {e}"))
});

static STACK: OnceCell<Stack> = OnceCell::const_new();

/// The stack of this test binary, brought up on first use.
pub async fn shared(options: StackOptions) -> &'static Stack {
    STACK
        .get_or_init(|| async move {
            let handle = RUNTIME.spawn(Stack::bring_up(options));
            match handle.await {
                Ok(Ok(stack)) => stack,
                Ok(Err(e)) => panic!("e2e bring-up failed: {e:#}"),
                Err(e) => panic!("e2e bring-up panicked: {e}"),
            }
        })
        .await
}

fn labels_for(device: &LocalDevice, index: usize) -> BTreeMap<String, String> {
    let mut labels = device.labels.clone();
    labels.insert("site".into(), "e2e".into());
    labels.insert("tier".into(), if index < 2 { "a" } else { "b" }.into());
    labels
}

impl Stack {
    async fn bring_up(options: StackOptions) -> anyhow::Result<Stack> {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn,kube_client::client::builder=off".into()),
            )
            .with_test_writer()
            .try_init();
        let started = Instant::now();
        let state_dir = std::env::temp_dir()
            .join("harmony-fleet-e2e")
            .join(options.name);
        if state_dir.exists() {
            let report = local::down(&state_dir, false)
                .await
                .context("pruning the previous run's leftovers")?;
            eprintln!(
                "e2e: pruned a previous run (stopped {:?}, {} container(s), {} network(s))",
                report.stopped,
                report.containers_removed,
                report.networks_deleted.len()
            );
        }
        let topology = LocalTopology::new(&state_dir, SupervisionMode::Owned)?;
        spawn_reaper(topology.state_dir());
        topology
            .ensure_ready()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
        let control_plane = started.elapsed();

        let mut fleet = LocalFleet::with_devices(options.devices)?;
        fleet.nats_replicas = options.nats_replicas;
        fleet.heartbeat_interval_secs = 2;
        fleet.operator.heartbeat_timeout_secs = 8;
        fleet.operator.credential_lifetime_secs = options.credential_lifetime_secs;
        if options.dashboard {
            dashboard_binary()?;
            let port = topology
                .reserve_port(DASHBOARD_PORT)
                .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
            fleet.operator.dashboard_port = Some(port);
        }
        if !options.walkthrough_labels {
            for (index, device) in fleet.devices.iter_mut().enumerate() {
                device.labels = labels_for(device, index);
            }
        }
        for score in fleet.scores() {
            run(score.as_ref(), &topology).await?;
        }
        let kube = topology
            .k8s_client()
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
        let pruned = namespace::prune(&kube).await?;
        let state = topology.state_dir().to_owned();
        let endpoint = NatsEndpoint::load_local(&state)?;
        let (trust, _) = LocalTrust::load_or_create(&state)?;
        let nats = smoke::connect(&endpoint, &trust.admin()?, Default::default()).await?;
        let bring_up = started.elapsed();
        eprintln!(
            "e2e: {} up in {:.1}s (control plane {:.1}s, {} device(s), {} NATS server(s), {pruned} stale namespace(s) pruned); state and logs in {}",
            options.name,
            bring_up.as_secs_f64(),
            control_plane.as_secs_f64(),
            options.devices,
            options.nats_replicas.count(),
            state.display()
        );
        Ok(Stack {
            topology,
            fleet,
            state_dir: state,
            kube,
            nats,
            trust,
            endpoint,
            bring_up,
            faults: RwLock::new(()),
        })
    }

    /// The NATS identity `device` enrolled with: the credential the operator issued and the
    /// seed the agent created, read from the device's data dir.
    pub fn device_identity(&self, device: &DeviceId) -> anyhow::Result<smoke::NatsIdentity> {
        let data = agent_local::device_dir(&self.state_dir, device).join("data");
        let seed = std::fs::read_to_string(data.join(harmony_fleet_agent::identity::SEED_FILE))?;
        let jwt =
            std::fs::read_to_string(data.join(harmony_fleet_agent::identity::CREDENTIAL_FILE))?;
        Ok(smoke::NatsIdentity {
            name: device.to_string(),
            creds: harmony_fleet_contracts::jwt::creds_file(jwt.trim(), seed.trim()),
        })
    }

    /// The dashboard's URL (`http://127.0.0.1:<port>`, no trailing slash), when the stack was
    /// brought up with [`StackOptions::dashboard`].
    pub fn dashboard_url(&self) -> Option<String> {
        self.fleet
            .operator
            .dashboard_port
            .map(|port| format!("http://127.0.0.1:{port}"))
    }

    /// The topology (to run Scores or inspect processes).
    pub fn topology(&self) -> &LocalTopology {
        &self.topology
    }

    /// Held by tests that only observe: many at once, never during a fault test.
    pub async fn shared_access(&self) -> RwLockReadGuard<'_, ()> {
        self.faults.read().await
    }

    /// Held by tests that break things (stop NATS, the operator, an agent; relabel).
    pub async fn exclusive_access(&self) -> RwLockWriteGuard<'_, ()> {
        self.faults.write().await
    }

    /// A fresh `e2e-<8 hex>` namespace for one test.
    pub async fn namespace(&self) -> anyhow::Result<TestNamespace> {
        TestNamespace::create(self.kube.clone(), RUNTIME.handle().clone()).await
    }

    /// Device `local-<n>` (1-based).
    pub fn device(&self, n: usize) -> &LocalDevice {
        &self.fleet.devices[n - 1]
    }

    /// The commands client, as the operator uses it.
    pub fn commands(&self) -> CommandsClient {
        CommandsClient::new(self.nats.clone()).with_timeout(Duration::from_secs(5))
    }

    /// The device's own address (its network namespace's end of the link).
    pub async fn device_address(&self, device: &DeviceId) -> anyhow::Result<Ipv4Addr> {
        let name = agent_local::netns_name(&self.state_dir, device);
        DeviceNetwork::find(&name)
            .await?
            .map(|n| n.device_address)
            .ok_or_else(|| anyhow::anyhow!("device {device} has no network namespace {name}"))
    }

    /// GET `/` on the device's address and `port`: the body, or why not.
    pub async fn http(&self, device: &DeviceId, port: u16) -> Result<String, String> {
        let address = self
            .device_address(device)
            .await
            .map_err(|e| e.to_string())?;
        let response = probe::http_get(
            SocketAddr::from((address, port)),
            "/",
            Duration::from_secs(2),
        )
        .await?;
        if response.status == 200 {
            Ok(response.body.trim().to_owned())
        } else {
            Err(format!("HTTP {}", response.status))
        }
    }

    /// Running containers of `deployment` in the device's own podman storage.
    pub async fn running_containers(
        &self,
        device: &DeviceId,
        deployment: &str,
    ) -> Result<Vec<ContainerSummary>, String> {
        let podman =
            agent_local::device_podman(&self.state_dir, device).map_err(|e| e.to_string())?;
        let all = podman
            .ps_by_label(LABEL_DEPLOYMENT, deployment)
            .await
            .map_err(|e| e.to_string())?;
        Ok(all
            .into_iter()
            .filter(|c| c.state.eq_ignore_ascii_case("running"))
            .collect())
    }

    /// The `desired-state` bucket.
    pub async fn desired(&self) -> anyhow::Result<kv::Store> {
        Ok(jetstream::new(self.nats.clone())
            .get_key_value(DESIRED_STATE)
            .await?)
    }

    /// Every `desired-state` key of `deployment`.
    pub async fn desired_keys(&self, deployment: &str) -> anyhow::Result<BTreeSet<String>> {
        let store = self.desired().await?;
        let keys: Vec<String> = store.keys().await?.try_collect().await?;
        Ok(keys
            .into_iter()
            .filter(|k| k.rsplit_once('.').is_some_and(|(_, d)| d == deployment))
            .collect())
    }

    /// Runs a Score on the stack's topology.
    pub async fn run(&self, score: &dyn Score<LocalTopology>) -> anyhow::Result<Outcome> {
        run(score, &self.topology).await
    }

    /// Stops a device's agent (its containers keep running, as on a real device).
    pub async fn stop_agent(&self, device: &DeviceId) -> anyhow::Result<()> {
        self.topology
            .stop_process(&agent_local::process_name(device))
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
        Ok(())
    }

    /// (Re)starts a device's agent with `labels` (the stack's labels when `None`) through its
    /// Score, which waits for a fresh heartbeat.
    pub async fn start_agent(
        &self,
        device: &DeviceId,
        labels: Option<BTreeMap<String, String>>,
    ) -> anyhow::Result<()> {
        let known = self
            .fleet
            .devices
            .iter()
            .find(|d| &d.id == device)
            .ok_or_else(|| anyhow::anyhow!("no device {device} in this stack"))?;
        let mut score = self.fleet.agent_score(known);
        if let Some(labels) = labels {
            score.labels = labels;
        }
        self.run(&score).await.map(|_| ())
    }

    /// Restarts NATS member `i` (1-based) on the same port and store, then re-runs the NATS
    /// Score, which waits until it is healthy and round-trips a value.
    pub async fn restart_nats(&self, i: usize) -> anyhow::Result<()> {
        let name = harmony_fleet_deploy::nats::local::process_name(i);
        self.topology
            .restart_process(&name)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
        self.run(&self.fleet.nats_score()).await.map(|_| ())
    }

    /// Stops NATS member `i` (1-based).
    pub async fn stop_nats(&self, i: usize) -> anyhow::Result<()> {
        let name = harmony_fleet_deploy::nats::local::process_name(i);
        self.topology
            .stop_process(&name)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
        Ok(())
    }

    /// Stops the operator.
    pub async fn stop_operator(&self) -> anyhow::Result<()> {
        self.topology
            .stop_process(harmony_fleet_deploy::operator::local::PROCESS)
            .await
            .map_err(|e| anyhow::anyhow!("{}", e.chain()))?;
        Ok(())
    }

    /// Starts the operator through its Score (waits for `/readyz` Converged).
    pub async fn start_operator(&self) -> anyhow::Result<()> {
        self.run(&self.fleet.operator).await.map(|_| ())
    }

    /// Waits until `device` answers `body` on `port` (see [`Stack::http`]).
    pub async fn wait_http(
        &self,
        device: &DeviceId,
        port: u16,
        body: &str,
        timeout: Duration,
    ) -> anyhow::Result<()> {
        crate::wait::eventually(
            &format!("{device}:{port} to answer {body}"),
            timeout,
            || async move {
                let got = self.http(device, port).await?;
                if got == body {
                    Ok(())
                } else {
                    Err(format!("answered {got}"))
                }
            },
        )
        .await
    }

    /// A guard that runs `action` on this stack when the test is done with a fault: call
    /// [`Restore::now`] on the normal path; if the test fails first, dropping it restores.
    pub fn restore<F, Fut>(&'static self, what: impl Into<String>, action: F) -> Restore
    where
        F: FnOnce(&'static Stack) -> Fut,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        Restore::new(what, RUNTIME.handle().clone(), action(self))
    }

    /// Restarts `device`'s agent with the stack's labels when the fault is over.
    pub fn restore_agent(&'static self, device: &DeviceId) -> Restore {
        let device = device.clone();
        self.restore(format!("the agent of {device}"), move |stack| async move {
            stack.start_agent(&device, None).await
        })
    }

    /// Brings every NATS member back (through the NATS Score) when the fault is over.
    pub fn restore_nats(&'static self) -> Restore {
        self.restore("NATS", |stack| async move {
            stack.run(&stack.fleet.nats_score()).await.map(|_| ())
        })
    }

    /// Starts the operator again when the fault is over.
    pub fn restore_operator(&'static self) -> Restore {
        self.restore("the operator", |stack| async move {
            stack.start_operator().await
        })
    }

    /// Names of the clients connected to NATS member `i` (1-based), from its monitoring
    /// endpoint's `/connz`: `harmony-fleet-operator`, `fleet-agent <device>`, ….
    pub async fn nats_clients(&self, i: usize) -> anyhow::Result<Vec<String>> {
        let name = harmony_fleet_deploy::nats::local::process_name(i);
        let port = self
            .topology
            .supervisor()
            .reserve_port(&format!("{name}:monitor"))?;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let response = probe::http_get(addr, "/connz?limit=4096", Duration::from_secs(2))
            .await
            .map_err(|e| anyhow::anyhow!("{name} /connz: {e}"))?;
        anyhow::ensure!(
            response.status == 200,
            "{name} /connz answered HTTP {}: {}",
            response.status,
            response.body
        );
        connection_names(&response.body).with_context(|| format!("{name} /connz"))
    }

    /// The NATS member (1-based) client `client` is connected to, if any.
    pub async fn nats_member_of(&self, client: &str) -> anyhow::Result<Option<usize>> {
        let mut unreachable = Vec::new();
        for i in 1..=self.fleet.nats_replicas.count() {
            // A stopped node holds no clients: skip it, unless no node answers at all.
            match self.nats_clients(i).await {
                Ok(names) if names.iter().any(|c| c == client) => return Ok(Some(i)),
                Ok(_) => {}
                Err(e) => unreachable.push(format!("{e:#}")),
            }
        }
        if unreachable.len() == self.fleet.nats_replicas.count() {
            anyhow::bail!("no NATS node answered /connz: {}", unreachable.join("; "));
        }
        Ok(None)
    }
}

/// The supervisor's name of the dashboard port (the one `local up` reserves).
const DASHBOARD_PORT: &str = "harmony-fleet-operator:web";

/// Fails unless the operator binary the Scores will run serves the dashboard: without the
/// feature, `--web-listen` is an unknown flag and the operator would only fail its smoke test.
fn dashboard_binary() -> anyhow::Result<PathBuf> {
    let binary = harmony_fleet_deploy::binaries::OPERATOR.locate()?;
    let output = std::process::Command::new(&binary)
        .arg("--version")
        .output()
        .with_context(|| format!("running {} --version", binary.display()))?;
    let version = String::from_utf8_lossy(&output.stdout);
    anyhow::ensure!(
        version.contains("+web-frontend"),
        "the operator at {} was built without the dashboard ({}): build it with \
         `cargo build -p harmony-fleet-operator --features web-frontend`",
        binary.display(),
        version.trim()
    );
    Ok(binary)
}

/// The `name` of every connection in a `/connz` answer.
fn connection_names(body: &str) -> anyhow::Result<Vec<String>> {
    let value: serde_json::Value = serde_json::from_str(body).context("not JSON")?;
    let connections = value["connections"]
        .as_array()
        .context("no \"connections\" array")?;
    Ok(connections
        .iter()
        .filter_map(|c| c["name"].as_str().map(str::to_owned))
        .collect())
}

async fn run(
    score: &dyn Score<LocalTopology>,
    topology: &LocalTopology,
) -> anyhow::Result<Outcome> {
    score
        .create_interpret()
        .execute(&Inventory::new("e2e"), topology)
        .await
        .map_err(|e| anyhow::anyhow!("{} failed: {}", score.name(), e.chain()))
}

/// The stack lives in a `static` and is never dropped: its processes die with the test binary
/// (parent-death signal), but device containers, networks and podman state do not. A small
/// detached watcher waits for this process to exit and then runs `harmony-fleet-deploy local
/// down --keep-state` on the state directory (logs stay for inspection; the next run prunes
/// them).
fn spawn_reaper(state_dir: &std::path::Path) {
    use std::os::unix::process::CommandExt as _;
    let deploy = match harmony_fleet_deploy::binaries::DEPLOY.locate() {
        Ok(deploy) => deploy,
        Err(e) => {
            eprintln!("e2e: no cleanup after exit ({e}); the next run prunes the leftovers");
            return;
        }
    };
    let script =
        r#"tail --pid="$1" -f /dev/null; exec "$2" local down --keep-state --state-dir "$3""#;
    let spawned = std::process::Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("reaper")
        .arg(std::process::id().to_string())
        .arg(deploy)
        .arg(state_dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        eprintln!("e2e: could not start the cleanup watcher: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connz_names_are_read_from_the_connections_array() {
        let body = r#"{"server_id":"N","num_connections":3,"connections":[
            {"cid":1,"name":"harmony-fleet-operator"},
            {"cid":2,"name":"fleet-agent local-1"},
            {"cid":3}]}"#;
        assert_eq!(
            connection_names(body).expect("parsed"),
            vec!["harmony-fleet-operator", "fleet-agent local-1"]
        );
        let err = connection_names(r#"{"connections":null}"#).expect_err("no array");
        assert!(err.to_string().contains("connections"), "{err}");
    }
}

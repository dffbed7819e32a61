//! The local fleet: what `harmony-fleet-deploy local up` installs on `LocalTopology` (and what
//! the end-to-end suite brings up — the same Scores), and how `down` and `status` find it again.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::time::Duration;

use harmony::capability::ProcessSupervisor;
use harmony::local::netns::DeviceNetwork;
use harmony::score::Score;
use harmony::topologies::LocalTopology;
use harmony_fleet_contracts::DeviceId;

use crate::agent::{FleetAgentScore, LocalAgent, local as agent_local};
use crate::error::DeployError;
use crate::nats::{FleetNatsScore, NatsReplicas};
use crate::operator::FleetOperatorScore;

/// One simulated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalDevice {
    /// Its id.
    pub id: DeviceId,
    /// The labels it reports.
    pub labels: BTreeMap<String, String>,
}

impl LocalDevice {
    /// `local-<n>` with labels `site=local` and `fleet.nationtech.io/device=<id>`.
    pub fn numbered(n: usize) -> Result<Self, DeployError> {
        let id: DeviceId = format!("local-{n}")
            .parse()
            .map_err(|e| DeployError::CorruptState {
                path: "--devices".into(),
                reason: format!("{e}"),
            })?;
        let labels = BTreeMap::from([
            ("site".to_owned(), "local".to_owned()),
            ("fleet.nationtech.io/device".to_owned(), id.to_string()),
        ]);
        Ok(LocalDevice { id, labels })
    }
}

/// Everything a local fleet is made of.
#[derive(Debug, Clone)]
pub struct LocalFleet {
    /// Simulated devices, each with its own agent, storage and network.
    pub devices: Vec<LocalDevice>,
    /// One NATS server or three.
    pub nats_replicas: NatsReplicas,
    /// The operator's settings (dashboard port, heartbeat timeout).
    pub operator: FleetOperatorScore,
    /// Agent heartbeat interval.
    pub heartbeat_interval_secs: u64,
    /// Per-device network namespaces.
    pub isolate_network: bool,
}

impl LocalFleet {
    /// `devices` numbered devices, one NATS server, no dashboard.
    pub fn with_devices(devices: usize) -> Result<Self, DeployError> {
        Ok(LocalFleet {
            devices: (1..=devices)
                .map(LocalDevice::numbered)
                .collect::<Result<_, _>>()?,
            nats_replicas: NatsReplicas::One,
            operator: FleetOperatorScore::default(),
            heartbeat_interval_secs: 10,
            isolate_network: true,
        })
    }

    /// The NATS Score of this fleet.
    pub fn nats_score(&self) -> FleetNatsScore {
        FleetNatsScore::new().with_replicas(self.nats_replicas)
    }

    /// The agent Score of `device`.
    pub fn agent_score(&self, device: &LocalDevice) -> FleetAgentScore {
        let mut score = FleetAgentScore::local(device.id.clone(), device.labels.clone());
        score.heartbeat_interval_secs = self.heartbeat_interval_secs;
        score.target = crate::agent::FleetAgentTarget::Local(LocalAgent {
            isolate_network: self.isolate_network,
            ..LocalAgent::default()
        });
        score
    }

    /// The Scores, in the order they must run: NATS, operator, one agent per device.
    pub fn scores(&self) -> Vec<Box<dyn Score<LocalTopology>>> {
        let mut scores: Vec<Box<dyn Score<LocalTopology>>> =
            vec![Box::new(self.nats_score()), Box::new(self.operator.clone())];
        for device in &self.devices {
            scores.push(Box::new(self.agent_score(device)));
        }
        scores
    }
}

/// The image repositories scripts/build-images.sh makes: `local node` copies every tag podman
/// holds of them into the node's containerd. Use the versioned tags in Pods: `:latest` means
/// `imagePullPolicy: Always`, and there is no registry to pull from.
pub const FLEET_IMAGES: [&str; 3] = [
    "localhost/harmony-fleet-operator",
    "localhost/harmony-fleet-agent",
    "localhost/harmony-fleet-nats",
];

/// What `local node` did.
#[derive(Debug)]
pub struct NodeUp {
    /// The topology's outcome (start-up times, or "already running").
    pub message: String,
    /// The admin kubeconfig of the control plane the node joined.
    pub kubeconfig: std::path::PathBuf,
    /// Images copied into (or already in) the node's containerd, with the seconds it took.
    pub imported: Vec<(String, f64)>,
    /// Default images podman does not hold.
    pub missing: Vec<String>,
    /// From start to the node being ready and the images imported.
    pub elapsed: Duration,
}

/// Starts (or finds) the control plane with a node under `state_dir` (adr/0030) and copies
/// `images` (default: [`FLEET_IMAGES`] that podman holds) into the node's containerd.
pub async fn node_up(state_dir: &Path, images: &[String]) -> Result<NodeUp, DeployError> {
    use harmony::topology::Topology;
    let started = std::time::Instant::now();
    let topology =
        LocalTopology::new(state_dir, harmony::local::SupervisionMode::Detached)?.with_node();
    let outcome = topology
        .ensure_ready()
        .await
        .map_err(|e| DeployError::Topology(Box::new(e)))?;
    let podman = harmony::local::Podman::new().map_err(harmony::local::LocalError::from)?;
    let (mut wanted, mut missing) = (Vec::new(), Vec::new());
    if images.is_empty() {
        let listed = podman
            .exec(["images", "--format", "{{.Repository}}:{{.Tag}}"])
            .await
            .map_err(harmony::local::LocalError::from)?;
        for repository in FLEET_IMAGES {
            let tags: Vec<String> = listed
                .lines()
                .filter(|line| {
                    line.split_once(':')
                        .is_some_and(|(repo, _)| repo == repository)
                })
                .map(str::to_owned)
                .collect();
            if tags.is_empty() {
                missing.push(repository.to_owned());
            }
            wanted.extend(tags);
        }
    } else {
        wanted = images.to_vec();
    }
    let mut imported = Vec::new();
    for image in wanted {
        let t = std::time::Instant::now();
        harmony::local::node::import_image_into(
            topology.bins(),
            &topology.node_dir(),
            &podman,
            &image,
        )
        .await?;
        imported.push((image, t.elapsed().as_secs_f64()));
    }
    Ok(NodeUp {
        message: outcome.message.clone(),
        kubeconfig: topology.kubeconfig_path(),
        imported,
        missing,
        elapsed: started.elapsed(),
    })
}

/// What [`down`] did.
#[derive(Debug, Default)]
pub struct DownReport {
    /// Processes that were running and were stopped.
    pub stopped: Vec<String>,
    /// Containers removed from the devices' storages.
    pub containers_removed: usize,
    /// Network namespaces deleted.
    pub networks_deleted: Vec<String>,
    /// Reserved ports still in use afterwards (should be empty).
    pub ports_still_busy: Vec<u16>,
    /// Whether the state directory was removed.
    pub state_removed: bool,
}

/// Stops everything `local up` started under `state_dir`: device containers, agents, the
/// operator, NATS, the control plane; deletes the devices' network namespaces; removes the
/// state directory unless `keep_state`.
pub async fn down(state_dir: &Path, keep_state: bool) -> Result<DownReport, DeployError> {
    let mut report = DownReport::default();
    if !state_dir.exists() {
        return Ok(report);
    }
    let topology = LocalTopology::new(state_dir, harmony::local::SupervisionMode::Detached)?;
    let state = topology.state_dir().to_owned();
    let device_ids = local_device_ids(&state);

    report.stopped = topology.down().await?;

    for device in &device_ids {
        if let Ok(podman) = agent_local::device_podman(&state, device) {
            // `rm` prints one id per removed container.
            match podman.exec(["rm", "-af", "-t", "5"]).await {
                Ok(out) => {
                    report.containers_removed +=
                        out.lines().filter(|l| !l.trim().is_empty()).count();
                }
                Err(e) => {
                    tracing::warn!(%device, error = %e, "removing the device's containers failed");
                }
            }
        }
        let run_dir = agent_local::device_run_dir(&state, device);
        unmount_below(&run_dir).await;
        if let Err(e) = std::fs::remove_dir_all(&run_dir)
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!(dir = %run_dir.display(), error = %e, "could not remove");
        }
        let name = agent_local::netns_name(&state, device);
        if DeviceNetwork::find(&name).await.ok().flatten().is_some() {
            DeviceNetwork::delete(&name).await?;
            report.networks_deleted.push(name);
        }
    }

    report.ports_still_busy = reserved_ports(&state)
        .into_iter()
        .filter(|&port| !port_free_soon(port))
        .collect();
    if !keep_state {
        // podman's overlay driver bind-mounts its storage onto itself: unmount whatever is
        // still mounted under the state directory before removing it.
        unmount_below(&state).await;
        std::fs::remove_dir_all(&state)
            .map_err(|e| DeployError::io(format!("removing {}", state.display()), e))?;
        report.state_removed = true;
    }
    Ok(report)
}

/// Lazily unmounts every mount point below `dir`, deepest first.
async fn unmount_below(dir: &Path) {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else {
        return;
    };
    let mut points: Vec<&str> = mounts
        .lines()
        .filter_map(|line| line.split_whitespace().nth(1))
        .filter(|point| Path::new(point).starts_with(dir))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in points {
        let status = tokio::process::Command::new("umount")
            .arg("-l")
            .arg(point)
            .status()
            .await;
        if !status.is_ok_and(|s| s.success()) {
            tracing::warn!(mount = point, "could not unmount");
        }
    }
}

/// Runs [`down`] when dropped — for tests and harnesses whose fleet must not outlive them
/// (device networks and container storage are not tied to any process). Runs on its own
/// thread and runtime, so it works from any context, including a panicking test.
#[derive(Debug)]
pub struct DownOnDrop {
    /// The fleet's state directory.
    pub state_dir: std::path::PathBuf,
    /// Keep the directory (logs) after stopping.
    pub keep_state: bool,
}

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        let state_dir = self.state_dir.clone();
        let keep_state = self.keep_state;
        let cleanup = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(runtime) => {
                    if let Err(e) = runtime.block_on(down(&state_dir, keep_state)) {
                        tracing::warn!(error = %e, "cleaning up the local fleet failed");
                    }
                }
                Err(e) => tracing::warn!(error = %e, "no runtime to clean up the local fleet"),
            }
        });
        let _ = cleanup.join();
    }
}

/// The devices that have a directory under `state_dir`.
pub fn local_device_ids(state_dir: &Path) -> Vec<DeviceId> {
    let mut ids: Vec<DeviceId> = std::fs::read_dir(state_dir.join("devices"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
        .collect();
    ids.sort();
    ids
}

/// Every port reserved under `state_dir` (none when the reservations cannot be read).
pub fn reserved_ports(state_dir: &Path) -> Vec<u16> {
    harmony::local::LocalSupervisor::reserved_ports_in(state_dir)
        .map(|ports| ports.into_values().collect())
        .unwrap_or_default()
}

/// Whether `port` can be bound, allowing a moment for sockets of just-stopped processes.
fn port_free_soon(port: u16) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return true;
        }
        if std::time::Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

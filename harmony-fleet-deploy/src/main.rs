//! `harmony-fleet-deploy`: installs harmony fleet with its Scores, on this host
//! (`local up|down|status`) or on a Kubernetes cluster (`cluster deploy`), and writes the
//! operator's Helm chart (`helm-chart`).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use harmony::capability::ProcessSupervisor;
use harmony::inventory::Inventory;
use harmony::local::SupervisionMode;
use harmony::local::bins;
use harmony::score::Score;
use harmony::topologies::{K8sAnywhereTopology, LocalTopology};
use harmony_fleet_contracts::DeviceId;
use harmony_fleet_deploy::agent::{FleetAgentScore, PodAgent, publish};
use harmony_fleet_deploy::error::DeployError;
use harmony_fleet_deploy::local::{self, LocalFleet};
use harmony_fleet_deploy::nats::{FleetNatsScore, NatsReplicas};
use harmony_fleet_deploy::nats::{NatsEndpoint, smoke};
use harmony_fleet_deploy::operator::{FleetOperatorScore, helm};
use harmony_fleet_deploy::trust::LocalTrust;
use harmony_fleet_deploy::{FleetServerScore, binaries, devices, tokens};
use tracing_subscriber::EnvFilter;

/// Install harmony fleet (NATS, the operator, device agents) with its Scores.
///
/// `local up` brings a whole fleet up on this host: a Kubernetes control plane built from the
/// upstream sources (scripts/install-deps.sh), NATS, the operator and simulated devices with
/// real podman. `cluster deploy` installs the same components on the cluster of KUBECONFIG.
#[derive(Debug, Parser)]
#[command(version, propagate_version = true)]
struct Cli {
    /// Log progress details (RUST_LOG overrides).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// This host: control plane, NATS, operator and agents as local processes.
    Local {
        #[command(subcommand)]
        command: LocalCommand,
    },
    /// A Kubernetes cluster (KUBECONFIG, ~/.kube/config or in-cluster).
    Cluster {
        #[command(subcommand)]
        command: ClusterCommand,
    },
    /// Devices of the cluster in KUBECONFIG: who asks to join, and approving them.
    Device {
        #[command(subcommand)]
        command: DeviceCommand,
    },
    /// Bootstrap tokens of the cluster in KUBECONFIG: devices that present one are approved
    /// without `device approve` (adr/0020).
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Write the operator's Helm chart (generated from the same objects the Scores apply).
    HelmChart {
        /// Directory to write the chart into.
        #[arg(long, default_value = "target/helm/harmony-fleet-operator")]
        out: PathBuf,
        /// Default image in values.yaml.
        #[arg(long, default_value = "localhost/harmony-fleet-operator:latest")]
        image: String,
    },
}

#[derive(Debug, clap::Args)]
struct StateDir {
    /// Where everything of the local fleet lives (processes, data, logs).
    #[arg(long, env = "FLEET_LOCAL_DIR", default_value = LocalTopology::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
}

#[derive(Debug, Subcommand)]
enum LocalCommand {
    /// Start (or complete) the local fleet; a second run changes nothing.
    Up {
        #[command(flatten)]
        state: StateDir,
        /// Number of simulated devices (local-1 … local-N, label site=local).
        #[arg(long, default_value_t = 1)]
        devices: usize,
        /// Run a three-node NATS cluster instead of one server.
        #[arg(long)]
        nats_cluster: bool,
        /// Do not serve the dashboard even when the operator was built with it.
        #[arg(long)]
        no_dashboard: bool,
        #[command(flatten)]
        args: harmony_cli::Args,
    },
    /// Stop every process `up` started, remove device containers and networks, free the ports.
    Down {
        #[command(flatten)]
        state: StateDir,
        /// Keep the state directory (data and logs) instead of removing it.
        #[arg(long)]
        keep_state: bool,
    },
    /// Start (or find) the control plane with a real node — kubelet, containerd, CNI bridge,
    /// kube-proxy, CoreDNS, kube-scheduler (adr/0030) — for `cluster deploy` with the printed
    /// KUBECONFIG; copies the fleet's images from podman into the node. `local down` removes it.
    Node {
        #[command(flatten)]
        state: StateDir,
        /// An image to copy from podman into the node's containerd (repeatable). Default: those
        /// of scripts/build-images.sh that podman holds.
        #[arg(long = "image")]
        images: Vec<String>,
    },
    /// Tell what runs.
    Status {
        #[command(flatten)]
        state: StateDir,
    },
    /// Put a static agent build into the fleet's `agent-binaries` object store (named by its
    /// SHA-256; devices may only read it) and print the `AgentV0` Deployment that rolls it out
    /// to the devices it selects, with its batches and failure thresholds (adr/0043).
    PublishAgent {
        #[command(flatten)]
        state: StateDir,
        /// The static agent binary (e.g. from scripts/build-images.sh).
        binary: PathBuf,
        /// The version it reports (`fleet-agent --version`), for the printed Deployment.
        #[arg(long)]
        version: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create a bootstrap token: devices that present it (agent.toml `[credentials]
    /// bootstrap_token`) are approved without `device approve`, until it expires or is used up.
    Create {
        /// How long it works: a whole number with s, m, h or d.
        #[arg(long, default_value = tokens::DEFAULT_TTL)]
        ttl: String,
        /// How many devices may use it.
        #[arg(long, default_value_t = 1)]
        usages: u32,
        /// The fleet namespace (where the operator looks for tokens: its --token-namespace).
        #[arg(long, default_value = harmony_fleet_contracts::bootstrap_token::DEFAULT_NAMESPACE)]
        namespace: String,
    },
    /// List bootstrap tokens: id, expiry, uses (never the secret).
    List {
        /// The fleet namespace.
        #[arg(long, default_value = harmony_fleet_contracts::bootstrap_token::DEFAULT_NAMESPACE)]
        namespace: String,
    },
}

#[derive(Debug, Subcommand)]
enum DeviceCommand {
    /// List devices with their enrollment state and key (`kubectl get fleetdev`).
    List {
        /// Only devices waiting for approval.
        #[arg(long)]
        pending: bool,
    },
    /// Approve a device: its credential is issued at once and it connects. Compare the key
    /// with what `fleet-agent identity` prints on the device, and pass it as --key.
    Approve {
        /// The device id.
        device: String,
        /// The key to approve: must equal the pending request's; without a pending request,
        /// pre-approves this key.
        #[arg(long)]
        key: Option<String>,
    },
}

#[derive(Debug, Subcommand)]
enum ClusterCommand {
    /// Install NATS, the operator and (optionally) device agents as Pods.
    Deploy {
        /// Namespace of the fleet's components.
        #[arg(long, default_value = harmony_fleet_deploy::DEFAULT_NAMESPACE)]
        namespace: String,
        /// Operator image (see scripts/build-images.sh).
        #[arg(long, default_value = "localhost/harmony-fleet-operator:latest")]
        operator_image: String,
        /// Agent image, for --device.
        #[arg(long, default_value = "localhost/harmony-fleet-agent:latest")]
        agent_image: String,
        /// A device to run as an agent Pod (repeatable). Its agent makes its own key and asks
        /// to enroll; the install approves that key.
        #[arg(long = "device")]
        devices: Vec<DeviceId>,
        /// Three NATS replicas instead of one.
        #[arg(long)]
        nats_cluster: bool,
        /// NATS image (default: the public nats image; `localhost/harmony-fleet-nats:latest`
        /// from scripts/build-images.sh needs no registry).
        #[arg(long)]
        nats_image: Option<String>,
        #[command(flatten)]
        args: harmony_cli::Args,
    },
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // kube's client logs every failed request at ERROR, including the expected 500s of an
    // API server that is still starting; our own errors say what failed.
    let default = if cli.verbose {
        "info,kube_client::client::builder=off"
    } else {
        "warn,kube_client::client::builder=off"
    };
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Local { command } => match command {
            LocalCommand::Up {
                state,
                devices,
                nats_cluster,
                no_dashboard,
                args,
            } => local_up(state.state_dir, devices, nats_cluster, no_dashboard, args).await,
            LocalCommand::Down { state, keep_state } => {
                local_down(state.state_dir, keep_state).await
            }
            LocalCommand::Node { state, images } => local_node(state.state_dir, images).await,
            LocalCommand::Status { state } => local_status(state.state_dir),
            LocalCommand::PublishAgent {
                state,
                binary,
                version,
            } => publish_agent(state.state_dir, binary, version).await,
        },
        Command::Cluster {
            command:
                ClusterCommand::Deploy {
                    namespace,
                    operator_image,
                    agent_image,
                    devices,
                    nats_cluster,
                    nats_image,
                    args,
                },
        } => {
            let mut nats = FleetNatsScore::new();
            nats.namespace = namespace.clone();
            if let Some(image) = nats_image {
                nats.image = image;
            }
            if nats_cluster {
                nats.replicas = NatsReplicas::Three;
            }
            let operator = FleetOperatorScore {
                namespace: namespace.clone(),
                image: operator_image,
                ..FleetOperatorScore::default()
            };
            let mut scores: Vec<Box<dyn Score<K8sAnywhereTopology>>> =
                vec![Box::new(FleetServerScore { nats, operator })];
            for device in devices {
                // The operator labels each Device fleet.nationtech.io/device=<id> itself (from
                // its identity, a label no device can claim): select on that.
                let pod = PodAgent {
                    namespace: namespace.clone(),
                    image: agent_image.clone(),
                    pre_approve: true,
                };
                scores.push(Box::new(FleetAgentScore::pod(
                    device,
                    Default::default(),
                    pod,
                )));
            }
            harmony_cli::run_to_exit_code(
                Inventory::autoload(),
                K8sAnywhereTopology::from_env(),
                scores,
                Some(args),
            )
            .await
        }
        Command::Device { command } => device_command(command).await,
        Command::Token { command } => token_command(command).await,
        Command::HelmChart { out, image } => {
            let score = FleetOperatorScore {
                image,
                ..FleetOperatorScore::default()
            };
            match helm::chart(&score).and_then(|chart| chart.write(&out)) {
                Ok(()) => {
                    println!("Helm chart written to {}", out.display());
                    println!(
                        "Install: helm install fleet {} --namespace fleet-system (after FleetNatsScore issued Secret {} there: `harmony-fleet-deploy cluster deploy`, or its NATS part)",
                        out.display(),
                        harmony_fleet_deploy::operator::objects::OPERATOR_SECRET,
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn publish_agent(state_dir: PathBuf, binary: PathBuf, version: Option<String>) -> ExitCode {
    let result = async {
        let bytes = std::fs::read(&binary)
            .map_err(|e| DeployError::io(format!("reading {}", binary.display()), e))?;
        let endpoint = NatsEndpoint::load_local(&state_dir)?;
        let (trust, _) = LocalTrust::load_or_create(&state_dir)?;
        let admin = smoke::connect(&endpoint, &trust.admin()?, Default::default()).await?;
        publish::publish(&async_nats::jetstream::new(admin), &binary, &bytes).await
    }
    .await;
    match result {
        Ok(published) => {
            println!(
                "{} ({}, {} bytes): {}",
                published.sha256,
                published.arch,
                published.size,
                if published.uploaded {
                    "uploaded"
                } else {
                    "already in the store"
                }
            );
            let version = version.unwrap_or_else(|| "<version>".to_owned());
            let payload = published.payload(&version);
            let score = serde_json::json!({"type": "AgentV0", "data": payload});
            println!(
                "\nRoll it out (kubectl apply -f -), e.g. one device first, then the rest:\n\
                 apiVersion: fleet.nationtech.io/v1alpha1\n\
                 kind: Deployment\n\
                 metadata:\n  name: fleet-agent\n  namespace: default\n\
                 spec:\n  targetSelector: {{}}\n  score: {score}\n\
                 \x20 rollout:\n    strategy: Batches\n    batches: [{{count: 1}}]\n    onFailure: Pause"
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn token_command(command: TokenCommand) -> ExitCode {
    let (namespace, ttl) = match &command {
        TokenCommand::Create {
            namespace,
            ttl,
            usages,
        } => match tokens::parse_ttl(ttl).and_then(|ttl| {
            tokens::check_usages(*usages)?;
            Ok(ttl)
        }) {
            Ok(ttl) => (namespace, Some(ttl)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        TokenCommand::List { namespace } => (namespace, None),
    };
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: building a Kubernetes client from KUBECONFIG: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = match (&command, ttl) {
        (TokenCommand::Create { usages, .. }, Some(ttl)) => {
            tokens::create(&client, namespace, ttl, *usages)
                .await
                .map(|record| println!("{}", tokens::instructions(&record, namespace)))
        }
        _ => tokens::list(&client, namespace).await.map(|rows| {
            println!("{:<8} {:<26} {:<8} USABLE", "ID", "EXPIRES", "USES");
            for row in &rows {
                println!(
                    "{:<8} {:<26} {:<8} {}",
                    row.id, row.expires, row.usages, row.usable
                );
            }
            if rows.is_empty() {
                println!(
                    "No bootstrap token in namespace {namespace}: `harmony-fleet-deploy token create`."
                );
            }
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn device_command(command: DeviceCommand) -> ExitCode {
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(e) => {
            eprintln!("error: building a Kubernetes client from KUBECONFIG: {e}");
            return ExitCode::FAILURE;
        }
    };
    match command {
        DeviceCommand::List { pending } => match devices::list(&client, pending).await {
            Ok(rows) => {
                println!("{:<24} {:<10} {:<7} KEY", "DEVICE", "ENROLLMENT", "ONLINE");
                for row in &rows {
                    println!(
                        "{:<24} {:<10} {:<7} {}",
                        row.name, row.enrollment, row.online, row.key
                    );
                    if let Some(refusal) = &row.last_refusal {
                        println!("  last refusal: {refusal}");
                    }
                }
                if pending && rows.is_empty() {
                    println!("No device waits for approval.");
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        DeviceCommand::Approve { device, key } => {
            match devices::approve(&client, &device, key.as_deref()).await {
                Ok(key) => {
                    println!(
                        "Approved {device} with key {key}: its credential is issued when it asks."
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Whether the operator binary serves the dashboard (built with `--features web-frontend`).
fn operator_has_dashboard() -> bool {
    binaries::OPERATOR
        .locate()
        .ok()
        .and_then(|bin| {
            std::process::Command::new(bin)
                .args(["run", "--help"])
                .output()
                .ok()
        })
        .is_some_and(|out| String::from_utf8_lossy(&out.stdout).contains("--web-listen"))
}

async fn local_up(
    state_dir: PathBuf,
    devices: usize,
    nats_cluster: bool,
    no_dashboard: bool,
    args: harmony_cli::Args,
) -> ExitCode {
    if devices == 0 {
        eprintln!("error: --devices must be at least 1 (a fleet needs a device)");
        return ExitCode::from(2);
    }
    let topology = match LocalTopology::new(&state_dir, SupervisionMode::Detached) {
        Ok(topology) => topology,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut fleet = match LocalFleet::with_devices(devices) {
        Ok(fleet) => fleet,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if nats_cluster {
        fleet.nats_replicas = NatsReplicas::Three;
    }
    if !no_dashboard && operator_has_dashboard() {
        match topology.reserve_port("harmony-fleet-operator:web") {
            Ok(port) => fleet.operator.dashboard_port = Some(port),
            Err(e) => {
                eprintln!("error: {}", e.chain());
                return ExitCode::FAILURE;
            }
        }
    }
    let state = topology.state_dir().to_owned();
    let kubeconfig = topology.kubeconfig_path();
    let listing = args.list;
    let summary =
        harmony_cli::run(Inventory::autoload(), topology, fleet.scores(), Some(args)).await;
    match summary {
        Ok(summary) if summary.succeeded() => {
            if !listing && !summary.report.entries.is_empty() {
                print_next_steps(&state, &kubeconfig, &fleet);
            }
            ExitCode::SUCCESS
        }
        Ok(summary) => {
            let failed: Vec<&str> = summary.report.failures().map(|e| e.name.as_str()).collect();
            eprintln!(
                "error: {} Score(s) failed: {}\nlogs: {}/**/*.log; stop everything with `harmony-fleet-deploy local down`",
                failed.len(),
                failed.join(", "),
                state.display()
            );
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {}", e.chain());
            ExitCode::from(if e.is_usage() { 2 } else { 1 })
        }
    }
}

fn print_next_steps(state: &std::path::Path, kubeconfig: &std::path::Path, fleet: &LocalFleet) {
    let bin_dir = bins::cache_dir()
        .map(|d| d.join("bin").display().to_string())
        .unwrap_or_else(|| "~/.cache/harmony-fleet/bin".into());
    println!(
        "\nThe local fleet is up ({} device(s)). State and logs: {}",
        fleet.devices.len(),
        state.display()
    );
    println!("  kubeconfig: {}", kubeconfig.display());
    if let Some(port) = fleet.operator.dashboard_port {
        println!("  dashboard:  http://127.0.0.1:{port}/");
    } else {
        println!("  dashboard:  not served (build the operator with --features web-frontend)");
    }
    println!("\nTry it:");
    println!(
        "  export KUBECONFIG={} PATH={bin_dir}:$PATH",
        kubeconfig.display()
    );
    println!("  kubectl apply -f examples/hello.yaml");
    println!("  kubectl get fleetdep,fleetdev");
    println!("Stop everything: harmony-fleet-deploy local down");
}

async fn local_node(state_dir: PathBuf, images: Vec<String>) -> ExitCode {
    match local::node_up(&state_dir, &images).await {
        Ok(up) => {
            println!("✓ {}", up.message);
            for (image, secs) in &up.imported {
                println!("✓ image {image} in the node's containerd ({secs:.1}s)");
            }
            for image in &up.missing {
                println!("- image {image} not in podman (scripts/build-images.sh builds it)");
            }
            println!(
                "Node and control plane up in {:.1}s. Deploy the fleet on it:",
                up.elapsed.as_secs_f64()
            );
            println!("  export KUBECONFIG={}", up.kubeconfig.display());
            println!(
                "  harmony-fleet-deploy cluster deploy --yes --nats-image localhost/harmony-fleet-nats:<version> \\\n    --operator-image localhost/harmony-fleet-operator:<version> --agent-image localhost/harmony-fleet-agent:<version>"
            );
            println!(
                "  (versioned tags: `:latest` means imagePullPolicy Always, and there is no registry)"
            );
            println!("Stop everything: harmony-fleet-deploy local down");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn local_down(state_dir: PathBuf, keep_state: bool) -> ExitCode {
    if !state_dir.exists() {
        println!("Nothing to stop: {} does not exist.", state_dir.display());
        return ExitCode::SUCCESS;
    }
    match local::down(&state_dir, keep_state).await {
        Ok(report) => {
            if report.stopped.is_empty() {
                println!("No process was running.");
            } else {
                println!("Stopped: {}", report.stopped.join(", "));
            }
            println!(
                "Removed {} device container(s); deleted {} device network(s).",
                report.containers_removed,
                report.networks_deleted.len()
            );
            if report.state_removed {
                println!("Removed {}.", state_dir.display());
            }
            if report.ports_still_busy.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "error: ports still in use after stopping: {:?} (another program holds them)",
                    report.ports_still_busy
                );
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn local_status(state_dir: PathBuf) -> ExitCode {
    if !state_dir.exists() {
        println!(
            "No local fleet at {} (start one with `harmony-fleet-deploy local up`).",
            state_dir.display()
        );
        return ExitCode::SUCCESS;
    }
    let topology = match LocalTopology::new(&state_dir, SupervisionMode::Detached) {
        Ok(topology) => topology,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let processes = topology.status();
    if processes.is_empty() {
        println!(
            "No process recorded under {}.",
            topology.state_dir().display()
        );
        return ExitCode::SUCCESS;
    }
    println!("{:<28} {:>8}  {:<8} LOG", "PROCESS", "PID", "STATE");
    for process in &processes {
        println!(
            "{:<28} {:>8}  {:<8} {}",
            process.name,
            process.pid,
            if process.running {
                "running"
            } else {
                "stopped"
            },
            process.log_file.display()
        );
    }
    println!("kubeconfig: {}", topology.kubeconfig_path().display());
    let running = processes.iter().filter(|p| p.running).count();
    println!("{running}/{} running", processes.len());
    ExitCode::SUCCESS
}

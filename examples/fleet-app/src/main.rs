//! `fleet-app`: deploys the greeter and the fleet it runs on, on this host (`local`) or on the
//! cluster of KUBECONFIG (`cluster`): the same Scores, chosen topology. `down` stops a local
//! run.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_app::{AppConfig, AppConfigScore, FleetApp, site_labels};
use harmony::capability::ProcessSupervisor;
use harmony::inventory::Inventory;
use harmony::local::SupervisionMode;
use harmony::local::netns::DeviceNetwork;
use harmony::score::Score;
use harmony::topologies::{K8sAnywhereTopology, LocalTopology};
use harmony::topology::Topology;
use harmony_fleet_contracts::DeviceId;
use harmony_fleet_contracts::payload::PullPolicy;
use harmony_fleet_deploy::agent::{self, PodAgent};
use harmony_fleet_deploy::nats::FleetNatsScore;
use harmony_fleet_deploy::operator::FleetOperatorScore;
use harmony_fleet_deploy::{FleetAgentScore, FleetDeploymentScore, FleetServerScore, local};
use tracing_subscriber::EnvFilter;

/// Deploy the greeter to a harmony fleet: NATS, the operator, the device agents, the greeter's
/// config and its fleet Deployment.
#[derive(Debug, Parser)]
#[command(version)]
struct Cli {
    /// Log progress details (RUST_LOG overrides).
    #[arg(long, short, global = true)]
    verbose: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// On this host (`LocalTopology`): control plane, NATS, operator and simulated devices.
    Local {
        #[command(flatten)]
        state: StateDir,
        /// Number of simulated devices (`<site>-1` … `<site>-N`).
        #[arg(long, default_value_t = 1)]
        devices: usize,
        #[command(flatten)]
        app: AppArgs,
        #[command(flatten)]
        args: harmony_cli::Args,
    },
    /// On the cluster of KUBECONFIG (`K8sAnywhereTopology`), agents as Pods.
    Cluster {
        /// Namespace of the fleet's components.
        #[arg(long, default_value = harmony_fleet_deploy::DEFAULT_NAMESPACE)]
        fleet_namespace: String,
        /// Operator image (scripts/build-images.sh).
        #[arg(long, default_value = "localhost/harmony-fleet-operator:latest")]
        operator_image: String,
        /// Agent image.
        #[arg(long, default_value = "localhost/harmony-fleet-agent:latest")]
        agent_image: String,
        /// A device to run as an agent Pod, labelled with the site (repeatable).
        #[arg(long = "device")]
        devices: Vec<DeviceId>,
        #[command(flatten)]
        app: AppArgs,
        #[command(flatten)]
        args: harmony_cli::Args,
    },
    /// Stop everything `local` started and remove its state (`harmony-fleet-deploy local down`).
    Down {
        #[command(flatten)]
        state: StateDir,
    },
}

#[derive(Debug, clap::Args)]
struct StateDir {
    /// Where the local fleet lives (processes, data, logs).
    #[arg(long, default_value = ".fleet-app")]
    state_dir: PathBuf,
}

/// The greeter's settings.
#[derive(Debug, clap::Args)]
struct AppArgs {
    /// The app's name (its fleet Deployment's).
    #[arg(long, default_value = "greeter")]
    name: String,
    /// Namespace of the app's Deployment and config.
    #[arg(long, default_value = "fleet-app")]
    namespace: String,
    /// What the greeter answers.
    #[arg(long, default_value = "hello from the fleet")]
    greeting: String,
    /// Port published on each device.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// The greeter's image; images under `localhost/` are never pulled (local devices build
    /// `localhost/fleet-demo:v1` and `:v2` themselves).
    #[arg(long, default_value = "localhost/fleet-demo:v1")]
    image: String,
    /// Devices labelled `site=<SITE>` run the greeter.
    #[arg(long, default_value = "local")]
    site: String,
}

impl AppArgs {
    fn score(&self) -> AppConfigScore {
        let pull_policy = if self.image.starts_with("localhost/") {
            PullPolicy::Never
        } else {
            PullPolicy::IfNotPresent
        };
        AppConfigScore::new(AppConfig {
            name: self.name.clone(),
            namespace: self.namespace.clone(),
            image: self.image.clone(),
            pull_policy,
            greeting: self.greeting.clone(),
            port: self.port,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
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
        Command::Local {
            state,
            devices,
            app,
            args,
        } => local_run(&state.state_dir, devices, &app, args).await,
        Command::Cluster {
            fleet_namespace,
            operator_image,
            agent_image,
            devices,
            app,
            args,
        } => {
            let mut nats = FleetNatsScore::new();
            nats.namespace = fleet_namespace.clone();
            let operator = FleetOperatorScore {
                namespace: fleet_namespace.clone(),
                image: operator_image,
                ..FleetOperatorScore::default()
            };
            let pod = PodAgent {
                namespace: fleet_namespace,
                image: agent_image,
                pre_approve: true,
            };
            let agents = devices
                .into_iter()
                .map(|device| FleetAgentScore::pod(device, site_labels(&app.site), pod.clone()))
                .collect();
            let fleet = FleetApp {
                server: FleetServerScore { nats, operator },
                agents,
                app: app.score(),
                selector: FleetApp::site_selector(&app.site),
            };
            run(K8sAnywhereTopology::from_env(), &fleet, args).await
        }
        Command::Down { state } => down(&state.state_dir).await,
    }
}

/// Runs the fleet's Scores on `topology` through harmony_cli: the one code path of every
/// topology.
async fn run<T>(topology: T, fleet: &FleetApp, args: harmony_cli::Args) -> ExitCode
where
    T: Topology + 'static,
    FleetServerScore: Score<T>,
    FleetAgentScore: Score<T>,
    AppConfigScore: Score<T>,
    FleetDeploymentScore: Score<T>,
{
    match fleet.scores::<T>() {
        Ok(scores) => {
            harmony_cli::run_to_exit_code(Inventory::autoload(), topology, scores, Some(args)).await
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

async fn local_run(
    state_dir: &Path,
    devices: usize,
    app: &AppArgs,
    args: harmony_cli::Args,
) -> ExitCode {
    if devices == 0 {
        eprintln!("error: --devices must be at least 1 (the greeter needs a device)");
        return ExitCode::from(2);
    }
    let mut ids = Vec::new();
    for n in 1..=devices {
        match format!("{}-{n}", app.site).parse::<DeviceId>() {
            Ok(id) => ids.push(id),
            Err(e) => {
                eprintln!("error: --site {:?} makes device ids: {e}", app.site);
                return ExitCode::from(2);
            }
        }
    }
    let topology = match LocalTopology::new(state_dir, SupervisionMode::Detached) {
        Ok(topology) => topology,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let state = topology.state_dir().to_owned();
    let fleet = FleetApp {
        server: FleetServerScore {
            nats: FleetNatsScore::new(),
            operator: FleetOperatorScore::default(),
        },
        agents: ids
            .iter()
            .map(|id| FleetAgentScore::local(id.clone(), site_labels(&app.site)))
            .collect(),
        app: app.score(),
        selector: FleetApp::site_selector(&app.site),
    };
    let listing = args.list;
    let code = run(topology, &fleet, args).await;
    if code == ExitCode::SUCCESS && !listing {
        println!();
        for id in &ids {
            let netns = agent::local::netns_name(&state, id);
            if let Ok(Some(network)) = DeviceNetwork::find(&netns).await {
                println!(
                    "{} on {id}: http://{}:{}/",
                    app.name, network.device_address, app.port
                );
            }
        }
        println!(
            "Stop everything: fleet-app down --state-dir {}",
            state.display()
        );
    }
    code
}

async fn down(state_dir: &Path) -> ExitCode {
    match local::down(state_dir, false).await {
        Ok(report) => {
            println!(
                "Stopped: {}; removed {} container(s), {} device network(s).",
                if report.stopped.is_empty() {
                    "nothing".to_owned()
                } else {
                    report.stopped.join(", ")
                },
                report.containers_removed,
                report.networks_deleted.len()
            );
            if report.ports_still_busy.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "error: ports still in use after stopping: {:?}",
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

//! Command lines of `fleet-bench` (and of `cargo bench -p harmony-fleet-bench`) and
//! `fleet-sim`: clap derive, turned into the options of each bench.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::consumers::{self, ConsumerOptions};
use crate::error::{Error, Result};
use crate::footprint;
use crate::scale::{self, ScaleOptions};
use crate::sim::{Fleet, SimConfig, WatchMode};
use crate::writes::{self, WriteOptions};

/// `fleet-bench <bench>`: scale benchmarks against real servers.
#[derive(Debug, Parser)]
#[command(name = "fleet-bench", version, about)]
pub struct BenchCli {
    /// Which bench (default: `all`, the full matrix of issue 9).
    #[command(subcommand)]
    pub command: Option<BenchCommand>,
    /// Directory for CSV, Markdown, PNG and logs.
    #[arg(
        long,
        global = true,
        env = "FLEET_BENCH_OUT",
        default_value = "target/fleet-bench"
    )]
    pub out: PathBuf,
}

/// The benches.
#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Deployments → keys → reports → status, operator cost, cold start.
    Scale(ScaleArgs),
    /// The operator's decision core alone, without servers: CPU time and resident memory
    /// per phase of the scale bench's fleet, and a cold start on the same keys.
    Core(CoreArgs),
    /// Desired-state delivery per device: the real agent (notices + index listing) vs the
    /// bench-only notices + direct get of adr/0013; with --restart, re-sync after a restart.
    Consumers(ConsumerArgs),
    /// Heartbeat write budget and the server's headroom.
    Writes(WriteArgs),
    /// The release `fleet-agent` binary: size and idle memory.
    Agent(AgentArgs),
    /// A fleet reconnecting: N devices connect with their own credentials (JWTs, operator
    /// mode) vs no authentication, side by side; and the cost of issuing the credentials.
    Reconnect(ReconnectArgs),
    /// Enrolling N pre-approved devices through the real operator's identity service.
    Enroll(EnrollArgs),
    /// The dashboard's server time (devices page with filters and pages, overview) with N
    /// devices in the real service's view (build with `--features dashboard`).
    #[cfg(feature = "dashboard")]
    Dashboard(DashboardArgs),
    /// `kubectl apply` → container answering → status converged on the local stack (a real
    /// agent and podman), side by side with a bare `podman run` of the same image (build with
    /// `--features stack`).
    #[cfg(feature = "stack")]
    ApplyLatency(ApplyLatencyArgs),
    /// Everything, with the sizes of issue 9.
    All {
        /// Scale arguments.
        #[command(flatten)]
        scale: ScaleArgs,
        /// Agent arguments.
        #[command(flatten)]
        agent: AgentArgs,
    },
    /// Redraw `scale-latency.png` from the `scale.csv` in `--out`.
    Plot,
    /// (internal) Run the operator, exactly like `harmony-fleet-operator run`.
    #[command(hide = true)]
    Operator(Box<harmony_fleet_operator::config::RunArgs>),
}

/// `scale`.
#[derive(Debug, Clone, Args)]
pub struct ScaleArgs {
    /// Device counts.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,100000")]
    pub devices: Vec<usize>,
    /// Deployment counts.
    #[arg(long, value_delimiter = ',', default_value = "10,1000")]
    pub deployments: Vec<usize>,
    /// Simulated devices per NATS connection.
    #[arg(long, default_value_t = 1000)]
    pub devices_per_connection: usize,
    /// Values of the `site` label (each seeded Deployment selects one site).
    #[arg(long, default_value_t = 100)]
    pub sites: usize,
    /// Longest simulated apply time of a device, in ms.
    #[arg(long, default_value_t = 500)]
    pub answer_delay_ms: u64,
    /// Share of device reports that are `Failed`.
    #[arg(long, default_value_t = 0.01)]
    pub failure_rate: f64,
    /// Heartbeat interval of the simulated devices, in seconds.
    #[arg(long, default_value_t = 30)]
    pub heartbeat_secs: u64,
    /// Deadline of each phase, in seconds.
    #[arg(long, default_value_t = 900)]
    pub phase_timeout_secs: u64,
    /// Let the operator write `Device` resources too (off: 100k of them load the apiserver).
    /// The row then also has the time until every device's `Device` is written, the writes
    /// and what kube-apiserver and etcd spent.
    #[arg(long)]
    pub device_resources: bool,
    /// With `--device-resources`: after the fan-out, measure the steady `Device` write rate
    /// (heartbeats only) and the control plane's CPU over this many seconds, from one
    /// heartbeat interval after every `Device` was created; 0: skip.
    #[arg(long, default_value_t = 0)]
    pub steady_secs: u64,
    /// The operator's `--last-seen-refresh-secs` (how often `lastHeartbeat` is refreshed when
    /// the budget allows; its default when not given).
    #[arg(long)]
    pub last_seen_refresh_secs: Option<u64>,
    /// The operator's `--device-writes-per-sec` (the refresh budget; its default when not
    /// given).
    #[arg(long)]
    pub device_writes_per_sec: Option<u32>,
    /// nats-servers: 1, or 3 or more joined into a cluster (buckets with three replicas, the
    /// simulated connections spread over the members, the operator given every URL).
    #[arg(long, default_value_t = 1)]
    pub nats_servers: usize,
    /// Keep the rows of an earlier `scale.csv` in the output directory and add to them.
    #[arg(long)]
    pub append: bool,
}

/// `core`.
#[derive(Debug, Clone, Args)]
pub struct CoreArgs {
    /// Devices.
    #[arg(long, default_value_t = 100_000)]
    pub devices: usize,
    /// Deployments of one site each (one more then selects every device).
    #[arg(long, default_value_t = 1000)]
    pub deployments: usize,
    /// Values of the `site` label.
    #[arg(long, default_value_t = 100)]
    pub sites: usize,
    /// Only the cold start, printing its row (what `core` runs in a child process).
    #[arg(long, hide = true)]
    pub cold_start: bool,
}

/// `apply-latency`.
#[cfg(feature = "stack")]
#[derive(Debug, Clone, Args)]
pub struct ApplyLatencyArgs {
    /// Runs of each side (ours and bare podman, alternating).
    #[arg(long, default_value_t = 10)]
    pub runs: usize,
    /// Port the demo server is published on at the device's address.
    #[arg(long, default_value_t = 18_471)]
    pub port: u16,
}

/// `dashboard`.
#[cfg(feature = "dashboard")]
#[derive(Debug, Clone, Args)]
pub struct DashboardArgs {
    /// Devices in the fleet view.
    #[arg(long, default_value_t = 100_000)]
    pub devices: usize,
    /// Values of the `site` label.
    #[arg(long, default_value_t = 100)]
    pub sites: usize,
    /// Timed requests per page.
    #[arg(long, default_value_t = 50)]
    pub samples: usize,
}

/// `consumers`.
#[derive(Debug, Clone, Args)]
pub struct ConsumerArgs {
    /// Device counts.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000,50000")]
    pub devices: Vec<usize>,
    /// Watch modes to compare (`per-device`: the real agent's delivery, notices + index
    /// listing; `notify`: the bench's own notices + get of adr/0013).
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "per-device,notify"
    )]
    pub modes: Vec<WatchMode>,
    /// Devices per connection.
    #[arg(long, default_value_t = 500)]
    pub devices_per_connection: usize,
    /// Desired-state changes timed.
    #[arg(long, default_value_t = 1000)]
    pub changes: usize,
    /// Changes per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Idle CPU window, in seconds.
    #[arg(long, default_value_t = 20)]
    pub idle_secs: u64,
    /// Deadline for all watches to be up, in seconds.
    #[arg(long, default_value_t = 900)]
    pub setup_timeout_secs: u64,
    /// Then restart nats-server and time until every device re-synced (per-device mode).
    #[arg(long)]
    pub restart: bool,
}

/// `writes`.
#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    /// Devices.
    #[arg(long, default_value_t = 100_000)]
    pub devices: usize,
    /// Heartbeat interval, in seconds.
    #[arg(long, default_value_t = 30)]
    pub interval_secs: u64,
    /// Steady-state window, in seconds.
    #[arg(long, default_value_t = 60)]
    pub window_secs: u64,
    /// Saturation run, in seconds.
    #[arg(long, default_value_t = 15)]
    pub saturate_secs: u64,
    /// Devices per connection.
    #[arg(long, default_value_t = 1000)]
    pub devices_per_connection: usize,
}

/// `reconnect`.
#[derive(Debug, Clone, Args)]
pub struct ReconnectArgs {
    /// Devices.
    #[arg(long, default_value_t = 100_000)]
    pub devices: usize,
    /// Connections in flight at once.
    #[arg(long, default_value_t = 256)]
    pub concurrency: usize,
}

/// `enroll`.
#[derive(Debug, Clone, Args)]
pub struct EnrollArgs {
    /// Devices.
    #[arg(long, default_value_t = 10_000)]
    pub devices: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 64)]
    pub concurrency: usize,
}

/// `agent`.
#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// The release `fleet-agent` binary (default: `$CARGO_TARGET_DIR/release/fleet-agent`).
    #[arg(long, env = "FLEET_BENCH_AGENT_BIN")]
    pub agent_bin: Option<PathBuf>,
}

impl ScaleArgs {
    fn options(&self, out: &std::path::Path) -> Result<ScaleOptions> {
        Ok(ScaleOptions {
            devices: self.devices.clone(),
            deployments: self.deployments.clone(),
            devices_per_connection: self.devices_per_connection,
            sites: self.sites,
            answer_delay: Duration::from_millis(self.answer_delay_ms),
            failure_rate: self.failure_rate,
            heartbeat_interval: Duration::from_secs(self.heartbeat_secs.max(1)),
            phase_timeout: Duration::from_secs(self.phase_timeout_secs),
            device_resources: self.device_resources,
            last_seen_refresh: self.last_seen_refresh_secs.map(Duration::from_secs),
            device_writes_per_sec: self.device_writes_per_sec,
            steady_window: Duration::from_secs(self.steady_secs),
            nats_servers: self.nats_servers,
            operator_exe: std::env::current_exe()
                .map_err(|e| Error::io("locating this executable", e))?,
            out_dir: out.to_owned(),
        })
    }
}

/// Runs the chosen bench. `operator` never returns until the operator stops.
pub async fn run(cli: BenchCli) -> Result<()> {
    let out = cli.out;
    match cli.command {
        Some(BenchCommand::Operator(args)) => {
            let config = harmony_fleet_operator::config::Config::try_from(*args)?;
            harmony_fleet_operator::run(config).await?;
        }
        Some(BenchCommand::Plot) => {
            let (_, rows) = scale::earlier_rows(&out);
            scale::plot_rows(&rows, &out.join("scale-latency.png"))?;
        }
        Some(BenchCommand::Scale(args)) => {
            scale::run(&args.options(&out)?, args.append).await?;
        }
        Some(BenchCommand::Core(args)) => {
            let opts = crate::reconciler::CoreOptions {
                devices: args.devices,
                deployments: args.deployments,
                sites: args.sites,
            };
            if args.cold_start {
                crate::reconciler::print_row(&crate::reconciler::cold_start(&opts)?);
            } else {
                let exe = std::env::current_exe()
                    .map_err(|e| Error::io("finding the fleet-bench executable", e))?;
                let table = crate::reconciler::run(&opts, &exe).await?;
                crate::reconciler::report(&table, &out)?;
            }
        }
        Some(BenchCommand::Consumers(args)) => {
            consumers::run(&ConsumerOptions {
                devices: args.devices,
                modes: args.modes,
                devices_per_connection: args.devices_per_connection,
                changes: args.changes,
                rate: args.rate,
                idle_window: Duration::from_secs(args.idle_secs),
                setup_timeout: Duration::from_secs(args.setup_timeout_secs),
                restart: args.restart,
                out_dir: out,
            })
            .await?;
        }
        Some(BenchCommand::Writes(args)) => {
            writes::run(&WriteOptions {
                devices: args.devices,
                interval: Duration::from_secs(args.interval_secs.max(1)),
                window: Duration::from_secs(args.window_secs),
                saturate: Duration::from_secs(args.saturate_secs),
                devices_per_connection: args.devices_per_connection,
                out_dir: out,
            })
            .await?;
        }
        Some(BenchCommand::Reconnect(args)) => {
            crate::reconnect::run(&crate::reconnect::ReconnectOptions {
                devices: args.devices,
                concurrency: args.concurrency,
                out_dir: out,
            })
            .await?;
        }
        #[cfg(feature = "stack")]
        Some(BenchCommand::ApplyLatency(args)) => {
            let report = crate::apply_latency::run(
                &crate::apply_latency::LatencyOptions {
                    runs: args.runs.max(1),
                    port: args.port,
                },
                &out,
            )
            .await?;
            println!("{report}");
        }
        #[cfg(feature = "dashboard")]
        Some(BenchCommand::Dashboard(args)) => {
            crate::dashboard::run(&crate::dashboard::DashboardOptions {
                devices: args.devices,
                sites: args.sites,
                samples: args.samples,
                out_dir: out,
            })
            .await?;
        }
        Some(BenchCommand::Enroll(args)) => {
            crate::enroll::run(&crate::enroll::EnrollOptions {
                devices: args.devices,
                concurrency: args.concurrency,
                operator_exe: std::env::current_exe()
                    .map_err(|e| Error::io("locating this executable", e))?,
                out_dir: out,
            })
            .await?;
        }
        Some(BenchCommand::Agent(args)) => {
            let bin = args
                .agent_bin
                .unwrap_or_else(footprint::default_agent_binary);
            footprint::run(&bin, &out).await?;
        }
        Some(BenchCommand::All { scale: s, agent }) => {
            let bin = agent
                .agent_bin
                .unwrap_or_else(footprint::default_agent_binary);
            footprint::run(&bin, &out).await?;
            let c = ConsumerArgs::parse_defaults();
            consumers::run(&ConsumerOptions {
                devices: c.devices,
                modes: c.modes,
                devices_per_connection: c.devices_per_connection,
                changes: c.changes,
                rate: c.rate,
                idle_window: Duration::from_secs(c.idle_secs),
                setup_timeout: Duration::from_secs(c.setup_timeout_secs),
                restart: c.restart,
                out_dir: out.clone(),
            })
            .await?;
            let w = WriteArgs::parse_defaults();
            writes::run(&WriteOptions {
                devices: w.devices,
                interval: Duration::from_secs(w.interval_secs),
                window: Duration::from_secs(w.window_secs),
                saturate: Duration::from_secs(w.saturate_secs),
                devices_per_connection: w.devices_per_connection,
                out_dir: out.clone(),
            })
            .await?;
            scale::run(&s.options(&out)?, s.append).await?;
        }
        None => {
            return Err(Error::Config(
                "name a bench: scale, consumers, writes, agent or all (see --help)".into(),
            ));
        }
    }
    Ok(())
}

/// Parses the defaults of an argument group (for `all`).
trait Defaults: Sized {
    fn parse_defaults() -> Self;
}

macro_rules! defaults {
    ($t:ty) => {
        impl Defaults for $t {
            fn parse_defaults() -> Self {
                #[derive(Parser)]
                struct Wrap {
                    #[command(flatten)]
                    inner: $t,
                }
                match Wrap::try_parse_from(["defaults"]) {
                    Ok(w) => w.inner,
                    Err(e) => unreachable!("argument defaults parse: {e}"),
                }
            }
        }
    };
}
defaults!(ConsumerArgs);
defaults!(WriteArgs);

/// `fleet-sim`: run a simulated fleet against any nats-server until Ctrl-C or `--duration`.
#[derive(Debug, Parser)]
#[command(name = "fleet-sim", version, about)]
pub struct SimCli {
    /// NATS URL.
    #[arg(long, env = "FLEET_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub nats_url: String,
    /// Number of devices.
    #[arg(long, default_value_t = 1000)]
    pub devices: usize,
    /// Devices sharing one connection.
    #[arg(long, default_value_t = 1000)]
    pub devices_per_connection: usize,
    /// Device ids are `<prefix>-<index>`.
    #[arg(long, default_value = "sim")]
    pub prefix: String,
    /// Values of the `site` label.
    #[arg(long, default_value_t = 100)]
    pub sites: usize,
    /// Heartbeat interval in seconds (0: none).
    #[arg(long, default_value_t = 30)]
    pub heartbeat_secs: u64,
    /// Longest simulated apply time, in ms.
    #[arg(long, default_value_t = 500)]
    pub answer_delay_ms: u64,
    /// Share of failing reports.
    #[arg(long, default_value_t = 0.01)]
    pub failure_rate: f64,
    /// How devices watch their desired state.
    #[arg(long, value_enum, default_value = "shared")]
    pub watch: WatchMode,
    /// Create missing fleet buckets first.
    #[arg(long)]
    pub create_buckets: bool,
    /// Stop after this many seconds (0: run until Ctrl-C).
    #[arg(long, default_value_t = 0)]
    pub duration_secs: u64,
}

/// Runs `fleet-sim`.
pub async fn run_sim(cli: SimCli) -> Result<()> {
    if cli.create_buckets {
        let client = async_nats::connect(cli.nats_url.as_str())
            .await
            .map_err(|e| Error::nats(format!("connecting to {}", cli.nats_url), e))?;
        crate::sim::fleet_buckets(client, cli.devices).await?;
    }
    let mut config = SimConfig::new(cli.nats_url, cli.devices);
    config.devices_per_connection = cli.devices_per_connection;
    config.prefix = cli.prefix;
    config.sites = cli.sites;
    config.heartbeat_interval =
        (cli.heartbeat_secs > 0).then(|| Duration::from_secs(cli.heartbeat_secs));
    config.answer_delay = Duration::from_millis(cli.answer_delay_ms);
    config.failure_rate = cli.failure_rate;
    config.watch = cli.watch;
    let mut fleet = Fleet::start(config).await?;
    println!("{}", fleet.describe());
    let seeded = fleet.seed().await?;
    println!("seeded device-info and first heartbeats in {seeded:.2?}");
    fleet.start_heartbeats()?;
    let stop = async {
        if cli.duration_secs > 0 {
            tokio::time::sleep(Duration::from_secs(cli.duration_secs)).await;
        } else {
            let _ = tokio::signal::ctrl_c().await;
        }
    };
    tokio::pin!(stop);
    let mut every = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = every.tick() => {
                let t = fleet.tally();
                let counts = t.all_counts();
                let delivered: usize = counts.values().map(|c| c.delivered).sum();
                let answered: usize = counts.values().map(|c| c.answered).sum();
                let failed: usize = counts.values().map(|c| c.failed).sum();
                println!(
                    "connections {} | heartbeats ok {} failed {} | deployments {} keys delivered {} reports {} (failed {}) | watches ready {}",
                    fleet.connections(),
                    t.heartbeats_ok.load(std::sync::atomic::Ordering::Relaxed),
                    t.heartbeats_failed.load(std::sync::atomic::Ordering::Relaxed),
                    counts.len(), delivered, answered, failed,
                    t.watches_ready.load(std::sync::atomic::Ordering::Relaxed),
                );
            }
        }
    }
    Ok(())
}

/// Sets up `tracing` from `RUST_LOG` (default `info`).
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).try_init();
}

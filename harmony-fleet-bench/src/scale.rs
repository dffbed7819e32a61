//! The scale runs (issues 9 and 4): for each (devices, deployments) pair, against a real
//! kube-apiserver, a fresh nats-server and the operator in its own process:
//!
//! 1. seed `N` simulated devices (`device-info` + heartbeats every 30 s),
//! 2. start the operator, time its convergence,
//! 3. apply `M` Deployments (each selects one `site`, i.e. `N/sites` devices): time until
//!    every key is delivered, every device reported, every status is correct,
//! 4. apply one more Deployment selecting all `N` devices ("fan-out"): time from the apply
//!    to all `N` keys delivered, and from the last device report of that burst to a correct
//!    status (`matched = N`, `succeeded`/`failed` as reported, `pending = 0`),
//! 5. read the operator's CPU seconds and peak RSS and nats-server's memory,
//! 6. stop the operator and start a new one: time to `Converged` and how many keys it wrote
//!    (zero expected: same bytes, nothing rewritten).
//!
//! With `Device` resources on, the row also says when every device's `Device` was written,
//! how many writes that took, the steady write rate over a quiet window (heartbeats only) and
//! what kube-apiserver and etcd spent. With `--nats-servers 3` the servers are a cluster and
//! the buckets have three replicas (issue 20 parts 5 and 6).
//!
//! A step that does not finish within the phase deadline ends the pair; the row keeps what
//! was measured up to there and says what timed out.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use harmony::local::{ControlPlaneOptions, LocalControlPlane};
use harmony_fleet_contracts::payload::{PodmanV0, ReconcileScore, Service};
use harmony_fleet_operator::crd::{self, Deployment};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::{Value, json};

use crate::error::{Error, Result};
use crate::operator::{OperatorProcess, OperatorSpec};
use crate::plot::{self, Series};
use crate::procstat::{self, ProcSample};
use crate::report::{Table, num};
use crate::servers::NatsServers;
use crate::sim::{FLEET_LABEL, Fleet, SITE_LABEL, SimConfig, WatchMode};

const FIELD_MANAGER: &str = "fleet-bench";
const FANOUT: &str = "fanout";

/// What to run.
#[derive(Clone, Debug)]
pub struct ScaleOptions {
    /// Device counts.
    pub devices: Vec<usize>,
    /// Deployment counts.
    pub deployments: Vec<usize>,
    /// Devices per NATS connection of the simulator.
    pub devices_per_connection: usize,
    /// `site` label values (each seeded Deployment selects one site).
    pub sites: usize,
    /// Longest simulated apply time of a device.
    pub answer_delay: Duration,
    /// Share of failing reports.
    pub failure_rate: f64,
    /// Heartbeat interval of the simulated devices.
    pub heartbeat_interval: Duration,
    /// Deadline of each phase.
    pub phase_timeout: Duration,
    /// Whether the operator writes `Device` resources (100k of them load the apiserver).
    pub device_resources: bool,
    /// The operator's `--last-seen-refresh-secs`; `None`: its default.
    pub last_seen_refresh: Option<Duration>,
    /// The operator's `--device-writes-per-sec`; `None`: its default.
    pub device_writes_per_sec: Option<u32>,
    /// Quiet window after the fan-out over which the steady `Device` write rate and the
    /// control plane's CPU are measured; zero: not measured.
    pub steady_window: Duration,
    /// nats-servers: 1, or a cluster of 3 or more.
    pub nats_servers: usize,
    /// Executable with the `operator` subcommand.
    pub operator_exe: PathBuf,
    /// Where results go.
    pub out_dir: PathBuf,
}

/// One (devices, deployments) result; `None` where the run did not get that far.
#[derive(Clone, Debug, Default)]
pub struct ScaleRow {
    /// Devices.
    pub devices: usize,
    /// Seeded Deployments.
    pub deployments: usize,
    /// NATS connections of the simulator.
    pub connections: usize,
    /// `desired-state` keys at the end (seeded + fan-out).
    pub keys: usize,
    /// Writing `device-info` + first heartbeat of every device.
    pub seed_devices_s: Option<f64>,
    /// Operator start → Converged (with the devices known).
    pub first_start_s: Option<f64>,
    /// `M` Deployments applied → all their keys delivered.
    pub seed_keys_s: Option<f64>,
    /// `M` Deployments applied → all statuses correct.
    pub seed_status_s: Option<f64>,
    /// Fan-out applied → all `N` keys delivered.
    pub fanout_keys_s: Option<f64>,
    /// Last report of the fan-out burst → correct status.
    pub status_lag_s: Option<f64>,
    /// Operator CPU seconds, whole run.
    pub operator_cpu_s: Option<f64>,
    /// Operator peak RSS.
    pub operator_peak_mib: Option<f64>,
    /// nats-server RSS at the end.
    pub nats_rss_mib: Option<f64>,
    /// nats-server peak RSS.
    pub nats_peak_mib: Option<f64>,
    /// nats-server CPU seconds, whole run.
    pub nats_cpu_s: Option<f64>,
    /// Restarted operator: start → Converged.
    pub cold_start_s: Option<f64>,
    /// Keys the restarted operator wrote.
    pub cold_start_writes: Option<u64>,
    /// Restarted operator: peak RSS at convergence.
    pub cold_start_peak_mib: Option<f64>,
    /// `ok` or what stopped the run.
    pub outcome: String,
    /// nats-servers in the run.
    pub nats_servers: usize,
    /// Operator start → a `Device` written for every device.
    pub devices_written_s: Option<f64>,
    /// `Device` writes (spec and/or status of one device) by the first operator.
    pub device_writes: Option<u64>,
    /// `Device` writes a second over the quiet window.
    pub steady_device_writes_per_s: Option<f64>,
    /// kube-apiserver + etcd CPU over the quiet window, in % of one core.
    pub steady_control_plane_cpu_pct: Option<f64>,
    /// kube-apiserver CPU seconds while the first operator ran.
    pub apiserver_cpu_s: Option<f64>,
    /// kube-apiserver peak RSS (since the control plane started).
    pub apiserver_peak_mib: Option<f64>,
    /// etcd CPU seconds while the first operator ran.
    pub etcd_cpu_s: Option<f64>,
    /// etcd peak RSS (since the control plane started).
    pub etcd_peak_mib: Option<f64>,
    /// Restarted operator: CPU seconds from its start to Converged.
    pub cold_start_cpu_s: Option<f64>,
    /// nats-server(s): CPU seconds over the cold start.
    pub cold_start_nats_cpu_s: Option<f64>,
    /// This process (the simulated fleet): CPU seconds over the cold start.
    pub cold_start_sim_cpu_s: Option<f64>,
    /// Where the CPU went while the M Deployments were turned into keys.
    pub keys_cpu: Option<CpuSplit>,
    /// Where the CPU went from the fan-out's apply to its correct status.
    pub fanout_cpu: Option<CpuSplit>,
}

/// CPU seconds each process spent over one phase: with the phase's length, whether the
/// machine's cores were the bound (their sum near cores × seconds) and whose share to cut.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct CpuSplit {
    /// The operator.
    pub operator: f64,
    /// The nats-server(s).
    pub nats: f64,
    /// This process: the simulated fleet.
    pub sim: f64,
    /// kube-apiserver and etcd.
    pub control_plane: f64,
}

impl CpuSplit {
    /// `after - before`, field by field.
    fn since(after: Self, before: Self) -> Self {
        Self {
            operator: after.operator - before.operator,
            nats: after.nats - before.nats,
            sim: after.sim - before.sim,
            control_plane: after.control_plane - before.control_plane,
        }
    }

    fn cells(split: Option<Self>) -> [String; 4] {
        let f = |get: fn(&Self) -> f64| num(split.as_ref().map(get), 1);
        [
            f(|s| s.operator),
            f(|s| s.nats),
            f(|s| s.sim),
            f(|s| s.control_plane),
        ]
    }
}

/// Columns of rows written before the `Device` and cluster columns were added.
const FIRST_COLUMNS: usize = 19;

/// Columns of rows written before the cold start's CPU columns were added.
const DEVICE_COLUMNS: usize = 28;

/// Columns of rows written before the other phases' CPU columns were added.
const COLD_CPU_COLUMNS: usize = 31;

/// Column names of the result table.
pub const COLUMNS: [&str; 39] = [
    "devices",
    "deployments",
    "connections",
    "keys",
    "seed devices s",
    "operator start s",
    "M deployments → keys s",
    "M deployments → status s",
    "fan-out → N keys s",
    "last report → status s",
    "operator CPU s",
    "operator peak MiB",
    "nats RSS MiB",
    "nats peak MiB",
    "nats CPU s",
    "cold start s",
    "cold start writes",
    "cold start peak MiB",
    "outcome",
    "nats servers",
    "Devices written s",
    "Device writes",
    "steady Device writes/s",
    "steady apiserver+etcd CPU %",
    "apiserver CPU s",
    "apiserver peak MiB",
    "etcd CPU s",
    "etcd peak MiB",
    "cold start operator CPU s",
    "cold start nats CPU s",
    "cold start sim CPU s",
    "M → keys operator CPU s",
    "M → keys nats CPU s",
    "M → keys sim CPU s",
    "M → keys apiserver+etcd CPU s",
    "fan-out → status operator CPU s",
    "fan-out → status nats CPU s",
    "fan-out → status sim CPU s",
    "fan-out → status apiserver+etcd CPU s",
];

impl ScaleRow {
    fn cells(&self) -> Vec<String> {
        vec![
            self.devices.to_string(),
            self.deployments.to_string(),
            self.connections.to_string(),
            self.keys.to_string(),
            num(self.seed_devices_s, 2),
            num(self.first_start_s, 2),
            num(self.seed_keys_s, 2),
            num(self.seed_status_s, 2),
            num(self.fanout_keys_s, 2),
            num(self.status_lag_s, 2),
            num(self.operator_cpu_s, 1),
            num(self.operator_peak_mib, 0),
            num(self.nats_rss_mib, 0),
            num(self.nats_peak_mib, 0),
            num(self.nats_cpu_s, 1),
            num(self.cold_start_s, 2),
            self.cold_start_writes
                .map_or_else(|| "-".to_owned(), |w| w.to_string()),
            num(self.cold_start_peak_mib, 0),
            self.outcome.clone(),
            self.nats_servers.to_string(),
            num(self.devices_written_s, 2),
            self.device_writes
                .map_or_else(|| "-".to_owned(), |w| w.to_string()),
            num(self.steady_device_writes_per_s, 1),
            num(self.steady_control_plane_cpu_pct, 1),
            num(self.apiserver_cpu_s, 1),
            num(self.apiserver_peak_mib, 0),
            num(self.etcd_cpu_s, 1),
            num(self.etcd_peak_mib, 0),
            num(self.cold_start_cpu_s, 1),
            num(self.cold_start_nats_cpu_s, 1),
            num(self.cold_start_sim_cpu_s, 1),
        ]
        .into_iter()
        .chain(CpuSplit::cells(self.keys_cpu))
        .chain(CpuSplit::cells(self.fanout_cpu))
        .collect()
    }
}

/// A control plane with the CRDs installed, shared by every pair of a run.
pub struct ControlPlane {
    plane: LocalControlPlane,
    client: kube::Client,
}

impl std::fmt::Debug for ControlPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlPlane")
            .field("plane", &self.plane)
            .finish_non_exhaustive()
    }
}

impl ControlPlane {
    /// Starts etcd + kube-apiserver and installs the fleet CRDs.
    pub async fn start() -> Result<Self> {
        let plane = LocalControlPlane::start(ControlPlaneOptions::default()).await?;
        let client = plane.client().await?;
        let api: Api<CustomResourceDefinition> = Api::all(client.clone());
        for crd in crd::crds() {
            let name = crd.metadata.name.clone().unwrap_or_default();
            api.patch(
                &name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&crd),
            )
            .await
            .map_err(|e| Error::kube(format!("installing CRD {name}"), e))?;
            crate::poll_until(
                &format!("CRD {name} established"),
                Duration::from_secs(30),
                Duration::from_millis(100),
                || async {
                    let crd = api.get(&name).await.ok()?;
                    crd.status?
                        .conditions?
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(())
                },
            )
            .await?;
        }
        Ok(Self { plane, client })
    }

    /// The kubeconfig file.
    pub fn kubeconfig(&self) -> &Path {
        self.plane.kubeconfig_path()
    }

    /// A client.
    pub fn client(&self) -> &kube::Client {
        &self.client
    }

    /// What kube-apiserver and etcd have used so far.
    pub fn sample(&self) -> Result<ControlPlaneSample> {
        let pid = |name: &str| {
            self.plane
                .pids()
                .into_iter()
                .find(|(n, _)| n == name)
                .map(|(_, pid)| pid)
                .ok_or_else(|| Error::Config(format!("the control plane has no {name} running")))
        };
        Ok(ControlPlaneSample {
            apiserver: procstat::sample(pid("kube-apiserver")?)?,
            etcd: procstat::sample(pid("etcd")?)?,
        })
    }
}

/// kube-apiserver's and etcd's resource use at one moment.
#[derive(Clone, Copy, Debug)]
pub struct ControlPlaneSample {
    /// kube-apiserver.
    pub apiserver: ProcSample,
    /// etcd.
    pub etcd: ProcSample,
}

impl ControlPlaneSample {
    /// CPU seconds of both.
    pub fn cpu_seconds(&self) -> f64 {
        self.apiserver.cpu_seconds + self.etcd.cpu_seconds
    }
}

/// The Score every bench Deployment carries (`image` differs per Deployment).
pub fn score(image: &str) -> ReconcileScore {
    ReconcileScore::PodmanV0(PodmanV0::new(vec![Service::new("web", image)]))
}

fn deployment_body(name: &str, selector: Value, image: &str) -> Result<Value> {
    Ok(json!({
        "apiVersion": "fleet.nationtech.io/v1alpha1",
        "kind": "Deployment",
        "metadata": { "name": name },
        "spec": {
            "targetSelector": selector,
            "score": serde_json::to_value(score(image)).map_err(|e| Error::json("score", e))?,
        }
    }))
}

async fn apply(api: &Api<Deployment>, body: Value) -> Result<()> {
    let name = body["metadata"]["name"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await
    .map_err(|e| Error::kube(format!("applying Deployment {name}"), e))?;
    Ok(())
}

/// Devices of `n` whose site is `site` (index mod sites).
fn site_count(n: usize, sites: usize, site: usize) -> usize {
    n / sites + usize::from(site < n % sites)
}

fn secs(d: Duration) -> Option<f64> {
    Some(d.as_secs_f64())
}

/// The status of `name` is exactly what the simulated devices reported.
fn status_correct(d: &Deployment, matched: usize, failed: usize) -> bool {
    let Some(s) = &d.status else { return false };
    let a = &s.aggregate;
    a.matched_device_count == matched as u64
        && a.failed == failed as u64
        && a.succeeded == (matched - failed) as u64
        && a.pending == 0
}

/// Runs one (devices, deployments) pair and fills `row` as it goes.
pub async fn run_pair(
    cp: &ControlPlane,
    opts: &ScaleOptions,
    n: usize,
    m: usize,
    row: &mut ScaleRow,
) -> Result<()> {
    let deadline = opts.phase_timeout;
    let nats = NatsServers::start(opts.nats_servers, n).await?;
    row.nats_servers = nats.count();
    let nats_pids = nats.pids();
    let client = async_nats::connect(nats.first_url())
        .await
        .map_err(|e| Error::nats("connecting the bench client", e))?;
    crate::sim::fleet_buckets_replicated(client.clone(), n, nats.replicas()).await?;

    let tag = format!("{:08x}", rand::random::<u32>());
    let ns = format!("bench-{n}-{m}-{tag}");
    let namespaces: Api<Namespace> = Api::all(cp.client().clone());
    namespaces
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": ns}}))
                .map_err(|e| Error::json("namespace", e))?,
        )
        .await
        .map_err(|e| Error::kube(format!("creating namespace {ns}"), e))?;
    let api: Api<Deployment> = Api::namespaced(cp.client().clone(), &ns);

    let mut config = SimConfig::new(nats.urls(), n);
    config.devices_per_connection = opts.devices_per_connection;
    config.sites = opts.sites;
    config.heartbeat_interval = Some(opts.heartbeat_interval);
    config.answer_delay = opts.answer_delay;
    config.failure_rate = opts.failure_rate;
    config.watch = WatchMode::Shared;
    let mut fleet = Fleet::start(config).await?;
    row.connections = fleet.connections();
    tracing::info!("{}", fleet.describe());
    row.seed_devices_s = secs(fleet.seed().await?);
    fleet.start_heartbeats()?;

    let spec = OperatorSpec {
        exe: opts.operator_exe.clone(),
        kubeconfig: cp.kubeconfig().to_owned(),
        nats_url: nats.urls(),
        namespace: ns.clone(),
        log_file: opts.out_dir.join("logs").join(format!("operator-{ns}.log")),
        device_resources: opts.device_resources,
        extra_args: operator_args(opts),
    };
    let plane_before = cp.sample()?;
    let mut operator = OperatorProcess::spawn(&spec)?;
    let devices_written = opts
        .device_resources
        .then(|| tokio::spawn(crate::operator::devices_written(operator.addr(), n)));
    row.first_start_s = secs(operator.wait_converged(deadline).await?);

    // M Deployments, one site each.
    let sites = opts.sites;
    let expected: BTreeMap<String, usize> = (0..m)
        .map(|j| (format!("d{j}"), site_count(n, sites, j % sites)))
        .collect();
    let seed_keys: usize = expected.values().sum();
    row.keys = seed_keys;
    let cpu = |operator: &OperatorProcess| -> Option<CpuSplit> {
        Some(CpuSplit {
            operator: operator.sample().ok()?.cpu_seconds,
            nats: procstat::sample_all(&nats_pids).ok()?.cpu_seconds,
            sim: procstat::sample(std::process::id()).ok()?.cpu_seconds,
            control_plane: cp.sample().ok()?.cpu_seconds(),
        })
    };
    let phase_cpu = |before: Option<CpuSplit>, operator: &OperatorProcess| {
        Some(CpuSplit::since(cpu(operator)?, before?))
    };
    let keys_cpu_before = cpu(&operator);
    tracing::info!(phase = "deployments", "phase started");
    let started = Instant::now();
    let bodies: Vec<Value> = (0..m)
        .map(|j| {
            deployment_body(
                &format!("d{j}"),
                json!({"matchLabels": {SITE_LABEL: format!("site-{}", j % sites)}}),
                &format!("registry.local/app-{j}:1"),
            )
        })
        .collect::<Result<_>>()?;
    let applied: Vec<Result<()>> = stream::iter(bodies)
        .map(|b| apply(&api, b))
        .buffer_unordered(8)
        .collect()
        .await;
    applied.into_iter().collect::<Result<Vec<()>>>()?;
    let tally = fleet.tally().clone();
    let total = |f: fn(&crate::sim::Counts) -> usize| {
        let counts = tally.all_counts();
        expected
            .keys()
            .map(|k| counts.get(k).map_or(0, f))
            .sum::<usize>()
    };
    crate::poll_until(
        &format!("{seed_keys} keys of {m} Deployments delivered"),
        deadline,
        Duration::from_millis(100),
        || {
            let done = total(|c| c.delivered) >= seed_keys;
            async move { done.then_some(()) }
        },
    )
    .await?;
    row.seed_keys_s = secs(started.elapsed());
    row.keys_cpu = phase_cpu(keys_cpu_before, &operator);
    tracing::info!(phase = "deployments", "phase ended: all keys delivered");
    crate::poll_until(
        &format!("{seed_keys} reports written"),
        deadline,
        Duration::from_millis(100),
        || {
            let done = total(|c| c.answered) >= seed_keys;
            async move { done.then_some(()) }
        },
    )
    .await?;
    let counts: HashMap<String, crate::sim::Counts> = tally.all_counts();
    crate::poll_until(
        &format!("status of {m} Deployments correct"),
        deadline,
        Duration::from_millis(250),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            let correct = list
                .items
                .iter()
                .filter(|d| {
                    let name = d.metadata.name.clone().unwrap_or_default();
                    let (Some(matched), Some(c)) = (expected.get(&name), counts.get(&name)) else {
                        return false;
                    };
                    status_correct(d, *matched, c.failed)
                })
                .count();
            (correct == m).then_some(())
        },
    )
    .await?;
    row.seed_status_s = secs(started.elapsed());

    // Fan-out: one Deployment on every device.
    let fanout_cpu_before = cpu(&operator);
    tracing::info!(phase = "fan-out", "phase started");
    let started = Instant::now();
    apply(
        &api,
        deployment_body(
            FANOUT,
            json!({"matchLabels": {FLEET_LABEL.0: FLEET_LABEL.1}}),
            "registry.local/fanout:1",
        )?,
    )
    .await?;
    row.keys = seed_keys + n;
    crate::poll_until(
        &format!("{n} fan-out keys delivered"),
        deadline,
        Duration::from_millis(20),
        || {
            let done = tally.counts(FANOUT).delivered >= n;
            async move { done.then_some(()) }
        },
    )
    .await?;
    row.fanout_keys_s = secs(started.elapsed());
    let done = crate::poll_until(
        &format!("{n} fan-out reports written"),
        deadline,
        Duration::from_millis(20),
        || {
            let c = tally.counts(FANOUT);
            async move { (c.answered >= n).then_some(c) }
        },
    )
    .await?;
    let last_report = done.last_answer.unwrap_or_else(Instant::now);
    tracing::info!(
        phase = "fan-out",
        ago_ms = last_report.elapsed().as_millis() as u64,
        "last fan-out report written"
    );
    crate::poll_until(
        "fan-out status correct",
        deadline,
        Duration::from_millis(50),
        || async {
            let d = api.get(FANOUT).await.ok()?;
            status_correct(&d, n, done.failed).then_some(())
        },
    )
    .await?;
    row.status_lag_s = secs(last_report.elapsed());
    row.fanout_cpu = phase_cpu(fanout_cpu_before, &operator);
    tracing::info!(phase = "fan-out", "phase ended: status correct");

    if opts.device_resources {
        device_load(cp, opts, &operator, n, devices_written, row).await?;
    }
    let op = operator.sample()?;
    row.operator_cpu_s = Some(op.cpu_seconds);
    row.operator_peak_mib = Some(op.peak_rss_mib());
    let plane = cp.sample()?;
    row.apiserver_cpu_s = Some(plane.apiserver.cpu_seconds - plane_before.apiserver.cpu_seconds);
    row.apiserver_peak_mib = Some(plane.apiserver.peak_rss_mib());
    row.etcd_cpu_s = Some(plane.etcd.cpu_seconds - plane_before.etcd.cpu_seconds);
    row.etcd_peak_mib = Some(plane.etcd.peak_rss_mib());
    if let Ok(s) = procstat::sample_all(&nats_pids) {
        row.nats_rss_mib = Some(s.rss_mib());
        row.nats_peak_mib = Some(s.peak_rss_mib());
        row.nats_cpu_s = Some(s.cpu_seconds);
    }

    // Cold start: a new operator process on the same KV and CRs.
    operator.stop().await;
    drop(operator);
    let nats_before = procstat::sample_all(&nats_pids).ok();
    let sim_before = procstat::sample(std::process::id()).ok();
    tracing::info!(phase = "cold start", "phase started");
    let mut restarted = OperatorProcess::spawn(&spec)?;
    row.cold_start_s = secs(restarted.wait_converged(deadline).await?);
    let cold = restarted.sample().ok();
    tracing::info!(phase = "cold start", "phase ended: converged");
    let spent = |before: Option<ProcSample>, after: Result<ProcSample>| {
        Some(after.ok()?.cpu_seconds - before?.cpu_seconds)
    };
    row.cold_start_nats_cpu_s = spent(nats_before, procstat::sample_all(&nats_pids));
    row.cold_start_sim_cpu_s = spent(sim_before, procstat::sample(std::process::id()));
    row.cold_start_cpu_s = cold.as_ref().map(|s| s.cpu_seconds);
    row.cold_start_writes = restarted.kv_writes().await.ok();
    row.cold_start_peak_mib = cold.map(|s| s.peak_rss_mib());
    restarted.stop().await;
    drop(fleet);
    row.outcome = "ok".to_owned();
    Ok(())
}

/// The operator flags a run sets beyond the defaults.
fn operator_args(opts: &ScaleOptions) -> Vec<String> {
    let mut args = Vec::new();
    if let Some(r) = opts.last_seen_refresh {
        args.push("--last-seen-refresh-secs".to_owned());
        args.push(r.as_secs().max(1).to_string());
    }
    if let Some(w) = opts.device_writes_per_sec {
        args.push("--device-writes-per-sec".to_owned());
        args.push(w.to_string());
    }
    args
}

/// With `Device` resources on: waits until every device's `Device` is written (timed from the
/// operator's start by `devices_written`), then measures the steady write rate and the
/// control plane's CPU over the quiet window (heartbeats arrive, nothing else changes).
async fn device_load(
    cp: &ControlPlane,
    opts: &ScaleOptions,
    operator: &OperatorProcess,
    n: usize,
    devices_written: Option<tokio::task::JoinHandle<Duration>>,
    row: &mut ScaleRow,
) -> Result<()> {
    if let Some(task) = devices_written {
        let took = tokio::time::timeout(opts.phase_timeout, task)
            .await
            .map_err(|_| Error::Timeout {
                what: format!("a Device written for each of {n} devices"),
                after: opts.phase_timeout,
            })?
            .map_err(|e| Error::Config(format!("the Device write counter stopped: {e}")))?;
        row.devices_written_s = secs(took);
    }
    row.device_writes = Some(operator.device_writes().await?);
    if opts.steady_window.is_zero() {
        return Ok(());
    }
    // The window opens one heartbeat interval after the last `Device` was created: a device
    // whose info was read before its heartbeat is created offline and flipped online at its
    // next heartbeat, and that tail of the creation is not the steady state. Both waits are
    // the measurement's protocol (what happens during them is the result), not a wait for a
    // state.
    tokio::time::sleep(opts.heartbeat_interval).await;
    let (writes, plane) = (operator.device_writes().await?, cp.sample()?);
    let started = Instant::now();
    tokio::time::sleep(opts.steady_window).await;
    let (writes_after, plane_after) = (operator.device_writes().await?, cp.sample()?);
    let window = started.elapsed().as_secs_f64();
    row.steady_device_writes_per_s = Some(writes_after.saturating_sub(writes) as f64 / window);
    row.steady_control_plane_cpu_pct =
        Some(100.0 * (plane_after.cpu_seconds() - plane.cpu_seconds()) / window);
    row.device_writes = Some(writes_after);
    Ok(())
}

/// Rows of an earlier `scale.csv` in `dir` (the columns the plot needs), to append to.
pub fn earlier_rows(dir: &Path) -> (Vec<Vec<String>>, Vec<ScaleRow>) {
    let Ok(text) = std::fs::read_to_string(dir.join("scale.csv")) else {
        return (Vec::new(), Vec::new());
    };
    let mut cells = Vec::new();
    let mut rows = Vec::new();
    for line in text.lines().skip(1) {
        let mut row = crate::report::parse_csv_line(line);
        if ![
            FIRST_COLUMNS,
            DEVICE_COLUMNS,
            COLD_CPU_COLUMNS,
            COLUMNS.len(),
        ]
        .contains(&row.len())
        {
            continue;
        }
        // Rows from before the `Device` and cluster columns: one server, nothing measured.
        if row.len() == FIRST_COLUMNS {
            row.push("1".to_owned());
        }
        // Older rows: what they did not measure is `-`.
        row.resize(COLUMNS.len(), "-".to_owned());
        let f = |i: usize| row[i].parse::<f64>().ok();
        rows.push(ScaleRow {
            devices: row[0].parse().unwrap_or(0),
            deployments: row[1].parse().unwrap_or(0),
            fanout_keys_s: f(8),
            status_lag_s: f(9),
            ..ScaleRow::default()
        });
        cells.push(row);
    }
    (cells, rows)
}

/// Runs every pair, writing `scale.csv`, `scale.md` and `scale-latency.png` after each
/// (appending to an earlier `scale.csv` in the same directory when `append` is set).
pub async fn run(opts: &ScaleOptions, append: bool) -> Result<Table> {
    let cp = ControlPlane::start().await?;
    let mut table = Table::new(&COLUMNS);
    let mut rows = Vec::new();
    if append {
        let (cells, earlier) = earlier_rows(&opts.out_dir);
        table.rows = cells;
        rows = earlier;
    }
    for &m in &opts.deployments {
        for &n in &opts.devices {
            tracing::info!(devices = n, deployments = m, "scale run starting");
            let mut row = ScaleRow {
                devices: n,
                deployments: m,
                ..ScaleRow::default()
            };
            if let Err(e) = run_pair(&cp, opts, n, m, &mut row).await {
                tracing::warn!(devices = n, deployments = m, error = %e, "scale run stopped");
                row.outcome = format!("stopped: {e}");
            }
            println!(
                "{}",
                Table {
                    headers: table.headers.clone(),
                    rows: vec![row.cells()]
                }
                .markdown()
            );
            table.rows.push(row.cells());
            rows.push(row);
            table.write(&opts.out_dir, "scale")?;
            plot_rows(&rows, &opts.out_dir.join("scale-latency.png"))?;
        }
    }
    Ok(table)
}

/// Latency against device count: fan-out keys and status lag, one line per deployment count.
pub fn plot_rows(rows: &[ScaleRow], path: &Path) -> Result<()> {
    let mut series = Vec::new();
    let mut ms: Vec<usize> = rows.iter().map(|r| r.deployments).collect();
    ms.sort_unstable();
    ms.dedup();
    for m in ms {
        let pick = |f: fn(&ScaleRow) -> Option<f64>| -> Vec<(f64, f64)> {
            rows.iter()
                .filter(|r| r.deployments == m)
                .filter_map(|r| Some((r.devices as f64, f(r)?)))
                .collect()
        };
        series.push(Series {
            label: format!("apply -> all N keys, M={m}"),
            points: pick(|r| r.fanout_keys_s),
        });
        series.push(Series {
            label: format!("last report -> status, M={m}"),
            points: pick(|r| r.status_lag_s),
        });
    }
    series.retain(|s| !s.points.is_empty());
    if series.is_empty() {
        return Ok(());
    }
    plot::latency_plot(
        path,
        "harmony fleet: latency vs devices (fan-out Deployment)",
        "seconds",
        &series,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn site_counts_add_up() {
        let n = 1005;
        let total: usize = (0..100).map(|s| site_count(n, 100, s)).sum();
        assert_eq!(total, n);
        assert_eq!(site_count(n, 100, 4), 11);
        assert_eq!(site_count(n, 100, 5), 10);
    }

    #[test]
    fn rows_of_earlier_layouts_are_read_with_what_they_did_not_measure_as_dashes() {
        let dir = tempfile::tempdir().expect("temp dir");
        let row = |cells: usize| {
            (0..cells)
                .map(|i| {
                    if i < 2 {
                        "7".to_owned()
                    } else {
                        "1.5".to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(",")
        };
        let text = format!(
            "{}\n{}\n{}\n{}\n{}\n{}\n",
            COLUMNS.join(","),
            row(FIRST_COLUMNS),
            row(DEVICE_COLUMNS),
            row(COLUMNS.len()),
            row(5),
            row(COLD_CPU_COLUMNS),
        );
        std::fs::write(dir.path().join("scale.csv"), text).expect("written");
        let (cells, rows) = earlier_rows(dir.path());
        assert_eq!(rows.len(), 4, "the malformed row is skipped");
        assert!(cells.iter().all(|r| r.len() == COLUMNS.len()));
        assert_eq!(
            cells[0][FIRST_COLUMNS], "1",
            "one server before the cluster column"
        );
        assert_eq!(cells[1][DEVICE_COLUMNS], "-");
        assert_eq!(cells[2][DEVICE_COLUMNS], "1.5");
        assert_eq!(cells[3][COLD_CPU_COLUMNS - 1], "1.5");
        assert_eq!(
            cells[3][COLD_CPU_COLUMNS], "-",
            "the phases' CPU, not measured then"
        );
        assert_eq!(rows[0].fanout_keys_s, Some(1.5));
    }
}

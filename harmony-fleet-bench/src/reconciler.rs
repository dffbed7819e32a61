//! The operator's decision core alone: the scale bench's fleet (N devices on S sites, M
//! Deployments of one site each, then one Deployment on every device) fed straight into
//! [`Reconciler::handle`] in the shell's order, every write acknowledged at once, every
//! assigned key answered with a `Succeeded` report. No servers and no simulator share the
//! cores, so what it prints is what the core itself costs: CPU time per phase and the
//! process's resident memory after it. The fleet is generated as it is fed (nothing but the
//! core grows), and the cold start, a second core loading the same keys, runs in a process of
//! its own (`--cold-start`) so that its memory is its own; it must write nothing.
//!
//! `fleet-bench core --devices 100000 --deployments 1000` takes about a minute; the scale
//! bench's operator holds the same state plus its watches, clients and buffers.

use std::collections::VecDeque;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};
use harmony_fleet_contracts::notice::DesiredIndex;
use harmony_fleet_contracts::state::{DeploymentState, Phase};
use harmony_fleet_contracts::{AgentVersion, ContentHash, DeviceInfo, Inventory, keys, notice};
use harmony_fleet_operator::controller::{Effect, Input, Now, PatchOutcome, Reconciler, Settings};
use harmony_fleet_operator::crd::deployment::Deployment;
use harmony_fleet_operator::fleet::decode_desired;
use harmony_fleet_operator::kv::{KvEvent, KvOp};
use harmony_fleet_operator::metrics::Metrics;
use jiff::Timestamp;
use kube::runtime::watcher;
use serde_json::json;

use crate::error::{Error, Result};
use crate::procstat;
use crate::report::{Table, num};
use crate::sim::{FLEET_LABEL, SITE_LABEL, site_of};

/// What to feed the core.
#[derive(Clone, Debug)]
pub struct CoreOptions {
    /// Devices.
    pub devices: usize,
    /// Deployments of one site each (then one more on every device).
    pub deployments: usize,
    /// Values of the `site` label.
    pub sites: usize,
}

/// Columns of `core.csv`.
pub const COLUMNS: [&str; 6] = ["phase", "inputs", "keys", "cpu_s", "rss_mib", "writes"];

const NAMESPACE: &str = "bench";
const FANOUT: &str = "fanout";
/// Marks a row the cold-start child prints for its parent.
const ROW_MARK: &str = "core-row\t";

/// The fleet's shape: which Deployments select which devices, and their payloads. Everything
/// fed to the core is generated from it as it is fed.
struct Shape {
    opts: CoreOptions,
    ids: Vec<DeviceId>,
    /// Site Deployments' names, by index.
    names: Vec<DeploymentName>,
    fanout: DeploymentName,
}

impl Shape {
    fn new(opts: &CoreOptions) -> Result<Self> {
        let opts = CoreOptions {
            sites: opts.sites.max(1),
            ..opts.clone()
        };
        let parse = |s: String| {
            s.parse::<DeploymentName>()
                .map_err(|e| Error::Config(format!("deployment name {s}: {e}")))
        };
        Ok(Self {
            ids: (0..opts.devices)
                .map(|i| {
                    format!("dev-{i:07}")
                        .parse()
                        .map_err(|e| Error::Config(format!("device id {i}: {e}")))
                })
                .collect::<Result<_>>()?,
            names: (0..opts.deployments)
                .map(|j| parse(format!("d{j}")))
                .collect::<Result<_>>()?,
            fanout: parse(FANOUT.to_owned())?,
            opts,
        })
    }

    fn image(j: Option<usize>) -> String {
        j.map_or_else(
            || "registry.local/fanout:1".to_owned(),
            |j| format!("registry.local/app-{j}:1"),
        )
    }

    /// The bytes the operator writes for Deployment `j` (`None`: the fan-out).
    fn payload(j: Option<usize>) -> Result<Bytes> {
        crate::scale::score(&Self::image(j))
            .to_canonical_json()
            .map(Bytes::from)
            .map_err(|e| Error::Config(format!("encoding a payload: {e}")))
    }

    fn deployment(&self, j: Option<usize>) -> Result<Deployment> {
        let (name, selector) = match j {
            Some(j) => (
                self.names[j].as_str(),
                json!({"matchLabels": {SITE_LABEL: format!("site-{}", j % self.opts.sites)}}),
            ),
            None => (
                FANOUT,
                json!({"matchLabels": {FLEET_LABEL.0: FLEET_LABEL.1}}),
            ),
        };
        serde_json::from_value(json!({
            "apiVersion": "fleet.nationtech.io/v1alpha1",
            "kind": "Deployment",
            "metadata": {
                "name": name, "namespace": NAMESPACE, "generation": 1, "resourceVersion": "1",
                "uid": format!("uid-{name}"),
                "creationTimestamp": "2026-01-01T00:00:00Z",
                "finalizers": [harmony_fleet_operator::crd::FINALIZER],
            },
            "spec": {
                "targetSelector": selector,
                "score": serde_json::to_value(crate::scale::score(&Self::image(j)))
                    .map_err(|e| Error::json("score", e))?,
            }
        }))
        .map_err(|e| Error::json("Deployment", e))
    }

    /// Site Deployments selecting device `i`.
    fn site_deployments(&self, i: usize) -> impl Iterator<Item = usize> + '_ {
        let sites = self.opts.sites;
        (i % sites..self.opts.deployments).step_by(sites)
    }

    fn info(&self, i: usize) -> Result<Input> {
        let id = &self.ids[i];
        let info = DeviceInfo {
            device_id: id.clone(),
            labels: [
                (FLEET_LABEL.0.to_owned(), FLEET_LABEL.1.to_owned()),
                (SITE_LABEL.to_owned(), site_of(i, self.opts.sites)),
            ]
            .into(),
            inventory: Inventory {
                hostname: id.to_string(),
                arch: "aarch64".into(),
                os: "linux".into(),
                os_release: Some("Debian GNU/Linux 12 (bookworm)".into()),
                kernel_version: Some("6.6.51+rpt-rpi-2712".into()),
                cpu_count: 4,
                memory_bytes: 8 << 30,
            },
            agent_version: AgentVersion::new("0.1.0")
                .map_err(|e| Error::Config(format!("agent version: {e}")))?,
            boot_time: None,
            observed_at: Timestamp::now(),
        };
        Ok(Input::info(KvEvent::Put {
            key: keys::info_key(id),
            value: Bytes::from(serde_json::to_vec(&info).map_err(|e| Error::json("info", e))?),
            at: Timestamp::now(),
        }))
    }

    /// A `Succeeded` report of device `i` on `deployment`, whose payload hashes to `hash`.
    fn report(&self, i: usize, deployment: &DeploymentName, hash: ContentHash) -> Result<Input> {
        let at = Timestamp::now();
        let mut state = DeploymentState::new(Phase::Running, at);
        state.payload_hash = Some(hash);
        Ok(Input::state(
            KvEvent::Put {
                key: keys::state_key(&self.ids[i], deployment),
                value: Bytes::from(
                    serde_json::to_vec(&state).map_err(|e| Error::json("state", e))?,
                ),
                at,
            },
            0,
        ))
    }
}

/// The core, answering its effects as the shell would (every write succeeds).
struct Driver {
    core: Reconciler,
    /// Keys put or deleted and indexes written since the last [`Driver::take_counts`].
    writes: u64,
    /// `desired-state` keys held (indexes apart).
    keys: i64,
    inputs: u64,
}

impl Driver {
    fn new() -> Self {
        let core = Reconciler::new(
            Settings {
                heartbeat_timeout: Duration::from_secs(3600),
                device_resources: false,
                stray_report_limit: 1_000,
                standby: false,
            },
            Metrics::new(),
        );
        Self {
            core,
            writes: 0,
            keys: 0,
            inputs: 0,
        }
    }

    fn feed(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            self.inputs += 1;
            for effect in self.core.handle(input, Now::system()) {
                match effect {
                    Effect::WriteKeys(ops) => {
                        self.writes += ops.len() as u64;
                        for (_, op) in &ops {
                            self.keys += match op {
                                KvOp::Put(_) => 1,
                                KvOp::Delete => -1,
                            };
                        }
                        queue.push_back(Input::KeysWritten(
                            ops.into_iter().map(|(key, _)| (key, true)).collect(),
                        ));
                    }
                    Effect::WriteIndexes(ops) => {
                        self.writes += ops.len() as u64;
                        queue.push_back(Input::IndexesWritten(
                            ops.into_iter().map(|(device, _)| (device, true)).collect(),
                        ));
                    }
                    Effect::ReleaseFinalizer { key, .. } => {
                        queue.push_back(Input::FinalizerReleased {
                            key,
                            outcome: PatchOutcome::Done,
                        });
                    }
                    _ => {}
                }
            }
        }
    }

    /// A row for `phase`: inputs and writes since the last row, CPU since `cpu`.
    fn row(&mut self, phase: &str, cpu: f64) -> Vec<String> {
        let (inputs, writes) = (
            std::mem::take(&mut self.inputs),
            std::mem::take(&mut self.writes),
        );
        let cpu_s = cpu_now() - cpu;
        tracing::info!(
            phase,
            inputs,
            keys = self.keys,
            cpu_s,
            writes,
            "core phase done"
        );
        vec![
            phase.to_owned(),
            inputs.to_string(),
            self.keys.to_string(),
            num(Some(cpu_s), 2),
            num(Some(rss_mib()), 0),
            writes.to_string(),
        ]
    }
}

fn cpu_now() -> f64 {
    procstat::sample(std::process::id()).map_or(0.0, |s| s.cpu_seconds)
}

fn rss_mib() -> f64 {
    procstat::sample(std::process::id()).map_or(0.0, |s| s.rss_mib())
}

/// The live phases in this process, then the cold start in a child process (`exe`, the
/// `fleet-bench` binary): one row per phase.
pub async fn run(opts: &CoreOptions, exe: &Path) -> Result<Table> {
    let mut table = Table::new(&COLUMNS);
    table.rows = live(opts)?;
    let output = tokio::process::Command::new(exe)
        .args([
            "core",
            "--cold-start",
            "--devices",
            &opts.devices.to_string(),
            "--deployments",
            &opts.deployments.to_string(),
            "--sites",
            &opts.sites.to_string(),
        ])
        .env("RUST_LOG", "warn")
        .output()
        .await
        .map_err(|e| Error::io(format!("running {} core --cold-start", exe.display()), e))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let rows: Vec<Vec<String>> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(ROW_MARK))
        .map(|l| l.split('\t').map(str::to_owned).collect())
        .collect();
    if !output.status.success() || rows.is_empty() {
        return Err(Error::Config(format!(
            "the cold start ({} core --cold-start) failed: {}\n{}",
            exe.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        )));
    }
    table.rows.extend(rows);
    Ok(table)
}

/// The live path: devices, Deployments, reports, a fan-out and its reports.
pub fn live(opts: &CoreOptions) -> Result<Vec<Vec<String>>> {
    let shape = Shape::new(opts)?;
    let mut rows = Vec::new();
    let mut driver = Driver::new();
    let cpu = cpu_now();
    start(&mut driver, &shape, &[], false)?;
    rows.push(driver.row("devices known", cpu));

    let cpu = cpu_now();
    for j in 0..opts.deployments {
        let d = shape.deployment(Some(j))?;
        driver.feed(Input::Cr(Box::new(watcher::Event::Apply(d))));
    }
    rows.push(driver.row("deployments → keys", cpu));

    let hashes: Vec<ContentHash> = (0..opts.deployments)
        .map(|j| Shape::payload(Some(j)).map(|p| ContentHash::of_bytes(&p)))
        .collect::<Result<_>>()?;
    let cpu = cpu_now();
    for i in 0..opts.devices {
        for j in shape.site_deployments(i) {
            driver.feed(shape.report(i, &shape.names[j], hashes[j])?);
        }
    }
    driver.feed(Input::Tick);
    rows.push(driver.row("reports → status", cpu));

    let cpu = cpu_now();
    driver.feed(Input::Cr(Box::new(watcher::Event::Apply(
        shape.deployment(None)?,
    ))));
    rows.push(driver.row("fan-out → keys", cpu));

    let fanout = ContentHash::of_bytes(&Shape::payload(None)?);
    let cpu = cpu_now();
    for i in 0..opts.devices {
        driver.feed(shape.report(i, &shape.fanout, fanout)?);
    }
    driver.feed(Input::Tick);
    rows.push(driver.row("fan-out reports → status", cpu));
    Ok(rows)
}

/// A second core on what the live path left in KV (every key, every index, every report and
/// Deployment): it must write nothing.
pub fn cold_start(opts: &CoreOptions) -> Result<Vec<String>> {
    let shape = Shape::new(opts)?;
    let payloads: Vec<Bytes> = (0..opts.deployments)
        .map(|j| Shape::payload(Some(j)))
        .collect::<Result<_>>()?;
    let mut driver = Driver::new();
    let cpu = cpu_now();
    start(&mut driver, &shape, &payloads, true)?;
    Ok(driver.row("cold start", cpu))
}

/// Prints a row for the parent (`--cold-start`).
pub fn print_row(row: &[String]) {
    println!("{ROW_MARK}{}", row.join("\t"));
}

/// A cold start as the shell runs it: `desired-state` first (with `payloads`, the keys and
/// indexes of every device; none when empty), then the CRs (with `full`, every Deployment and
/// the fan-out), device infos and (with `full`) every report, each source caught up. Fails
/// unless the core says it converged.
fn start(driver: &mut Driver, shape: &Shape, payloads: &[Bytes], full: bool) -> Result<()> {
    let fanout = Shape::payload(None)?;
    let at = Timestamp::now();
    let hashes: Vec<ContentHash> = payloads.iter().map(|p| ContentHash::of_bytes(p)).collect();
    let fanout_hash = ContentHash::of_bytes(&fanout);
    let mut loaded: i64 = 0;
    if full {
        for (i, id) in shape.ids.iter().enumerate() {
            let mut index = DesiredIndex::default();
            for j in shape.site_deployments(i) {
                let name = &shape.names[j];
                driver.core.load_desired(decode_desired(KvEvent::Put {
                    key: keys::desired_key(id, name),
                    value: payloads[j].clone(),
                    at,
                }));
                index.deployments.insert(name.clone(), hashes[j]);
                loaded += 1;
            }
            driver.core.load_desired(decode_desired(KvEvent::Put {
                key: keys::desired_key(id, &shape.fanout),
                value: fanout.clone(),
                at,
            }));
            index.deployments.insert(shape.fanout.clone(), fanout_hash);
            loaded += 1;
            driver.core.load_desired(decode_desired(KvEvent::Put {
                key: notice::index_key(id),
                value: Bytes::from(index.to_bytes()),
                at,
            }));
        }
    }
    driver.core.load_desired(decode_desired(KvEvent::CaughtUp));
    driver.feed(Input::Cr(Box::new(watcher::Event::Init)));
    if full {
        for j in (0..shape.opts.deployments).map(Some).chain([None]) {
            driver.feed(Input::Cr(Box::new(watcher::Event::InitApply(
                shape.deployment(j)?,
            ))));
        }
    }
    driver.feed(Input::Cr(Box::new(watcher::Event::InitDone)));
    for i in 0..shape.ids.len() {
        driver.feed(shape.info(i)?);
    }
    driver.feed(Input::info(KvEvent::CaughtUp));
    if full {
        for i in 0..shape.ids.len() {
            for j in shape.site_deployments(i) {
                driver.feed(shape.report(i, &shape.names[j], hashes[j])?);
            }
            driver.feed(shape.report(i, &shape.fanout, fanout_hash)?);
        }
    }
    driver.feed(Input::state(KvEvent::CaughtUp, 0));
    driver.feed(Input::heartbeat(KvEvent::CaughtUp));
    driver.feed(Input::Devices(Box::new(watcher::Event::Init)));
    driver.feed(Input::Devices(Box::new(watcher::Event::InitDone)));
    driver.keys += loaded;
    if driver.core.is_converged() {
        Ok(())
    } else {
        Err(Error::Config(
            "the core did not converge after every source caught up".into(),
        ))
    }
}

/// Prints the table and writes `core.csv` / `core.md` into `out`.
pub fn report(table: &Table, out: &Path) -> Result<()> {
    println!("{}", table.markdown());
    table.write(out, "core")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_fleet_converges_and_its_cold_start_writes_nothing() {
        let opts = CoreOptions {
            devices: 40,
            deployments: 8,
            sites: 4,
        };
        let rows = live(&opts).expect("runs");
        let phases: Vec<&str> = rows.iter().map(|r| r[0].as_str()).collect();
        assert_eq!(
            phases,
            [
                "devices known",
                "deployments → keys",
                "reports → status",
                "fan-out → keys",
                "fan-out reports → status",
            ]
        );
        // Each device is on one site, which two Deployments select: 80 keys, and each
        // device's index written once per Deployment (80); then 40 fan-out keys and 40
        // indexes.
        assert_eq!((rows[1][2].as_str(), rows[1][5].as_str()), ("80", "160"));
        assert_eq!((rows[3][2].as_str(), rows[3][5].as_str()), ("120", "80"));
        let cold = cold_start(&opts).expect("converges");
        assert_eq!(cold[2], "120");
        assert_eq!(cold[5], "0", "the cold start rewrote keys");
    }
}

//! [`MockFleetService`]: a seeded, in-memory fleet of 10 devices in mixed states and 7
//! deployments (complete, progressing in waves, paused after failures, all-at-once, and three
//! the operator refuses or that match nothing), for `serve-web --mock`, the handler tests and
//! the browser tests. Deployment statuses are built the operator's way (conditions, aggregate,
//! rollout) and read through the same [`deployment_attention`] as the real service's.
//!
//! Sessions are simulated in-process: the log tail emits a line every
//! [`MockFleetService::LOG_INTERVAL`], and the shell is a tiny line editor that understands
//! `echo`, `stty size`, `hostname` and `exit`, enough to exercise the whole browser path.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use harmony_fleet_contracts::commands::ServiceLogs;
use harmony_fleet_contracts::device::Inventory;
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};
use harmony_fleet_contracts::state::Phase;
use harmony_fleet_types::crd::deployment::RolloutPhase;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use tokio::sync::mpsc;

use super::attention::deployment_attention;
use super::device_list::{self, DeviceFacts};
use super::{
    CommandOutput, DeploymentDetail, DeploymentDevice, DeploymentRef, DeploymentSummary,
    DeviceDeployment, DeviceDetail, DevicePage, DeviceQuery, DeviceSummary, FleetService, LogEvent,
    LogStream, OVERVIEW_OFFLINE_LIMIT, Overview, PhaseCounts, RolloutView, ServiceError,
    ServiceResult, ShellEvent, ShellInput, ShellSession, Wave, WaveState,
};

#[derive(Clone, Debug)]
struct MockDevice {
    id: DeviceId,
    labels: BTreeMap<String, String>,
    online: bool,
    last_seen: Timestamp,
    blacklisted: bool,
    arch: &'static str,
    /// (deployment, phase, last error, on the target revision)
    runs: Vec<(String, Phase, Option<String>, bool)>,
    /// What it ran before it was blacklisted (given back when released), like the operator
    /// deleting and rewriting its desired state.
    held: Vec<(String, Phase, Option<String>, bool)>,
}

impl DeviceFacts for &MockDevice {
    fn id(&self) -> &DeviceId {
        &self.id
    }
    fn labels(&self) -> &BTreeMap<String, String> {
        &self.labels
    }
    fn online(&self) -> bool {
        self.online
    }
    fn blacklisted(&self) -> bool {
        self.blacklisted
    }
    fn failing(&self) -> bool {
        self.runs
            .iter()
            .any(|(_, phase, ..)| *phase == Phase::Failed)
    }
    fn text_fields(&self) -> [&str; 2] {
        [self.arch, "0.1.0"]
    }
}

#[derive(Clone, Debug)]
struct MockDeployment {
    summary: DeploymentSummary,
    waves: Vec<(String, WaveState)>,
    services: Vec<String>,
    /// Conditions the operator would have written: (type, true?, reason, message).
    conditions: Vec<(&'static str, bool, &'static str, String)>,
    /// The operator serves it (`false`: refused, so no device runs it and it has no rollout).
    serving: bool,
}

#[derive(Debug)]
struct MockState {
    devices: BTreeMap<DeviceId, MockDevice>,
    deployments: Vec<MockDeployment>,
}

/// The seeded in-memory fleet.
#[derive(Debug)]
pub struct MockFleetService {
    state: Mutex<MockState>,
    log_interval: Duration,
    audit: Mutex<Vec<super::AuditEntry>>,
}

impl Default for MockFleetService {
    fn default() -> Self {
        Self::new()
    }
}

fn id(s: &str) -> DeviceId {
    DeviceId::new(s).unwrap_or_else(|_| unreachable_id())
}

#[allow(clippy::panic)]
fn unreachable_id() -> DeviceId {
    panic!("mock device ids are valid RFC 1123 names")
}

impl MockFleetService {
    /// Interval between two simulated log lines.
    pub const LOG_INTERVAL: Duration = Duration::from_millis(500);

    /// The audit entries recorded so far, oldest first.
    pub fn audit_log(&self) -> Vec<super::AuditEntry> {
        self.audit
            .lock()
            .map(|a| a.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }

    /// The same fleet with another interval between simulated log lines.
    pub fn with_log_interval(mut self, interval: Duration) -> Self {
        self.log_interval = interval;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, MockState> {
        // A panic while holding the lock cannot leave the seeded data half-written in a way
        // that matters for a mock: keep serving.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn online_device(&self, id: &DeviceId) -> ServiceResult<MockDevice> {
        let state = self.lock();
        let device = state
            .devices
            .get(id)
            .ok_or_else(|| ServiceError::no_device(id))?;
        if !device.online {
            return Err(ServiceError::Offline { device: id.clone() });
        }
        Ok(device.clone())
    }
}

fn summary(d: &MockDevice) -> DeviceSummary {
    let mut counts = PhaseCounts::default();
    for (_, phase, _, _) in &d.runs {
        counts.add(*phase);
    }
    DeviceSummary {
        id: d.id.clone(),
        labels: d.labels.clone(),
        online: d.online,
        last_seen: Some(d.last_seen),
        blacklisted: d.blacklisted,
        agent_version: "0.1.0".to_owned(),
        arch: d.arch.to_owned(),
        deployments: counts,
    }
}

fn deployment_summary(state: &MockState, d: &MockDeployment) -> DeploymentSummary {
    use crate::crd::deployment::{Aggregate, DeploymentStatus, FailingDevice, RolloutStatus};
    let mut s = d.summary.clone();
    let mut aggregate = Aggregate::default();
    let mut failing_devices = Vec::new();
    let mut updated = 0;
    let runs = state.devices.values().flat_map(|device| {
        device
            .runs
            .iter()
            .filter(|(name, ..)| d.serving && *name == s.id.name)
            .map(move |run| (device, run))
    });
    for (device, (_, phase, error, on_target)) in runs {
        aggregate.matched_device_count += 1;
        if *on_target {
            updated += 1;
        }
        if !device.online {
            aggregate.offline += 1;
        }
        match phase {
            Phase::Running if *on_target => aggregate.succeeded += 1,
            Phase::Failed => {
                aggregate.failed += 1;
                let error = error.clone().unwrap_or_default();
                if aggregate.last_error.is_none() {
                    aggregate.last_error = Some(format!("{}: {error}", device.id));
                }
                failing_devices.push(FailingDevice {
                    device: device.id.to_string(),
                    error,
                });
            }
            _ => aggregate.pending += 1,
        }
    }
    if let Some(r) = &mut s.rollout {
        r.updated = updated;
    }
    let status = DeploymentStatus {
        conditions: d
            .conditions
            .iter()
            .map(|(type_, ok, reason, message)| Condition {
                type_: (*type_).to_owned(),
                status: if *ok { "True" } else { "False" }.to_owned(),
                reason: (*reason).to_owned(),
                message: message.clone(),
                observed_generation: Some(1),
                last_transition_time: Time(Timestamp::UNIX_EPOCH),
            })
            .collect(),
        aggregate: aggregate.clone(),
        rollout: s.rollout.as_ref().map(|r| RolloutStatus {
            revision: r.revision.clone(),
            phase: r.phase,
            current_batch: r.current_batch,
            total_batches: r.total_batches,
            updated: r.updated,
            reason: r.reason.clone(),
            ..RolloutStatus::default()
        }),
        failing_devices,
        ..DeploymentStatus::default()
    };
    s.attention = deployment_attention(&status);
    s.matched = aggregate.matched_device_count;
    s.succeeded = aggregate.succeeded;
    s.failed = aggregate.failed;
    s.pending = aggregate.pending;
    s.offline = aggregate.offline;
    s.last_error = aggregate.last_error;
    s
}

#[async_trait]
impl FleetService for MockFleetService {
    async fn overview(&self) -> ServiceResult<Overview> {
        let deployments = self.list_deployments().await?;
        let state = self.lock();
        let offline: Vec<DeviceSummary> = state
            .devices
            .values()
            .filter(|d| !d.online)
            .map(summary)
            .collect();
        Ok(Overview {
            devices_total: state.devices.len(),
            devices_online: state.devices.values().filter(|d| d.online).count(),
            devices_blacklisted: state.devices.values().filter(|d| d.blacklisted).count(),
            offline_total: offline.len(),
            offline: offline.into_iter().take(OVERVIEW_OFFLINE_LIMIT).collect(),
            deployments_total: deployments.len(),
            attention: deployments
                .into_iter()
                .filter(|d| !d.attention.is_empty())
                .collect(),
        })
    }

    async fn list_devices(&self, query: &DeviceQuery) -> ServiceResult<DevicePage> {
        let state = self.lock();
        let selection = device_list::select(state.devices.values(), query);
        Ok(DevicePage::of(selection, summary))
    }

    async fn device(&self, id: &DeviceId) -> ServiceResult<DeviceDetail> {
        let state = self.lock();
        let d = state
            .devices
            .get(id)
            .ok_or_else(|| ServiceError::no_device(id))?;
        let services = |name: &str| {
            state
                .deployments
                .iter()
                .find(|x| x.summary.id.name == name)
                .map(|x| x.services.clone())
                .unwrap_or_default()
        };
        Ok(DeviceDetail {
            summary: summary(d),
            inventory: Inventory {
                hostname: d.id.as_str().to_owned(),
                arch: d.arch.to_owned(),
                os: "linux".to_owned(),
                os_release: Some("Debian GNU/Linux 13 (trixie)".to_owned()),
                kernel_version: Some("6.12.48+deb13-arm64".to_owned()),
                cpu_count: 4,
                memory_bytes: 8 * 1024 * 1024 * 1024,
            },
            deployments: d
                .runs
                .iter()
                .filter_map(|(name, phase, error, _)| {
                    Some(DeviceDeployment {
                        deployment: name.parse().ok()?,
                        phase: *phase,
                        last_error: error.clone(),
                        last_change: Some(d.last_seen),
                        services: services(name),
                    })
                })
                .collect(),
        })
    }

    async fn list_deployments(&self) -> ServiceResult<Vec<DeploymentSummary>> {
        let state = self.lock();
        let mut list: Vec<DeploymentSummary> = state
            .deployments
            .iter()
            .map(|d| deployment_summary(&state, d))
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    async fn deployment(&self, id: &DeploymentRef) -> ServiceResult<DeploymentDetail> {
        let state = self.lock();
        let d = state
            .deployments
            .iter()
            .find(|d| d.summary.id == *id)
            .ok_or_else(|| ServiceError::NotFound {
                what: format!("deployment {}/{}", id.namespace, id.name),
            })?;
        let devices = state
            .devices
            .values()
            .flat_map(|device| {
                device
                    .runs
                    .iter()
                    .filter(|(name, ..)| d.serving && *name == id.name)
                    .map(|(_, phase, error, on_target)| DeploymentDevice {
                        device: device.id.clone(),
                        phase: Some(*phase),
                        on_target: *on_target,
                        last_error: error.clone(),
                        last_change: Some(device.last_seen),
                    })
            })
            .collect();
        Ok(DeploymentDetail {
            summary: deployment_summary(&state, d),
            waves: d
                .waves
                .iter()
                .enumerate()
                .map(|(i, (size, state))| Wave {
                    number: u32::try_from(i + 1).unwrap_or(u32::MAX),
                    size: size.clone(),
                    state: *state,
                })
                .collect(),
            devices,
        })
    }

    async fn set_blacklisted(
        &self,
        id: &DeviceId,
        blacklisted: bool,
    ) -> ServiceResult<DeviceSummary> {
        let mut state = self.lock();
        let device = state
            .devices
            .get_mut(id)
            .ok_or_else(|| ServiceError::no_device(id))?;
        if blacklisted && !device.blacklisted {
            device.held = std::mem::take(&mut device.runs);
        } else if !blacklisted && device.blacklisted {
            device.runs = std::mem::take(&mut device.held);
        }
        device.blacklisted = blacklisted;
        Ok(summary(device))
    }

    async fn run_command(&self, id: &DeviceId, command: &str) -> ServiceResult<CommandOutput> {
        let device = self.online_device(id)?;
        if command.trim().is_empty() {
            return Err(ServiceError::BadRequest(
                "the command is empty: type a shell command such as `uptime`".into(),
            ));
        }
        let (stdout, code) = match mock_command(device.id.as_str(), command.trim(), (80, 24)) {
            Some(out) => (out, 0),
            None => (
                format!("sh: 1: {}: not found (mock device)\n", command.trim()),
                127,
            ),
        };
        let (stdout, stderr) = if code == 0 {
            (stdout, String::new())
        } else {
            (String::new(), stdout)
        };
        Ok(CommandOutput {
            exit_code: Some(code),
            stdout,
            stderr,
            truncated: false,
            timed_out: false,
            duration_ms: 3,
        })
    }

    async fn tail_logs(
        &self,
        id: &DeviceId,
        deployment: &DeploymentName,
        lines: u64,
    ) -> ServiceResult<Vec<ServiceLogs>> {
        let device = self.online_device(id)?;
        let runs = device
            .runs
            .iter()
            .any(|(name, ..)| name == deployment.as_str());
        if !runs {
            return Err(ServiceError::NotFound {
                what: format!("deployment {deployment} on device {id}"),
            });
        }
        let count = lines.min(20);
        Ok(vec![ServiceLogs {
            service: "app".into(),
            container_id: Some("3f2a9c0d11e4".into()),
            lines: (1..=count)
                .map(|i| format!("{deployment} line {i} of the tail"))
                .collect(),
        }])
    }

    async fn stream_logs(
        &self,
        id: &DeviceId,
        deployment: &DeploymentName,
    ) -> ServiceResult<LogStream> {
        let history = self.tail_logs(id, deployment, 3).await?;
        let deployment = deployment.clone();
        let head = futures::stream::iter(
            history
                .into_iter()
                .flat_map(|s| {
                    let service = s.service;
                    s.lines.into_iter().map(move |line| LogEvent::Line {
                        service: service.clone(),
                        line,
                    })
                })
                .collect::<Vec<_>>(),
        );
        let interval = self.log_interval;
        let live = futures::stream::unfold(0u64, move |n| {
            let deployment = deployment.clone();
            async move {
                tokio::time::sleep(interval).await;
                let line = format!(
                    "{} {deployment}: GET /healthz 200 ({} ms) #{n}",
                    Timestamp::now().strftime("%H:%M:%S"),
                    3 + n % 7
                );
                Some((
                    LogEvent::Line {
                        service: "app".into(),
                        line,
                    },
                    n + 1,
                ))
            }
        });
        Ok(head.chain(live).boxed())
    }

    async fn open_shell(&self, id: &DeviceId, cols: u16, rows: u16) -> ServiceResult<ShellSession> {
        let device = self.online_device(id)?;
        let (out_tx, out_rx) = mpsc::channel(64);
        let (in_tx, in_rx) = mpsc::channel(64);
        tokio::spawn(mock_shell(
            device.id.to_string(),
            (cols, rows),
            in_rx,
            out_tx,
        ));
        Ok(ShellSession {
            output: out_rx,
            input: in_tx,
        })
    }

    async fn audit(&self, entry: super::AuditEntry) {
        entry.log();
        match self.audit.lock() {
            Ok(mut log) => log.push(entry),
            Err(e) => e.into_inner().push(entry),
        }
    }
}

/// Output of the few commands the mock device knows.
fn mock_command(host: &str, line: &str, (cols, rows): (u16, u16)) -> Option<String> {
    let (cmd, rest) = line.split_once(' ').unwrap_or((line, ""));
    Some(match cmd {
        "echo" => format!("{}\n", rest.trim()),
        "hostname" => format!("{host}\n"),
        "uptime" => {
            " 10:42:01 up 3 days,  4:12,  0 users,  load average: 0.08, 0.11, 0.09\n".into()
        }
        "stty" if rest.trim() == "size" => format!("{rows} {cols}\n"),
        _ => return None,
    })
}

/// A line-editing mock shell: echoes what is typed, runs a line on Enter.
async fn mock_shell(
    host: String,
    mut size: (u16, u16),
    mut input: mpsc::Receiver<ShellInput>,
    output: mpsc::Sender<ShellEvent>,
) {
    let prompt = format!("{host}:~$ ");
    if output
        .send(ShellEvent::Output(format!(
            "Mock shell on {host} (try `echo hi`, `stty size`, `exit`)\r\n{prompt}"
        )))
        .await
        .is_err()
    {
        return;
    }
    let mut line = String::new();
    while let Some(message) = input.recv().await {
        let data = match message {
            ShellInput::Resize { cols, rows } => {
                size = (cols, rows);
                continue;
            }
            ShellInput::Data(data) => data,
        };
        let mut echo = String::new();
        for c in data.chars() {
            match c {
                '\r' | '\n' => {
                    echo.push_str("\r\n");
                    let cmd = std::mem::take(&mut line);
                    let cmd = cmd.trim();
                    if cmd == "exit" {
                        let _ = output.send(ShellEvent::Output(echo)).await;
                        let _ = output.send(ShellEvent::Exited(Some(0))).await;
                        return;
                    }
                    if !cmd.is_empty() {
                        let out = mock_command(&host, cmd, size)
                            .unwrap_or_else(|| format!("sh: {cmd}: not found\n"));
                        echo.push_str(&out.replace('\n', "\r\n"));
                    }
                    echo.push_str(&prompt);
                }
                '\u{7f}' | '\u{8}' => {
                    if line.pop().is_some() {
                        echo.push_str("\u{8} \u{8}");
                    }
                }
                c if c.is_control() => {}
                c => {
                    line.push(c);
                    echo.push(c);
                }
            }
        }
        if !echo.is_empty() && output.send(ShellEvent::Output(echo)).await.is_err() {
            return;
        }
    }
}

mod seed;
#[cfg(test)]
mod tests;

//! [`RealFleetService`]: the fleet as NATS KV and the Kubernetes API hold it.
//!
//! Reading a 1M-device bucket per page view would not scale, so the service keeps a view
//! ([`FleetView`]): ordered watches of `device-info`, `device-state` and `device-heartbeat`
//! (from the start, like the operator's) and kube reflectors of `Deployment` and `Device`
//! resources. Pages read that view. What needs attention about a Deployment comes from the
//! status the operator wrote ([`deployment_attention`]). Writes go where the truth lives: blacklisting patches the `Device`
//! resource's [`BLACKLIST_ANNOTATION`] (the operator's controller honours it), commands and
//! sessions go to the device over NATS.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use harmony_fleet_contracts::commands::{ExecRequest, LogsRequest, ServiceLogs};
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};
use harmony_fleet_contracts::payload::ReconcileScore;
use harmony_fleet_contracts::state::Phase;
use jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;
use tokio::sync::watch;

use super::attention::deployment_attention;
use super::sessions::{LogStream, ShellSession};
use super::view::{FleetView, Liveness};
use super::{
    CommandOutput, DeploymentDetail, DeploymentDevice, DeploymentRef, DeploymentSummary,
    DeviceDeployment, DeviceDetail, DevicePage, DeviceQuery, DeviceSummary, FleetService, Overview,
    RolloutView, ServiceError, ServiceResult, Wave, WaveState, bridge,
};
use crate::commands::CommandsClient;
use crate::crd::deployment::{Deployment, RolloutStrategy};
use crate::crd::device::{BLACKLIST_ANNOTATION, Device};
use crate::crd::{ToIndex, ToPolicy};
use crate::fleet;
use crate::kv::{FleetKv, KvEvent};
use harmony_fleet_types::crd::deployment::RolloutPhase;

/// Field manager of the dashboard's writes (only the blacklist annotation).
pub const FIELD_MANAGER: &str = "harmony-fleet-dashboard";

/// Settings of the real service.
#[derive(Clone, Debug)]
pub struct RealOptions {
    /// Only show Deployments of this namespace (`None`: all).
    pub namespace: Option<String>,
    /// A device is offline when its last heartbeat is older than this.
    pub heartbeat_timeout: Duration,
}

/// The fleet as NATS KV and the Kubernetes API hold it.
pub struct RealFleetService {
    client: kube::Client,
    audit: super::audit::EventAudit,
    commands: CommandsClient,
    options: RealOptions,
    view: Arc<RwLock<FleetView>>,
    caught_up: watch::Receiver<u8>,
    deployments: Store<Deployment>,
    devices: Store<Device>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for RealFleetService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RealFleetService")
            .field("options", &self.options)
            .finish_non_exhaustive()
    }
}

impl Drop for RealFleetService {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

const BUCKETS_WATCHED: u8 = 3;

impl RealFleetService {
    /// Opens the buckets (they must exist), starts the watches and reflectors. Pages answer
    /// [`ServiceError::NotReady`] until [`Self::wait_ready`] would return.
    pub async fn start(
        nats: async_nats::Client,
        client: kube::Client,
        options: RealOptions,
    ) -> ServiceResult<Self> {
        let fleet_kv =
            FleetKv::open(nats.clone(), false)
                .await
                .map_err(|source| ServiceError::Nats {
                    context: "opening the fleet buckets".into(),
                    source,
                })?;
        let view = Arc::new(RwLock::new(FleetView::default()));
        let (caught_tx, caught_up) = watch::channel(0u8);
        let caught_tx = Arc::new(caught_tx);
        let mut tasks = Vec::new();
        for (store, bucket) in [
            (&fleet_kv.info, "device-info"),
            (&fleet_kv.state, "device-state"),
            (&fleet_kv.heartbeat, "device-heartbeat"),
        ] {
            let events = fleet_kv
                .watch(store)
                .await
                .map_err(|source| ServiceError::Nats {
                    context: format!("watching {bucket}"),
                    source,
                })?;
            let view = view.clone();
            let caught_tx = caught_tx.clone();
            tasks.push(tokio::spawn(async move {
                let mut events = std::pin::pin!(events);
                while let Some(event) = events.next().await {
                    match event {
                        Ok(KvEvent::CaughtUp) => caught_tx.send_modify(|n| *n += 1),
                        Ok(event) => view
                            .write()
                            .unwrap_or_else(std::sync::PoisonError::into_inner)
                            .apply(bucket, event),
                        Err(e) => {
                            tracing::warn!(bucket, error = %e, "dashboard KV watch error; it resumes by itself")
                        }
                    }
                }
            }));
        }
        let deployments_api: Api<Deployment> = match &options.namespace {
            Some(ns) => Api::namespaced(client.clone(), ns),
            None => Api::all(client.clone()),
        };
        let (deployments, writer) = reflector::store();
        tasks.push(spawn_reflector(writer, deployments_api, "Deployment"));
        let (devices, writer) = reflector::store();
        tasks.push(spawn_reflector(
            writer,
            Api::<Device>::all(client.clone()),
            "Device",
        ));
        Ok(Self {
            audit: super::audit::EventAudit::new(client.clone()),
            client,
            commands: CommandsClient::new(nats),
            options,
            view,
            caught_up,
            deployments,
            devices,
            tasks,
        })
    }

    /// Waits until the KV watches caught up and both reflectors listed once.
    pub async fn wait_ready(&self) -> ServiceResult<()> {
        let mut caught = self.caught_up.clone();
        caught
            .wait_for(|n| *n >= BUCKETS_WATCHED)
            .await
            .map_err(|_| ServiceError::NotReady)?;
        self.deployments
            .wait_until_ready()
            .await
            .map_err(|_| ServiceError::NotReady)?;
        self.devices
            .wait_until_ready()
            .await
            .map_err(|_| ServiceError::NotReady)?;
        Ok(())
    }

    fn ready(&self) -> ServiceResult<()> {
        if *self.caught_up.borrow() >= BUCKETS_WATCHED {
            Ok(())
        } else {
            Err(ServiceError::NotReady)
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, FleetView> {
        self.view
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Online and blacklisted as of now: the blacklist is read once per request from the
    /// `Device` reflector (one pass), not looked up per device.
    fn liveness(&self) -> Liveness {
        let blacklisted: HashSet<String> = self
            .devices
            .state()
            .iter()
            .filter(|d| blacklisted(d))
            .filter_map(|d| d.metadata.name.clone())
            .collect();
        Liveness {
            now: Timestamp::now(),
            heartbeat_timeout: self.options.heartbeat_timeout,
            blacklisted,
        }
    }

    fn deployment_summary(&self, d: &Deployment) -> DeploymentSummary {
        let status = d.status.clone().unwrap_or_default();
        let attention = deployment_attention(&status);
        let agg = status.aggregate;
        DeploymentSummary {
            id: DeploymentRef {
                namespace: d.metadata.namespace.clone().unwrap_or_default(),
                name: d.metadata.name.clone().unwrap_or_default(),
            },
            matched: agg.matched_device_count,
            succeeded: agg.succeeded,
            failed: agg.failed,
            pending: agg.pending,
            offline: agg.offline,
            rollout: status.rollout.map(|r| RolloutView {
                phase: r.phase,
                reason: r.reason,
                current_batch: r.current_batch,
                total_batches: r.total_batches,
                updated: r.updated,
                revision: r.revision,
            }),
            last_error: agg.last_error,
            attention,
            images: services(&d.spec.score)
                .iter()
                .map(|s| s.image.clone())
                .collect(),
            selector: selector_text(d),
        }
    }

    async fn exec(&self, id: &DeviceId, request: ExecRequest) -> ServiceResult<CommandOutput> {
        let reply = self.commands.exec(id, &request).await?;
        Ok(CommandOutput {
            exit_code: reply.exit_code,
            stdout: reply.stdout,
            stderr: reply.stderr,
            truncated: reply.truncated,
            timed_out: reply.timed_out,
            duration_ms: reply.duration_ms,
        })
    }
}

fn spawn_reflector<K>(
    writer: reflector::store::Writer<K>,
    api: Api<K>,
    kind: &'static str,
) -> tokio::task::JoinHandle<()>
where
    K: kube::Resource<DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + Send
        + Sync
        + 'static,
{
    tokio::spawn(async move {
        let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
            .default_backoff()
            .touched_objects();
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            if let Err(e) = event {
                tracing::warn!(kind, error = %e, "dashboard watch error; retrying with backoff");
            }
        }
    })
}

/// The services of a payload (none for payload kinds this build does not know).
fn services(score: &ReconcileScore) -> &[harmony_fleet_contracts::payload::Service] {
    match score {
        ReconcileScore::PodmanV0(p) => &p.services,
        #[allow(unreachable_patterns)]
        _ => &[],
    }
}

/// Whether a `Device` resource carries the blacklist annotation ([`fleet::is_blacklisted`]).
pub fn blacklisted(device: &Device) -> bool {
    fleet::is_blacklisted(&device.metadata)
}

fn selector_text(d: &Deployment) -> String {
    let s = &d.spec.target_selector;
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in &s.match_expressions {
        let values = e.values.join(", ");
        parts.push(format!("{} {:?} ({values})", e.key, e.operator));
    }
    if parts.is_empty() {
        "every device".into()
    } else {
        parts.join(", ")
    }
}

fn waves(d: &Deployment, rollout: Option<&RolloutView>) -> Vec<Wave> {
    let spec = &d.spec.rollout;
    let mut sizes: Vec<String> = match spec.strategy {
        RolloutStrategy::AllAtOnce => vec!["every device".into()],
        RolloutStrategy::Batches => spec
            .batches
            .iter()
            .map(|b| {
                let mut size = match (b.count, b.percent) {
                    (Some(c), _) => format!("{c} device{}", if c == 1 { "" } else { "s" }),
                    (None, Some(p)) => format!("{p}%"),
                    (None, None) => "every remaining".into(),
                };
                if !b.pick.is_empty() {
                    let pick: Vec<String> =
                        b.pick.iter().map(|(k, v)| format!("{k}={v}")).collect();
                    size.push_str(&format!(" with {}", pick.join(", ")));
                }
                size
            })
            .collect(),
    };
    let total = spec.to_policy().total_batches() as usize;
    while sizes.len() < total {
        sizes.push("the rest".into());
    }
    let (current, complete) = match rollout {
        Some(r) => (r.current_batch, r.phase == RolloutPhase::Complete),
        None => (1, false),
    };
    sizes
        .into_iter()
        .enumerate()
        .map(|(i, size)| {
            let number = u32::try_from(i + 1).unwrap_or(u32::MAX);
            let state = if complete || number < current {
                WaveState::Done
            } else if number == current {
                WaveState::Active
            } else {
                WaveState::Waiting
            };
            Wave {
                number,
                size,
                state,
            }
        })
        .collect()
}

#[async_trait]
impl FleetService for RealFleetService {
    async fn overview(&self) -> ServiceResult<Overview> {
        self.ready()?;
        let deployments = self.list_deployments().await?;
        let liveness = self.liveness();
        let mut overview = self.read().overview(&liveness);
        overview.deployments_total = deployments.len();
        overview.attention = deployments
            .into_iter()
            .filter(|d| !d.attention.is_empty())
            .collect();
        Ok(overview)
    }

    async fn list_devices(&self, query: &DeviceQuery) -> ServiceResult<DevicePage> {
        self.ready()?;
        let liveness = self.liveness();
        Ok(self.read().list(query, &liveness))
    }

    async fn device(&self, id: &DeviceId) -> ServiceResult<DeviceDetail> {
        self.ready()?;
        let liveness = self.liveness();
        let view = self.read();
        let info = view.info(id).ok_or_else(|| ServiceError::no_device(id))?;
        let services_of = |name: &DeploymentName| -> Vec<String> {
            self.deployments
                .state()
                .iter()
                .find(|d| d.metadata.name.as_deref() == Some(name.as_str()))
                .map(|d| {
                    services(&d.spec.score)
                        .iter()
                        .map(|s| s.name.clone())
                        .collect()
                })
                .unwrap_or_default()
        };
        let deployments = view
            .states(id)
            .into_iter()
            .flat_map(BTreeMap::iter)
            .filter(|(_, s)| s.phase != Phase::Removed)
            .map(|(name, s)| DeviceDeployment {
                deployment: name.clone(),
                phase: s.phase,
                last_error: s.last_error.clone(),
                last_change: Some(s.last_change),
                services: services_of(name),
            })
            .collect();
        Ok(DeviceDetail {
            summary: view.summary(info, &liveness),
            inventory: info.inventory.clone(),
            deployments,
        })
    }

    async fn list_deployments(&self) -> ServiceResult<Vec<DeploymentSummary>> {
        let mut list: Vec<DeploymentSummary> = self
            .deployments
            .state()
            .iter()
            .map(|d| self.deployment_summary(d))
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(list)
    }

    async fn deployment(&self, id: &DeploymentRef) -> ServiceResult<DeploymentDetail> {
        self.ready()?;
        let d = self
            .deployments
            .get(&ObjectRef::new(&id.name).within(&id.namespace))
            .ok_or_else(|| ServiceError::NotFound {
                what: format!("deployment {}/{}", id.namespace, id.name),
            })?;
        let summary = self.deployment_summary(&d);
        let waves = waves(&d, summary.rollout.as_ref());
        let target = summary.rollout.as_ref().map(|r| r.revision.clone());
        let selector = d.spec.target_selector.to_index();
        let name: Option<DeploymentName> = id.name.parse().ok();
        let liveness = self.liveness();
        let view = self.read();
        let mut devices = Vec::new();
        for info in view.devices() {
            let state = name.as_ref().and_then(|n| {
                view.states(&info.device_id)
                    .and_then(|s| s.get(n))
                    .filter(|s| s.phase != Phase::Removed)
            });
            let matched = selector.matches(&info.labels)
                && !liveness.blacklisted.contains(info.device_id.as_str());
            if !matched && state.is_none() {
                continue;
            }
            devices.push(DeploymentDevice {
                device: info.device_id.clone(),
                phase: state.map(|s| s.phase),
                on_target: state
                    .and_then(|s| s.payload_hash.as_ref())
                    .zip(target.as_ref())
                    .is_some_and(|(hash, target)| hash.to_string() == *target),
                last_error: state.and_then(|s| s.last_error.clone()),
                last_change: state.map(|s| s.last_change),
            });
            if devices.len() >= DeviceQuery::MAX_PER_PAGE {
                break;
            }
        }
        Ok(DeploymentDetail {
            summary,
            waves,
            devices,
        })
    }

    async fn set_blacklisted(
        &self,
        id: &DeviceId,
        blacklisted: bool,
    ) -> ServiceResult<DeviceSummary> {
        self.ready()?;
        let api: Api<Device> = Api::all(self.client.clone());
        let value = if blacklisted {
            json!("true")
        } else {
            json!(null)
        };
        let patch = json!({ "metadata": { "annotations": { BLACKLIST_ANNOTATION: value } } });
        api.patch(
            id.as_str(),
            &PatchParams::apply(FIELD_MANAGER),
            &Patch::Merge(patch),
        )
        .await
        .map_err(|e| match e {
            kube::Error::Api(s) if s.code == 404 => ServiceError::NotFound {
                what: format!(
                    "Device resource {id} (the operator creates it from device-info unless it runs with --no-device-resources)"
                ),
            },
            source => ServiceError::Kube {
                context: format!("annotating Device {id}"),
                source,
            },
        })?;
        let liveness = self.liveness();
        let view = self.read();
        let info = view.info(id).ok_or_else(|| ServiceError::no_device(id))?;
        let mut summary = view.summary(info, &liveness);
        // The reflector may not have seen our own write yet.
        summary.blacklisted = blacklisted;
        Ok(summary)
    }

    async fn run_command(&self, id: &DeviceId, command: &str) -> ServiceResult<CommandOutput> {
        let request = ExecRequest::new(command);
        request
            .validate()
            .map_err(|e| ServiceError::BadRequest(e.message))?;
        self.exec(id, request).await
    }

    async fn tail_logs(
        &self,
        id: &DeviceId,
        deployment: &DeploymentName,
        lines: u64,
    ) -> ServiceResult<Vec<ServiceLogs>> {
        let mut request = LogsRequest::new(deployment.clone());
        request.tail_lines = Some(lines);
        Ok(self.commands.logs(id, &request).await?.services)
    }

    async fn stream_logs(
        &self,
        id: &DeviceId,
        deployment: &DeploymentName,
    ) -> ServiceResult<LogStream> {
        Ok(bridge::stream_logs(self.commands.clone(), id.clone(), deployment.clone()).await?)
    }

    async fn open_shell(&self, id: &DeviceId, cols: u16, rows: u16) -> ServiceResult<ShellSession> {
        Ok(bridge::open_shell(self.commands.clone(), id.clone(), cols, rows).await?)
    }

    async fn audit(&self, entry: super::AuditEntry) {
        if let Err(e) = self.audit.record(&entry).await {
            tracing::warn!(device = %entry.device, action = entry.action.reason(), error = %e, "could not publish the audit Event (the log line above is the record)");
        }
    }
}

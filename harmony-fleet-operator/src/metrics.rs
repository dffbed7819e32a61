//! Prometheus metrics of the operator (`/metrics`, OpenMetrics text).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Label of reconcile metrics: what triggered the work.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    /// `deployment`, `device-info`, `device-state`, `heartbeat`, `tick`.
    pub trigger: &'static str,
}

/// Label of KV write metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KvLabels {
    /// `put` or `delete`.
    pub op: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Label of status patch metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PatchLabels {
    /// `deployment` or `device`.
    pub kind: &'static str,
    /// `ok` or `error`.
    pub result: &'static str,
}

/// Label of the error counter: what failed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// `kv_write`, `kv_delete`, `kv_watch`, `kube_watch`, `notice`, `status_patch`,
    /// `device_apply`, `event`, `finalizer`, `blacklist`, `task`, or an [`crate::Error::kind`].
    pub kind: &'static str,
}

/// Every metric the operator exports. Cheap to clone (shared counters).
#[derive(Clone, Debug)]
pub struct Metrics {
    registry: Arc<Registry>,
    /// Events handled, by trigger.
    pub reconciles: Family<TriggerLabels, Counter>,
    /// Time spent handling one event, by trigger.
    pub reconcile_duration: Family<TriggerLabels, Histogram>,
    /// `desired-state` writes and deletes.
    pub kv_writes: Family<KvLabels, Counter>,
    /// Writes skipped because KV already held the same bytes.
    pub kv_writes_skipped: Counter,
    /// Change notices published to devices (`desired-notify.<device>`).
    pub notices_sent: Counter,
    /// `device-state` keys removed because their deployment is not assigned to the device.
    pub stray_reports: Counter,
    /// Devices blacklisted by the operator for writing too many stray keys.
    pub devices_flooding: Counter,
    /// Status patches and Device applies.
    pub status_patches: Family<PatchLabels, Counter>,
    /// Devices whose last heartbeat is within the timeout.
    pub devices_online: Gauge,
    /// Devices known from `device-info`.
    pub devices_known: Gauge,
    /// Deployments owned by this operator.
    pub deployments: Gauge,
    /// Errors met (each is also logged), by kind.
    pub errors: Family<ErrorLabels, Counter>,
    /// 1 while this replica holds the leader Lease (or runs without election), else 0.
    pub leader: Gauge,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("fleet_operator");
        let reconciles = Family::<TriggerLabels, Counter>::default();
        let reconcile_duration =
            Family::<TriggerLabels, Histogram>::new_with_constructor(|| -> Histogram {
                Histogram::new(exponential_buckets(0.000_1, 4.0, 10))
            });
        let kv_writes = Family::<KvLabels, Counter>::default();
        let kv_writes_skipped = Counter::default();
        let notices_sent = Counter::default();
        let stray_reports = Counter::default();
        let devices_flooding = Counter::default();
        let status_patches = Family::<PatchLabels, Counter>::default();
        let devices_online = Gauge::default();
        let devices_known = Gauge::default();
        let deployments = Gauge::default();
        let errors = Family::<ErrorLabels, Counter>::default();
        let leader = Gauge::default();
        registry.register(
            "reconciles",
            "Events handled by the reconcile loop",
            reconciles.clone(),
        );
        registry.register(
            "reconcile_duration_seconds",
            "Time to handle one event, including its KV writes",
            reconcile_duration.clone(),
        );
        registry.register(
            "kv_writes",
            "desired-state puts and deletes",
            kv_writes.clone(),
        );
        registry.register(
            "kv_writes_skipped",
            "desired-state writes skipped because the key already held the same bytes",
            kv_writes_skipped.clone(),
        );
        registry.register(
            "notices_sent",
            "Change notices published to devices after their desired-state index changed",
            notices_sent.clone(),
        );
        registry.register(
            "stray_reports",
            "device-state keys written for deployments not assigned to their device (removed)",
            stray_reports.clone(),
        );
        registry.register(
            "devices_flooding",
            "Devices blacklisted for writing more stray device-state keys than the limit",
            devices_flooding.clone(),
        );
        registry.register(
            "status_patches",
            "Deployment status patches and Device applies",
            status_patches.clone(),
        );
        registry.register(
            "devices_online",
            "Devices with a heartbeat within the timeout",
            devices_online.clone(),
        );
        registry.register(
            "devices",
            "Devices known from device-info",
            devices_known.clone(),
        );
        registry.register("deployments", "Deployments reconciled", deployments.clone());
        registry.register(
            "errors",
            "Errors met by the operator (each is also logged), by kind",
            errors.clone(),
        );
        registry.register(
            "leader",
            "1 while this replica writes (holds the leader Lease, or runs without election)",
            leader.clone(),
        );
        Self {
            registry: Arc::new(registry),
            reconciles,
            reconcile_duration,
            kv_writes,
            kv_writes_skipped,
            notices_sent,
            stray_reports,
            devices_flooding,
            status_patches,
            devices_online,
            devices_known,
            deployments,
            errors,
            leader,
        }
    }

    /// Counts one error of `kind` (see [`ErrorLabels`]).
    pub fn error(&self, kind: &'static str) {
        self.errors.get_or_create(&ErrorLabels { kind }).inc();
    }

    /// Records one handled event.
    pub fn observe_reconcile(&self, trigger: &'static str, took: Duration) {
        let labels = TriggerLabels { trigger };
        self.reconciles.get_or_create(&labels).inc();
        self.reconcile_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// Records one KV write.
    pub fn kv_write(&self, op: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.kv_writes.get_or_create(&KvLabels { op, result }).inc();
    }

    /// Records one status patch.
    pub fn status_patch(&self, kind: &'static str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.status_patches
            .get_or_create(&PatchLabels { kind, result })
            .inc();
    }

    /// Sum of successful KV writes and deletes (for tests and the bench).
    pub fn kv_writes_ok(&self) -> u64 {
        ["put", "delete"]
            .iter()
            .map(|op| {
                self.kv_writes
                    .get_or_create(&KvLabels { op, result: "ok" })
                    .get()
            })
            .sum()
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

//! The agent's Prometheus metrics, the local endpoint that serves them (`[metrics] listen`)
//! and a file for node_exporter's textfile collector (`[metrics] textfile`); both off by
//! default.
//!
//! Hand-written text exposition (format 0.0.4) over atomics: the agent runs on small devices
//! and stays dependency-light (adr/0023). Names follow the operator's (`fleet_operator_*`):
//! `fleet_agent_` prefix, `_total` counters, `_seconds` durations.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use harmony_fleet_contracts::state::Phase;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

/// Upper bounds (seconds) of the reconcile duration buckets: a no-op check takes milliseconds,
/// a pull or a graceful stop minutes.
const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0,
];

/// Phases a reconcile can end in, in exposition order.
const PHASES: [(Phase, &str); 4] = [
    (Phase::Running, "running"),
    (Phase::Pending, "pending"),
    (Phase::Failed, "failed"),
    (Phase::Removed, "removed"),
];

/// How long one scrape may take to send its request.
const REQUEST_DEADLINE: Duration = Duration::from_secs(5);
/// Largest request head read; the rest is ignored.
const MAX_REQUEST: usize = 8 * 1024;

/// A queue whose depth is read at scrape time.
type DepthProbe = Box<dyn Fn() -> u64 + Send + Sync>;

/// Every metric the agent exports. Cheap to clone (shared counters).
#[derive(Clone, Default)]
pub struct Metrics {
    inner: Arc<Inner>,
}

#[derive(Default)]
struct Inner {
    reconciles: [AtomicU64; PHASES.len()],
    duration_buckets: [AtomicU64; DURATION_BUCKETS.len()],
    duration_count: AtomicU64,
    duration_sum_micros: AtomicU64,
    container_restarts: AtomicU64,
    nats_reconnects: AtomicU64,
    state_backlog: AtomicU64,
    probes: Mutex<Vec<(&'static str, DepthProbe)>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Fresh metrics, all zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// One reconcile of one deployment that ended in `phase` after `took`.
    pub fn observe_reconcile(&self, phase: Phase, took: Duration) {
        if let Some(i) = PHASES.iter().position(|(p, _)| *p == phase) {
            self.inner.reconciles[i].fetch_add(1, Ordering::Relaxed);
        }
        let seconds = took.as_secs_f64();
        // Stored per bucket (not cumulative); summed when rendered.
        if let Some(i) = DURATION_BUCKETS.iter().position(|le| seconds <= *le) {
            self.inner.duration_buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.inner.duration_count.fetch_add(1, Ordering::Relaxed);
        let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
        self.inner
            .duration_sum_micros
            .fetch_add(micros, Ordering::Relaxed);
    }

    /// `count` containers of the current revision started again by the agent.
    pub fn container_restarts(&self, count: usize) {
        let count = u64::try_from(count).unwrap_or(u64::MAX);
        self.inner
            .container_restarts
            .fetch_add(count, Ordering::Relaxed);
    }

    /// The NATS client connected again after losing its connection.
    pub fn nats_reconnect(&self) {
        self.inner.nats_reconnects.fetch_add(1, Ordering::Relaxed);
    }

    /// Deployment state reports not yet written to NATS.
    pub fn set_state_backlog(&self, depth: usize) {
        let depth = u64::try_from(depth).unwrap_or(u64::MAX);
        self.inner.state_backlog.store(depth, Ordering::Relaxed);
    }

    /// Report `queue`'s depth as `depth()` reads it at each scrape.
    pub fn probe_queue(
        &self,
        queue: &'static str,
        depth: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        if let Ok(mut probes) = self.inner.probes.lock() {
            probes.push((queue, Box::new(depth)));
        }
    }

    /// Reconciles so far that ended in `phase` (for tests).
    pub fn reconciles(&self, phase: Phase) -> u64 {
        PHASES
            .iter()
            .position(|(p, _)| *p == phase)
            .map_or(0, |i| self.inner.reconciles[i].load(Ordering::Relaxed))
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn encode(&self) -> String {
        let inner = &self.inner;
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        header(
            &mut out,
            "fleet_agent_reconciles_total",
            "counter",
            "Reconciles of one deployment (container checks and changes), by the phase they ended in",
        );
        for (i, (_, name)) in PHASES.iter().enumerate() {
            let _ = writeln!(
                out,
                "fleet_agent_reconciles_total{{phase=\"{name}\"}} {}",
                load(&inner.reconciles[i])
            );
        }
        header(
            &mut out,
            "fleet_agent_reconcile_duration_seconds",
            "histogram",
            "Time one reconcile of one deployment took, pulls and graceful stops included",
        );
        let mut cumulative = 0;
        for (i, le) in DURATION_BUCKETS.iter().enumerate() {
            cumulative += load(&inner.duration_buckets[i]);
            let _ = writeln!(
                out,
                "fleet_agent_reconcile_duration_seconds_bucket{{le=\"{le}\"}} {cumulative}"
            );
        }
        let count = load(&inner.duration_count);
        let _ = writeln!(
            out,
            "fleet_agent_reconcile_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        // Micro-seconds to seconds; precision beyond f64's is irrelevant here.
        #[allow(clippy::cast_precision_loss)]
        let sum = load(&inner.duration_sum_micros) as f64 / 1e6;
        let _ = writeln!(out, "fleet_agent_reconcile_duration_seconds_sum {sum}");
        let _ = writeln!(out, "fleet_agent_reconcile_duration_seconds_count {count}");
        header(
            &mut out,
            "fleet_agent_container_restarts_total",
            "counter",
            "Containers of the current revision the agent started again (found exited or never started)",
        );
        let _ = writeln!(
            out,
            "fleet_agent_container_restarts_total {}",
            load(&inner.container_restarts)
        );
        header(
            &mut out,
            "fleet_agent_nats_reconnects_total",
            "counter",
            "Connections to NATS made again after one was lost",
        );
        let _ = writeln!(
            out,
            "fleet_agent_nats_reconnects_total {}",
            load(&inner.nats_reconnects)
        );
        header(
            &mut out,
            "fleet_agent_queue_depth",
            "gauge",
            "Items waiting in the agent's internal queues",
        );
        let _ = writeln!(
            out,
            "fleet_agent_queue_depth{{queue=\"state-reports\"}} {}",
            load(&inner.state_backlog)
        );
        if let Ok(probes) = inner.probes.lock() {
            for (queue, depth) in probes.iter() {
                let _ = writeln!(
                    out,
                    "fleet_agent_queue_depth{{queue=\"{queue}\"}} {}",
                    depth()
                );
            }
        }
        out
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// Why the metrics endpoint cannot serve.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// The address cannot be bound.
    #[error(
        "cannot listen on {address} for metrics: {source}; choose a free local address in \
         [metrics] listen, or remove it to turn metrics off"
    )]
    Bind {
        /// `[metrics] listen`.
        address: SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Writes the exposition to `path` for node_exporter's textfile collector: a temporary file
/// beside it (not `*.prom`, so never read half-written), then a rename.
pub fn write_textfile(path: &Path, metrics: &Metrics) -> std::io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, metrics.encode())?;
    std::fs::rename(&tmp, path)
}

/// Rewrites `path` every `interval` until `shutdown`. A failed write is logged (naming
/// `[metrics] textfile`) and tried again at the next interval: metrics never stop the agent.
pub async fn textfile_loop(
    path: PathBuf,
    interval: Duration,
    metrics: Metrics,
    shutdown: CancellationToken,
) {
    tracing::info!(path = %path.display(), every_secs = interval.as_secs(), "writing metrics for node_exporter");
    let mut failing = false;
    loop {
        let written = {
            let (path, metrics) = (path.clone(), metrics.clone());
            tokio::task::spawn_blocking(move || write_textfile(&path, &metrics)).await
        };
        match written {
            Ok(Ok(())) => failing = false,
            Ok(Err(err)) if !failing => {
                failing = true;
                tracing::error!(path = %path.display(), error = %err, "cannot write [metrics] textfile; does its directory exist and may the agent write there?");
            }
            Ok(Err(_)) => {}
            Err(err) => tracing::error!(error = %err, "writing the metrics textfile panicked"),
        }
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}

/// Bind the metrics endpoint.
pub async fn bind(address: SocketAddr) -> Result<TcpListener, MetricsError> {
    TcpListener::bind(address)
        .await
        .map_err(|source| MetricsError::Bind { address, source })
}

/// Serve `GET /metrics` on `listener` until `shutdown`; anything else is a 404.
pub async fn serve(listener: TcpListener, metrics: Metrics, shutdown: CancellationToken) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!(%address, "serving metrics on /metrics");
    }
    loop {
        let accepted = tokio::select! {
            () = shutdown.cancelled() => return,
            accepted = listener.accept() => accepted,
        };
        match accepted {
            Ok((stream, _)) => {
                let metrics = metrics.clone();
                let shutdown = shutdown.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        () = shutdown.cancelled() => {}
                        () = answer(stream, &metrics) => {}
                    }
                });
            }
            Err(err) => tracing::warn!(error = %err, "metrics endpoint: accept failed"),
        }
    }
}

/// One request, one response, then the connection is closed.
async fn answer(mut stream: TcpStream, metrics: &Metrics) {
    let mut head = Vec::with_capacity(512);
    let read = tokio::time::timeout(REQUEST_DEADLINE, async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_REQUEST {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    if read.is_err() {
        return;
    }
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next(), parts.next());
    let path = path.map(|p| p.split('?').next().unwrap_or(p));
    let (status, content_type, body) = match (method, path) {
        (Some("GET"), Some("/metrics")) => (
            "200 OK",
            "text/plain; version=0.0.4; charset=utf-8",
            metrics.encode(),
        ),
        _ => (
            "404 Not Found",
            "text/plain; charset=utf-8",
            "only GET /metrics is served here\n".to_owned(),
        ),
    };
    let response = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(response.as_bytes()).await;
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_textfile_is_replaced_whole_and_no_temporary_is_left() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("fleet_agent.prom");
        let metrics = Metrics::new();
        write_textfile(&path, &metrics).expect("first write");
        metrics.nats_reconnect();
        write_textfile(&path, &metrics).expect("second write");
        let text = std::fs::read_to_string(&path).expect("readable");
        assert!(
            text.contains("fleet_agent_nats_reconnects_total 1"),
            "{text}"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .expect("listable")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, ["fleet_agent.prom"], "only the .prom file");
        // A missing directory is an error (logged by the loop), not a panic.
        assert!(write_textfile(&dir.path().join("nope/x.prom"), &metrics).is_err());
    }

    #[test]
    fn exposition_names_every_metric_and_counts_cumulatively() {
        let metrics = Metrics::new();
        metrics.observe_reconcile(Phase::Running, Duration::from_millis(3));
        metrics.observe_reconcile(Phase::Failed, Duration::from_millis(300));
        metrics.container_restarts(2);
        metrics.nats_reconnect();
        metrics.set_state_backlog(4);
        metrics.probe_queue("watch-events", || 7);
        let text = metrics.encode();
        for line in [
            "fleet_agent_reconciles_total{phase=\"running\"} 1",
            "fleet_agent_reconciles_total{phase=\"failed\"} 1",
            "fleet_agent_reconciles_total{phase=\"removed\"} 0",
            "fleet_agent_reconcile_duration_seconds_bucket{le=\"0.005\"} 1",
            "fleet_agent_reconcile_duration_seconds_bucket{le=\"0.25\"} 1",
            "fleet_agent_reconcile_duration_seconds_bucket{le=\"0.5\"} 2",
            "fleet_agent_reconcile_duration_seconds_bucket{le=\"+Inf\"} 2",
            "fleet_agent_reconcile_duration_seconds_sum 0.303",
            "fleet_agent_reconcile_duration_seconds_count 2",
            "fleet_agent_container_restarts_total 2",
            "fleet_agent_nats_reconnects_total 1",
            "fleet_agent_queue_depth{queue=\"state-reports\"} 4",
            "fleet_agent_queue_depth{queue=\"watch-events\"} 7",
            "# TYPE fleet_agent_reconcile_duration_seconds histogram",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
    }
}

//! The operator under test, run as a child process so that its CPU seconds and memory are its
//! own: `fleet-bench operator …` runs `harmony_fleet_operator::run` (exactly what the
//! `harmony-fleet-operator` binary's 20-line `main` does) with the operator's own flags.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use harmony::local::probe;
use harmony::local::{ProcessSpec, SupervisedProcess};

use crate::error::{Error, Result};
use crate::procstat::{self, ProcSample};

/// How to start the operator.
#[derive(Clone, Debug)]
pub struct OperatorSpec {
    /// The executable with the `operator` subcommand (`fleet-bench`).
    pub exe: PathBuf,
    /// Kubeconfig of the control plane.
    pub kubeconfig: PathBuf,
    /// NATS URL.
    pub nats_url: String,
    /// Namespace the operator is scoped to.
    pub namespace: String,
    /// Log file.
    pub log_file: PathBuf,
    /// Whether it writes `Device` resources.
    pub device_resources: bool,
    /// More flags (e.g. the identity service's).
    pub extra_args: Vec<String>,
}

/// A running operator process; stopped when dropped.
#[derive(Debug)]
pub struct OperatorProcess {
    process: SupervisedProcess,
    addr: SocketAddr,
    started: Instant,
}

impl OperatorProcess {
    /// Starts the operator on a free port; does not wait.
    pub fn spawn(spec: &OperatorSpec) -> Result<Self> {
        let addr = SocketAddr::from(([127, 0, 0, 1], harmony::local::ports::free_port()?));
        // A profiler may run the operator: `FLEET_BENCH_OPERATOR_WRAPPER="heaptrack -o /tmp/op"`
        // (or `perf record -g -o /tmp/op.perf --`). Its CPU and memory samples are then the
        // wrapper's process, so read the profiler's numbers, not the bench's, in such a run.
        let wrapper: Vec<String> = std::env::var("FLEET_BENCH_OPERATOR_WRAPPER")
            .map(|w| w.split_whitespace().map(str::to_owned).collect())
            .unwrap_or_default();
        let mut ps = match wrapper.split_first() {
            Some((program, args)) => ProcessSpec::new(
                "harmony-fleet-operator (bench, profiled)",
                program,
                &spec.log_file,
            )
            .args(args.iter().cloned())
            .arg(&spec.exe),
            None => ProcessSpec::new("harmony-fleet-operator (bench)", &spec.exe, &spec.log_file),
        };
        ps = ps
            .args([
                "operator",
                "--nats-url",
                &spec.nats_url,
                "--namespace",
                &spec.namespace,
                "--listen",
                &addr.to_string(),
            ])
            .env("KUBECONFIG", &spec.kubeconfig)
            .env(
                "RUST_LOG",
                std::env::var("FLEET_BENCH_OPERATOR_LOG").unwrap_or_else(|_| "warn".to_owned()),
            )
            .stop_timeout(Duration::from_secs(10));
        if !spec.device_resources {
            ps = ps.arg("--no-device-resources");
        }
        ps = ps.args(spec.extra_args.iter().cloned());
        let process = SupervisedProcess::spawn(ps)?;
        Ok(Self {
            process,
            addr,
            started: Instant::now(),
        })
    }

    /// Waits until `/readyz` says `Converged`; returns the time since the spawn.
    pub async fn wait_converged(&mut self, deadline: Duration) -> Result<Duration> {
        let until = Instant::now() + deadline;
        loop {
            if let Ok(r) = probe::http_get(self.addr, "/readyz", Duration::from_secs(2)).await
                && r.status == 200
            {
                return Ok(self.started.elapsed());
            }
            if !self.process.is_running() {
                return Err(Error::Config(format!(
                    "the operator exited before converging; log {}:\n{}",
                    self.process.log_file().display(),
                    self.process.log_tail(20)
                )));
            }
            if Instant::now() > until {
                return Err(Error::Timeout {
                    what: "the operator's /readyz to say Converged".into(),
                    after: deadline,
                });
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// CPU seconds and memory so far.
    pub fn sample(&self) -> Result<ProcSample> {
        procstat::sample(self.process.pid())
    }

    /// `desired-state` key and index writes (puts and deletes, successful) this process made,
    /// from `/metrics`; not its checkpoint (adr/0051).
    pub async fn kv_writes(&self) -> Result<u64> {
        let body = scrape(self.addr).await?;
        Ok(key_writes(&body))
    }

    /// Successful `Device` writes (one device's spec and/or status) this process made.
    pub async fn device_writes(&self) -> Result<u64> {
        device_writes(self.addr).await
    }

    /// Where its HTTP endpoints listen.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops it (SIGTERM, then SIGKILL).
    pub async fn stop(&mut self) {
        self.process.stop().await;
    }
}

async fn scrape(addr: SocketAddr) -> Result<String> {
    let r = probe::http_get(addr, "/metrics", Duration::from_secs(5))
        .await
        .map_err(|e| Error::Config(format!("scraping the operator at {addr}: {e}")))?;
    Ok(r.body)
}

async fn device_writes(addr: SocketAddr) -> Result<u64> {
    let body = scrape(addr).await?;
    Ok(sum_metric(
        &body,
        "fleet_operator_status_patches_total",
        "kind=\"device\",result=\"ok\"",
    ))
}

/// Time from now until the operator at `addr` has written `devices` `Device`s (polled every
/// 250 ms; runs until then, so give it a deadline).
pub async fn devices_written(addr: SocketAddr, devices: usize) -> Duration {
    let started = Instant::now();
    loop {
        if device_writes(addr).await.is_ok_and(|w| w >= devices as u64) {
            return started.elapsed();
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Successful `desired-state` puts and deletes in a `/metrics` body.
fn key_writes(body: &str) -> u64 {
    ["op=\"put\"", "op=\"delete\""]
        .iter()
        .map(|op| {
            let lines = body.lines().filter(|l| l.contains(op));
            lines
                .map(|l| sum_metric(l, "fleet_operator_kv_writes_total", "result=\"ok\""))
                .sum::<u64>()
        })
        .sum()
}

/// Sum of the samples of `name` whose labels contain `label` (OpenMetrics text).
pub fn sum_metric(text: &str, name: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l.contains(label))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_labelled_counters() {
        let text = "# TYPE fleet_operator_kv_writes counter\nfleet_operator_kv_writes_total{op=\"put\",result=\"ok\"} 12\nfleet_operator_kv_writes_total{op=\"delete\",result=\"ok\"} 3\nfleet_operator_kv_writes_total{op=\"put\",result=\"error\"} 5\n";
        assert_eq!(
            sum_metric(text, "fleet_operator_kv_writes_total", "result=\"ok\""),
            15
        );
        assert_eq!(sum_metric("", "x", "y"), 0);
        let with_checkpoint =
            format!("{text}fleet_operator_kv_writes_total{{op=\"checkpoint\",result=\"ok\"}} 1\n");
        assert_eq!(
            key_writes(&with_checkpoint),
            15,
            "the checkpoint is not a key"
        );
    }
}

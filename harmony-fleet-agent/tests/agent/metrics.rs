//! The agent's metrics endpoint (`[metrics] listen`) scraped over HTTP while the agent runs
//! against real nats-server and podman (#16 part 5).

use std::time::Duration;

use anyhow::{Context, Result};
use harmony_fleet_agent::{Agent, Config};
use harmony_fleet_contracts::payload::{PodmanV0, PullPolicy, Service};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::{Fleet, RunningAgent, SLOW};
use crate::support::{eventually, free_port};

/// GET `path` on `127.0.0.1:port`: the status line and the body, `None` when nothing answers.
pub(super) async fn get(port: u16, path: &str) -> Option<(String, String)> {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n");
    stream.write_all(request.as_bytes()).await.ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    Some((head.lines().next()?.to_owned(), body.to_owned()))
}

/// The value of the sample named exactly `sample` (name and labels) in an exposition.
pub(super) fn sample(text: &str, sample: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        l.strip_prefix(sample)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// Where [`start_with_metrics`] has the agent write its node_exporter textfile.
pub(super) fn textfile(fleet: &Fleet) -> std::path::PathBuf {
    fleet.data_dir.path().join("fleet_agent.prom")
}

/// The agent with `[metrics] listen` on a free port, and its textfile rewritten every second.
pub(super) fn start_with_metrics(fleet: &Fleet, port: u16) -> Result<RunningAgent> {
    fleet.config()?;
    let path = fleet.data_dir.path().join("agent.toml");
    let mut text = std::fs::read_to_string(&path)?;
    text.push_str(&format!(
        "\n[metrics]\nlisten = \"127.0.0.1:{port}\"\ntextfile = \"{}\"\ntextfile_interval_secs = 1\n",
        textfile(fleet).display()
    ));
    std::fs::write(&path, text)?;
    let config = Config::load(&path)?;
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(Agent::new(config).run(shutdown.clone()));
    Ok(RunningAgent {
        shutdown,
        handle: Some(handle),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_prometheus_text_and_counts_reconciles() -> Result<()> {
    let fleet = Fleet::start("dev-metrics").await?;
    let port = free_port();
    let agent = start_with_metrics(&fleet, port)?;

    let (status, before) = eventually("the metrics endpoint to answer", SLOW, || async {
        get(port, "/metrics").await
    })
    .await?;
    assert!(status.contains(" 200 "), "{status}");
    for name in [
        "# TYPE fleet_agent_reconciles_total counter",
        "# TYPE fleet_agent_reconcile_duration_seconds histogram",
        "# TYPE fleet_agent_container_restarts_total counter",
        "# TYPE fleet_agent_nats_reconnects_total counter",
        "# TYPE fleet_agent_queue_depth gauge",
    ] {
        assert!(
            before.lines().any(|l| l == name),
            "missing {name:?} in\n{before}"
        );
    }
    for present in [
        "fleet_agent_queue_depth{queue=\"watch-events\"}",
        "fleet_agent_queue_depth{queue=\"state-reports\"}",
        "fleet_agent_reconcile_duration_seconds_count",
    ] {
        assert!(
            sample(&before, present).is_some(),
            "no {present} in\n{before}"
        );
    }
    let running_before = sample(&before, "fleet_agent_reconciles_total{phase=\"running\"}")
        .context("the running reconciles sample")?;

    // A deployment that runs: its reconcile is counted and timed.
    let mut service = Service::new("sleeper", "localhost/fleet-demo:v1");
    service.command = vec!["/bin/sleep".into(), "1000000".into()];
    service.pull_policy = PullPolicy::Never;
    let mut payload = PodmanV0::new(vec![service]);
    payload.stop_policy.grace_seconds = 1;
    let hash = fleet.put("app", &payload).await?;
    fleet.wait_running("app", &hash).await?;
    let after = eventually("a running reconcile to be counted", SLOW, || async {
        let (_, body) = get(port, "/metrics").await?;
        let running = sample(&body, "fleet_agent_reconciles_total{phase=\"running\"}")?;
        (running > running_before).then_some(body)
    })
    .await?;
    let count = sample(&after, "fleet_agent_reconcile_duration_seconds_count")
        .context("the duration count")?;
    assert!(count >= 1.0, "{after}");
    let inf = sample(
        &after,
        "fleet_agent_reconcile_duration_seconds_bucket{le=\"+Inf\"}",
    );
    assert_eq!(inf, Some(count), "{after}");

    let (status, _) = get(port, "/other").await.context("a 404 for other paths")?;
    assert!(status.contains(" 404 "), "{status}");

    // The node_exporter textfile says the same, rewritten on its interval.
    let file = textfile(&fleet);
    eventually(
        "the textfile to count the running reconcile",
        SLOW,
        || async {
            let text = std::fs::read_to_string(&file).ok()?;
            let running = sample(&text, "fleet_agent_reconciles_total{phase=\"running\"}")?;
            (running > running_before && text.contains("# TYPE fleet_agent_queue_depth gauge"))
                .then_some(())
        },
    )
    .await?;
    agent.stop().await?;
    Ok(())
}

/// Off by default: without `[metrics]` the agent listens on nothing new.
#[test]
fn metrics_are_off_without_a_listen_address() -> Result<()> {
    let text = r#"
[agent]
device_id = "dev-1"
data_dir = "/tmp/unused"

[nats]
urls = ["nats://127.0.0.1:4222"]
"#;
    let config = Config::parse(text, std::path::Path::new("agent.toml"))?;
    assert_eq!(config.metrics.listen, None);
    assert_eq!(config.metrics.textfile, None);
    let not_prom = format!("{text}\n[metrics]\ntextfile = \"/var/lib/node-exporter/agent.txt\"\n");
    let err = Config::parse(&not_prom, std::path::Path::new("agent.toml"))
        .err()
        .context("a textfile node_exporter would not read is refused")?;
    assert!(err.to_string().contains("metrics.textfile"), "{err}");
    let bad = format!("{text}\n[metrics]\nlisten = \"localhost\"\n");
    let err = Config::parse(&bad, std::path::Path::new("agent.toml"))
        .err()
        .context("an address without a port is refused")?;
    assert!(err.to_string().contains("listen"), "{err}");
    Ok(())
}

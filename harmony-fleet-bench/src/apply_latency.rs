//! `fleet-bench apply-latency`: how close a change gets to podman itself. On the local stack
//! (the production Scores, one real agent on its own network namespace and podman storage),
//! each run applies a new `Deployment` of the demo web server and times
//!
//! * apply → the container answering HTTP at the device's address, and
//! * apply → the `Deployment`'s status saying it converged (every matched device succeeded,
//!   rollout `Complete`),
//!
//! side by side with a bare `podman run` of the same image, in the same storage and network
//! namespace, until it answers. Runs alternate (ours, podman, ours, …) so both see the same
//! machine; each container is removed before the next run.

use std::fmt::Write as _;
use std::path::Path;
use std::time::{Duration, Instant};

use harmony_fleet_agent::runtime::LABEL_DEPLOYMENT;
use harmony_fleet_contracts::DeviceId;
use harmony_fleet_deploy::agent::local as agent_local;
use harmony_fleet_deploy::nats::NatsReplicas;
use harmony_fleet_e2e::fleetdep;
use harmony_fleet_e2e::stack::{self, Stack, StackOptions};
use kube::Api;
use kube::api::DeleteParams;
use serde_json::json;

use crate::error::{Error, Result};
use crate::stats::Summary;

/// What to run.
#[derive(Debug, Clone)]
pub struct LatencyOptions {
    /// Runs of each side.
    pub runs: usize,
    /// Host port the demo server is published on (inside the device's namespace).
    pub port: u16,
}

/// Times of one side.
#[derive(Debug, Default, Clone)]
pub struct Samples {
    /// apply (or `podman run`) → answering.
    pub answering: Vec<Duration>,
    /// apply → status converged (ours only).
    pub status: Vec<Duration>,
}

const POLL: Duration = Duration::from_millis(5);
const DEADLINE: Duration = Duration::from_secs(60);
const TAG: &str = "v1";

fn failed(what: impl std::fmt::Display) -> Error {
    Error::Stack(what.to_string())
}

/// Runs the comparison; writes `apply-latency.csv` and `apply-latency.md` under `out`.
pub async fn run(options: &LatencyOptions, out: &Path) -> Result<String> {
    let stack = stack::shared(StackOptions {
        name: "bench-apply-latency",
        devices: 1,
        nats_replicas: NatsReplicas::One,
        walkthrough_labels: false,
        credential_lifetime_secs: None,
        dashboard: false,
    })
    .await;
    let device = stack.device(1).id.clone();
    let ns = stack.namespace().await.map_err(failed)?;
    let podman = agent_local::device_podman(&stack.state_dir, &device)
        .map_err(|e| failed(e.chain()))?
        .in_network_namespace(format!(
            "/run/netns/{}",
            agent_local::netns_name(&stack.state_dir, &device)
        ));
    podman
        .build_demo_image(TAG)
        .await
        .map_err(|e| failed(format!("building the demo image: {e}")))?;
    let (mut ours, mut bare) = (Samples::default(), Samples::default());
    for i in 0..options.runs {
        let (answering, status) =
            ours_once(stack, &podman, &ns.name, &device, options.port, i).await?;
        ours.answering.push(answering);
        ours.status.push(status);
        bare.answering
            .push(podman_once(stack, &podman, &device, options.port, i).await?);
        eprintln!(
            "run {}/{}: ours {} ms to answer, {} ms to status; podman {} ms",
            i + 1,
            options.runs,
            answering.as_millis(),
            status.as_millis(),
            bare.answering
                .last()
                .copied()
                .unwrap_or_default()
                .as_millis()
        );
    }
    let report = render(&ours, &bare, options);
    std::fs::create_dir_all(out).map_err(|e| failed(format!("creating {}: {e}", out.display())))?;
    let mut csv = String::from("run,ours_answering_ms,ours_status_ms,podman_answering_ms\n");
    for i in 0..options.runs {
        let _ = writeln!(
            csv,
            "{},{:.1},{:.1},{:.1}",
            i + 1,
            ms(ours.answering[i]),
            ms(ours.status[i]),
            ms(bare.answering[i])
        );
    }
    for (file, text) in [("apply-latency.csv", &csv), ("apply-latency.md", &report)] {
        std::fs::write(out.join(file), text).map_err(|e| failed(format!("writing {file}: {e}")))?;
    }
    Ok(report)
}

/// One apply of a new Deployment: ms to answering and to converged status; then removal.
async fn ours_once(
    stack: &Stack,
    podman: &harmony::local::podman::Podman,
    namespace: &str,
    device: &DeviceId,
    port: u16,
    run: usize,
) -> Result<(Duration, Duration)> {
    wait_silent(stack, device, port).await?;
    let name = format!("lat-{run}");
    let manifest = fleetdep::manifest(
        &name,
        namespace,
        json!({"matchLabels": {"site": "e2e"}}),
        fleetdep::demo_score(TAG, port, &[]),
        json!({}),
    );
    let started = Instant::now();
    let applied = fleetdep::apply_tracked(&stack.kube, &manifest)
        .await
        .map_err(failed)?;
    let answering = wait_answering(stack, device, port, started).await?;
    loop {
        if let Some(status) = fleetdep::status(&stack.kube, namespace, &name).await
            && fleetdep::not_converged(&status, &applied, 1).is_none()
        {
            break;
        }
        if started.elapsed() > DEADLINE {
            return Err(failed(format!(
                "{name} did not converge within {DEADLINE:?}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
    let status = started.elapsed();
    let api: Api<harmony_fleet_operator::crd::Deployment> =
        Api::namespaced(stack.kube.clone(), namespace);
    api.delete(&name, &DeleteParams::default())
        .await
        .map_err(|e| failed(format!("deleting {name}: {e}")))?;
    // Gone means gone: the resource (its finalizer waits for the keys) and every container
    // of it, so the next run does not queue behind this one's removal in podman.
    let removing = Instant::now();
    loop {
        let resource_gone = api
            .get_opt(&name)
            .await
            .map_err(|e| failed(format!("reading {name}: {e}")))?
            .is_none();
        let containers = podman
            .ps_by_label(LABEL_DEPLOYMENT, &name)
            .await
            .map_err(|e| failed(format!("podman ps: {e}")))?;
        if resource_gone && containers.is_empty() {
            break;
        }
        if removing.elapsed() > DEADLINE {
            return Err(failed(format!(
                "{name} was not removed within {DEADLINE:?}"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok((answering, status))
}

/// One bare `podman run` of the same image in the device's storage and namespace.
async fn podman_once(
    stack: &Stack,
    podman: &harmony::local::podman::Podman,
    device: &DeviceId,
    port: u16,
    run: usize,
) -> Result<Duration> {
    wait_silent(stack, device, port).await?;
    let name = format!("bench-bare-{run}");
    let image = format!("localhost/fleet-demo:{TAG}");
    let published = format!("{port}:8080");
    let started = Instant::now();
    podman
        .exec([
            "run", "-d", "--rm", "--name", &name, "-p", &published, &image,
        ])
        .await
        .map_err(|e| failed(format!("podman run: {e}")))?;
    let answering = wait_answering(stack, device, port, started).await?;
    podman
        .exec(["rm", "--force", "--time", "0", &name])
        .await
        .map_err(|e| failed(format!("podman rm: {e}")))?;
    Ok(answering)
}

/// Polls the device's address until the demo server answers with its tag.
async fn wait_answering(
    stack: &Stack,
    device: &DeviceId,
    port: u16,
    started: Instant,
) -> Result<Duration> {
    loop {
        if let Ok(body) = stack.http(device, port).await
            && body.contains(TAG)
        {
            return Ok(started.elapsed());
        }
        if started.elapsed() > DEADLINE {
            return Err(failed(format!(
                "nothing answered on port {port} of {device} within {DEADLINE:?}"
            )));
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until the previous run's container stopped answering (removed).
async fn wait_silent(stack: &Stack, device: &DeviceId, port: u16) -> Result<()> {
    let started = Instant::now();
    while stack.http(device, port).await.is_ok() {
        if started.elapsed() > DEADLINE {
            return Err(failed(format!(
                "port {port} of {device} still answers {DEADLINE:?} after the last run"
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn render(ours: &Samples, bare: &Samples, options: &LatencyOptions) -> String {
    let (a, s, p) = (
        Summary::of(&ours.answering),
        Summary::of(&ours.status),
        Summary::of(&bare.answering),
    );
    let mut out = format!(
        "| {} runs each, alternating | p50 ms | p99 ms | max ms |\n|---|---|---|---|\n",
        options.runs
    );
    for (label, v) in [
        ("`kubectl apply` → container answering", &a),
        ("`kubectl apply` → status converged", &s),
        ("bare `podman run` → container answering", &p),
    ] {
        let _ = writeln!(
            out,
            "| {label} | {:.0} | {:.0} | {:.0} |",
            ms(v.p50),
            ms(v.p99),
            ms(v.max)
        );
    }
    let ratio = |x: Duration| ms(x) / ms(p.p50).max(f64::EPSILON);
    let _ = writeln!(
        out,
        "\nOurs / podman at p50: answering {:.2}×, status {:.2}× (goal ≤ 2.5×).",
        ratio(a.p50),
        ratio(s.p50)
    );
    out
}

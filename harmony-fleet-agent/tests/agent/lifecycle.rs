//! The agent's own lifecycle on real servers: the `fleet-agent` binary stops promptly on
//! SIGTERM with its state saved and its workloads left running (#16 part 3).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use harmony_fleet_contracts::Phase;
use harmony_fleet_contracts::payload::{PodmanV0, PullPolicy, Service};

use super::{AgentProcess, Fleet};
use crate::support::eventually;

/// What a service manager is promised (issue #16 part 3: `systemctl stop` is fast).
const STOP_DEADLINE: Duration = Duration::from_secs(2);

/// A service that ignores SIGTERM, so a graceful stop of it lasts its whole grace period.
fn stubborn(tag: &str, grace_seconds: u32) -> PodmanV0 {
    let mut service = Service::new("app", format!("localhost/fleet-demo:{tag}"));
    service.command = vec!["/bin/sh".into(), "-c".into()];
    service.args = vec!["trap '' TERM; while true; do sleep 1; done".into()];
    service.pull_policy = PullPolicy::Never;
    let mut payload = PodmanV0::new(vec![service]);
    payload.stop_policy.grace_seconds = grace_seconds;
    payload
}

/// Starts the built `fleet-agent` binary on the fleet's config, logging to the data dir.
fn spawn_binary(fleet: &Fleet) -> Result<AgentProcess> {
    fleet.config()?;
    let binary = env!("CARGO_BIN_EXE_fleet-agent");
    let log = std::fs::File::create(fleet.data_dir.path().join("agent.log"))?;
    let child = std::process::Command::new(binary)
        .arg("--config")
        .arg(fleet.data_dir.path().join("agent.toml"))
        .env("RUST_LOG", "harmony_fleet_agent=info,fleet_agent=info")
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {binary}"))?;
    Ok(AgentProcess(child))
}

/// SIGTERM while a reconcile is in the middle of a 15 s graceful stop (a rollout replacing a
/// container that ignores SIGTERM): the binary exits successfully within 2 s, the state file
/// holds the revision being applied, the old container still runs, and the next start
/// finishes the rollout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_binary_within_two_seconds_with_state_saved() -> Result<()> {
    let fleet = Fleet::start("dev-sigterm").await?;
    let mut agent = spawn_binary(&fleet)?;
    let v1 = fleet.put("app", &stubborn("v1", 15)).await?;
    fleet.wait_running("app", &v1).await?;
    // The rollout to v2 must stop v1 first, which takes its full 15 s grace.
    let v2 = fleet.put("app", &stubborn("v2", 15)).await?;
    fleet
        .wait_state("app", "app Pending at v2 (the rollout acting)", |s| {
            s.phase == Phase::Pending && s.is_for(&v2)
        })
        .await?;

    let pid = nix::unistd::Pid::from_raw(i32::try_from(agent.0.id())?);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM)?;
    let signalled = Instant::now();
    let status = eventually("the agent to exit after SIGTERM", STOP_DEADLINE, || {
        let status = agent.0.try_wait().ok().flatten();
        async move { status }
    })
    .await
    .with_context(|| {
        let log =
            std::fs::read_to_string(fleet.data_dir.path().join("agent.log")).unwrap_or_default();
        format!("agent log:\n{log}")
    })?;
    let took = signalled.elapsed();
    assert!(status.success(), "agent exit status {status}");
    assert!(took <= STOP_DEADLINE, "stopped in {took:?}");

    // The state file holds the revision being applied (v2), so a restart resumes it.
    let state = std::fs::read_to_string(
        fleet
            .data_dir
            .path()
            .join(harmony_fleet_agent::store::STATE_FILE),
    )
    .context("the desired-state file after a clean stop")?;
    let state: serde_json::Value = serde_json::from_str(&state)?;
    let payload = state["deployments"]["app"]["payload"]
        .as_str()
        .context("app's payload in the state file")?;
    assert!(payload.contains("fleet-demo:v2"), "{payload}");

    // Stopping the agent never stops workloads: v1's process still runs (podman may show it
    // as "stopping": the stop the rollout began was abandoned, not completed).
    let containers = fleet.containers()?;
    let (id, _, _) = containers
        .iter()
        .find(|(_, name, state)| {
            name.starts_with("app.app.") && (state == "running" || state == "stopping")
        })
        .with_context(|| format!("v1 still there: {containers:?}"))?;
    let pid = fleet
        .podman
        .podman(&["inspect", "--format", "{{.State.Pid}}", id])?;
    let pid: u32 = pid.trim().parse().context("v1's pid")?;
    assert!(
        pid > 0 && std::path::Path::new(&format!("/proc/{pid}")).exists(),
        "v1's process {pid} is gone"
    );

    // Started again, the agent resumes the rollout from the saved state.
    let _agent = spawn_binary(&fleet)?;
    fleet.wait_running("app", &v2).await?;
    Ok(())
}

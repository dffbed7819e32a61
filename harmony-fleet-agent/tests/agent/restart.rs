//! Restart policies on real podman (#16 part 6): a container that exits is started again when
//! its policy says so (the same container: what it wrote in its own filesystem is still
//! there), and left exited, reported `Failed`, when the policy is `no`.

use anyhow::{Context, Result};
use harmony_fleet_contracts::Phase;
use harmony_fleet_contracts::payload::{PodmanV0, PullPolicy, RestartPolicy, Service};

use super::metrics::{get, sample, start_with_metrics};
use super::{Fleet, SLOW};
use crate::support::{eventually, free_port};

/// A service that exits with code 1 the first time it runs and keeps running once restarted.
/// Its marker is in the container's own filesystem, so only a restart of the same container
/// (not a new one) ever gets to run.
fn crashes_once(policy: RestartPolicy) -> PodmanV0 {
    let mut service = Service::new("job", "localhost/fleet-demo:v1");
    service.command = vec!["/bin/sh".into(), "-c".into()];
    service.args = vec![
        "if [ -e /tmp/ran-once ]; then exec sleep 1000000; fi; touch /tmp/ran-once; exit 1".into(),
    ];
    service.pull_policy = PullPolicy::Never;
    service.restart_policy = policy;
    let mut payload = PodmanV0::new(vec![service]);
    payload.stop_policy.grace_seconds = 1;
    payload
}

/// `(id, state, restart count, started at)` of the deployment's one service container.
fn inspect(fleet: &Fleet, deployment: &str) -> Result<(String, String, u64, String)> {
    let prefix = format!("{deployment}.job.");
    let containers = fleet.containers()?;
    let matching: Vec<_> = containers
        .iter()
        .filter(|(_, name, _)| name.starts_with(&prefix))
        .collect();
    anyhow::ensure!(
        matching.len() == 1,
        "one container of {deployment}: {containers:?}"
    );
    let id = matching[0].0.clone();
    let out = fleet.podman.podman(&[
        "inspect",
        "--format",
        "{{.State.Status}}|{{.RestartCount}}|{{.State.StartedAt}}",
        &id,
    ])?;
    let mut fields = out.trim().splitn(3, '|');
    let state = fields.next().unwrap_or_default().to_owned();
    let restarts = fields
        .next()
        .unwrap_or_default()
        .parse()
        .context("RestartCount")?;
    let started = fields.next().unwrap_or_default().to_owned();
    Ok((id, state, restarts, started))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exited_containers_restart_by_policy_on_real_podman() -> Result<()> {
    let fleet = Fleet::start("dev-restart").await?;
    let port = free_port();
    let agent = start_with_metrics(&fleet, port)?;

    // always and on-failure: the crashed container is started again and then runs.
    for (deployment, policy) in [
        ("always", RestartPolicy::Always),
        ("onfailure", RestartPolicy::OnFailure),
    ] {
        let hash = fleet.put(deployment, &crashes_once(policy)).await?;
        let running = fleet.wait_running(deployment, &hash).await?;
        let (id, state, restarts, _) = inspect(&fleet, deployment)?;
        assert_eq!(state, "running", "{deployment}");
        eprintln!("{deployment}: running again, podman RestartCount {restarts}");
        assert_eq!(
            running.container_ids.get("job"),
            Some(&id),
            "{deployment}: the reported container is the restarted one"
        );
        // It only runs if this very container ran (and exited) before.
        fleet
            .podman
            .podman(&["exec", &id, "ls", "/tmp/ran-once"])
            .with_context(|| format!("{deployment}: the container was restarted, not replaced"))?;
    }

    // no: the container stays exited and the deployment is Failed with the exit code.
    let hash = fleet
        .put("never", &crashes_once(RestartPolicy::Never))
        .await?;
    let failed = fleet
        .wait_state("never", "never Failed", |s| {
            s.phase == Phase::Failed && s.is_for(&hash)
        })
        .await?;
    let error = failed.last_error.clone().unwrap_or_default();
    assert!(error.contains("exited with code 1"), "{error}");
    let (id, state, restarts, started) = inspect(&fleet, "never")?;
    assert_eq!(state, "exited");
    // Two more reconciles of it (the agent retries a failed deployment) leave it alone.
    let failed_reconciles =
        |body: &str| sample(body, "fleet_agent_reconciles_total{phase=\"failed\"}");
    let (_, body) = get(port, "/metrics").await.context("metrics")?;
    let seen = failed_reconciles(&body).context("failed reconciles")?;
    eventually(
        "two more reconciles of the failed deployment",
        SLOW,
        || async {
            let (_, body) = get(port, "/metrics").await?;
            (failed_reconciles(&body)? >= seen + 2.0).then_some(())
        },
    )
    .await?;
    let after = inspect(&fleet, "never")?;
    assert_eq!(
        after,
        (id, "exited".to_owned(), restarts, started),
        "policy no: not restarted"
    );
    assert_eq!(restarts, 0);
    agent.stop().await?;
    Ok(())
}

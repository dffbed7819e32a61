//! `FleetAgentScore` with the Host target against a real host: a Debian system container
//! booting systemd with sshd and podman, on its own network-namespace address, and a real local
//! fleet (control plane, nats-server, operator). Install over SSH with the host key pinned, a
//! second run that changes nothing, a workload, `systemctl stop` timed, a reboot while NATS is
//! down (systemd starts the agent, the workload comes back from disk, reports catch up when NATS
//! returns), a host of another architecture refused, and uninstall.

#[path = "support/test_host.rs"]
mod test_host;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures::StreamExt as _;
use harmony::capability::ProcessSupervisor;
use harmony::interpret::{InterpretError, Outcome, OutcomeStatus};
use harmony::inventory::Inventory;
use harmony::local::{Podman, SupervisionMode, probe};
use harmony::score::Score;
use harmony::topologies::LocalTopology;
use harmony::topology::Topology;
use harmony_fleet_contracts::buckets::{DEVICE_HEARTBEAT, DEVICE_STATE};
use harmony_fleet_contracts::payload::{
    PodmanV0, PortMapping, PullPolicy, ReconcileScore, Service,
};
use harmony_fleet_contracts::{DeviceId, Heartbeat, keys};
use harmony_fleet_deploy::agent::host;
use harmony_fleet_deploy::local::{DownOnDrop, LocalFleet};
use harmony_fleet_deploy::wait::{self, Poll};
use harmony_fleet_deploy::{FleetAgentScore, FleetDeploymentScore, FleetServerScore};
use harmony_fleet_types::crd::deployment::TargetSelector;
use jiff::Timestamp;
use test_host::TestHost;

async fn run(
    score: &dyn Score<LocalTopology>,
    topology: &LocalTopology,
) -> Result<Outcome, InterpretError> {
    score
        .create_interpret()
        .execute(&Inventory::new("test"), topology)
        .await
}

fn demo(port: u32) -> ReconcileScore {
    let mut web = Service::new("web", "localhost/fleet-demo:v1");
    web.pull_policy = PullPolicy::Never;
    web.ports = vec![PortMapping {
        host_port: port,
        container_port: 8080,
        protocol: Default::default(),
        host_ip: None,
    }];
    ReconcileScore::PodmanV0(PodmanV0 {
        services: vec![web],
        init_containers: Vec::new(),
        stop_policy: Default::default(),
    })
}

/// The demo image, built on this machine and loaded into the host's podman (no registry).
async fn load_demo_image(host: &TestHost) -> anyhow::Result<()> {
    let store = tempfile::tempdir()?;
    let podman = Podman::new()?.with_storage(store.path().join("root"), store.path().join("run"));
    let image = podman.build_demo_image("v1").await?;
    let archive = store.path().join("demo.tar");
    let archive_arg = archive.display().to_string();
    podman
        .exec(["save", "-q", "-o", archive_arg.as_str(), image.as_str()])
        .await?;
    let bytes = std::fs::read(&archive)?;
    host.ssh().run_with_input("podman load -q", &bytes).await?;
    let _ = podman.exec(["system", "reset", "-f"]).await;
    Ok(())
}

async fn answers_v1(address: SocketAddr, awaited: &str, deadline: Duration) {
    wait::until(awaited, deadline, || async move {
        match probe::http_get(address, "/", Duration::from_secs(2)).await {
            Ok(r) if r.status == 200 && r.body.trim() == "v1" => Poll::Ready(()),
            Ok(r) => Poll::Pending(format!("HTTP {}: {}", r.status, r.body.trim())),
            Err(e) => Poll::Pending(e),
        }
    })
    .await
    .unwrap_or_else(|e| panic!("{}", e.chain()));
}

/// The newest revision among the device's keys in `device-state` (its workload reports).
async fn state_revision(kv: &jetstream::kv::Store, device: &DeviceId) -> u64 {
    let Ok(mut keys) = kv.keys().await else {
        return 0;
    };
    let mut newest = 0;
    while let Some(Ok(key)) = keys.next().await {
        if key.contains(device.as_str())
            && let Ok(Some(entry)) = kv.entry(&key).await
        {
            newest = newest.max(entry.revision);
        }
    }
    newest
}

#[tokio::test]
async fn an_agent_on_a_real_host_installs_over_ssh_survives_a_reboot_without_nats_and_uninstalls() {
    let Some(binary) = test_host::agent_or_skip() else {
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let _cleanup = DownOnDrop {
        state_dir: dir.path().to_owned(),
        keep_state: false,
    };
    let suffix = test_host::name_suffix(dir.path());
    let host = TestHost::boot(&format!("hfhost-{suffix}"), dir.path())
        .await
        .unwrap_or_else(|e| panic!("booting the test host: {e:#}"));
    let topology = LocalTopology::new(dir.path(), SupervisionMode::Owned).expect("topology");
    topology.ensure_ready().await.expect("control plane");

    let mut fleet = LocalFleet::with_devices(0).expect("fleet");
    fleet.operator.smoke_timeout = Duration::from_secs(60);
    let mut nats = fleet.nats_score();
    nats.lan_addresses = vec![host.gateway.into()];
    let server = FleetServerScore {
        nats: nats.clone(),
        operator: fleet.operator.clone(),
    };
    run(&server, &topology)
        .await
        .unwrap_or_else(|e| panic!("FleetServerScore failed: {}", e.chain()));

    let device: DeviceId = "pi-host-1".parse().expect("device id");
    let labels = BTreeMap::from([
        ("site".to_owned(), "lan".to_owned()),
        ("fleet.nationtech.io/device".to_owned(), device.to_string()),
    ]);
    let mut score = FleetAgentScore::host(device.clone(), labels.clone(), host.agent(&binary));
    score.heartbeat_interval_secs = 2;
    score.smoke_timeout = Duration::from_secs(90);

    // Install: heartbeat seen; then the same Score again changes nothing.
    let started = Instant::now();
    let outcome = run(&score, &topology)
        .await
        .unwrap_or_else(|e| panic!("FleetAgentScore (host) failed: {}", e.chain()));
    eprintln!("install: {:?} in {:?}", outcome, started.elapsed());
    assert_eq!(outcome.status, OutcomeStatus::Success, "{outcome:?}");
    let again = run(&score, &topology)
        .await
        .unwrap_or_else(|e| panic!("second run failed: {}", e.chain()));
    assert_eq!(again.status, OutcomeStatus::Noop, "{again:?}");
    assert!(again.message.contains("nothing to change"), "{again:?}");
    let ssh = host.ssh();
    let modes = ssh
        .run("stat -c '%a %n' /etc/fleet-agent/bootstrap.creds /etc/fleet-agent/agent.toml; systemctl is-enabled harmony-fleet-agent")
        .await
        .expect("stat");
    assert!(
        modes.contains("600 /etc/fleet-agent/bootstrap.creds"),
        "{modes}"
    );
    assert!(modes.contains("600 /etc/fleet-agent/agent.toml"), "{modes}");
    assert!(modes.contains("enabled"), "{modes}");

    // An address where NATS does not serve is refused before anything is installed.
    let mut elsewhere = score.clone();
    if let harmony_fleet_deploy::FleetAgentTarget::Host(h) = &mut elsewhere.target {
        h.nats_address = "192.0.2.1".parse().expect("ip");
    }
    let err = run(&elsewhere, &topology)
        .await
        .expect_err("NATS does not serve there")
        .chain();
    assert!(
        err.contains("nats_address") && err.contains("lan_addresses"),
        "{err}"
    );

    // A dynamically linked agent (the workspace's own build) is refused before it is sent.
    let dynamic = harmony_fleet_deploy::binaries::AGENT
        .locate()
        .expect("fleet-agent built");
    let mut linked = score.clone();
    if let harmony_fleet_deploy::FleetAgentTarget::Host(h) = &mut linked.target {
        h.agent_binaries = [("x86_64".to_owned(), dynamic)].into();
    }
    let err = run(&linked, &topology)
        .await
        .expect_err("a dynamically linked agent")
        .chain();
    assert!(
        err.contains("agent_binaries") && err.contains("dynamically linked"),
        "{err}"
    );

    // A host of another architecture is refused, naming what to build.
    let mut arm = score.clone();
    if let harmony_fleet_deploy::FleetAgentTarget::Host(h) = &mut arm.target {
        h.agent_binaries = [("aarch64".to_owned(), binary.clone())].into();
    }
    let err = run(&arm, &topology)
        .await
        .expect_err("no x86_64 binary")
        .chain();
    assert!(
        err.contains("agent_binaries") && err.contains("x86_64"),
        "{err}"
    );

    // A host answering with another key than the pinned one is refused before anything is
    // sent (the key of a freshly made pair stands in for an impostor's).
    let impostor = tempfile::tempdir().expect("tempdir");
    let impostor_key = impostor.path().join("key");
    let made = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&impostor_key)
        .status()
        .expect("ssh-keygen");
    assert!(made.success());
    let mut spoofed = score.clone();
    if let harmony_fleet_deploy::FleetAgentTarget::Host(h) = &mut spoofed.target {
        h.known_host_key =
            std::fs::read_to_string(impostor_key.with_extension("pub")).expect("impostor key");
    }
    let err = run(&spoofed, &topology)
        .await
        .expect_err("a host key other than the pinned one")
        .chain();
    assert!(
        err.contains("known_host_key") && err.contains("Host key verification failed"),
        "{err}"
    );

    // A workload on the host, answering at the host's address.
    load_demo_image(&host)
        .await
        .expect("demo image on the host");
    let selector = TargetSelector {
        match_labels: BTreeMap::from([(
            "fleet.nationtech.io/device".to_owned(),
            device.to_string(),
        )]),
        ..TargetSelector::default()
    };
    let hello = FleetDeploymentScore::new("default", "hello-host", selector, demo(8080))
        .with_timeout(Duration::from_secs(120));
    run(&hello, &topology)
        .await
        .unwrap_or_else(|e| panic!("FleetDeploymentScore failed: {}", e.chain()));
    let web = SocketAddr::from((host.address, 8080));
    answers_v1(web, "the workload on the host", Duration::from_secs(60)).await;

    // `systemctl stop` returns fast (the agent exits within 2 s of SIGTERM); the workload keeps
    // running (KillMode=process).
    // Timed on the host (no SSH round trip): `systemctl stop` returns once the agent exited.
    let stop = Instant::now();
    let on_host = ssh
        .run(
            "t0=$(date +%s%N); systemctl stop harmony-fleet-agent; \
             echo $(( ($(date +%s%N) - t0) / 1000000 )); systemctl is-active harmony-fleet-agent; true",
        )
        .await
        .expect("stop");
    let stop_took = stop.elapsed();
    let mut lines = on_host.lines();
    let millis: u64 = lines
        .next()
        .and_then(|l| l.trim().parse().ok())
        .unwrap_or_else(|| panic!("no stop duration in {on_host:?}"));
    eprintln!(
        "systemctl stop harmony-fleet-agent took {millis} ms on the host ({stop_took:?} with the ssh round trip)"
    );
    assert!(millis < 2_000, "systemctl stop took {millis} ms");
    assert_eq!(lines.next().map(str::trim), Some("inactive"), "{on_host}");
    answers_v1(
        web,
        "the workload with its agent stopped",
        Duration::from_secs(5),
    )
    .await;
    ssh.run("systemctl start harmony-fleet-agent")
        .await
        .expect("start");

    // Reboot while NATS is down: systemd starts the agent, which restarts the workload from
    // its own disk; when NATS returns, the heartbeat and the workload report catch up.
    let js = test_host::admin_jetstream(dir.path()).await;
    let states = js.get_key_value(DEVICE_STATE).await.expect("state bucket");
    let reported_before = state_revision(&states, &device).await;
    assert!(reported_before > 0, "the device reported its workload");
    // Debian's podman-restart.service would start `--restart=always` containers at boot by
    // itself; masked, only the agent (from its desired state on disk) can bring the workload
    // back.
    ssh.run("systemctl mask podman-restart.service")
        .await
        .expect("mask podman-restart");
    let nats_process = harmony_fleet_deploy::nats::local::process_name(1);
    assert!(
        topology
            .stop_process(&nats_process)
            .await
            .expect("stop nats")
    );
    let reboot = Instant::now();
    host.reboot(Duration::from_secs(90)).await.expect("reboot");
    eprintln!("host rebooted in {:?}", reboot.elapsed());
    answers_v1(
        web,
        "the workload after the reboot, NATS down",
        Duration::from_secs(60),
    )
    .await;
    eprintln!(
        "workload back {:?} after the reboot began",
        reboot.elapsed()
    );
    let active = ssh
        .run("systemctl is-active harmony-fleet-agent")
        .await
        .expect("is-active");
    assert_eq!(active.trim(), "active");
    assert!(
        topology
            .process_status(&nats_process)
            .is_none_or(|s| !s.running),
        "NATS stayed down through the reboot"
    );

    let back = Timestamp::now();
    run(&nats, &topology)
        .await
        .unwrap_or_else(|e| panic!("NATS back: {}", e.chain()));
    let js = test_host::admin_jetstream(dir.path()).await;
    let beats = js
        .get_key_value(DEVICE_HEARTBEAT)
        .await
        .expect("heartbeats");
    let states = js.get_key_value(DEVICE_STATE).await.expect("states");
    let key = keys::heartbeat_key(&device);
    wait::until(
        "reports from the rebooted host",
        Duration::from_secs(60),
        || {
            let (beats, states, key, device) =
                (beats.clone(), states.clone(), key.clone(), device.clone());
            async move {
                let beat = match beats.get(&key).await {
                    Ok(Some(bytes)) => serde_json::from_slice::<Heartbeat>(&bytes)
                        .ok()
                        .and_then(|h| h.timestamp()),
                    _ => None,
                };
                let revision = state_revision(&states, &device).await;
                match beat {
                    Some(at) if at >= back && revision > reported_before => Poll::Ready(()),
                    other => Poll::Pending(format!(
                        "heartbeat {other:?}, state revision {revision} (was {reported_before})"
                    )),
                }
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{}", e.chain()));
    eprintln!(
        "reports caught up {:?} after NATS returned",
        Timestamp::now().duration_since(back)
    );

    // Uninstall: unit, binary and configuration gone; a second uninstall changes nothing.
    let agent = host.agent(&binary);
    let removed = host::uninstall(dir.path(), &agent)
        .await
        .expect("uninstall");
    assert_eq!(removed.status, OutcomeStatus::Success, "{removed:?}");
    let left = ssh
        .run("ls /etc/systemd/system/harmony-fleet-agent.service /usr/local/bin/fleet-agent /etc/fleet-agent 2>&1; systemctl is-active harmony-fleet-agent; true")
        .await
        .expect("ls");
    assert_eq!(left.matches("No such file").count(), 3, "{left}");
    assert!(left.contains("inactive"), "{left}");
    let again = host::uninstall(dir.path(), &agent)
        .await
        .expect("uninstall again");
    assert_eq!(again.status, OutcomeStatus::Noop, "{again:?}");
}

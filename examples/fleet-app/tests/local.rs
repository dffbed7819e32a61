//! The example as its team runs it: `fleet-app local` on `LocalTopology` in a temporary state
//! directory (a real control plane, nats-server, the operator, two simulated devices with their
//! own podman storage and network namespace), then the greeter answers its configured greeting
//! at each device's own address, a second run changes nothing, and `fleet-app down` leaves no
//! state, network or process behind. `cluster --list` composes the same Scores for
//! `K8sAnywhereTopology` without needing a cluster.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use harmony::local::netns::DeviceNetwork;
use harmony::local::probe;
use harmony_fleet_contracts::DeviceId;
use harmony_fleet_deploy::agent::local as agent_local;
use harmony_fleet_deploy::local::DownOnDrop;
use harmony_fleet_deploy::wait::{self, Poll};

const APP: &str = env!("CARGO_BIN_EXE_fleet-app");
const GREETING: &str = "hello from the fleet-app test";

fn fleet_app(args: &[&str], state: &Path) -> Output {
    Command::new(APP)
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("run fleet-app")
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// What the greeter answers at `address`:`port`, once it answers 200.
async fn greeting_at(device: &DeviceId, address: std::net::Ipv4Addr, port: u16) -> String {
    wait::until(
        &format!("the greeter on {device} ({address}:{port}) to answer"),
        Duration::from_secs(30),
        || async move {
            match probe::http_get(
                SocketAddr::from((address, port)),
                "/",
                Duration::from_secs(2),
            )
            .await
            {
                Ok(r) if r.status == 200 => Poll::Ready(r.body),
                Ok(r) => Poll::Pending(format!("HTTP {}: {}", r.status, r.body.trim())),
                Err(e) => Poll::Pending(e),
            }
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{}", e.chain()))
}

#[tokio::test]
async fn the_greeter_answers_on_every_local_device_a_rerun_changes_nothing_and_down_cleans_up() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("fleet");
    // Whatever happens below, the fleet's processes, containers and networks go with the test.
    let _cleanup = DownOnDrop {
        state_dir: state.clone(),
        keep_state: false,
    };
    let up_args = ["local", "--devices", "2", "--greeting", GREETING, "--yes"];
    let up = fleet_app(&up_args, &state);
    let up_text = text(&up);
    assert!(up.status.success(), "{up_text}");
    for needle in [
        "FleetServerScore",
        "FleetAgentScore local-1",
        "FleetAgentScore local-2",
        "AppConfigScore fleet-app/greeter",
        "FleetDeploymentScore fleet-app/greeter",
    ] {
        assert!(up_text.contains(needle), "missing {needle:?} in {up_text}");
    }

    let mut networks = Vec::new();
    for device in ["local-1", "local-2"] {
        let device: DeviceId = device.parse().expect("device id");
        let netns = agent_local::netns_name(&state, &device);
        let network = DeviceNetwork::find(&netns)
            .await
            .expect("netns lookup")
            .unwrap_or_else(|| panic!("device {device} has no network namespace {netns}"));
        let body = greeting_at(&device, network.device_address, 8080).await;
        assert_eq!(body.trim(), GREETING, "{device}");
        assert!(
            up_text.contains(&format!(
                "greeter on {device}: http://{}:8080/",
                network.device_address
            )),
            "{up_text}"
        );
        networks.push(netns);
    }

    let again = fleet_app(&up_args, &state);
    let again_text = text(&again);
    assert!(again.status.success(), "{again_text}");
    assert!(
        again_text.matches("no change").count() >= 5,
        "every Score should report no change: {again_text}"
    );

    let down = fleet_app(&["down"], &state);
    assert!(down.status.success(), "{}", text(&down));
    assert!(!state.exists(), "state directory left behind");
    for netns in networks {
        assert!(
            DeviceNetwork::find(&netns)
                .await
                .expect("netns lookup")
                .is_none(),
            "network namespace {netns} left behind"
        );
    }
}

#[test]
fn cluster_composes_the_same_scores_for_k8s_anywhere() {
    let output = Command::new(APP)
        .args([
            "cluster",
            "--device",
            "pi-1",
            "--device",
            "pi-2",
            "--site",
            "plant-3",
            "--image",
            "registry.example.com/greeter:v1",
            "--list",
        ])
        .output()
        .expect("run fleet-app");
    let listing = text(&output);
    assert!(output.status.success(), "{listing}");
    for (n, name) in [
        "1. FleetServerScore",
        "2. FleetAgentScore pi-1 (Pod in fleet-system)",
        "3. FleetAgentScore pi-2 (Pod in fleet-system)",
        "4. AppConfigScore fleet-app/greeter",
        "5. FleetDeploymentScore fleet-app/greeter",
    ]
    .iter()
    .enumerate()
    {
        assert!(listing.contains(name), "Score {} missing: {listing}", n + 1);
    }
}

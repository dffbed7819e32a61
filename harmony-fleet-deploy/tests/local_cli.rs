//! The main job through its command line: `local up` brings a fleet up as detached processes,
//! `local status` reports them, `local down` leaves no process, port, container or network
//! behind. Also: a missing fleet binary is an error naming the build command.

use std::path::Path;
use std::process::{Command, Output};

const DEPLOY: &str = env!("CARGO_BIN_EXE_harmony-fleet-deploy");

fn deploy(args: &[&str], state: &Path) -> Output {
    Command::new(DEPLOY)
        .args(args)
        .arg("--state-dir")
        .arg(state)
        .output()
        .expect("run harmony-fleet-deploy")
}

/// Runs `local down` when dropped, so a failing test leaves no detached process behind.
struct Down<'a>(&'a Path);

impl Drop for Down<'_> {
    fn drop(&mut self) {
        let _ = deploy(&["local", "down"], self.0);
    }
}

fn text(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

#[test]
fn local_up_then_down_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("fleet");
    let _down = Down(&state);
    let up = Command::new(DEPLOY)
        .args(["local", "up", "--yes", "--no-dashboard", "--state-dir"])
        .arg(&state)
        .output()
        .expect("run up");
    let up_text = text(&up);
    assert!(up.status.success(), "{up_text}");
    assert!(up_text.contains("kubeconfig:"), "{up_text}");
    assert!(
        up_text.contains("kubectl apply -f examples/hello.yaml"),
        "{up_text}"
    );

    let status = deploy(&["local", "status"], &state);
    let status_text = String::from_utf8_lossy(&status.stdout).into_owned();
    assert!(status_text.contains("6/6 running"), "{}", text(&status));
    let pids: Vec<u32> = status_text
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().nth(1)?.parse().ok())
        .collect();
    assert_eq!(pids.len(), 6, "{status_text}");
    let ports = harmony_fleet_deploy::local::reserved_ports(&state);
    assert!(ports.len() >= 3, "ports reserved: {ports:?}");

    let down = deploy(&["local", "down"], &state);
    assert!(down.status.success(), "{}", text(&down));
    for pid in pids {
        assert!(!alive(pid), "pid {pid} survived `local down`");
    }
    for port in ports {
        assert!(
            std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
            "port {port} still busy after `local down`"
        );
    }
    assert!(!state.exists(), "state directory left behind");
}

#[test]
fn a_missing_agent_binary_names_the_build_command() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("fleet");
    let _down = Down(&state);
    let output = Command::new(DEPLOY)
        .args(["local", "up", "--yes", "--no-dashboard", "--state-dir"])
        .arg(&state)
        .env("HARMONY_FLEET_AGENT_BIN", dir.path().join("no-such-agent"))
        .output()
        .expect("run up");
    let all = text(&output);
    assert!(!output.status.success(), "{all}");
    assert!(
        all.contains("cargo build --release -p harmony-fleet-agent"),
        "{all}"
    );
}

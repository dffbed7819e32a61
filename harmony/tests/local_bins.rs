//! With no upstream binaries installed, starting a harness fails with an error that names the
//! missing binary and `scripts/install-deps.sh`.
//!
//! The binary locations come from process-global environment variables, so the check runs in a
//! child copy of this test binary with its own environment (no `set_var` in a threaded test
//! process).

use std::process::Command;

use harmony::local::{ControlPlaneOptions, LocalControlPlane, LocalNats, NatsOptions};

const CHILD_MARKER: &str = "HARMONY_LOCAL_BINS_TEST_CHILD";
const TEST_NAME: &str = "harnesses_name_the_install_script_when_no_binary_is_installed";

#[test]
fn harnesses_name_the_install_script_when_no_binary_is_installed() {
    if std::env::var_os(CHILD_MARKER).is_some() {
        check_errors_in_an_empty_environment();
        return;
    }
    let empty = tempfile::tempdir().expect("tempdir");
    let output = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", TEST_NAME, "--nocapture", "--test-threads=1"])
        .env(CHILD_MARKER, "1")
        .env("HARMONY_FLEET_BIN_DIR", empty.path())
        .env("HARMONY_FLEET_CACHE", empty.path())
        .env("HOME", empty.path())
        .output()
        .expect("run the child test");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("checked: errors name the install script"),
        "the child did not run the check:\n{stdout}\n{stderr}"
    );
}

fn check_errors_in_an_empty_environment() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let control_plane = runtime
        .block_on(LocalControlPlane::start(ControlPlaneOptions::default()))
        .expect_err("no binaries installed");
    let message = control_plane.to_string();
    assert!(message.contains("`etcd`"), "{message}");
    assert!(message.contains("scripts/install-deps.sh"), "{message}");

    let nats = runtime
        .block_on(LocalNats::start(NatsOptions::default()))
        .expect_err("no binaries installed");
    let message = nats.to_string();
    assert!(message.contains("`nats-server`"), "{message}");
    assert!(message.contains("scripts/install-deps.sh"), "{message}");

    let podman = harmony::local::Podman::new().expect_err("no containers.conf in the cache");
    assert!(
        podman.to_string().contains("scripts/install-deps.sh"),
        "{podman}"
    );
    println!("checked: errors name the install script");
}

//! The node's network: its own network namespace joined to the host by a veth pair (the same
//! [`DeviceNetwork`] the simulated devices get), plus what a node needs beyond a device: a
//! default route to the host (Pods reach the kube-apiserver at the host's end), forwarding on,
//! bridge netfilter on, and a host route to the Pods' subnet so the host reaches Pod IPs.
//! Nothing leaves this machine: the host has no default route, and CoreDNS forwards nowhere.

use std::net::Ipv4Addr;

use tokio::process::Command;

use crate::local::error::{LocalError, Result};
use crate::local::netns::DeviceNetwork;

/// Creates (or finds) the node's namespace and sets its routes and sysctls. Idempotent.
pub async fn ensure(
    name: &str,
    pod_subnet_of: impl Fn(Ipv4Addr) -> String,
) -> Result<DeviceNetwork> {
    let network = DeviceNetwork::ensure(name).await?;
    let ns = network.path.display().to_string();
    let host = network.host_address.to_string();
    let node = network.device_address.to_string();
    run(
        "ip",
        &["-n", name, "route", "replace", "default", "via", &host],
    )
    .await?;
    run(
        "nsenter",
        &[
            &format!("--net={ns}"),
            "sysctl",
            "-qw",
            "net.ipv4.ip_forward=1",
        ],
    )
    .await?;
    // Best effort: without bridge netfilter, masqueradeAll in kube-proxy still gives Pods on
    // one bridge their Service replies.
    if let Err(e) = run(
        "nsenter",
        &[
            &format!("--net={ns}"),
            "sysctl",
            "-qw",
            "net.bridge.bridge-nf-call-iptables=1",
        ],
    )
    .await
    {
        tracing::debug!(netns = name, error = %e, "bridge netfilter not set");
    }
    let pods = pod_subnet_of(network.device_address);
    run("ip", &["route", "replace", &pods, "via", &node]).await?;
    Ok(network)
}

/// Deletes the namespace (its veth pair and the host route through it go with it).
pub async fn delete(name: &str) -> Result<()> {
    DeviceNetwork::delete(name).await
}

async fn run(program: &str, args: &[&str]) -> Result<String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .await
        .map_err(|e| LocalError::io(format!("running `{program}`"), e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LocalError::Config(format!(
            "`{program} {}` failed ({}): {}; the local node needs root, iproute2 and util-linux",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

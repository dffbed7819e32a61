//! [`DeviceNetwork`]: a network namespace per local device, joined to the host by a veth pair,
//! so that several simulated devices on one host can each publish the same port and be reached
//! at their own address — as real devices are.
//!
//! Layout: namespace `<name>` (`/run/netns/<name>`), subnet `10.213.<n>.0/24` with the host end
//! `hfvh<n>` at `.1` and the device end `hfvd<n>` at `.2`. `<n>` is the lowest subnet no
//! interface on the host uses yet, so runs from different state directories do not collide.
//! Podman must enter the namespace with `nsenter --net=` (not `ip netns exec`, which remounts
//! `/sys` and breaks runc).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use tokio::process::Command;

use crate::local::error::{LocalError, Result};

const SUBNET_PREFIX: [u8; 2] = [10, 213];

/// One device's network namespace and its addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNetwork {
    /// The namespace's name (`ip netns list`).
    pub name: String,
    /// `/run/netns/<name>`, what `nsenter --net=` takes.
    pub path: PathBuf,
    /// The host's address on the device's link (`10.213.<n>.1`).
    pub host_address: Ipv4Addr,
    /// The device's address, where its published ports answer (`10.213.<n>.2`).
    pub device_address: Ipv4Addr,
}

impl DeviceNetwork {
    /// Creates the namespace and its link, or returns the existing one (idempotent).
    pub async fn ensure(name: &str) -> Result<Self> {
        validate_name(name)?;
        if let Some(existing) = Self::find(name).await? {
            return Ok(existing);
        }
        // Another process may pick the same free subnet between our look and our `link add`
        // (two `local up` at once): its link then exists, so look again and take the next.
        let mut attempt = 0;
        let (n, device) = loop {
            attempt += 1;
            let n = free_subnet().await?;
            match Self::create(name, n).await {
                Ok(device) => break (n, device),
                Err(e) if attempt < 8 && e.to_string().contains("File exists") => {
                    tracing::debug!(netns = name, subnet = n, error = %e, "device subnet taken meanwhile; trying the next");
                }
                Err(e) => return Err(e),
            }
        };
        tracing::info!(netns = name, %device, "device network ready");
        Ok(Self::describe(name, n))
    }

    /// Creates namespace `name` on subnet `n`; on failure removes what it made. Returns the
    /// device's address.
    async fn create(name: &str, n: u8) -> Result<Ipv4Addr> {
        let (host_if, dev_if) = (format!("hfvh{n}"), format!("hfvd{n}"));
        let host = Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], n, 1);
        let device = Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], n, 2);
        let steps: Vec<Vec<String>> = vec![
            vec!["netns".into(), "add".into(), name.into()],
            vec![
                "link".into(),
                "add".into(),
                host_if.clone(),
                "type".into(),
                "veth".into(),
                "peer".into(),
                "name".into(),
                dev_if.clone(),
            ],
            vec![
                "link".into(),
                "set".into(),
                dev_if.clone(),
                "netns".into(),
                name.into(),
            ],
            vec![
                "addr".into(),
                "add".into(),
                format!("{host}/24"),
                "dev".into(),
                host_if.clone(),
            ],
            vec!["link".into(), "set".into(), host_if, "up".into()],
            vec![
                "-n".into(),
                name.into(),
                "addr".into(),
                "add".into(),
                format!("{device}/24"),
                "dev".into(),
                dev_if.clone(),
            ],
            vec![
                "-n".into(),
                name.into(),
                "link".into(),
                "set".into(),
                dev_if,
                "up".into(),
            ],
            vec![
                "-n".into(),
                name.into(),
                "link".into(),
                "set".into(),
                "lo".into(),
                "up".into(),
            ],
        ];
        for args in steps {
            if let Err(e) = ip(&args).await {
                let _ = Self::delete(name).await;
                return Err(e);
            }
        }
        Ok(device)
    }

    /// The namespace `name` if it exists and carries one of our device links.
    pub async fn find(name: &str) -> Result<Option<Self>> {
        validate_name(name)?;
        if !PathBuf::from(format!("/run/netns/{name}")).exists() {
            return Ok(None);
        }
        let out = ip(&["-n", name, "-4", "-o", "addr", "show"]).await?;
        Ok(out.lines().find_map(|line| {
            let address = line
                .split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)?;
            let ip: Ipv4Addr = address.split('/').next()?.parse().ok()?;
            let o = ip.octets();
            (o[..2] == SUBNET_PREFIX && o[3] == 2).then(|| Self::describe(name, o[2]))
        }))
    }

    /// Deletes the namespace (its veth pair goes with it). Missing is fine.
    pub async fn delete(name: &str) -> Result<()> {
        validate_name(name)?;
        if !PathBuf::from(format!("/run/netns/{name}")).exists() {
            return Ok(());
        }
        ip(&["netns", "del", name]).await.map(|_| ())
    }

    fn describe(name: &str, n: u8) -> Self {
        DeviceNetwork {
            name: name.to_owned(),
            path: PathBuf::from(format!("/run/netns/{name}")),
            host_address: Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], n, 1),
            device_address: Ipv4Addr::new(SUBNET_PREFIX[0], SUBNET_PREFIX[1], n, 2),
        }
    }
}

fn validate_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(LocalError::Config(format!(
            "network namespace name `{name}` must be 1-64 letters, digits, '-' or '_'"
        )))
    }
}

/// The lowest `n` such that no host interface has an address in `10.213.<n>.0/24`.
async fn free_subnet() -> Result<u8> {
    let out = ip(&["-4", "-o", "addr", "show"]).await?;
    // A link made by another process that has no address yet counts too.
    let links = ip(&["-o", "link", "show"]).await?;
    let linked = links.lines().filter_map(|line| {
        let name = line.split_whitespace().nth(1)?.trim_end_matches(':');
        let name = name.split('@').next()?;
        name.strip_prefix("hfvh")?.parse::<u8>().ok()
    });
    let used: Vec<u8> = out
        .lines()
        .filter_map(|line| {
            let address = line
                .split_whitespace()
                .skip_while(|w| *w != "inet")
                .nth(1)?;
            let ip: Ipv4Addr = address.split('/').next()?.parse().ok()?;
            let o = ip.octets();
            (o[..2] == SUBNET_PREFIX).then_some(o[2])
        })
        .chain(linked)
        .collect();
    (1..=254u8)
        .find(|n| !used.contains(n))
        .ok_or_else(|| {
            LocalError::Config(
                "all 254 device subnets 10.213.x.0/24 are in use; delete stale namespaces (`ip netns list`)"
                    .into(),
            )
        })
}

async fn ip<S: AsRef<str>>(args: &[S]) -> Result<String> {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    let output = Command::new("ip")
        .args(&args)
        .output()
        .await
        .map_err(|e| LocalError::io("running `ip` (package iproute2)", e))?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(LocalError::Config(format!(
            "`ip {}` failed ({}): {}; device networks need root and iproute2",
            args.join(" "),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        )))
    }
}

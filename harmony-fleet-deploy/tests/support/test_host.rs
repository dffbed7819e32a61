//! [`TestHost`]: a real Linux host for the Host target — a Debian system container booting
//! systemd, with openssh-server and podman inside (image from `scripts/build-host-image.sh`,
//! cached under `~/.cache/harmony-fleet`), on an address of its own network namespace like a
//! Pi on a LAN. The test logs in with a key made per run and pins the host key it reads from
//! the container (the "console"). Removed, with its network and disk, on drop.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use harmony::local::netns::DeviceNetwork;
use harmony_fleet_deploy::HostAgent;
use harmony_fleet_deploy::agent::ssh::SshHost;
use harmony_fleet_deploy::wait::{self, Poll};

/// The container label naming the directory of the test that booted a host.
const OWNER_LABEL: &str = "harmony-fleet-test-host";

/// One booted host.
pub struct TestHost {
    /// The container's (and network namespace's) name.
    pub name: String,
    /// The host's address.
    pub address: Ipv4Addr,
    /// This machine's address on the host's link (where NATS must answer).
    pub gateway: Ipv4Addr,
    /// The private key the host accepts.
    pub identity_file: PathBuf,
    /// The host's ed25519 public key.
    pub host_key: String,
    dir: tempfile::TempDir,
    containers_conf: PathBuf,
}

/// `Err(reason)` when a tool the host needs is missing: the caller skips, or fails on CI.
pub fn missing_tools() -> Option<String> {
    if !nix_is_root() {
        return Some("not root (network namespaces and a privileged container need it)".into());
    }
    for tool in ["podman", "ssh", "ssh-keygen", "ip"] {
        let found = std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
            .unwrap_or(false);
        if !found {
            return Some(format!("`{tool}` not found; run scripts/install-deps.sh"));
        }
    }
    None
}

/// The static agent `scripts/test.sh` builds for this machine (`RUSTFLAGS="-C
/// target-feature=+crt-static" cargo build --target x86_64-unknown-linux-gnu -p
/// harmony-fleet-agent`), or `$HARMONY_FLEET_STATIC_AGENT_BIN`.
pub fn static_agent() -> Result<PathBuf, String> {
    if let Some(path) = std::env::var_os("HARMONY_FLEET_STATIC_AGENT_BIN") {
        let path = PathBuf::from(path);
        return if path.is_file() {
            Ok(path)
        } else {
            Err(format!(
                "HARMONY_FLEET_STATIC_AGENT_BIN={} is not a file",
                path.display()
            ))
        };
    }
    // The test runs from <target>/debug/deps; the static build is <target>/<triple>/debug.
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let target = exe
        .ancestors()
        .nth(3)
        .ok_or_else(|| format!("no target directory above {}", exe.display()))?;
    let path = target.join("x86_64-unknown-linux-gnu/debug/fleet-agent");
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "no static agent at {}; build it with `RUSTFLAGS=\"-C target-feature=+crt-static\" \
             cargo build --target x86_64-unknown-linux-gnu -p harmony-fleet-agent` (scripts/test.sh \
             does) or set HARMONY_FLEET_STATIC_AGENT_BIN",
            path.display()
        ))
    }
}

/// The static agent, when the test hosts can run; `None` (after saying why) when they cannot
/// and the run is not CI, where that is a failure.
pub fn agent_or_skip() -> Option<PathBuf> {
    let agent = static_agent();
    match missing_tools().or_else(|| agent.clone().err()) {
        None => agent.ok(),
        Some(reason) => {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true and the test host cannot run: {reason}"
            );
            eprintln!("skipping: {reason}");
            None
        }
    }
}

/// A suffix unique to the test's temporary directory, fit for container and namespace names.
pub fn name_suffix(dir: &Path) -> String {
    dir.file_name()
        .map(|n| {
            n.to_string_lossy()
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_lowercase()
        })
        .unwrap_or_default()
}

/// JetStream as the local fleet's admin (the fleet under `state_dir`, NATS running).
pub async fn admin_jetstream(state_dir: &Path) -> async_nats::jetstream::Context {
    let endpoint =
        harmony_fleet_deploy::nats::NatsEndpoint::load_local(state_dir).expect("NATS endpoint");
    let (trust, _) =
        harmony_fleet_deploy::trust::LocalTrust::load_or_create(state_dir).expect("fleet trust");
    let admin = harmony_fleet_deploy::nats::smoke::connect(
        &endpoint,
        &trust.admin().expect("admin identity"),
        Default::default(),
    )
    .await
    .expect("the admin connects to NATS");
    async_nats::jetstream::new(admin)
}

fn nix_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn run(command: &mut Command) -> anyhow::Result<String> {
    let output = command.output()?;
    anyhow::ensure!(
        output.status.success(),
        "{command:?} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

impl TestHost {
    /// Builds (or reuses) the image, then boots a host named `name` on a network of its own and
    /// waits until it accepts the test's key over SSH. `owner` (the test's temporary directory)
    /// is recorded on the container: a host whose owner is gone is a crashed run's leftover,
    /// removed here with its network.
    pub async fn boot(name: &str, owner: &Path) -> anyhow::Result<Self> {
        let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let built = run(Command::new("bash").arg(repo.join("scripts/build-host-image.sh")))?;
        let image = built
            .lines()
            .last()
            .map(str::trim)
            .filter(|l| l.starts_with("localhost/"))
            .ok_or_else(|| anyhow::anyhow!("build-host-image.sh printed no image: {built}"))?
            .to_owned();
        let containers_conf = harmony::local::Podman::new()?.containers_conf().to_owned();
        let dir = tempfile::tempdir()?;
        let identity_file = dir.path().join("id_ed25519");
        run(Command::new("ssh-keygen")
            .args([
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                "harmony-fleet-test",
                "-f",
            ])
            .arg(&identity_file))?;
        let storage = dir.path().join("containers");
        std::fs::create_dir_all(&storage)?;
        // Leftovers of crashed runs (their owner directory is gone), and one with this name.
        let listed = podman(
            &containers_conf,
            &[
                "ps",
                "-a",
                "--filter",
                &format!("label={OWNER_LABEL}"),
                "--format",
                &format!("{{{{.Names}}}} {{{{index .Labels \"{OWNER_LABEL}\"}}}}"),
            ],
        )?;
        for line in listed.lines() {
            let Some((leftover, owner_dir)) = line.split_once(' ') else {
                continue;
            };
            if leftover == name || !Path::new(owner_dir).exists() {
                eprintln!("removing leftover test host {leftover} (owner {owner_dir})");
                let _ = podman(&containers_conf, &["rm", "-f", "-t", "0", leftover]);
                let _ = DeviceNetwork::delete(leftover).await;
            }
        }
        let network = DeviceNetwork::ensure(name).await?;
        let mut host = TestHost {
            name: name.to_owned(),
            address: network.device_address,
            gateway: network.host_address,
            identity_file: identity_file.clone(),
            host_key: String::new(),
            dir,
            containers_conf,
        };
        // systemd as PID 1; privileged with a private cgroup namespace so podman inside can
        // run containers (cgroup v1 here); its container storage on a volume (overlay cannot
        // sit on the container's own overlay).
        let authorized = format!(
            "{}.pub:/root/.ssh/authorized_keys:ro",
            identity_file.display()
        );
        let volume = format!("{}:/var/lib/containers", storage.display());
        let netns = format!("ns:{}", network.path.display());
        podman(
            &host.containers_conf,
            &[
                "run",
                "-d",
                "--name",
                name,
                "--hostname",
                name,
                "--label",
                &format!("{OWNER_LABEL}={}", owner.display()),
                "--systemd=always",
                "--privileged",
                "--cgroupns=private",
                "--network",
                &netns,
                "-v",
                &authorized,
                "-v",
                &volume,
                &image,
            ],
        )?;
        // The host key is made at first boot; read it where only the owner can (the console).
        let conf = host.containers_conf.clone();
        let key = wait::until("the host's ssh host key", Duration::from_secs(60), || {
            let conf = conf.clone();
            let name = name.to_owned();
            async move {
                match podman(
                    &conf,
                    &["exec", &name, "cat", "/etc/ssh/ssh_host_ed25519_key.pub"],
                ) {
                    Ok(key) if key.starts_with("ssh-ed25519 ") => {
                        Poll::Ready(key.trim().to_owned())
                    }
                    Ok(other) => Poll::Pending(other),
                    Err(e) => Poll::Pending(e.to_string()),
                }
            }
        })
        .await?;
        host.host_key = key;
        host.wait_ssh(Duration::from_secs(60)).await?;
        Ok(host)
    }

    /// The Score's view of this host, installing `binary` for x86_64.
    pub fn agent(&self, binary: &Path) -> HostAgent {
        HostAgent {
            address: self.address.to_string(),
            port: 22,
            user: "root".into(),
            identity_file: self.identity_file.clone(),
            known_host_key: self.host_key.clone(),
            agent_binaries: [("x86_64".to_owned(), binary.to_owned())].into(),
            nats_address: self.gateway.into(),
            pre_approve: true,
        }
    }

    /// An SSH client for this host with the key pinned.
    pub fn ssh(&self) -> SshHost {
        let known_hosts = self.dir.path().join("known_hosts");
        SshHost::pin(&self.address.to_string(), 22, &self.host_key, &known_hosts)
            .expect("pin the host key");
        SshHost {
            address: self.address.to_string(),
            port: 22,
            user: "root".into(),
            identity_file: self.identity_file.clone(),
            known_hosts,
            timeout: Duration::from_secs(60),
        }
    }

    /// Waits until the host answers over SSH.
    pub async fn wait_ssh(&self, deadline: Duration) -> anyhow::Result<()> {
        let ssh = self.ssh();
        wait::until(&format!("ssh to {}", self.address), deadline, || {
            let ssh = ssh.clone();
            async move {
                match ssh.run("systemctl is-system-running --wait || true").await {
                    Ok(state) => Poll::Ready(state),
                    Err(e) => Poll::Pending(e.to_string()),
                }
            }
        })
        .await?;
        Ok(())
    }

    /// Restarts the host: an orderly shutdown (podman sends systemd SIGRTMIN+3, which stops
    /// every unit as `systemctl reboot` does), then a boot. Returns once it answers over SSH.
    pub async fn reboot(&self, deadline: Duration) -> anyhow::Result<()> {
        let timeout = deadline.as_secs().to_string();
        podman(&self.containers_conf, &["stop", "-t", &timeout, &self.name])?;
        // The stopped container's cleanup (`runc delete`, run by conmon) may still be under way
        // when `podman stop` returns; until then runc refuses the start with "container with
        // given ID already exists". Power on again until it takes.
        wait::until(
            &format!("{} to start again", self.name),
            deadline,
            || async {
                match podman(&self.containers_conf, &["start", &self.name]) {
                    Ok(_) => Poll::Ready(()),
                    Err(e) => Poll::Pending(format!("{e:#}")),
                }
            },
        )
        .await?;
        self.wait_ssh(deadline).await
    }
}

fn podman(containers_conf: &Path, args: &[&str]) -> anyhow::Result<String> {
    run(Command::new("podman")
        .env("CONTAINERS_CONF", containers_conf)
        .args(args))
}

impl Drop for TestHost {
    fn drop(&mut self) {
        // As after a stop, the removal can race conmon's cleanup of the stopped container
        // ("userdata/shm: device or resource busy"): try again until it is gone, for 20 s.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match podman(&self.containers_conf, &["rm", "-f", "-t", "0", &self.name]) {
                Ok(_) => break,
                Err(e) if std::time::Instant::now() >= deadline => {
                    eprintln!("removing test host {}: {e:#}", self.name);
                    break;
                }
                Err(_) => std::thread::sleep(wait::POLL_INTERVAL),
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

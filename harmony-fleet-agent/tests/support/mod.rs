//! Test support for the agent's integration tests: a real `nats-server` (JetStream, own store
//! dir, free port, killed on drop), a private podman storage per test (removed on drop), the
//! demo image built from `busybox-static`, and polling helpers with deadlines.
//!
//! Deliberately self-contained: the agent must not depend on `harmony`, not even in tests.

#![allow(dead_code)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// The containers.conf every podman call must use on these hosts (runc, no ulimits).
pub fn containers_conf() -> PathBuf {
    cache_dir().join("containers.conf")
}

fn cache_dir() -> PathBuf {
    let home = std::env::var_os("HOME").map_or_else(|| PathBuf::from("/root"), PathBuf::from);
    home.join(".cache/harmony-fleet")
}

/// A port nobody listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free local port")
}

/// Poll `check` until it returns `Some`, failing with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A real nats-server with JetStream on a free port, its store in a temp dir. Killed on drop;
/// `stop`/`start` keep the port and the store, like a server restart.
pub struct NatsServer {
    child: Option<Child>,
    port: u16,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    /// Start a server with these `authorization`-section contents (`None`: no auth).
    pub fn start(authorization: Option<&str>) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let store = dir.path().join("js");
        let mut config = format!(
            // Storage fixed, not nats-server's 75% of free disk: the buckets' byte limits
            // must fit it on every machine (adr/0042).
            "listen: \"127.0.0.1:{port}\"\njetstream {{\n  store_dir: \"{}\"\n  max_file_store: 4GB\n}}\n",
            store.display()
        );
        if let Some(auth) = authorization {
            config.push_str(auth);
        }
        let config_path = dir.path().join("nats.conf");
        std::fs::write(&config_path, config)?;
        let mut server = Self {
            child: None,
            port,
            config: config_path,
            _dir: dir,
        };
        server.resume()?;
        Ok(server)
    }

    /// `nats://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kill the server (the store stays).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start the server again on the same port with the same store.
    pub fn resume(&mut self) -> Result<()> {
        let binary = cache_dir().join("bin/nats-server");
        if !binary.exists() {
            bail!(
                "{} is missing; run scripts/install-deps.sh first",
                binary.display()
            );
        }
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(15);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if Instant::now() > deadline {
                bail!(
                    "nats-server did not listen on port {} within 15s",
                    self.port
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A private podman storage (`--root`/`--runroot` in a temp dir): tests never see each
/// other's containers. Everything in it is removed on drop.
pub struct PodmanStore {
    dir: tempfile::TempDir,
}

impl PodmanStore {
    /// A fresh, empty storage.
    pub fn new() -> Result<Self> {
        Ok(Self {
            dir: tempfile::Builder::new()
                .prefix("fleet-agent-podman-")
                .tempdir()?,
        })
    }

    /// `--root`.
    pub fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// `--runroot`.
    pub fn runroot(&self) -> PathBuf {
        self.dir.path().join("run")
    }

    /// `--tmpdir` (libpod state: reboot marker, events), private too.
    pub fn tmpdir(&self) -> PathBuf {
        self.dir.path().join("tmp")
    }

    /// A podman command bound to this storage.
    pub fn command(&self) -> Command {
        let mut command = Command::new("podman");
        command
            .arg("--root")
            .arg(self.root())
            .arg("--runroot")
            .arg(self.runroot())
            .arg("--tmpdir")
            .arg(self.tmpdir())
            .env("CONTAINERS_CONF", containers_conf());
        command
    }

    /// Run podman with `args`; its stdout, or an error with its stderr.
    pub fn podman(&self, args: &[&str]) -> Result<String> {
        let output = self
            .command()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running podman")?;
        if !output.status.success() {
            bail!(
                "podman {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Containers (all states) as `(id, name, state, labels)` from `podman ps --format json`.
    pub fn containers(&self) -> Result<Vec<serde_json::Value>> {
        let out = self.podman(&["ps", "--all", "--format", "json"])?;
        if out.trim().is_empty() {
            return Ok(Vec::new());
        }
        Ok(serde_json::from_str(&out)?)
    }

    /// Build the demo image `localhost/fleet-demo:<tag>`: busybox plus applets, `/www/index.html`
    /// containing the tag.
    pub fn import_demo_image(&self, tag: &str) -> Result<String> {
        let build = tempfile::tempdir()?;
        let rootfs = build.path().join("rootfs");
        for dir in ["bin", "www", "data", "tmp"] {
            std::fs::create_dir_all(rootfs.join(dir))?;
        }
        std::fs::copy(busybox()?, rootfs.join("bin/busybox"))?;
        for applet in [
            "sh", "httpd", "sleep", "cat", "echo", "ls", "true", "false", "seq", "yes", "head",
            "date", "touch",
        ] {
            std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet))?;
        }
        std::fs::write(rootfs.join("www/index.html"), tag)?;
        let tar = build.path().join("rootfs.tar");
        let status = Command::new("tar")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tar)
            .arg(".")
            .status()?;
        if !status.success() {
            bail!("tar of the demo rootfs failed");
        }
        let image = format!("localhost/fleet-demo:{tag}");
        self.podman(&["import", "--quiet", &tar.display().to_string(), &image])?;
        Ok(image)
    }

    /// Path of the storage dir itself.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for PodmanStore {
    fn drop(&mut self) {
        let _ = self
            .command()
            .args(["rm", "--all", "--force", "--time", "0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // No `system reset`: it also removes networks, which other storages share.
        let _ = self
            .command()
            .args(["rmi", "--all", "--force"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// The static busybox the demo image is built from (package `busybox-static`).
fn busybox() -> Result<PathBuf> {
    for candidate in ["/bin/busybox", "/usr/bin/busybox"] {
        let path = PathBuf::from(candidate);
        if path.exists() {
            return Ok(path);
        }
    }
    bail!("busybox not found; install busybox-static (scripts/install-deps.sh)")
}

/// GET `http://127.0.0.1:<port>/` and return the body, or `None` when nothing answers.
pub async fn http_get(port: u16) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    if !text.starts_with("HTTP/1.") || !text.contains(" 200 ") {
        return None;
    }
    text.split_once("\r\n\r\n").map(|(_, body)| body.to_owned())
}

//! [`Podman`]: the podman CLI as the project runs it, and the `localhost/fleet-demo` image.
//!
//! Every call sets `CONTAINERS_CONF` to the project's `containers.conf` (runtime `runc`,
//! `default_ulimits = []`; podman's default crun fails on these hosts), installed into the cache
//! directory by `scripts/install-deps.sh`. A handle may also carry its own storage
//! (`--root`/`--runroot`) and network namespace, so several simulated devices on one host never
//! see each other's containers. The CLI with `--format json` is used rather than the REST API:
//! it follows the installed podman exactly.
//!
//! No registry is reachable, so the demo workload is built locally: a `busybox-static` rootfs
//! imported with `podman import`, running busybox `httpd` that answers its version (the tag) at
//! `/`.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde::Deserialize;

use crate::local::bins;

/// Repository of the demo image; the tag is its version.
pub const DEMO_IMAGE_REPO: &str = "localhost/fleet-demo";
/// Port the demo image's HTTP server listens on inside the container.
pub const DEMO_IMAGE_PORT: u16 = 8080;
/// The static busybox (Debian package `busybox-static`) the demo image is made of.
pub const BUSYBOX: &str = "/bin/busybox";
/// busybox applets linked into the demo image: a shell, the HTTP server, and tools for `exec`.
const DEMO_APPLETS: &[&str] = &[
    "sh", "httpd", "cat", "echo", "ls", "sleep", "kill", "ps", "env", "printf", "test", "[",
    "true", "false", "mkdir", "rm", "date", "hostname", "id", "uname", "wget", "head", "tail",
    "grep", "wc", "pwd",
];

/// Why a podman operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PodmanError {
    /// The project's `containers.conf` is not installed.
    #[error(
        "the project's containers.conf was not found at {path}; run scripts/install-deps.sh \
         (podman's defaults — crun with default ulimits — fail on these hosts)"
    )]
    ContainersConfMissing {
        /// Where it was expected.
        path: PathBuf,
    },
    /// `busybox-static` is not installed.
    #[error("{path} (Debian package busybox-static) is missing; run scripts/install-deps.sh")]
    BusyboxMissing {
        /// Where it was expected.
        path: PathBuf,
    },
    /// The podman (or tar) executable could not be started.
    #[error(
        "could not run `{program}`: {source}; is podman installed? run scripts/install-deps.sh"
    )]
    Spawn {
        /// The program.
        program: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A podman command exited unsuccessfully.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its exit code (`None` if killed by a signal).
        code: Option<i32>,
        /// What it printed on stderr.
        stderr: String,
    },
    /// podman printed JSON this code could not read.
    #[error("`{command}` printed unexpected JSON: {source}")]
    Json {
        /// The command line.
        command: String,
        /// The parse error.
        source: serde_json::Error,
    },
    /// A tag or label not acceptable to podman.
    #[error("invalid {what} {value:?}: {why}")]
    Invalid {
        /// What was checked ("image tag", "label").
        what: &'static str,
        /// The value.
        value: String,
        /// The rule it breaks.
        why: &'static str,
    },
    /// A file operation while preparing an image failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

type Result<T, E = PodmanError> = std::result::Result<T, E>;

/// A port published from a container to the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortMapping {
    /// Host port (on 127.0.0.1).
    pub host: u16,
    /// Container port.
    pub container: u16,
}

/// A detached container to start with [`Podman::run`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSpec {
    /// Container name; podman picks one when `None`.
    pub name: Option<String>,
    /// Image reference.
    pub image: String,
    /// Labels (`key`, `value`), e.g. to find and remove the container later.
    pub labels: Vec<(String, String)>,
    /// Published ports, bound on 127.0.0.1.
    pub ports: Vec<PortMapping>,
    /// Environment variables.
    pub env: Vec<(String, String)>,
    /// Command and arguments overriding the image's default; empty keeps it.
    pub command: Vec<String>,
}

/// One container as `podman ps --format json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ContainerSummary {
    /// Full container id.
    pub id: String,
    /// Names.
    #[serde(default)]
    pub names: Vec<String>,
    /// Image reference.
    #[serde(default)]
    pub image: String,
    /// State, e.g. `running`, `exited`.
    #[serde(default)]
    pub state: String,
    /// Labels.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
}

/// The podman CLI with the project's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Podman {
    program: PathBuf,
    containers_conf: PathBuf,
    root: Option<PathBuf>,
    runroot: Option<PathBuf>,
    tmpdir: Option<PathBuf>,
    netns: Option<PathBuf>,
}

impl Podman {
    /// podman from `PATH` with the `containers.conf` from the cache directory
    /// (`$HARMONY_FLEET_CACHE`, else `~/.cache/harmony-fleet`).
    pub fn new() -> Result<Self> {
        let path = bins::cache_dir()
            .unwrap_or_else(|| PathBuf::from(".cache/harmony-fleet"))
            .join("containers.conf");
        Self::with_containers_conf(path)
    }

    /// podman from `PATH` with an explicit `containers.conf`.
    pub fn with_containers_conf(path: impl Into<PathBuf>) -> Result<Self> {
        let containers_conf = path.into();
        if !containers_conf.is_file() {
            return Err(PodmanError::ContainersConfMissing {
                path: containers_conf,
            });
        }
        Ok(Podman {
            program: PathBuf::from("podman"),
            containers_conf,
            root: None,
            runroot: None,
            tmpdir: None,
            netns: None,
        })
    }

    /// Uses private storage (`--root`, `--runroot`): images and containers of this handle are
    /// invisible to every other storage — one per simulated device.
    pub fn with_storage(mut self, root: impl Into<PathBuf>, runroot: impl Into<PathBuf>) -> Self {
        self.root = Some(root.into());
        self.runroot = Some(runroot.into());
        self
    }

    /// Uses `tmpdir` as libpod's state directory (`--tmpdir`). A storage shared with an agent
    /// must use the agent's tmpdir: the default `/run/libpod` is shared by every storage on the
    /// host, and podman "refreshes" (resets) containers when its reboot marker there changes.
    pub fn with_tmpdir(mut self, tmpdir: impl Into<PathBuf>) -> Self {
        self.tmpdir = Some(tmpdir.into());
        self
    }

    /// Runs podman inside the network namespace at `path` (e.g. `/run/netns/dev1`) through
    /// `nsenter --net=…` (not `ip netns exec`, which remounts `/sys` and breaks runc).
    pub fn in_network_namespace(mut self, path: impl Into<PathBuf>) -> Self {
        self.netns = Some(path.into());
        self
    }

    /// The `containers.conf` in use.
    pub fn containers_conf(&self) -> &Path {
        &self.containers_conf
    }

    /// A podman command with the environment and global flags of this handle, for anything the
    /// typed methods do not cover.
    pub fn command<I, S>(&self, args: I) -> tokio::process::Command
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let mut full: Vec<OsString> = Vec::new();
        if let Some(root) = &self.root {
            full.push("--root".into());
            full.push(root.into());
        }
        if let Some(runroot) = &self.runroot {
            full.push("--runroot".into());
            full.push(runroot.into());
        }
        if let Some(tmpdir) = &self.tmpdir {
            full.push("--tmpdir".into());
            full.push(tmpdir.into());
        }
        full.extend(args.into_iter().map(Into::into));
        let mut command = match &self.netns {
            Some(netns) => {
                let mut c = tokio::process::Command::new("nsenter");
                let mut net = OsString::from("--net=");
                net.push(netns);
                c.arg(net).arg("--").arg(&self.program);
                c
            }
            None => tokio::process::Command::new(&self.program),
        };
        command
            .args(full)
            .env("CONTAINERS_CONF", &self.containers_conf)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    }

    /// Runs podman with `args`; its stdout on success, [`PodmanError::Command`] with its stderr
    /// otherwise.
    pub async fn exec<I, S>(&self, args: I) -> Result<String>
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        let args: Vec<OsString> = args.into_iter().map(Into::into).collect();
        let display = format!(
            "podman {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        );
        let output = self
            .command(args)
            .output()
            .await
            .map_err(|source| PodmanError::Spawn {
                program: self.program.display().to_string(),
                source,
            })?;
        if !output.status.success() {
            return Err(PodmanError::Command {
                command: display,
                status: output.status.to_string(),
                code: output.status.code(),
                stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            });
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// Whether `image` is in this handle's storage.
    pub async fn image_exists(&self, image: &str) -> Result<bool> {
        match self.exec(["image", "exists", image]).await {
            Ok(_) => Ok(true),
            Err(PodmanError::Command { code: Some(1), .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Builds `localhost/fleet-demo:<tag>` unless it exists, and returns its reference.
    ///
    /// The image holds only busybox: its default command serves `/` over HTTP on port 8080
    /// (`PORT` overrides) with the body `<tag>`, and exits promptly on SIGTERM.
    pub async fn build_demo_image(&self, tag: &str) -> Result<String> {
        validate_tag(tag)?;
        let image = format!("{DEMO_IMAGE_REPO}:{tag}");
        if self.image_exists(&image).await? {
            return Ok(image);
        }
        let busybox = Path::new(BUSYBOX);
        if !busybox.is_file() {
            return Err(PodmanError::BusyboxMissing {
                path: busybox.to_owned(),
            });
        }
        let work = tempfile::tempdir().map_err(|e| io("creating a temporary directory", e))?;
        let rootfs = work.path().join("rootfs");
        write_demo_rootfs(&rootfs, busybox, tag)?;
        let tarball = work.path().join("rootfs.tar");
        let status = tokio::process::Command::new("tar")
            .arg("--numeric-owner")
            .arg("--owner=0")
            .arg("--group=0")
            .arg("-C")
            .arg(&rootfs)
            .arg("-cf")
            .arg(&tarball)
            .arg(".")
            .status()
            .await
            .map_err(|source| PodmanError::Spawn {
                program: "tar".into(),
                source,
            })?;
        if !status.success() {
            return Err(PodmanError::Command {
                command: format!("tar -C {} -cf {} .", rootfs.display(), tarball.display()),
                status: status.to_string(),
                code: status.code(),
                stderr: String::new(),
            });
        }
        let mut args: Vec<OsString> = vec!["import".into(), "--quiet".into()];
        for change in [
            r#"CMD ["/bin/serve"]"#.to_owned(),
            "ENV PATH=/bin".to_owned(),
            format!("ENV VERSION={tag}"),
            format!("EXPOSE {DEMO_IMAGE_PORT}"),
            "STOPSIGNAL SIGTERM".to_owned(),
            format!("LABEL org.opencontainers.image.version={tag}"),
        ] {
            args.push("--change".into());
            args.push(change.into());
        }
        args.push(tarball.into_os_string());
        args.push(image.clone().into());
        self.exec(args).await?;
        tracing::info!(%image, "built the demo image");
        Ok(image)
    }

    /// Starts a detached container; returns its id.
    pub async fn run(&self, spec: &RunSpec) -> Result<String> {
        let mut args: Vec<String> = vec!["run".into(), "--detach".into()];
        if let Some(name) = &spec.name {
            args.push(format!("--name={name}"));
        }
        for (key, value) in &spec.labels {
            validate_label_key(key)?;
            args.push(format!("--label={key}={value}"));
        }
        for port in &spec.ports {
            args.push(format!(
                "--publish=127.0.0.1:{}:{}",
                port.host, port.container
            ));
        }
        for (key, value) in &spec.env {
            args.push(format!("--env={key}={value}"));
        }
        args.push(spec.image.clone());
        args.extend(spec.command.iter().cloned());
        let id = self.exec(args).await?;
        Ok(id.trim().to_owned())
    }

    /// Containers (running or not) carrying label `key=value`.
    pub async fn ps_by_label(&self, key: &str, value: &str) -> Result<Vec<ContainerSummary>> {
        validate_label_key(key)?;
        let filter = format!("label={key}={value}");
        let args = [
            "ps",
            "--all",
            "--filter",
            filter.as_str(),
            "--format",
            "json",
        ];
        let out = self.exec(args).await?;
        parse_ps(&out).map_err(|source| PodmanError::Json {
            command: format!("podman {}", args.join(" ")),
            source,
        })
    }

    /// Force-removes every container carrying label `key=value` (giving each `stop_timeout_s`
    /// seconds after SIGTERM); returns the removed ids.
    pub async fn rm_by_label(
        &self,
        key: &str,
        value: &str,
        stop_timeout_s: u32,
    ) -> Result<Vec<String>> {
        let ids: Vec<String> = self
            .ps_by_label(key, value)
            .await?
            .into_iter()
            .map(|c| c.id)
            .collect();
        if ids.is_empty() {
            return Ok(ids);
        }
        let mut args = vec![
            "rm".to_owned(),
            "--force".to_owned(),
            "--ignore".to_owned(),
            format!("--time={stop_timeout_s}"),
        ];
        args.extend(ids.iter().cloned());
        self.exec(args).await?;
        Ok(ids)
    }
}

fn io(context: impl Into<String>, source: std::io::Error) -> PodmanError {
    PodmanError::Io {
        context: context.into(),
        source,
    }
}

fn parse_ps(out: &str) -> std::result::Result<Vec<ContainerSummary>, serde_json::Error> {
    if out.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(out)
}

/// An OCI tag: `[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}`.
fn validate_tag(tag: &str) -> Result<()> {
    let invalid = |why| PodmanError::Invalid {
        what: "image tag",
        value: tag.to_owned(),
        why,
    };
    let mut chars = tag.chars();
    match chars.next() {
        None => return Err(invalid("it is empty")),
        Some(c) if !(c.is_ascii_alphanumeric() || c == '_') => {
            return Err(invalid("it must start with a letter, digit or `_`"));
        }
        Some(_) => {}
    }
    if tag.len() > 128 {
        return Err(invalid("it is longer than 128 characters"));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(invalid(
            "only letters, digits, `_`, `.` and `-` are allowed",
        ));
    }
    Ok(())
}

fn validate_label_key(key: &str) -> Result<()> {
    if key.is_empty() || key.contains('=') || key.chars().any(char::is_whitespace) {
        return Err(PodmanError::Invalid {
            what: "label key",
            value: key.to_owned(),
            why: "it must be non-empty, without `=` or whitespace",
        });
    }
    Ok(())
}

const SERVE_SCRIPT: &str = r#"#!/bin/sh
# fleet-demo: answers its version at / over HTTP; exits at once on SIGTERM.
trap 'kill "$pid" 2>/dev/null; exit 0' TERM INT
httpd -f -p "${PORT:-8080}" -h /www &
pid=$!
wait "$pid"
"#;

fn write_demo_rootfs(rootfs: &Path, busybox: &Path, tag: &str) -> Result<()> {
    use std::os::unix::fs::{PermissionsExt, symlink};
    let bin = rootfs.join("bin");
    for dir in ["bin", "www", "tmp", "etc", "proc", "sys", "dev"] {
        let path = rootfs.join(dir);
        std::fs::create_dir_all(&path)
            .map_err(|e| io(format!("creating {}", path.display()), e))?;
    }
    let target = bin.join("busybox");
    std::fs::copy(busybox, &target).map_err(|e| io(format!("copying {}", busybox.display()), e))?;
    for applet in DEMO_APPLETS {
        symlink("busybox", bin.join(applet))
            .map_err(|e| io(format!("linking the applet {applet}"), e))?;
    }
    let files: [(&str, &str, u32); 4] = [
        ("bin/serve", SERVE_SCRIPT, 0o755),
        ("www/index.html", tag, 0o644),
        ("etc/passwd", "root:x:0:0:root:/:/bin/sh\n", 0o644),
        ("etc/group", "root:x:0:\n", 0o644),
    ];
    for (path, contents, mode) in files {
        let path = rootfs.join(path);
        std::fs::write(&path, contents)
            .map_err(|e| io(format!("writing {}", path.display()), e))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
            .map_err(|e| io(format!("chmod {}", path.display()), e))?;
    }
    let tmp = rootfs.join("tmp");
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o1777))
        .map_err(|e| io(format!("chmod {}", tmp.display()), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_version_tags_and_rejects_others() {
        for ok in ["v1", "1.2.3", "v1.0.0-rc.1", "_x"] {
            validate_tag(ok).expect(ok);
        }
        for bad in ["", "-v1", ".v1", "v1/x", "v 1", &"x".repeat(129)] {
            assert!(validate_tag(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn missing_containers_conf_names_the_install_script() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err =
            Podman::with_containers_conf(dir.path().join("containers.conf")).expect_err("missing");
        assert!(err.to_string().contains("scripts/install-deps.sh"), "{err}");
    }

    #[test]
    fn parses_podman_ps_json() {
        let out = r#"[{"AutoRemove":false,"Command":["/bin/serve"],"Created":1,"Id":"abc",
            "Image":"localhost/fleet-demo:v1","Labels":{"fleet":"t1"},"Names":["web"],
            "State":"running","Ports":null}]"#;
        let ps = parse_ps(out).expect("parse");
        assert_eq!(ps[0].id, "abc");
        assert_eq!(ps[0].names, vec!["web".to_owned()]);
        assert_eq!(
            ps[0]
                .labels
                .as_ref()
                .and_then(|l| l.get("fleet"))
                .map(String::as_str),
            Some("t1")
        );
        assert!(parse_ps("\n").expect("empty").is_empty());
    }

    #[test]
    fn demo_rootfs_serves_the_tag_with_busybox() {
        let dir = tempfile::tempdir().expect("tempdir");
        let fake_busybox = dir.path().join("busybox");
        std::fs::write(&fake_busybox, "ELF").expect("write");
        let rootfs = dir.path().join("rootfs");
        write_demo_rootfs(&rootfs, &fake_busybox, "v7").expect("rootfs");
        assert_eq!(
            std::fs::read_to_string(rootfs.join("www/index.html")).expect("index"),
            "v7"
        );
        assert_eq!(
            std::fs::read_link(rootfs.join("bin/httpd")).expect("link"),
            Path::new("busybox")
        );
    }
}

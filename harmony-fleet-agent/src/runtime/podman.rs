//! [`PodmanCli`]: the real [`ContainerRuntime`], driving the `podman` command line and reading
//! its `--format json` output (adr/0011: the CLI is stable across the podman versions devices
//! run, Debian ships 4.3, while the REST client crates trail podman releases).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use async_trait::async_trait;
use serde::Deserialize;
use tokio::process::Command;

use super::{
    Completion, ContainerRuntime, ContainerSpec, ContainerState, ContainerSummary,
    LABEL_DEPLOYMENT, LogFollower, Logs, RuntimeError,
};

/// Longest podman error text kept in a message (the tail is kept: podman prints `Error: …` last).
const MAX_STDERR: usize = 4096;

/// Where and how podman is run. Several agents on one host (local test "devices") each get
/// their own storage through `root`/`runroot`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodmanOptions {
    /// The podman executable (`podman`, looked up in `PATH`).
    pub binary: PathBuf,
    /// `--root`: storage directory; `None` uses podman's default.
    pub root: Option<PathBuf>,
    /// `--runroot`: runtime state directory; `None` uses podman's default.
    pub runroot: Option<PathBuf>,
    /// `--tmpdir`: libpod's own state (the "alive" marker, events); `None` uses podman's
    /// default `/run/libpod`, which is shared by every storage on the host.
    pub tmpdir: Option<PathBuf>,
    /// Value of `CONTAINERS_CONF` for every podman call; `None` inherits the environment.
    pub containers_conf: Option<PathBuf>,
    /// Run podman inside this network namespace (`/run/netns/<name>`) through
    /// `nsenter --net=…`, so the containers publish ports at the device's own address (several
    /// local devices on one host). `None`: the agent's own namespace.
    pub network_namespace: Option<PathBuf>,
    /// Deadline for ordinary podman calls.
    pub command_timeout: Duration,
    /// Deadline for `podman pull`.
    pub pull_timeout: Duration,
}

impl Default for PodmanOptions {
    fn default() -> Self {
        Self {
            binary: PathBuf::from("podman"),
            root: None,
            runroot: None,
            tmpdir: None,
            containers_conf: None,
            network_namespace: None,
            command_timeout: Duration::from_secs(120),
            pull_timeout: Duration::from_secs(600),
        }
    }
}

/// The podman CLI as a [`ContainerRuntime`].
#[derive(Debug, Clone)]
pub struct PodmanCli {
    options: PodmanOptions,
}

/// One line of `podman ps --format json` (podman 4.x field names).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PsEntry {
    id: String,
    #[serde(default)]
    names: Vec<String>,
    #[serde(default)]
    image: String,
    #[serde(default)]
    state: String,
    #[serde(default)]
    exit_code: i32,
    #[serde(default)]
    labels: Option<BTreeMap<String, String>>,
}

/// Successful output of one podman call.
struct Output {
    stdout: String,
    stderr: String,
}

impl PodmanCli {
    /// A runtime with these options. Does not run podman yet.
    pub fn new(options: PodmanOptions) -> Self {
        Self { options }
    }

    /// The options in use.
    pub fn options(&self) -> &PodmanOptions {
        &self.options
    }

    fn command_line(&self, args: &[String]) -> String {
        let mut line = match &self.options.network_namespace {
            Some(netns) => format!("nsenter --net={} ", netns.display()),
            None => String::new(),
        };
        line.push_str(&self.options.binary.display().to_string());
        for arg in args {
            line.push(' ');
            line.push_str(arg);
        }
        line
    }

    /// Run podman with the global options and `args`; a non-zero exit is an error carrying
    /// podman's stderr.
    async fn podman(&self, args: Vec<String>, timeout: Duration) -> Result<Output, RuntimeError> {
        let (status, output) = self.podman_status(&args, timeout).await?;
        if status.success() {
            Ok(output)
        } else {
            Err(RuntimeError::Failed {
                command: self.command_line(&args),
                status: status.to_string(),
                stderr: trim_stderr(&output.stderr),
            })
        }
    }

    /// A podman command with the global options, stdin closed, killed when dropped.
    fn base_command(&self, args: &[String]) -> Command {
        // `nsenter --net` only: `ip netns exec` also remounts /sys, after which runc finds no
        // cgroup mount.
        let mut command = match &self.options.network_namespace {
            Some(netns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net={}", netns.display()))
                    .arg("--")
                    .arg(&self.options.binary);
                c
            }
            None => Command::new(&self.options.binary),
        };
        if let Some(root) = &self.options.root {
            command.arg("--root").arg(root);
        }
        if let Some(runroot) = &self.options.runroot {
            command.arg("--runroot").arg(runroot);
        }
        if let Some(tmpdir) = &self.options.tmpdir {
            command.arg("--tmpdir").arg(tmpdir);
        }
        if let Some(conf) = &self.options.containers_conf {
            command.env("CONTAINERS_CONF", conf);
        }
        command.args(args).stdin(Stdio::null()).kill_on_drop(true);
        tracing::debug!(command = %self.command_line(args), "podman");
        command
    }

    fn spawn_error(&self, source: std::io::Error) -> RuntimeError {
        RuntimeError::Spawn {
            program: self.options.binary.display().to_string(),
            source,
        }
    }

    /// Run podman and return its exit status with the output, whatever the status.
    async fn podman_status(
        &self,
        args: &[String],
        timeout: Duration,
    ) -> Result<(std::process::ExitStatus, Output), RuntimeError> {
        let mut command = self.base_command(args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = command.spawn().map_err(|err| self.spawn_error(err))?;
        let output = match tokio::time::timeout(timeout, child.wait_with_output()).await {
            Ok(Ok(output)) => output,
            Ok(Err(source)) => return Err(self.spawn_error(source)),
            Err(_) => {
                return Err(RuntimeError::Timeout {
                    command: self.command_line(args),
                    timeout,
                });
            }
        };
        Ok((
            output.status,
            Output {
                stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            },
        ))
    }

    /// Run podman with stdout and stderr sent to one pipe, so their lines stay in the order
    /// podman wrote them (`podman logs` replays a container's two streams that way).
    async fn podman_status_merged(
        &self,
        args: &[String],
        timeout: Duration,
    ) -> Result<(std::process::ExitStatus, String), RuntimeError> {
        let (mut reader, writer) = std::io::pipe().map_err(|err| self.spawn_error(err))?;
        let mut command = self.base_command(args);
        let writer_clone = writer.try_clone().map_err(|err| self.spawn_error(err))?;
        command.stdout(writer_clone).stderr(writer);
        let mut child = command.spawn().map_err(|err| self.spawn_error(err))?;
        // The command keeps its copies of the pipe's write end: drop them so the reader sees EOF.
        drop(command);
        let read = tokio::task::spawn_blocking(move || {
            let mut buffer = Vec::new();
            std::io::Read::read_to_end(&mut reader, &mut buffer).map(|_| buffer)
        });
        let status = match tokio::time::timeout(timeout, child.wait()).await {
            Ok(Ok(status)) => status,
            Ok(Err(source)) => return Err(self.spawn_error(source)),
            Err(_) => {
                return Err(RuntimeError::Timeout {
                    command: self.command_line(args),
                    timeout,
                });
            }
        };
        let bytes = read
            .await
            .map_err(|err| self.spawn_error(std::io::Error::other(err)))?
            .map_err(|err| self.spawn_error(err))?;
        Ok((status, String::from_utf8_lossy(&bytes).into_owned()))
    }

    async fn container_id_exists(&self, id: &str) -> Result<bool, RuntimeError> {
        let args = vec!["container".into(), "exists".into(), id.to_owned()];
        let (status, output) = self
            .podman_status(&args, self.options.command_timeout)
            .await?;
        match status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(RuntimeError::Failed {
                command: self.command_line(&args),
                status: status.to_string(),
                stderr: trim_stderr(&output.stderr),
            }),
        }
    }
}

/// The arguments of `podman run` (after `run`) for a spec, `-d` included.
pub(crate) fn run_args(spec: &ContainerSpec) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "run".into(),
        "-d".into(),
        "--pull".into(),
        "never".into(),
        "--name".into(),
        spec.name.clone(),
        "--stop-signal".into(),
        spec.stop.signal.clone(),
        "--stop-timeout".into(),
        spec.stop.grace.as_secs().to_string(),
        "--restart".into(),
        spec.restart.as_podman().into(),
    ];
    for (key, value) in &spec.labels {
        args.push("--label".into());
        args.push(format!("{key}={value}"));
    }
    for (key, value) in &spec.env {
        args.push("--env".into());
        args.push(format!("{key}={value}"));
    }
    for port in &spec.ports {
        args.push("--publish".into());
        let host = match &port.host_ip {
            Some(ip) if ip.contains(':') => format!("[{ip}]:{}", port.host_port),
            Some(ip) => format!("{ip}:{}", port.host_port),
            None => port.host_port.to_string(),
        };
        args.push(format!("{host}:{}/{}", port.container_port, port.protocol));
    }
    for volume in &spec.volumes {
        args.push("--volume".into());
        let mode = if volume.read_only { ":ro" } else { "" };
        args.push(format!("{}:{}{mode}", volume.source, volume.target));
    }
    if !spec.command.is_empty() {
        args.push("--entrypoint".into());
        // The JSON-array form keeps each element one argv entry, spaces included.
        args.push(serde_json::to_string(&spec.command).unwrap_or_default());
    }
    args.push(spec.image.clone());
    args.extend(spec.args.iter().cloned());
    args
}

fn parse_state(state: &str, exit_code: i32) -> ContainerState {
    match state {
        "running" => ContainerState::Running,
        "exited" | "stopped" => ContainerState::Exited(exit_code),
        "created" | "configured" | "initialized" => ContainerState::Created,
        _ => ContainerState::Other,
    }
}

fn trim_stderr(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.len() <= MAX_STDERR {
        return trimmed.to_owned();
    }
    let mut start = trimmed.len() - MAX_STDERR;
    while !trimmed.is_char_boundary(start) {
        start += 1;
    }
    format!("…{}", &trimmed[start..])
}

fn is_missing_container(error: &RuntimeError) -> bool {
    matches!(error, RuntimeError::Failed { stderr, .. }
        if stderr.contains("no such container") || stderr.contains("no container with"))
}

#[async_trait]
impl ContainerRuntime for PodmanCli {
    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        let args: Vec<String> = vec![
            "ps".into(),
            "--all".into(),
            "--filter".into(),
            format!("label={LABEL_DEPLOYMENT}"),
            "--format".into(),
            "json".into(),
        ];
        let output = self
            .podman(args.clone(), self.options.command_timeout)
            .await?;
        let entries: Vec<PsEntry> = if output.stdout.trim().is_empty() {
            Vec::new()
        } else {
            serde_json::from_str(&output.stdout).map_err(|err| RuntimeError::Parse {
                command: self.command_line(&args),
                message: err.to_string(),
            })?
        };
        Ok(entries
            .into_iter()
            .map(|entry| ContainerSummary {
                state: parse_state(&entry.state, entry.exit_code),
                name: entry.names.into_iter().next().unwrap_or_default(),
                id: entry.id,
                image: entry.image,
                labels: entry.labels.unwrap_or_default(),
            })
            .collect())
    }

    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        let args = vec!["image".into(), "exists".into(), image.to_owned()];
        let (status, output) = self
            .podman_status(&args, self.options.command_timeout)
            .await?;
        match status.code() {
            Some(0) => Ok(true),
            Some(1) => Ok(false),
            _ => Err(RuntimeError::Failed {
                command: self.command_line(&args),
                status: status.to_string(),
                stderr: trim_stderr(&output.stderr),
            }),
        }
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        let args = vec!["pull".into(), "--quiet".into(), image.to_owned()];
        self.podman(args, self.options.pull_timeout).await?;
        Ok(())
    }

    async fn run(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let output = self
            .podman(run_args(spec), self.options.command_timeout)
            .await?;
        let id = output.stdout.trim();
        if id.is_empty() {
            return Err(RuntimeError::Parse {
                command: self.command_line(&run_args(spec)),
                message: "no container id printed".to_owned(),
            });
        }
        Ok(id.to_owned())
    }

    async fn run_to_completion(
        &self,
        spec: &ContainerSpec,
        timeout: Duration,
    ) -> Result<Completion, RuntimeError> {
        let id = self.run(spec).await?;
        let wait_args = vec!["wait".into(), id.clone()];
        let waited = self.podman(wait_args.clone(), timeout).await;
        let tail = self
            .logs(&id, 20)
            .await
            .map(|logs| logs.text)
            .unwrap_or_default();
        let removed = self
            .podman(
                vec![
                    "rm".into(),
                    "--force".into(),
                    "--time".into(),
                    "0".into(),
                    "--ignore".into(),
                    id.clone(),
                ],
                self.options.command_timeout,
            )
            .await;
        if let Err(err) = removed {
            tracing::warn!(container = %id, error = %err, "cannot remove finished init container");
        }
        let output = match waited {
            Ok(output) => output,
            Err(RuntimeError::Timeout { command, .. }) => {
                return Err(RuntimeError::Timeout { command, timeout });
            }
            Err(err) => return Err(err),
        };
        let exit_code = output
            .stdout
            .trim()
            .parse::<i32>()
            .map_err(|err| RuntimeError::Parse {
                command: self.command_line(&wait_args),
                message: format!("exit code {:?}: {err}", output.stdout.trim()),
            })?;
        Ok(Completion {
            exit_code,
            output_tail: tail.trim().to_owned(),
        })
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        self.podman(
            vec!["start".into(), id.to_owned()],
            self.options.command_timeout,
        )
        .await?;
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let args = vec![
            "stop".into(),
            "--time".into(),
            grace.as_secs().to_string(),
            id.to_owned(),
        ];
        // podman itself waits `grace` before killing; allow for that on top of the usual deadline.
        match self
            .podman(args, self.options.command_timeout + grace)
            .await
        {
            Ok(_) => Ok(()),
            Err(err) if is_missing_container(&err) => Ok(()),
            Err(err) => {
                if self.container_id_exists(id).await? {
                    Err(err)
                } else {
                    Ok(())
                }
            }
        }
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let args = vec![
            "rm".into(),
            "--force".into(),
            "--ignore".into(),
            id.to_owned(),
        ];
        self.podman(args, self.options.command_timeout).await?;
        Ok(())
    }

    async fn logs(&self, id: &str, tail: u32) -> Result<Logs, RuntimeError> {
        let args = vec![
            "logs".into(),
            "--tail".into(),
            tail.to_string(),
            id.to_owned(),
        ];
        let (status, output) = self
            .podman_status_merged(&args, self.options.command_timeout)
            .await?;
        if !status.success() {
            return Err(RuntimeError::Failed {
                command: self.command_line(&args),
                status: status.to_string(),
                stderr: trim_stderr(&output),
            });
        }
        Ok(Logs { text: output })
    }

    async fn follow_logs(&self, id: &str, tail: u32) -> Result<LogFollower, RuntimeError> {
        let args = vec![
            "logs".into(),
            "--follow".into(),
            "--tail".into(),
            tail.to_string(),
            id.to_owned(),
        ];
        let mut command = self.base_command(&args);
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().map_err(|err| self.spawn_error(err))?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let mut readers = Vec::new();
        if let Some(out) = child.stdout.take() {
            readers.push(tokio::spawn(forward_lines(out, tx.clone())));
        }
        if let Some(err) = child.stderr.take() {
            readers.push(tokio::spawn(forward_lines(err, tx.clone())));
        }
        tokio::spawn(async move {
            tokio::select! {
                () = tx.closed() => {
                    // Nobody follows any more: stop podman (kill_on_drop does the rest).
                    let _ = child.kill().await;
                }
                _ = child.wait() => {}
            }
            for reader in readers {
                let _ = reader.await;
            }
        });
        Ok(LogFollower { lines: rx })
    }
}

/// Sends each line of `reader` to `tx` until EOF or until nobody listens.
async fn forward_lines(
    reader: impl tokio::io::AsyncRead + Unpin,
    tx: tokio::sync::mpsc::Sender<String>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut lines = tokio::io::BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(line).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::runtime::{PortMapping, RestartPolicy, StopPolicy, VolumeMount};

    fn spec() -> ContainerSpec {
        ContainerSpec {
            name: "web-http-0123abcd".into(),
            image: "localhost/fleet-demo:v1".into(),
            command: vec!["/bin/sh".into(), "-c".into()],
            args: vec!["echo hello world".into()],
            env: BTreeMap::from([("A".into(), "1 2".into())]),
            ports: vec![PortMapping {
                host_ip: None,
                host_port: 18080,
                container_port: 8080,
                protocol: "tcp".into(),
            }],
            volumes: vec![VolumeMount {
                source: "/srv/data".into(),
                target: "/data".into(),
                read_only: true,
            }],
            labels: BTreeMap::from([(LABEL_DEPLOYMENT.into(), "web".into())]),
            restart: RestartPolicy::Always,
            stop: StopPolicy {
                signal: "SIGTERM".into(),
                grace: Duration::from_secs(7),
            },
        }
    }

    #[test]
    fn run_args_keep_each_argument_whole_and_never_pull() {
        let args = run_args(&spec());
        let joined = args.join("|");
        assert!(joined.starts_with("run|-d|--pull|never|--name|web-http-0123abcd"));
        assert!(joined.contains("--stop-signal|SIGTERM|--stop-timeout|7|--restart|always"));
        assert!(joined.contains("--label|io.nationtech.fleet.deployment=web"));
        assert!(joined.contains("--env|A=1 2"));
        assert!(joined.contains("--publish|18080:8080/tcp"));
        assert!(joined.contains("--volume|/srv/data:/data:ro"));
        assert!(joined.ends_with(
            r#"--entrypoint|["/bin/sh","-c"]|localhost/fleet-demo:v1|echo hello world"#
        ));
    }

    #[test]
    fn parses_podman_4_ps_json() {
        let json = r#"[{"Id":"abc","Names":["web"],"Image":"img","State":"exited","ExitCode":3,
            "Labels":{"io.nationtech.fleet.deployment":"web"}},
            {"Id":"def","Names":["x"],"Image":"img","State":"running","Labels":null}]"#;
        let entries: Vec<PsEntry> = serde_json::from_str(json).expect("valid ps json");
        assert_eq!(entries.len(), 2);
        assert_eq!(
            parse_state(&entries[0].state, entries[0].exit_code),
            ContainerState::Exited(3)
        );
        assert_eq!(
            parse_state(&entries[1].state, entries[1].exit_code),
            ContainerState::Running
        );
        assert!(entries[1].labels.is_none());
    }

    #[test]
    fn long_stderr_keeps_its_tail() {
        let long = format!("{}Error: the reason", "x".repeat(10_000));
        let trimmed = trim_stderr(&long);
        assert!(trimmed.ends_with("Error: the reason"));
        assert!(trimmed.len() <= MAX_STDERR + 4);
    }
}

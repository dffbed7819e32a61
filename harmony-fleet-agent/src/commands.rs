//! The command verbs the agent serves on `device-commands.<device>.>` (core NATS
//! request/reply): `ping`, `exec` (`sh -c` on the host, deadline, output cap), `logs` (tail
//! of a deployment's containers), and the session verbs `logs-stream`
//! ([`crate::logs_stream`]) and `shell` ([`crate::shell`]). Every reply is a contract
//! `CommandReply`: a result or a typed error, never silence.
//!
//! Session requests are long polls: they do not take one of the
//! `MAX_CONCURRENT_COMMANDS` slots (a few open tails must not starve `exec`); the number of
//! sessions is capped instead.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use harmony_fleet_contracts::DeviceId;
use harmony_fleet_contracts::commands::{
    self as wire, CommandError, CommandReply, ErrorKind, ExecReply, ExecRequest, LogsReply,
    LogsRequest, PingReply, PingRequest, ServiceLogs, Verb,
};
use harmony_fleet_contracts::device::AgentVersion;
use harmony_fleet_contracts::keys::{self, CommandSubject, KeyError};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::connection::Connection;
use crate::runtime::{
    ContainerRuntime, ContainerSummary, LABEL_DEPLOYMENT, LABEL_INIT, LABEL_SERVICE,
};
use crate::sessions::Sessions;

/// How often idle sessions are looked for.
const REAP_INTERVAL: Duration = Duration::from_secs(5);

/// Commands handled at the same time; further requests wait for a slot.
const MAX_CONCURRENT_COMMANDS: usize = 8;
/// How long output readers may take after an `exec` was killed at its deadline.
const DRAIN_AFTER_KILL: Duration = Duration::from_secs(2);

/// What command handlers need: who we are and the runtime to read logs from.
pub struct CommandContext<R: ?Sized> {
    /// This device.
    pub device: DeviceId,
    /// Version reported by `ping`.
    pub agent_version: AgentVersion,
    /// When the agent started (for `ping`'s uptime).
    pub started: Instant,
    /// The container runtime.
    pub runtime: Arc<R>,
    /// Open log tails and shells.
    pub sessions: Arc<Sessions>,
}

/// Serve commands until `shutdown`. The subscription survives reconnects (the client
/// re-subscribes), so this loop only ends on shutdown or when the client is closed.
pub async fn serve<R: ContainerRuntime + ?Sized>(
    connection: Connection,
    context: Arc<CommandContext<R>>,
    shutdown: CancellationToken,
) {
    let subject = keys::command_serve_pattern(&context.device);
    let slots = Arc::new(Semaphore::new(MAX_CONCURRENT_COMMANDS));
    let reaper = {
        let sessions = context.sessions.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(REAP_INTERVAL);
            loop {
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    _ = tick.tick() => sessions.reap(),
                }
            }
            sessions.close_all();
        })
    };
    let _reaper = AbortOnDrop(reaper);
    loop {
        let mut subscription = match connection.client().subscribe(subject.clone()).await {
            Ok(subscription) => subscription,
            Err(err) => {
                tracing::error!(%subject, error = %err, "cannot subscribe to commands; retrying");
                tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = tokio::time::sleep(Duration::from_secs(1)) => continue,
                }
            }
        };
        tracing::info!(%subject, "serving commands");
        loop {
            let message = tokio::select! {
                () = shutdown.cancelled() => return,
                message = subscription.next() => message,
            };
            let Some(message) = message else {
                tracing::warn!(%subject, "command subscription ended; subscribing again");
                break;
            };
            let Some(reply_to) = message.reply.clone() else {
                tracing::debug!(subject = %message.subject, "command without reply subject ignored");
                continue;
            };
            let is_session = CommandSubject::parse(&message.subject)
                .is_ok_and(|s| matches!(s.verb, Verb::LogsStream | Verb::Shell));
            let permit = if is_session {
                None
            } else {
                let Ok(permit) = slots.clone().acquire_owned().await else {
                    return;
                };
                Some(permit)
            };
            let context = context.clone();
            let client = connection.client().clone();
            tokio::spawn(async move {
                let reply = handle(&context, &message.subject, &message.payload).await;
                if let Err(err) = client.publish(reply_to, reply.into()).await {
                    tracing::warn!(error = %err, "cannot send command reply");
                }
                drop(permit);
            });
        }
    }
}

/// Aborts a task when dropped (the reaper ends with the serve loop).
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Handle one request; returns the serialized reply.
pub async fn handle<R: ContainerRuntime + ?Sized>(
    context: &CommandContext<R>,
    subject: &str,
    payload: &[u8],
) -> Vec<u8> {
    let verb = match CommandSubject::parse(subject) {
        Ok(parsed) if parsed.device == context.device => parsed.verb,
        Ok(parsed) => {
            return encode::<()>(Err(CommandError::new(
                ErrorKind::BadRequest,
                format!(
                    "this is device {}, not {}: send the command to device-commands.{}.<verb>",
                    context.device, parsed.device, parsed.device
                ),
            )));
        }
        Err(KeyError::UnknownVerb { verb, .. }) => {
            return encode::<()>(Err(CommandError::new(
                ErrorKind::Unsupported,
                format!(
                    "unknown verb `{verb}`: this agent serves ping, exec, logs, logs-stream and shell"
                ),
            )));
        }
        Err(err) => {
            return encode::<()>(Err(CommandError::new(
                ErrorKind::BadRequest,
                err.to_string(),
            )));
        }
    };
    tracing::info!(%verb, "command");
    match verb {
        Verb::Ping => {
            encode(
                wire::decode_request::<PingRequest>(verb, payload).map(|_| PingReply {
                    device_id: context.device.clone(),
                    agent_version: context.agent_version.clone(),
                    uptime_seconds: context.started.elapsed().as_secs(),
                }),
            )
        }
        Verb::Exec => {
            let result = match wire::decode_request::<ExecRequest>(verb, payload) {
                Ok(request) => exec(&request).await,
                Err(err) => Err(err),
            };
            encode(result)
        }
        Verb::Logs => {
            let result = match wire::decode_request::<LogsRequest>(verb, payload) {
                Ok(request) => logs(context.runtime.as_ref(), &request).await,
                Err(err) => Err(err),
            };
            encode(result)
        }
        Verb::LogsStream => {
            let result = match wire::decode_request(verb, payload) {
                Ok(request) => {
                    crate::logs_stream::handle(&context.runtime, &context.sessions, request).await
                }
                Err(err) => Err(err),
            };
            encode(result)
        }
        Verb::Shell => {
            let result = match wire::decode_request(verb, payload) {
                Ok(request) => crate::shell::handle(&context.sessions, request).await,
                Err(err) => Err(err),
            };
            encode(result)
        }
        other => encode::<()>(Err(CommandError::unsupported(other))),
    }
}

fn encode<T: Serialize>(result: Result<T, CommandError>) -> Vec<u8> {
    let reply = CommandReply::from(result);
    serde_json::to_vec(&reply).unwrap_or_else(|err| {
        // Only reachable if a reply type stopped being serializable; still answer.
        format!(r#"{{"error":{{"kind":"Runtime","message":"cannot encode reply: {err}"}}}}"#)
            .into_bytes()
    })
}

/// Bytes read from one output stream: the first `limit` bytes, and whether more came.
#[derive(Debug, Default)]
struct Captured {
    bytes: Vec<u8>,
    overflow: bool,
}

async fn read_capped(mut reader: impl AsyncRead + Unpin, limit: usize, into: Arc<Mutex<Captured>>) {
    let mut buffer = [0u8; 8192];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let Ok(mut captured) = into.lock() else {
                    return;
                };
                let room = limit.saturating_sub(captured.bytes.len());
                let kept = n.min(room);
                captured.bytes.extend_from_slice(&buffer[..kept]);
                if kept < n {
                    // Keep draining so the process never blocks on a full pipe.
                    captured.overflow = true;
                }
            }
        }
    }
}

fn take(captured: &Arc<Mutex<Captured>>) -> Captured {
    captured
        .lock()
        .map(|mut c| std::mem::take(&mut *c))
        .unwrap_or_default()
}

/// Run `sh -c <command>` in its own process group; kill the group at the deadline.
async fn exec(request: &ExecRequest) -> Result<ExecReply, CommandError> {
    request.validate()?;
    let deadline = request.deadline();
    let cap = request.output_cap();
    let started = Instant::now();
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(&request.command)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .map_err(|err| {
            CommandError::new(ErrorKind::Runtime, format!("cannot start `sh -c`: {err}"))
        })?;
    let pid = child.id();
    let stdout = Arc::new(Mutex::new(Captured::default()));
    let stderr = Arc::new(Mutex::new(Captured::default()));
    let mut readers = Vec::new();
    if let Some(out) = child.stdout.take() {
        readers.push(tokio::spawn(read_capped(out, cap, stdout.clone())));
    }
    if let Some(err) = child.stderr.take() {
        readers.push(tokio::spawn(read_capped(err, cap, stderr.clone())));
    }
    let (exit_code, timed_out) = match tokio::time::timeout(deadline, child.wait()).await {
        Ok(Ok(status)) => (status.code(), false),
        Ok(Err(err)) => {
            return Err(CommandError::new(
                ErrorKind::Runtime,
                format!("waiting for `sh -c` failed: {err}"),
            ));
        }
        Err(_) => {
            kill_group(pid);
            let _ = child.kill().await;
            (None, true)
        }
    };
    // Output may still be in flight; a background process holding the pipe must not hold
    // the reply: give the readers what is left of the deadline (at least a moment), then
    // kill whatever remains of the process group.
    let drain = deadline
        .saturating_sub(started.elapsed())
        .max(DRAIN_AFTER_KILL);
    if tokio::time::timeout(drain, futures::future::join_all(readers))
        .await
        .is_err()
    {
        kill_group(pid);
    }
    let out = take(&stdout);
    let err = take(&stderr);
    let capped = wire::cap_output(&out.bytes, &err.bytes, cap);
    Ok(ExecReply {
        exit_code,
        stdout: capped.stdout,
        stderr: capped.stderr,
        truncated: capped.truncated || out.overflow || err.overflow,
        timed_out,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    })
}

fn kill_group(pid: Option<u32>) {
    let Some(pid) = pid.and_then(|pid| i32::try_from(pid).ok()) else {
        return;
    };
    if let Err(err) = nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    ) {
        tracing::debug!(pid, error = %err, "killpg of timed-out exec");
    }
}

/// The service containers of a deployment (one service, or all), by service name; a
/// `NotFound` error when there is none.
pub async fn select_containers<R: ContainerRuntime + ?Sized>(
    runtime: &R,
    deployment: &harmony_fleet_contracts::DeploymentName,
    service: Option<&str>,
) -> Result<Vec<ContainerSummary>, CommandError> {
    let containers = runtime.list().await.map_err(|err| {
        CommandError::new(ErrorKind::Runtime, format!("cannot list containers: {err}"))
    })?;
    let mut selected: Vec<_> = containers
        .into_iter()
        .filter(|c| c.label(LABEL_DEPLOYMENT) == Some(deployment.as_str()))
        .filter(|c| c.label(LABEL_INIT) != Some("true"))
        .filter(|c| match service {
            Some(service) => c.label(LABEL_SERVICE) == Some(service),
            None => true,
        })
        .collect();
    if selected.is_empty() {
        let what = match service {
            Some(service) => format!("service `{service}` of deployment `{deployment}`"),
            None => format!("deployment `{deployment}`"),
        };
        return Err(CommandError::new(
            ErrorKind::NotFound,
            format!("no container of {what} on this device; check the deployment's device-state"),
        ));
    }
    selected.sort_by(|a, b| a.label(LABEL_SERVICE).cmp(&b.label(LABEL_SERVICE)));
    Ok(selected)
}

/// The tail of the logs of every service container of a deployment.
async fn logs<R: ContainerRuntime + ?Sized>(
    runtime: &R,
    request: &LogsRequest,
) -> Result<LogsReply, CommandError> {
    let selected =
        select_containers(runtime, &request.deployment, request.service.as_deref()).await?;
    let wanted = request.tail_lines();
    let count = selected.len();
    let max_lines = (wire::MAX_LOG_LINES / count).max(1).min(wanted);
    let max_bytes = wire::MAX_LOG_BYTES / count;
    let mut reply = LogsReply::default();
    for container in selected {
        let tail = u32::try_from(wanted).unwrap_or(u32::MAX);
        let logs = runtime.logs(&container.id, tail).await.map_err(|err| {
            CommandError::new(
                ErrorKind::Runtime,
                format!(
                    "cannot read the logs of container {}: {err}",
                    container.name
                ),
            )
        })?;
        let lines: Vec<String> = logs.text.lines().map(str::to_owned).collect();
        let (lines, truncated) = wire::tail_lines(lines, max_lines, max_bytes);
        reply.truncated |= truncated;
        reply.services.push(ServiceLogs {
            service: container
                .label(LABEL_SERVICE)
                .unwrap_or_default()
                .to_owned(),
            container_id: Some(container.id.clone()),
            lines,
        });
    }
    Ok(reply)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::fake::FakeRuntime;

    fn context() -> CommandContext<FakeRuntime> {
        CommandContext {
            device: "dev-1".parse().expect("device id"),
            agent_version: AgentVersion::lossy("0.1.0"),
            started: Instant::now(),
            runtime: Arc::new(FakeRuntime::default()),
            sessions: Arc::new(Sessions::default()),
        }
    }

    async fn call<T: serde::de::DeserializeOwned>(
        subject: &str,
        payload: &str,
    ) -> Result<T, CommandError> {
        let bytes = handle(&context(), subject, payload.as_bytes()).await;
        serde_json::from_slice::<CommandReply<T>>(&bytes)
            .expect("reply is a CommandReply")
            .into_result()
    }

    #[tokio::test]
    async fn ping_names_the_device() {
        let reply: PingReply = call("device-commands.dev-1.ping", "").await.expect("pong");
        assert_eq!(reply.device_id.as_str(), "dev-1");
    }

    #[tokio::test]
    async fn exec_reports_exit_code_and_both_streams() {
        let reply: ExecReply = call(
            "device-commands.dev-1.exec",
            r#"{"command":"echo out; echo err >&2; exit 3"}"#,
        )
        .await
        .expect("exec ran");
        assert_eq!(reply.exit_code, Some(3));
        assert_eq!(reply.stdout, "out\n");
        assert_eq!(reply.stderr, "err\n");
        assert!(!reply.truncated && !reply.timed_out);
    }

    #[tokio::test]
    async fn exec_output_beyond_the_cap_is_truncated() {
        let reply: ExecReply = call(
            "device-commands.dev-1.exec",
            r#"{"command":"yes | head -c 100000","maxOutputBytes":1000}"#,
        )
        .await
        .expect("exec ran");
        assert!(reply.truncated);
        assert_eq!(reply.stdout.len(), 1000);
        assert_eq!(reply.exit_code, Some(0));
    }

    #[tokio::test]
    async fn exec_past_its_deadline_is_killed_with_partial_output() {
        let started = Instant::now();
        let reply: ExecReply = call(
            "device-commands.dev-1.exec",
            r#"{"command":"echo started; sleep 30 & sleep 30","deadlineMs":300}"#,
        )
        .await
        .expect("exec ran");
        assert!(reply.timed_out);
        assert_eq!(reply.exit_code, None);
        assert_eq!(reply.stdout, "started\n");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    #[tokio::test]
    async fn unknown_verb_is_unsupported() {
        let err = call::<()>("device-commands.dev-1.reboot", "")
            .await
            .expect_err("refused");
        assert_eq!(err.kind, ErrorKind::Unsupported);
        let err = call::<()>("device-commands.dev-1.shell", "")
            .await
            .expect_err("refused");
        assert_eq!(
            err.kind,
            ErrorKind::BadRequest,
            "a shell request needs an op"
        );
    }

    #[tokio::test]
    async fn logs_stream_of_an_unknown_deployment_is_not_found() {
        let err = call::<()>(
            "device-commands.dev-1.logs-stream",
            r#"{"op":"open","deployment":"web"}"#,
        )
        .await
        .expect_err("refused");
        assert_eq!(err.kind, ErrorKind::NotFound);
        let err = call::<()>(
            "device-commands.dev-1.logs-stream",
            r#"{"op":"poll","session":"nope"}"#,
        )
        .await
        .expect_err("refused");
        assert_eq!(err.kind, ErrorKind::NotFound);
    }

    #[tokio::test]
    async fn malformed_request_is_a_bad_request() {
        let err = call::<ExecReply>("device-commands.dev-1.exec", "{")
            .await
            .expect_err("refused");
        assert_eq!(err.kind, ErrorKind::BadRequest);
    }

    #[tokio::test]
    async fn logs_of_unknown_deployment_is_not_found() {
        let err = call::<LogsReply>("device-commands.dev-1.logs", r#"{"deployment":"nope"}"#)
            .await
            .expect_err("refused");
        assert_eq!(err.kind, ErrorKind::NotFound);
    }
}

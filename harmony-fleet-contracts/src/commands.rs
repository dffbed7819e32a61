//! The command protocol: core NATS request/reply on `device-commands.<device>.<verb>`.
//!
//! A caller (the operator, the dashboard) sends a JSON request to
//! [`command_subject`](crate::keys::command_subject); the agent serves
//! [`command_serve_pattern`](crate::keys::command_serve_pattern) and answers with a
//! [`CommandReply`]: `{"result": …}` or `{"error": {"kind": …, "message": …}}`.
//!
//! Replies must stay below the NATS `max_payload` (1 MiB by default), so every request that can
//! produce a lot of output is clamped: see the `MAX_*` constants and the clamping accessors
//! ([`ExecRequest::deadline`], [`ExecRequest::output_cap`], [`LogsRequest::tail_lines`]).
//! "No responders" on a request means the device is offline; that is a transport outcome, not a
//! [`ErrorKind`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::device::AgentVersion;
use crate::ids::{DeploymentName, DeviceId};

/// Deadline of an `exec` when the request names none.
pub const DEFAULT_EXEC_DEADLINE: Duration = Duration::from_secs(30);
/// Longest deadline an agent grants an `exec`; longer requests are clamped to it.
pub const MAX_EXEC_DEADLINE: Duration = Duration::from_secs(300);
/// Output cap of an `exec` (stdout + stderr, bytes) when the request names none.
pub const DEFAULT_EXEC_OUTPUT_BYTES: usize = 64 * 1024;
/// Largest output an `exec` reply carries (stdout + stderr, bytes). Even if every byte had to
/// be JSON-escaped as `\u00XX` (6×), the reply stays below NATS's default 1 MiB payload.
pub const MAX_EXEC_OUTPUT_BYTES: usize = 128 * 1024;
/// Lines returned by `logs` when the request names none.
pub const DEFAULT_LOG_LINES: usize = 100;
/// Most lines a `logs` reply carries (per request, across services).
pub const MAX_LOG_LINES: usize = 1000;
/// Most bytes of log text a `logs` reply carries; older lines are dropped first.
pub const MAX_LOG_BYTES: usize = 256 * 1024;
/// How much longer than the command's own deadline a caller should wait for the reply
/// (process start-up, podman latency, network).
pub const REPLY_MARGIN: Duration = Duration::from_secs(5);

/// A command verb: the last token of a command subject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Verb {
    /// Liveness and version check; [`PingRequest`] → [`PingReply`].
    #[serde(rename = "ping")]
    Ping,
    /// Run a shell command (`sh -c`); [`ExecRequest`] → [`ExecReply`].
    #[serde(rename = "exec")]
    Exec,
    /// Tail the logs of a deployment's containers; [`LogsRequest`] → [`LogsReply`].
    #[serde(rename = "logs")]
    Logs,
    /// Follow a deployment's logs live: a session of long polls; see [`crate::sessions`].
    #[serde(rename = "logs-stream")]
    LogsStream,
    /// An interactive shell on a pseudo-terminal: a session of requests; see
    /// [`crate::sessions`].
    #[serde(rename = "shell")]
    Shell,
}

impl Verb {
    /// Every verb, served or reserved.
    pub const ALL: [Verb; 5] = [
        Verb::Ping,
        Verb::Exec,
        Verb::Logs,
        Verb::LogsStream,
        Verb::Shell,
    ];

    /// The subject token.
    pub const fn as_str(self) -> &'static str {
        match self {
            Verb::Ping => "ping",
            Verb::Exec => "exec",
            Verb::Logs => "logs",
            Verb::LogsStream => "logs-stream",
            Verb::Shell => "shell",
        }
    }

    /// `true` for verbs whose name is reserved but which this protocol version does not
    /// define yet. Since `logs-stream` and `shell` got their protocol ([`crate::sessions`]),
    /// none is; older agents still answer them with [`ErrorKind::Unsupported`].
    pub const fn is_reserved(self) -> bool {
        false
    }
}

impl fmt::Display for Verb {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The token is not a known verb.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown command verb {0:?}: known verbs are ping, exec, logs, logs-stream, shell")]
pub struct UnknownVerb(pub String);

impl FromStr for Verb {
    type Err = UnknownVerb;

    fn from_str(token: &str) -> Result<Self, UnknownVerb> {
        Verb::ALL
            .into_iter()
            .find(|verb| verb.as_str() == token)
            .ok_or_else(|| UnknownVerb(token.to_owned()))
    }
}

/// Request of `ping`. Carries nothing; an empty payload is accepted too.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PingRequest {}

/// Reply of `ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PingReply {
    /// The device that answered (guards against mis-routed subjects).
    pub device_id: DeviceId,
    /// Version of the answering agent.
    pub agent_version: AgentVersion,
    /// Seconds since the agent process started.
    #[serde(default)]
    pub uptime_seconds: u64,
}

/// Request of `exec`: run `command` with `sh -c` on the device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecRequest {
    /// Shell command line, passed to `sh -c` as one argument.
    pub command: String,
    /// Deadline in milliseconds; absent ⇒ [`DEFAULT_EXEC_DEADLINE`]. Clamped by
    /// [`ExecRequest::deadline`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_ms: Option<u64>,
    /// Output cap (stdout + stderr) in bytes; absent ⇒ [`DEFAULT_EXEC_OUTPUT_BYTES`]. Clamped by
    /// [`ExecRequest::output_cap`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_output_bytes: Option<u64>,
}

impl ExecRequest {
    /// An `exec` of `command` with the default deadline and output cap.
    pub fn new(command: impl Into<String>) -> Self {
        Self {
            command: command.into(),
            deadline_ms: None,
            max_output_bytes: None,
        }
    }

    /// The deadline the agent applies: the requested one, clamped to 1 ms ..=
    /// [`MAX_EXEC_DEADLINE`].
    pub fn deadline(&self) -> Duration {
        match self.deadline_ms {
            None => DEFAULT_EXEC_DEADLINE,
            Some(ms) => {
                Duration::from_millis(ms).clamp(Duration::from_millis(1), MAX_EXEC_DEADLINE)
            }
        }
    }

    /// How long a caller should wait for the reply: [`Self::deadline`] + [`REPLY_MARGIN`].
    pub fn reply_timeout(&self) -> Duration {
        self.deadline() + REPLY_MARGIN
    }

    /// The output cap the agent applies: the requested one, clamped to
    /// 0 ..= [`MAX_EXEC_OUTPUT_BYTES`].
    pub fn output_cap(&self) -> usize {
        match self.max_output_bytes {
            None => DEFAULT_EXEC_OUTPUT_BYTES,
            Some(bytes) => usize::try_from(bytes)
                .unwrap_or(usize::MAX)
                .min(MAX_EXEC_OUTPUT_BYTES),
        }
    }

    /// Checks what clamping cannot fix: the command must be non-empty and free of NUL bytes
    /// (it becomes one `argv` element).
    pub fn validate(&self) -> Result<(), CommandError> {
        if self.command.trim().is_empty() {
            return Err(CommandError::new(
                ErrorKind::BadRequest,
                "exec: `command` must not be empty: give a shell command line such as `uptime`",
            ));
        }
        if self.command.contains('\0') {
            return Err(CommandError::new(
                ErrorKind::BadRequest,
                "exec: `command` contains a NUL byte, which cannot be passed to `sh -c`: remove it",
            ));
        }
        Ok(())
    }
}

/// Reply of `exec`.
///
/// A command that outlives its deadline is killed and reported here with `timedOut: true`,
/// `exitCode: null` and whatever output it produced; it is not an error, because the partial
/// output is what the user needs to see.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecReply {
    /// Exit status; `None` when the process was killed by a signal (or the deadline).
    pub exit_code: Option<i32>,
    /// Standard output, lossily decoded as UTF-8 and capped.
    #[serde(default)]
    pub stdout: String,
    /// Standard error, lossily decoded as UTF-8 and capped.
    #[serde(default)]
    pub stderr: String,
    /// `true` when stdout or stderr was cut at the output cap.
    #[serde(default)]
    pub truncated: bool,
    /// `true` when the deadline killed the process.
    #[serde(default)]
    pub timed_out: bool,
    /// Wall-clock run time in milliseconds.
    #[serde(default)]
    pub duration_ms: u64,
}

/// stdout and stderr cut to a shared cap; see [`cap_output`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CappedOutput {
    /// Kept part of stdout, decoded lossily.
    pub stdout: String,
    /// Kept part of stderr, decoded lossily.
    pub stderr: String,
    /// Whether anything was dropped.
    pub truncated: bool,
}

/// Cuts `stdout` and `stderr` so that together they keep at most `cap` bytes (of the raw
/// output), keeping the beginning of each.
///
/// Each stream is guaranteed half of the cap if it needs it, and a stream that needs less
/// leaves the rest to the other — so a flood on stdout never hides the error on stderr.
/// Bytes are decoded lossily: invalid UTF-8 (including a character cut at the cap) becomes
/// U+FFFD.
pub fn cap_output(stdout: &[u8], stderr: &[u8], cap: usize) -> CappedOutput {
    let stderr_reserved = stderr.len().min(cap / 2);
    let stdout_kept = stdout.len().min(cap - stderr_reserved);
    let stderr_kept = stderr.len().min(cap - stdout_kept);
    CappedOutput {
        stdout: String::from_utf8_lossy(&stdout[..stdout_kept]).into_owned(),
        stderr: String::from_utf8_lossy(&stderr[..stderr_kept]).into_owned(),
        truncated: stdout_kept < stdout.len() || stderr_kept < stderr.len(),
    }
}

/// Request of `logs`: the last lines of a deployment's containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsRequest {
    /// The deployment whose containers to read.
    pub deployment: DeploymentName,
    /// Only this service; absent ⇒ every service of the deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
    /// Lines wanted; absent ⇒ [`DEFAULT_LOG_LINES`]. Clamped by [`LogsRequest::tail_lines`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tail_lines: Option<u64>,
}

impl LogsRequest {
    /// Logs of every service of `deployment`, default line count.
    pub fn new(deployment: DeploymentName) -> Self {
        Self {
            deployment,
            service: None,
            tail_lines: None,
        }
    }

    /// Lines the agent returns: the requested count clamped to 1 ..= [`MAX_LOG_LINES`].
    pub fn tail_lines(&self) -> usize {
        match self.tail_lines {
            None => DEFAULT_LOG_LINES,
            Some(lines) => usize::try_from(lines)
                .unwrap_or(usize::MAX)
                .clamp(1, MAX_LOG_LINES),
        }
    }
}

/// The logs of one service's container.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceLogs {
    /// Service name, as in the payload.
    pub service: String,
    /// The container read, when one exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// Oldest first.
    #[serde(default)]
    pub lines: Vec<String>,
}

/// Reply of `logs`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogsReply {
    /// One entry per service read.
    #[serde(default)]
    pub services: Vec<ServiceLogs>,
    /// `true` when lines were dropped to respect [`MAX_LOG_LINES`] / [`MAX_LOG_BYTES`].
    #[serde(default)]
    pub truncated: bool,
}

/// Keeps the *last* lines of `lines` within `max_lines` and `max_bytes` (sum of line lengths).
/// Returns the kept lines, oldest first, and whether any were dropped.
pub fn tail_lines(lines: Vec<String>, max_lines: usize, max_bytes: usize) -> (Vec<String>, bool) {
    let mut budget = max_bytes;
    let mut keep = 0;
    for line in lines.iter().rev().take(max_lines) {
        if line.len() > budget {
            break;
        }
        budget -= line.len();
        keep += 1;
    }
    let dropped = lines.len() - keep;
    let kept = lines.into_iter().skip(dropped).collect();
    (kept, dropped > 0)
}

/// Category of a command failure; callers branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request could not be decoded or is invalid; fix the request.
    BadRequest,
    /// The deployment, service or container named does not exist on the device.
    NotFound,
    /// The agent gave up waiting (e.g. on podman) before it had an answer.
    Timeout,
    /// The container runtime or the OS failed (podman error, spawn failure).
    Runtime,
    /// The verb is known but not served by this agent (reserved verbs, disabled features).
    Unsupported,
    /// A kind this build does not know (sent by a newer agent); read the message.
    #[serde(other)]
    Unknown,
}

/// The error half of a [`CommandReply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{kind:?}: {message}")]
pub struct CommandError {
    /// Category.
    pub kind: ErrorKind,
    /// Human explanation, saying what to do where possible.
    pub message: String,
}

impl CommandError {
    /// Builds an error.
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        Self {
            kind,
            message: message.into(),
        }
    }

    /// The reply to a reserved or disabled verb.
    pub fn unsupported(verb: Verb) -> Self {
        Self::new(
            ErrorKind::Unsupported,
            format!("verb `{verb}` is not supported by this agent version: upgrade the agent"),
        )
    }
}

/// Reply envelope: `{"result": T}` or `{"error": {"kind": …, "message": …}}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CommandReply<T> {
    /// The command ran.
    Result(T),
    /// The command could not run.
    Error(CommandError),
}

impl<T> CommandReply<T> {
    /// Converts into a standard `Result`.
    pub fn into_result(self) -> Result<T, CommandError> {
        match self {
            CommandReply::Result(value) => Ok(value),
            CommandReply::Error(err) => Err(err),
        }
    }
}

impl<T> From<Result<T, CommandError>> for CommandReply<T> {
    fn from(result: Result<T, CommandError>) -> Self {
        match result {
            Ok(value) => CommandReply::Result(value),
            Err(err) => CommandReply::Error(err),
        }
    }
}

/// Decodes a request payload on the agent side. An empty payload reads as `{}` (so a bare
/// `nats req device-commands.<id>.ping ""` works); a malformed one becomes a
/// [`ErrorKind::BadRequest`] naming the verb and serde's explanation.
pub fn decode_request<T: DeserializeOwned>(verb: Verb, payload: &[u8]) -> Result<T, CommandError> {
    let payload = if payload.iter().all(u8::is_ascii_whitespace) {
        b"{}".as_slice()
    } else {
        payload
    };
    serde_json::from_slice(payload).map_err(|err| {
        CommandError::new(
            ErrorKind::BadRequest,
            format!("invalid `{verb}` request: {err}"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_round_trip_through_their_tokens() {
        for verb in Verb::ALL {
            assert_eq!(verb.as_str().parse::<Verb>().unwrap(), verb);
            assert_eq!(
                serde_json::to_string(&verb).unwrap(),
                format!("\"{}\"", verb.as_str())
            );
        }
        assert!("PING".parse::<Verb>().is_err());
    }

    #[test]
    fn exec_deadline_is_defaulted_and_clamped() {
        let mut req = ExecRequest::new("uptime");
        assert_eq!(req.deadline(), DEFAULT_EXEC_DEADLINE);
        req.deadline_ms = Some(0);
        assert_eq!(req.deadline(), Duration::from_millis(1));
        req.deadline_ms = Some(u64::MAX);
        assert_eq!(req.deadline(), MAX_EXEC_DEADLINE);
        assert_eq!(req.reply_timeout(), MAX_EXEC_DEADLINE + REPLY_MARGIN);
    }

    #[test]
    fn exec_output_cap_is_defaulted_and_clamped() {
        let mut req = ExecRequest::new("uptime");
        assert_eq!(req.output_cap(), DEFAULT_EXEC_OUTPUT_BYTES);
        req.max_output_bytes = Some(u64::MAX);
        assert_eq!(req.output_cap(), MAX_EXEC_OUTPUT_BYTES);
        req.max_output_bytes = Some(10);
        assert_eq!(req.output_cap(), 10);
    }

    #[test]
    fn rejects_empty_or_nul_exec_command() {
        assert_eq!(
            ExecRequest::new("  ").validate().unwrap_err().kind,
            ErrorKind::BadRequest
        );
        assert!(ExecRequest::new("a\0b").validate().is_err());
        assert!(ExecRequest::new("uptime").validate().is_ok());
    }

    #[test]
    fn cap_output_keeps_everything_that_fits() {
        let out = cap_output(b"abc", b"de", 5);
        assert_eq!(
            out,
            CappedOutput {
                stdout: "abc".into(),
                stderr: "de".into(),
                truncated: false
            }
        );
    }

    #[test]
    fn cap_output_never_lets_stdout_hide_stderr() {
        let out = cap_output(&[b'o'; 100], b"boom", 10);
        assert_eq!(out.stdout, "oooooo");
        assert_eq!(out.stderr, "boom");
        assert!(out.truncated);

        let out = cap_output(&[b'o'; 100], &[b'e'; 100], 10);
        assert_eq!((out.stdout.len(), out.stderr.len()), (5, 5));

        let out = cap_output(b"ok", &[b'e'; 100], 10);
        assert_eq!((out.stdout.as_str(), out.stderr.len()), ("ok", 8));
    }

    #[test]
    fn cap_output_with_zero_cap_keeps_nothing() {
        let out = cap_output(b"a", b"b", 0);
        assert_eq!((out.stdout.as_str(), out.stderr.as_str()), ("", ""));
        assert!(out.truncated);
    }

    #[test]
    fn tail_lines_keeps_the_newest_lines_within_both_limits() {
        let lines: Vec<String> = (0..10).map(|i| format!("line{i}")).collect();
        let (kept, truncated) = tail_lines(lines.clone(), 3, usize::MAX);
        assert_eq!(kept, ["line7", "line8", "line9"]);
        assert!(truncated);

        let (kept, truncated) = tail_lines(lines.clone(), 100, 10);
        assert_eq!(kept, ["line8", "line9"]);
        assert!(truncated);

        let (kept, truncated) = tail_lines(lines, 100, usize::MAX);
        assert_eq!(kept.len(), 10);
        assert!(!truncated);
    }

    #[test]
    fn logs_tail_lines_is_defaulted_and_clamped() {
        let mut req = LogsRequest::new("web".parse().unwrap());
        assert_eq!(req.tail_lines(), DEFAULT_LOG_LINES);
        req.tail_lines = Some(0);
        assert_eq!(req.tail_lines(), 1);
        req.tail_lines = Some(1_000_000);
        assert_eq!(req.tail_lines(), MAX_LOG_LINES);
    }

    #[test]
    fn empty_payload_decodes_as_empty_object() {
        let req: PingRequest = decode_request(Verb::Ping, b"").unwrap();
        assert_eq!(req, PingRequest {});
    }

    #[test]
    fn malformed_request_is_a_bad_request_naming_the_verb() {
        let err = decode_request::<ExecRequest>(Verb::Exec, b"{}").unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadRequest);
        assert!(err.message.contains("`exec`"), "{}", err.message);
        assert!(err.message.contains("command"), "{}", err.message);
    }

    #[test]
    fn unknown_error_kind_from_a_newer_agent_is_tolerated() {
        let reply: CommandReply<PingReply> =
            serde_json::from_str(r#"{"error":{"kind":"Overheated","message":"too hot"}}"#).unwrap();
        assert_eq!(reply.into_result().unwrap_err().kind, ErrorKind::Unknown);
    }

    #[test]
    fn no_verb_is_reserved_any_more() {
        assert!(Verb::ALL.iter().all(|verb| !verb.is_reserved()));
        assert_eq!(
            CommandError::unsupported(Verb::Shell).kind,
            ErrorKind::Unsupported
        );
    }
}

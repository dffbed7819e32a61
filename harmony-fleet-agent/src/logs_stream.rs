//! The `logs-stream` verb: follow the containers of a deployment live, as a long-poll
//! session ([`harmony_fleet_contracts::sessions`]). One follower per service container,
//! merged into the session's buffer; the session ends when every container stopped.

use std::sync::{Arc, Mutex};

use harmony_fleet_contracts::commands::{CommandError, ErrorKind, MAX_LOG_LINES};
use harmony_fleet_contracts::sessions::{
    self as wire, LogChunk, LogLine, LogsStreamRequest, SessionAck, SessionOpened,
};

use crate::commands::select_containers;
use crate::runtime::{ContainerRuntime, LABEL_SERVICE};
use crate::sessions::{Output, Session, Sessions, log_chunk};

/// Lines of history sent first when the request names none.
const DEFAULT_HISTORY: u64 = 10;

/// One live log tail.
#[derive(Debug, Default)]
pub struct LogSession {
    output: Output<LogLine>,
    followers: Mutex<Vec<tokio::task::JoinHandle<()>>>,
}

impl LogSession {
    /// Stops following (kills the runtime's follow processes).
    pub fn close(&self) {
        let followers = self
            .followers
            .lock()
            .map(|mut f| std::mem::take(&mut *f))
            .unwrap_or_default();
        for follower in followers {
            follower.abort();
        }
        self.output.end(None);
    }
}

/// Handles one `logs-stream` request.
pub async fn handle<R: ContainerRuntime + ?Sized>(
    runtime: &Arc<R>,
    sessions: &Sessions,
    request: LogsStreamRequest,
) -> Result<serde_json::Value, CommandError> {
    match request {
        LogsStreamRequest::Open {
            deployment,
            service,
            tail_lines,
        } => {
            sessions.check_room()?;
            let containers =
                select_containers(runtime.as_ref(), &deployment, service.as_deref()).await?;
            let tail = tail_lines
                .unwrap_or(DEFAULT_HISTORY)
                .min(MAX_LOG_LINES as u64);
            let tail = u32::try_from(tail).unwrap_or(u32::MAX);
            let session = Arc::new(LogSession::default());
            let mut followers = Vec::new();
            for container in &containers {
                let follower = runtime
                    .follow_logs(&container.id, tail)
                    .await
                    .map_err(|e| {
                        CommandError::new(
                            ErrorKind::Runtime,
                            format!(
                                "cannot follow the logs of container {}: {e}",
                                container.name
                            ),
                        )
                    })?;
                let service = container
                    .label(LABEL_SERVICE)
                    .unwrap_or_default()
                    .to_owned();
                followers.push((service, follower));
            }
            let remaining = Arc::new(std::sync::atomic::AtomicUsize::new(followers.len()));
            let mut tasks = Vec::new();
            for (service, mut follower) in followers {
                let session = session.clone();
                let remaining = remaining.clone();
                tasks.push(tokio::spawn(async move {
                    while let Some(line) = follower.lines.recv().await {
                        session.output.push(LogLine {
                            service: service.clone(),
                            line,
                        });
                    }
                    if remaining.fetch_sub(1, std::sync::atomic::Ordering::AcqRel) == 1 {
                        session.output.end(None);
                    }
                }));
            }
            if let Ok(mut f) = session.followers.lock() {
                *f = tasks;
            }
            let id = sessions.next_id();
            sessions.insert(id.clone(), Session::Logs(session));
            tracing::info!(session = %id, %deployment, "log tail opened");
            to_value(SessionOpened { session: id })
        }
        LogsStreamRequest::Poll { session, wait_ms } => {
            let Session::Logs(open) = sessions.get(&session)? else {
                return Err(wrong_kind(&session));
            };
            let chunk: LogChunk = log_chunk(open.output.poll(wire::poll_wait(wait_ms)).await);
            if chunk.ended {
                sessions.forget(&session);
            }
            to_value(chunk)
        }
        LogsStreamRequest::Close { session } => {
            sessions.close(&session);
            to_value(SessionAck {})
        }
    }
}

fn wrong_kind(id: &wire::SessionId) -> CommandError {
    CommandError::new(
        ErrorKind::BadRequest,
        format!("session {id} is a shell, not a log tail: poll it with the `shell` verb"),
    )
}

/// Replies are sent as JSON values so one handler can answer several reply types.
pub fn to_value<T: serde::Serialize>(value: T) -> Result<serde_json::Value, CommandError> {
    serde_json::to_value(value)
        .map_err(|e| CommandError::new(ErrorKind::Runtime, format!("cannot encode reply: {e}")))
}

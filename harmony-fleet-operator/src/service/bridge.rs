//! Device sessions over NATS: the long-poll loops that turn the `logs-stream` and `shell`
//! verbs ([`harmony_fleet_contracts::sessions`]) into the channels of
//! [`super::sessions`].
//!
//! One task per direction: output is polled continuously (each poll returns as soon as the
//! device has something), input is sent as it comes, coalesced while a request is in flight.
//! Dropping the consumer's end closes the session on the device.

use std::time::Duration;

use futures::StreamExt;
use harmony_fleet_contracts::commands::{REPLY_MARGIN, Verb};
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};
use harmony_fleet_contracts::sessions::{
    DEFAULT_POLL_WAIT, LogChunk, LogsStreamRequest, SessionAck, SessionId, SessionOpened,
    ShellChunk, ShellRequest,
};
use tokio::sync::mpsc;

use super::sessions::{LogEvent, LogStream, ShellEvent, ShellInput, ShellSession};
use crate::commands::{CommandError, CommandsClient, DEFAULT_TIMEOUT};

/// Lines of history a live tail starts with.
pub const LIVE_TAIL_HISTORY: u64 = 20;

fn poll_timeout() -> Duration {
    DEFAULT_POLL_WAIT + REPLY_MARGIN
}

fn poll_wait_ms() -> Option<u64> {
    u64::try_from(DEFAULT_POLL_WAIT.as_millis()).ok()
}

/// Opens a `logs-stream` session and relays its lines until the device ends it or the
/// returned stream is dropped.
pub async fn stream_logs(
    commands: CommandsClient,
    device: DeviceId,
    deployment: DeploymentName,
) -> Result<LogStream, CommandError> {
    let opened: SessionOpened = commands
        .call(
            &device,
            Verb::LogsStream,
            &LogsStreamRequest::Open {
                deployment,
                service: None,
                tail_lines: Some(LIVE_TAIL_HISTORY),
            },
            DEFAULT_TIMEOUT,
        )
        .await?;
    let session = opened.session;
    let (tx, rx) = mpsc::channel::<LogEvent>(256);
    tokio::spawn(async move {
        let poll = LogsStreamRequest::Poll {
            session: session.clone(),
            wait_ms: poll_wait_ms(),
        };
        loop {
            let reply = tokio::select! {
                () = tx.closed() => break,
                reply = commands.call::<_, LogChunk>(&device, Verb::LogsStream, &poll, poll_timeout()) => reply,
            };
            match reply {
                Ok(chunk) => {
                    if chunk.dropped && tx.send(LogEvent::Dropped).await.is_err() {
                        break;
                    }
                    for line in chunk.lines {
                        let event = LogEvent::Line {
                            service: line.service,
                            line: line.line,
                        };
                        if tx.send(event).await.is_err() {
                            break;
                        }
                    }
                    if chunk.ended {
                        let _ = tx.send(LogEvent::Ended).await;
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(LogEvent::Error(e.to_string())).await;
                    return;
                }
            }
        }
        close_logs(&commands, &device, session).await;
    });
    Ok(futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|event| (event, rx))
    })
    .boxed())
}

async fn close_logs(commands: &CommandsClient, device: &DeviceId, session: SessionId) {
    let close = LogsStreamRequest::Close { session };
    if let Err(e) = commands
        .call::<_, SessionAck>(device, Verb::LogsStream, &close, DEFAULT_TIMEOUT)
        .await
    {
        tracing::debug!(device = %device, error = %e, "closing a log session");
    }
}

/// Opens a `shell` session of `cols`×`rows` and relays it until either side ends it.
pub async fn open_shell(
    commands: CommandsClient,
    device: DeviceId,
    cols: u16,
    rows: u16,
) -> Result<ShellSession, CommandError> {
    let opened: SessionOpened = commands
        .call(
            &device,
            Verb::Shell,
            &ShellRequest::Open { cols, rows },
            DEFAULT_TIMEOUT,
        )
        .await?;
    let session = opened.session;
    let (out_tx, out_rx) = mpsc::channel::<ShellEvent>(256);
    let (in_tx, mut in_rx) = mpsc::channel::<ShellInput>(256);

    let poller = {
        let commands = commands.clone();
        let device = device.clone();
        let session = session.clone();
        tokio::spawn(async move {
            let poll = ShellRequest::Poll {
                session,
                wait_ms: poll_wait_ms(),
            };
            loop {
                let reply = tokio::select! {
                    () = out_tx.closed() => return,
                    reply = commands.call::<_, ShellChunk>(&device, Verb::Shell, &poll, poll_timeout()) => reply,
                };
                match reply {
                    Ok(chunk) => {
                        if !chunk.data.is_empty()
                            && out_tx.send(ShellEvent::Output(chunk.data)).await.is_err()
                        {
                            return;
                        }
                        if chunk.ended {
                            let _ = out_tx.send(ShellEvent::Exited(chunk.exit_code)).await;
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = out_tx.send(ShellEvent::Error(e.to_string())).await;
                        return;
                    }
                }
            }
        })
    };

    tokio::spawn(async move {
        while let Some(first) = in_rx.recv().await {
            if poller.is_finished() {
                break;
            }
            // Coalesce what was typed while the previous request was in flight.
            let mut batch = vec![first];
            while let Ok(more) = in_rx.try_recv() {
                batch.push(more);
            }
            for request in coalesce(&session, batch) {
                if let Err(e) = commands
                    .call::<_, SessionAck>(&device, Verb::Shell, &request, DEFAULT_TIMEOUT)
                    .await
                {
                    tracing::debug!(device = %device, error = %e, "shell input refused; hanging up");
                    poller.abort();
                    return;
                }
            }
        }
        poller.abort();
        let close = ShellRequest::Close { session };
        if let Err(e) = commands
            .call::<_, SessionAck>(&device, Verb::Shell, &close, DEFAULT_TIMEOUT)
            .await
        {
            tracing::debug!(device = %device, error = %e, "closing a shell session");
        }
    });
    Ok(ShellSession {
        output: out_rx,
        input: in_tx,
    })
}

/// Joins consecutive typed text into one request, keeping resizes in order.
fn coalesce(session: &SessionId, batch: Vec<ShellInput>) -> Vec<ShellRequest> {
    let mut out: Vec<ShellRequest> = Vec::new();
    for input in batch {
        match input {
            ShellInput::Data(data) => {
                if let Some(ShellRequest::Input { data: last, .. }) = out.last_mut() {
                    last.push_str(&data);
                } else {
                    out.push(ShellRequest::Input {
                        session: session.clone(),
                        data,
                    });
                }
            }
            ShellInput::Resize { cols, rows } => out.push(ShellRequest::Resize {
                session: session.clone(),
                cols,
                rows,
            }),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_text_is_coalesced_around_resizes() {
        let session: SessionId = "s1".parse().unwrap();
        let requests = coalesce(
            &session,
            vec![
                ShellInput::Data("ec".into()),
                ShellInput::Data("ho".into()),
                ShellInput::Resize {
                    cols: 100,
                    rows: 30,
                },
                ShellInput::Data(" hi\r".into()),
            ],
        );
        assert_eq!(
            requests,
            vec![
                ShellRequest::Input {
                    session: session.clone(),
                    data: "echo".into()
                },
                ShellRequest::Resize {
                    session: session.clone(),
                    cols: 100,
                    rows: 30
                },
                ShellRequest::Input {
                    session,
                    data: " hi\r".into()
                },
            ]
        );
    }
}

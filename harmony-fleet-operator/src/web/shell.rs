//! The interactive shell: xterm.js in the page talks to `/devices/{id}/shell` over a
//! WebSocket; this module bridges it to a [`ShellSession`](crate::service::ShellSession).
//!
//! Browser → server: JSON text frames `{"type":"input","data":…}` and
//! `{"type":"resize","cols":…,"rows":…}`. Server → browser: terminal output as text frames,
//! then a close frame whose reason says how the session ended. Either side closing ends the
//! other: a closed socket drops the session's input (the device hangs up), a shell that
//! exits closes the socket.

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::Extensions;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

use super::auth::Principal;
use super::devices::device_id;
use super::{WebResult, WebState};
use crate::service::{AuditAction, AuditEntry, ShellEvent, ShellInput};

/// Initial terminal size.
#[derive(Debug, Deserialize)]
pub struct Size {
    /// Columns.
    #[serde(default = "default_cols")]
    pub cols: u16,
    /// Rows.
    #[serde(default = "default_rows")]
    pub rows: u16,
}

fn default_cols() -> u16 {
    80
}

fn default_rows() -> u16 {
    24
}

/// A message from xterm.js.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
enum ClientMessage {
    Input { data: String },
    Resize { cols: u16, rows: u16 },
}

/// Upgrades to the shell WebSocket. Browsers send cookies and basic-auth credentials with
/// cross-site WebSocket handshakes: the upgrade's `Host` and `Origin` were checked by
/// [`super::boundary`] before this runs.
pub async fn upgrade(
    State(state): State<WebState>,
    extensions: Extensions,
    Path(id): Path<String>,
    Query(size): Query<Size>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> WebResult<Response> {
    let id = device_id(&id)?;
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return Ok(rejection.into_response()),
    };
    let who = Principal::of(&extensions);
    Ok(ws
        .on_upgrade(move |socket| async move {
            let entry = |action| AuditEntry::now(who.clone(), id.clone(), action);
            state.service.audit(entry(AuditAction::ShellOpened)).await;
            let opened = state.service.open_shell(&id, size.cols, size.rows).await;
            match opened {
                Ok(session) => bridge(socket, session).await,
                Err(e) => close(socket, 1011, &format!("cannot open a shell: {e}")).await,
            }
            state.service.audit(entry(AuditAction::ShellClosed)).await;
        })
        .into_response())
}

async fn close(mut socket: WebSocket, code: u16, reason: &str) {
    // Close reasons are limited to 123 bytes.
    let mut reason = reason.to_owned();
    while reason.len() > 120 {
        reason.pop();
    }
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code,
            reason: reason.into(),
        })))
        .await;
}

async fn bridge(mut socket: WebSocket, mut session: crate::service::ShellSession) {
    loop {
        tokio::select! {
            event = session.output.recv() => match event {
                Some(ShellEvent::Output(text)) => {
                    if socket.send(Message::Text(text.into())).await.is_err() {
                        return;
                    }
                }
                Some(ShellEvent::Exited(code)) => {
                    let reason = match code {
                        Some(code) => format!("shell exited with status {code}"),
                        None => "shell exited".to_owned(),
                    };
                    return close(socket, 1000, &reason).await;
                }
                Some(ShellEvent::Error(message)) => return close(socket, 1011, &message).await,
                None => return close(socket, 1000, "session ended").await,
            },
            message = socket.recv() => match message {
                Some(Ok(Message::Text(text))) => {
                    let input = match serde_json::from_str::<ClientMessage>(text.as_str()) {
                        Ok(ClientMessage::Input { data }) => ShellInput::Data(data),
                        Ok(ClientMessage::Resize { cols, rows }) => ShellInput::Resize { cols, rows },
                        Err(e) => {
                            tracing::debug!(error = %e, "ignoring a malformed shell message");
                            continue;
                        }
                    };
                    if session.input.send(input).await.is_err() {
                        return close(socket, 1000, "session ended").await;
                    }
                }
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
        }
    }
}

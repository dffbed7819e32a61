//! The `shell` verb: an interactive shell on a pseudo-terminal of the device, as a long-poll
//! session ([`harmony_fleet_contracts::sessions`]).
//!
//! The shell is `$SHELL` of the agent (else `/bin/sh`) with `TERM=xterm-256color`, started in
//! its own session on the pty's slave side. A blocking thread reads the master side into the
//! session's buffer (never splitting a UTF-8 character); input and resizes are written to the
//! master. Closing hangs up: the shell is killed and the pty closed.

use std::io::{Read, Write};
use std::sync::{Arc, Mutex};

use harmony_fleet_contracts::commands::{CommandError, ErrorKind};
use harmony_fleet_contracts::sessions::{
    self as wire, SessionAck, SessionOpened, ShellRequest, split_utf8, validate_terminal_size,
};
use portable_pty::{ChildKiller, MasterPty, PtySize, native_pty_system};

use crate::logs_stream::to_value;
use crate::sessions::{Output, Session, Sessions, shell_chunk};

/// One shell.
pub struct ShellSession {
    output: Arc<Output<String>>,
    master: Mutex<Box<dyn MasterPty + Send>>,
    writer: Mutex<Box<dyn Write + Send>>,
    killer: Mutex<Box<dyn ChildKiller + Send + Sync>>,
}

impl std::fmt::Debug for ShellSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShellSession").finish_non_exhaustive()
    }
}

impl ShellSession {
    /// Hangs up: kills the shell (the reader then sees EOF and ends the output).
    pub fn close(&self) {
        if let Ok(mut killer) = self.killer.lock()
            && let Err(e) = killer.kill()
        {
            tracing::debug!(error = %e, "killing a shell that already exited");
        }
    }
}

fn runtime_error(what: &str, e: impl std::fmt::Display) -> CommandError {
    CommandError::new(ErrorKind::Runtime, format!("{what}: {e}"))
}

fn size(cols: u16, rows: u16) -> PtySize {
    PtySize {
        rows,
        cols,
        pixel_width: 0,
        pixel_height: 0,
    }
}

fn shell_program() -> String {
    std::env::var("SHELL")
        .ok()
        .filter(|s| !s.is_empty() && std::path::Path::new(s).exists())
        .unwrap_or_else(|| "/bin/sh".to_owned())
}

fn open(cols: u16, rows: u16) -> Result<ShellSession, CommandError> {
    validate_terminal_size(cols, rows)?;
    let pair = native_pty_system()
        .openpty(size(cols, rows))
        .map_err(|e| runtime_error("cannot open a pseudo-terminal", e))?;
    let program = shell_program();
    let mut command = portable_pty::CommandBuilder::new(&program);
    command.env("TERM", "xterm-256color");
    let home = std::env::var("HOME").unwrap_or_else(|_| "/".to_owned());
    command.cwd(home);
    let mut child = pair
        .slave
        .spawn_command(command)
        .map_err(|e| runtime_error(&format!("cannot start {program}"), e))?;
    // The shell holds the slave side now; keeping ours would hide its exit from the reader.
    drop(pair.slave);
    let killer = child.clone_killer();
    let mut reader = pair
        .master
        .try_clone_reader()
        .map_err(|e| runtime_error("cannot read the pseudo-terminal", e))?;
    let writer = pair
        .master
        .take_writer()
        .map_err(|e| runtime_error("cannot write the pseudo-terminal", e))?;
    let output = Arc::new(Output::<String>::default());
    let sink = output.clone();
    std::thread::Builder::new()
        .name("fleet-shell".into())
        .spawn(move || {
            let mut buffer = [0u8; 8192];
            let mut carry: Vec<u8> = Vec::new();
            loop {
                match reader.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        carry.extend_from_slice(&buffer[..n]);
                        let (text, rest) = split_utf8(&carry);
                        carry = rest;
                        if !text.is_empty() {
                            sink.push(text);
                        }
                    }
                }
            }
            let code = child
                .wait()
                .ok()
                .and_then(|status| i32::try_from(status.exit_code()).ok());
            sink.end(code);
        })
        .map_err(|e| runtime_error("cannot start the shell reader thread", e))?;
    Ok(ShellSession {
        output,
        master: Mutex::new(pair.master),
        writer: Mutex::new(writer),
        killer: Mutex::new(killer),
    })
}

fn shell(sessions: &Sessions, id: &wire::SessionId) -> Result<Arc<ShellSession>, CommandError> {
    match sessions.get(id)? {
        Session::Shell(s) => Ok(s),
        Session::Logs(_) => Err(CommandError::new(
            ErrorKind::BadRequest,
            format!("session {id} is a log tail, not a shell: use the `logs-stream` verb"),
        )),
    }
}

/// Handles one `shell` request.
pub async fn handle(
    sessions: &Sessions,
    request: ShellRequest,
) -> Result<serde_json::Value, CommandError> {
    match request {
        ShellRequest::Open { cols, rows } => {
            sessions.check_room()?;
            let session = tokio::task::spawn_blocking(move || open(cols, rows))
                .await
                .map_err(|e| runtime_error("shell start-up panicked", e))??;
            let id = sessions.next_id();
            sessions.insert(id.clone(), Session::Shell(Arc::new(session)));
            tracing::info!(session = %id, cols, rows, "shell opened");
            to_value(SessionOpened { session: id })
        }
        ShellRequest::Input { session, data } => {
            let open = shell(sessions, &session)?;
            tokio::task::spawn_blocking(move || {
                let mut writer = open
                    .writer
                    .lock()
                    .map_err(|_| runtime_error("shell writer", "poisoned"))?;
                writer
                    .write_all(data.as_bytes())
                    .and_then(|()| writer.flush())
                    .map_err(|e| runtime_error("cannot write to the shell", e))
            })
            .await
            .map_err(|e| runtime_error("shell input panicked", e))??;
            to_value(SessionAck {})
        }
        ShellRequest::Resize {
            session,
            cols,
            rows,
        } => {
            validate_terminal_size(cols, rows)?;
            let open = shell(sessions, &session)?;
            let master = open
                .master
                .lock()
                .map_err(|_| runtime_error("shell pty", "poisoned"))?;
            master
                .resize(size(cols, rows))
                .map_err(|e| runtime_error("cannot resize the pseudo-terminal", e))?;
            to_value(SessionAck {})
        }
        ShellRequest::Poll { session, wait_ms } => {
            let open = shell(sessions, &session)?;
            let chunk = shell_chunk(open.output.poll(wire::poll_wait(wait_ms)).await);
            if chunk.ended {
                sessions.forget(&session);
            }
            to_value(chunk)
        }
        ShellRequest::Close { session } => {
            sessions.close(&session);
            to_value(SessionAck {})
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use harmony_fleet_contracts::sessions::{SessionId, ShellChunk};

    use super::*;

    async fn poll_until(sessions: &Sessions, id: &SessionId, want: &str) -> (String, ShellChunk) {
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut seen = String::new();
        loop {
            let value = handle(
                sessions,
                ShellRequest::Poll {
                    session: id.clone(),
                    wait_ms: Some(1000),
                },
            )
            .await
            .expect("poll");
            let chunk: ShellChunk = serde_json::from_value(value).expect("chunk");
            seen.push_str(&chunk.data);
            if seen.contains(want) || chunk.ended {
                return (seen, chunk);
            }
            assert!(
                Instant::now() < deadline,
                "waited 20s for {want:?}; saw {seen:?}"
            );
        }
    }

    #[tokio::test]
    async fn shell_runs_typed_commands_resizes_and_reports_its_exit() {
        let sessions = Sessions::default();
        let opened: SessionOpened = serde_json::from_value(
            handle(&sessions, ShellRequest::Open { cols: 80, rows: 24 })
                .await
                .expect("open"),
        )
        .expect("opened");
        let id = opened.session;
        let input = |data: &str| ShellRequest::Input {
            session: id.clone(),
            data: data.to_owned(),
        };
        handle(&sessions, input("echo h''i\n"))
            .await
            .expect("input");
        let (seen, _) = poll_until(&sessions, &id, "hi\r\n").await;
        assert!(seen.contains("hi\r\n"), "{seen:?}");
        handle(
            &sessions,
            ShellRequest::Resize {
                session: id.clone(),
                cols: 101,
                rows: 33,
            },
        )
        .await
        .expect("resize");
        handle(&sessions, input("stty size\n"))
            .await
            .expect("input");
        let (seen, _) = poll_until(&sessions, &id, "33 101").await;
        assert!(seen.contains("33 101"), "{seen:?}");
        handle(&sessions, input("exit 3\n")).await.expect("input");
        let (_, last) = poll_until(&sessions, &id, "\u{0}never").await;
        assert!(last.ended);
        assert_eq!(last.exit_code, Some(3));
        assert!(sessions.is_empty(), "an ended shell is forgotten");
    }

    #[tokio::test]
    async fn closing_a_shell_kills_it() {
        let sessions = Sessions::default();
        let opened: SessionOpened = serde_json::from_value(
            handle(&sessions, ShellRequest::Open { cols: 80, rows: 24 })
                .await
                .expect("open"),
        )
        .expect("opened");
        let Session::Shell(shell) = sessions.get(&opened.session).expect("open") else {
            panic!("a shell");
        };
        handle(
            &sessions,
            ShellRequest::Close {
                session: opened.session.clone(),
            },
        )
        .await
        .expect("close");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let (_, _, ended, _) = shell.output.poll(Duration::from_millis(500)).await;
            if ended {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "the shell did not end after close"
            );
        }
        assert!(sessions.get(&opened.session).is_err());
    }
}

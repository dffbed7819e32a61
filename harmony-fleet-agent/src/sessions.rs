//! The open command sessions of this agent (live log tails and shells) and their output
//! buffers, shared by [`crate::logs_stream`] and [`crate::shell`].
//!
//! A session lives until it ends by itself (containers stopped, shell exited and its last
//! output polled), the caller closes it, or nobody polls it for
//! [`SESSION_IDLE_TIMEOUT`] (the caller vanished): [`Sessions::reap`] runs periodically from
//! the command loop. Output is buffered between polls up to a cap; older output is dropped
//! first and the next poll says so.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use harmony_fleet_contracts::commands::{CommandError, ErrorKind};
use harmony_fleet_contracts::sessions::{
    LogChunk, LogLine, MAX_BUFFERED_BYTES, MAX_CHUNK_BYTES, MAX_SESSIONS, SESSION_IDLE_TIMEOUT,
    SessionId, ShellChunk,
};
use tokio::sync::Notify;

use crate::logs_stream::LogSession;
use crate::shell::ShellSession;

/// One open session.
#[derive(Clone, Debug)]
pub enum Session {
    /// A live log tail.
    Logs(Arc<LogSession>),
    /// A shell.
    Shell(Arc<ShellSession>),
}

impl Session {
    fn close(&self) {
        match self {
            Session::Logs(s) => s.close(),
            Session::Shell(s) => s.close(),
        }
    }
}

struct Entry {
    session: Session,
    last_used: Instant,
}

/// The open sessions.
#[derive(Default)]
pub struct Sessions {
    open: Mutex<HashMap<SessionId, Entry>>,
    counter: AtomicU64,
}

impl std::fmt::Debug for Sessions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sessions")
            .field("open", &self.lock().len())
            .finish()
    }
}

impl Sessions {
    fn lock(&self) -> MutexGuard<'_, HashMap<SessionId, Entry>> {
        self.open
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A fresh, unguessable-enough id (a session id names a session, it grants nothing:
    /// whoever may publish on this device's command subjects may open sessions anyway).
    pub fn next_id(&self) -> SessionId {
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let text = format!("s{n}-{:x}-{:x}", nanos, std::process::id());
        // Only [a-z0-9-] and at most ~60 characters: always a valid id.
        text.parse()
            .expect("session ids built from digits, hex and '-' are valid")
    }

    /// Refuses a new session when [`MAX_SESSIONS`] are open.
    pub fn check_room(&self) -> Result<(), CommandError> {
        self.reap();
        if self.lock().len() >= MAX_SESSIONS {
            return Err(CommandError::new(
                ErrorKind::Runtime,
                format!(
                    "this agent already has {MAX_SESSIONS} open sessions: close a log tail or shell first"
                ),
            ));
        }
        Ok(())
    }

    /// Registers a session.
    pub fn insert(&self, id: SessionId, session: Session) {
        self.lock().insert(
            id,
            Entry {
                session,
                last_used: Instant::now(),
            },
        );
    }

    /// The session `id`, marked as used now.
    pub fn get(&self, id: &SessionId) -> Result<Session, CommandError> {
        let mut open = self.lock();
        let entry = open.get_mut(id).ok_or_else(|| gone(id))?;
        entry.last_used = Instant::now();
        Ok(entry.session.clone())
    }

    /// Closes and forgets `id`; closing an unknown session is not an error.
    pub fn close(&self, id: &SessionId) {
        if let Some(entry) = self.lock().remove(id) {
            entry.session.close();
        }
    }

    /// Forgets `id` without closing it (it ended by itself).
    pub fn forget(&self, id: &SessionId) {
        self.lock().remove(id);
    }

    /// Closes every session idle for longer than [`SESSION_IDLE_TIMEOUT`].
    pub fn reap(&self) {
        self.reap_older_than(SESSION_IDLE_TIMEOUT);
    }

    fn reap_older_than(&self, idle: Duration) {
        let mut open = self.lock();
        let stale: Vec<SessionId> = open
            .iter()
            .filter(|(_, e)| e.last_used.elapsed() > idle)
            .map(|(id, _)| id.clone())
            .collect();
        for id in stale {
            if let Some(entry) = open.remove(&id) {
                tracing::info!(session = %id, "closing an idle session");
                entry.session.close();
            }
        }
    }

    /// Closes every session (agent shutdown).
    pub fn close_all(&self) {
        for (_, entry) in self.lock().drain() {
            entry.session.close();
        }
    }

    /// Number of open sessions.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether no session is open.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The error for a session that is not (or no longer) open.
pub fn gone(id: &SessionId) -> CommandError {
    CommandError::new(
        ErrorKind::NotFound,
        format!(
            "session {id} is not open on this device (it ended, was closed, or sat idle for more than {}s): open a new one",
            SESSION_IDLE_TIMEOUT.as_secs()
        ),
    )
}

/// What a session's producer appends and a poll takes.
#[derive(Debug, Default)]
struct OutputState<T> {
    items: VecDeque<T>,
    bytes: usize,
    dropped: bool,
    ended: bool,
    exit_code: Option<i32>,
}

/// A bounded buffer between a session's producer and its polls.
#[derive(Debug)]
pub struct Output<T> {
    state: Mutex<OutputState<T>>,
    notify: Notify,
}

impl<T> Default for Output<T> {
    fn default() -> Self {
        Self {
            state: Mutex::new(OutputState {
                items: VecDeque::new(),
                bytes: 0,
                dropped: false,
                ended: false,
                exit_code: None,
            }),
            notify: Notify::new(),
        }
    }
}

/// Something with a size in bytes.
pub trait ByteSize {
    /// Bytes it counts for.
    fn size(&self) -> usize;
}

impl ByteSize for String {
    fn size(&self) -> usize {
        self.len()
    }
}

impl ByteSize for LogLine {
    fn size(&self) -> usize {
        self.line.len() + self.service.len()
    }
}

impl<T: ByteSize> Output<T> {
    fn lock(&self) -> MutexGuard<'_, OutputState<T>> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Appends an item; drops the oldest ones beyond [`MAX_BUFFERED_BYTES`].
    pub fn push(&self, item: T) {
        {
            let mut state = self.lock();
            state.bytes += item.size();
            state.items.push_back(item);
            while state.bytes > MAX_BUFFERED_BYTES {
                match state.items.pop_front() {
                    Some(old) => {
                        state.bytes -= old.size();
                        state.dropped = true;
                    }
                    None => break,
                }
            }
        }
        self.notify.notify_waiters();
    }

    /// Marks the end of the output (with the process's exit status, when there is one).
    pub fn end(&self, exit_code: Option<i32>) {
        {
            let mut state = self.lock();
            state.ended = true;
            state.exit_code = exit_code;
        }
        self.notify.notify_waiters();
    }

    /// Waits up to `wait` for output, then takes at most [`MAX_CHUNK_BYTES`] of it.
    /// Returns (items, dropped, ended, exit code); `ended` only once everything was taken.
    pub async fn poll(&self, wait: Duration) -> (Vec<T>, bool, bool, Option<i32>) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let notified = self.notify.notified();
            {
                let mut state = self.lock();
                if !state.items.is_empty() || state.ended || state.dropped {
                    let mut taken = Vec::new();
                    let mut bytes = 0;
                    while let Some(item) = state.items.front() {
                        if !taken.is_empty() && bytes + item.size() > MAX_CHUNK_BYTES {
                            break;
                        }
                        bytes += item.size();
                        if let Some(item) = state.items.pop_front() {
                            taken.push(item);
                        }
                    }
                    state.bytes -= bytes;
                    let dropped = std::mem::take(&mut state.dropped);
                    let ended = state.ended && state.items.is_empty();
                    return (taken, dropped, ended, state.exit_code);
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return (Vec::new(), false, false, None);
            }
        }
    }
}

/// A log poll as the wire reply.
pub fn log_chunk(taken: (Vec<LogLine>, bool, bool, Option<i32>)) -> LogChunk {
    let (lines, dropped, ended, _) = taken;
    LogChunk {
        lines,
        dropped,
        ended,
    }
}

/// A shell poll as the wire reply.
pub fn shell_chunk(taken: (Vec<String>, bool, bool, Option<i32>)) -> ShellChunk {
    let (data, dropped, ended, exit_code) = taken;
    ShellChunk {
        data: data.concat(),
        dropped,
        ended,
        exit_code,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn poll_returns_as_soon_as_output_arrives() {
        let output = Arc::new(Output::<String>::default());
        let producer = output.clone();
        let poll = tokio::spawn(async move { output.poll(Duration::from_secs(30)).await });
        producer.push("hi".to_owned());
        let (items, dropped, ended, _) = tokio::time::timeout(Duration::from_secs(5), poll)
            .await
            .expect("poll answered before its wait ran out")
            .expect("poll task");
        assert_eq!(
            (items, dropped, ended),
            (vec!["hi".to_owned()], false, false)
        );
    }

    #[tokio::test]
    async fn poll_times_out_empty_and_reports_the_end_after_the_last_output() {
        let output = Output::<String>::default();
        assert_eq!(output.poll(Duration::from_millis(10)).await.0.len(), 0);
        output.push("bye".to_owned());
        output.end(Some(0));
        let (items, _, ended, code) = output.poll(Duration::ZERO).await;
        assert_eq!((items.len(), ended, code), (1, true, Some(0)));
    }

    #[tokio::test]
    async fn overflow_drops_the_oldest_output_and_says_so() {
        let output = Output::<String>::default();
        for _ in 0..(MAX_BUFFERED_BYTES / 1000 + 10) {
            output.push("x".repeat(1000));
        }
        let (items, dropped, _, _) = output.poll(Duration::ZERO).await;
        assert!(dropped);
        assert!(items.iter().map(String::len).sum::<usize>() <= MAX_CHUNK_BYTES);
    }

    #[test]
    fn idle_sessions_are_reaped() {
        let sessions = Sessions::default();
        let id = sessions.next_id();
        sessions.insert(id.clone(), Session::Logs(Arc::new(LogSession::default())));
        sessions.reap_older_than(Duration::from_secs(60));
        assert_eq!(sessions.len(), 1);
        sessions.reap_older_than(Duration::ZERO);
        assert!(sessions.is_empty());
        assert_eq!(sessions.get(&id).unwrap_err().kind, ErrorKind::NotFound);
    }
}

//! Long-lived command sessions: a live log tail (`logs-stream`) and an interactive shell
//! (`shell`), both carried by plain request/reply on the device's own command subjects.
//!
//! Why request/reply and not a push stream: a device may publish only to its own KV keys and
//! answer requests (`allow_responses`, one reply per request; see [`crate::permissions`]). A
//! pushed stream would need a new device-scoped publish permission in every deployed
//! template. Instead the caller *long-polls*: it opens a session, then sends `poll` requests;
//! the agent answers a poll as soon as it has output (or after `waitMs`). Input, resizes and
//! close are requests of their own, so a keystroke never waits behind a poll.
//!
//! | verb | op | request | reply |
//! |---|---|---|---|
//! | `logs-stream` | `open` | [`LogsStreamRequest::Open`] | [`SessionOpened`] |
//! | `logs-stream` | `poll` | [`LogsStreamRequest::Poll`] | [`LogChunk`] |
//! | `logs-stream` | `close` | [`LogsStreamRequest::Close`] | [`SessionAck`] |
//! | `shell` | `open` | [`ShellRequest::Open`] | [`SessionOpened`] |
//! | `shell` | `input` / `resize` | [`ShellRequest::Input`], [`ShellRequest::Resize`] | [`SessionAck`] |
//! | `shell` | `poll` | [`ShellRequest::Poll`] | [`ShellChunk`] |
//! | `shell` | `close` | [`ShellRequest::Close`] | [`SessionAck`] |
//!
//! Liveness on both sides: the agent closes a session nobody polled for
//! [`SESSION_IDLE_TIMEOUT`]; a caller sees "no responders" or [`ErrorKind::NotFound`] when the
//! agent or the session is gone. A session that ended (process exited, container gone) answers
//! its last poll with `ended: true` and is forgotten.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::commands::{CommandError, ErrorKind};
use crate::ids::DeploymentName;

/// A session nobody polled for this long is closed by the agent.
pub const SESSION_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a poll waits for output when the request names no `waitMs`.
pub const DEFAULT_POLL_WAIT: Duration = Duration::from_secs(5);
/// Longest wait a poll may ask for (kept well below [`SESSION_IDLE_TIMEOUT`]).
pub const MAX_POLL_WAIT: Duration = Duration::from_secs(10);
/// Most output bytes one poll reply carries; the rest waits for the next poll.
pub const MAX_CHUNK_BYTES: usize = 64 * 1024;
/// Most output an agent buffers for a session between polls; older output is dropped first.
pub const MAX_BUFFERED_BYTES: usize = 512 * 1024;
/// Most sessions (of both kinds together) one agent keeps open.
pub const MAX_SESSIONS: usize = 16;
/// Largest terminal the agent accepts (columns or rows).
pub const MAX_TERMINAL_SIZE: u16 = 1000;

/// Identifier of a session, chosen by the agent: 1 to 64 characters of `[A-Za-z0-9_-]`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(String);

impl SessionId {
    /// The id as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The text is not a valid [`SessionId`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid session id {0:?}: use 1 to 64 characters of A-Z, a-z, 0-9, '_' or '-' (the id the agent returned on open)"
)]
pub struct InvalidSessionId(pub String);

impl FromStr for SessionId {
    type Err = InvalidSessionId;

    fn from_str(s: &str) -> Result<Self, InvalidSessionId> {
        let ok = !s.is_empty()
            && s.len() <= 64
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(InvalidSessionId(s.to_owned()))
        }
    }
}

impl TryFrom<String> for SessionId {
    type Error = InvalidSessionId;

    fn try_from(s: String) -> Result<Self, InvalidSessionId> {
        s.parse()
    }
}

impl From<SessionId> for String {
    fn from(id: SessionId) -> String {
        id.0
    }
}

/// Clamps a requested poll wait to 0 ..= [`MAX_POLL_WAIT`]; absent ⇒ [`DEFAULT_POLL_WAIT`].
pub fn poll_wait(wait_ms: Option<u64>) -> Duration {
    wait_ms
        .map(Duration::from_millis)
        .unwrap_or(DEFAULT_POLL_WAIT)
        .min(MAX_POLL_WAIT)
}

/// A request of the `logs-stream` verb, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum LogsStreamRequest {
    /// Start following the logs of a deployment's containers (the last `tailLines` first).
    Open {
        /// The deployment whose containers to follow.
        deployment: DeploymentName,
        /// Only this service; absent ⇒ every service of the deployment.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        service: Option<String>,
        /// Lines of history sent first; absent ⇒ 10. Clamped to
        /// [`MAX_LOG_LINES`](crate::commands::MAX_LOG_LINES).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        tail_lines: Option<u64>,
    },
    /// Lines since the previous poll; waits up to `waitMs` when there are none yet.
    Poll {
        /// The session returned by `open`.
        session: SessionId,
        /// How long to wait for a line; clamped by [`poll_wait`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u64>,
    },
    /// Stop following.
    Close {
        /// The session returned by `open`.
        session: SessionId,
    },
}

/// A request of the `shell` verb, tagged by `op`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum ShellRequest {
    /// Start a login shell on a pseudo-terminal of this size.
    Open {
        /// Columns (1 ..= [`MAX_TERMINAL_SIZE`]).
        cols: u16,
        /// Rows (1 ..= [`MAX_TERMINAL_SIZE`]).
        rows: u16,
    },
    /// Bytes typed by the user, as UTF-8 text.
    Input {
        /// The session returned by `open`.
        session: SessionId,
        /// What to write to the terminal.
        data: String,
    },
    /// The user's terminal changed size.
    Resize {
        /// The session returned by `open`.
        session: SessionId,
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
    /// Terminal output since the previous poll; waits up to `waitMs` when there is none yet.
    Poll {
        /// The session returned by `open`.
        session: SessionId,
        /// How long to wait for output; clamped by [`poll_wait`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        wait_ms: Option<u64>,
    },
    /// Hang up: the shell gets SIGHUP and the session is forgotten.
    Close {
        /// The session returned by `open`.
        session: SessionId,
    },
}

/// Checks a terminal size before a pty is created or resized.
pub fn validate_terminal_size(cols: u16, rows: u16) -> Result<(), CommandError> {
    if cols == 0 || rows == 0 || cols > MAX_TERMINAL_SIZE || rows > MAX_TERMINAL_SIZE {
        return Err(CommandError::new(
            ErrorKind::BadRequest,
            format!(
                "terminal size {cols}x{rows} is out of range: columns and rows must be 1..={MAX_TERMINAL_SIZE}"
            ),
        ));
    }
    Ok(())
}

/// Reply of `open`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SessionOpened {
    /// Name this session in every later request.
    pub session: SessionId,
}

/// Reply of `input`, `resize` and `close`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionAck {}

/// One followed log line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogLine {
    /// The service whose container wrote it.
    pub service: String,
    /// The line, without its newline.
    pub line: String,
}

/// Reply of a `logs-stream` poll.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LogChunk {
    /// New lines, oldest first (possibly none when the wait ran out).
    #[serde(default)]
    pub lines: Vec<LogLine>,
    /// `true` when lines were dropped because nobody polled fast enough.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
    /// `true` when every followed container stopped: the session is over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
}

/// Reply of a `shell` poll.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ShellChunk {
    /// Terminal output since the previous poll (never splits a UTF-8 character).
    #[serde(default)]
    pub data: String,
    /// `true` when output was dropped because nobody polled fast enough.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dropped: bool,
    /// `true` when the shell exited: the session is over.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ended: bool,
    /// The shell's exit status, once it ended normally.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Splits `bytes` at the end of its last complete UTF-8 character: returns the decodable
/// prefix (invalid sequences in it become U+FFFD) and the trailing bytes of a character cut
/// by a read boundary, to prepend to the next read. Terminal output arrives in arbitrary
/// chunks, and a JSON string must not carry half a character.
pub fn split_utf8(bytes: &[u8]) -> (String, Vec<u8>) {
    // A cut character is at most 3 bytes long: look for a lead byte among the last 3.
    let len = bytes.len();
    let mut cut = len;
    for back in 1..=len.min(3) {
        let b = bytes[len - back];
        if b & 0b1100_0000 == 0b1000_0000 {
            continue; // continuation byte: keep looking for the lead
        }
        let width = if b & 0b1110_0000 == 0b1100_0000 {
            2
        } else if b & 0b1111_0000 == 0b1110_0000 {
            3
        } else if b & 0b1111_1000 == 0b1111_0000 {
            4
        } else {
            1
        };
        if width > back {
            cut = len - back;
        }
        break;
    }
    (
        String::from_utf8_lossy(&bytes[..cut]).into_owned(),
        bytes[cut..].to_vec(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_validated() {
        assert!("a1_B-2".parse::<SessionId>().is_ok());
        assert!("".parse::<SessionId>().is_err());
        assert!("a.b".parse::<SessionId>().is_err());
        assert!("x".repeat(65).parse::<SessionId>().is_err());
        assert!(serde_json::from_str::<SessionId>("\"a>\"").is_err());
    }

    #[test]
    fn poll_wait_is_defaulted_and_clamped() {
        assert_eq!(poll_wait(None), DEFAULT_POLL_WAIT);
        assert_eq!(poll_wait(Some(u64::MAX)), MAX_POLL_WAIT);
        assert_eq!(poll_wait(Some(0)), Duration::ZERO);
    }

    #[test]
    fn terminal_sizes_out_of_range_are_bad_requests() {
        assert!(validate_terminal_size(80, 24).is_ok());
        assert_eq!(
            validate_terminal_size(0, 24).unwrap_err().kind,
            ErrorKind::BadRequest
        );
        assert!(validate_terminal_size(80, MAX_TERMINAL_SIZE + 1).is_err());
    }

    #[test]
    fn split_utf8_keeps_a_cut_character_for_the_next_read() {
        let euro = "€".as_bytes(); // 3 bytes
        let mut bytes = b"ab".to_vec();
        bytes.extend_from_slice(&euro[..2]);
        let (text, rest) = split_utf8(&bytes);
        assert_eq!(text, "ab");
        assert_eq!(rest, &euro[..2]);
        let mut next = rest;
        next.extend_from_slice(&euro[2..]);
        assert_eq!(split_utf8(&next), ("€".to_owned(), Vec::new()));
    }

    #[test]
    fn split_utf8_passes_complete_and_invalid_text_through() {
        assert_eq!(split_utf8(b"hi\n"), ("hi\n".to_owned(), Vec::new()));
        assert_eq!(split_utf8("é".as_bytes()), ("é".to_owned(), Vec::new()));
        let (text, rest) = split_utf8(b"a\xffb");
        assert_eq!((text.as_str(), rest.len()), ("a\u{fffd}b", 0));
        assert_eq!(split_utf8(b""), (String::new(), Vec::new()));
    }
}

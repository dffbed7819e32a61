//! The two live sessions the dashboard relays: a log tail ([`LogStream`]) and a shell
//! ([`ShellSession`]), as channels the web layer can plug into SSE and a WebSocket.
//!
//! Ownership decides the lifetime: dropping the stream, or the shell's input sender, closes
//! the session on the device; the device ending the session ends the stream / output.

use futures::stream::BoxStream;
use tokio::sync::mpsc;

/// One event of a followed log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogEvent {
    /// A line.
    Line {
        /// The service that wrote it.
        service: String,
        /// The text.
        line: String,
    },
    /// Lines were dropped because the reader was too slow.
    Dropped,
    /// The followed containers stopped.
    Ended,
    /// The session failed (device gone, ...).
    Error(String),
}

/// A followed log: ends after [`LogEvent::Ended`] or [`LogEvent::Error`].
pub type LogStream = BoxStream<'static, LogEvent>;

/// What the user's terminal sends.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShellInput {
    /// Typed text.
    Data(String),
    /// The terminal changed size.
    Resize {
        /// Columns.
        cols: u16,
        /// Rows.
        rows: u16,
    },
}

/// What the shell sends back.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShellEvent {
    /// Terminal output.
    Output(String),
    /// The shell exited (with its status when known).
    Exited(Option<i32>),
    /// The session failed (device gone, ...).
    Error(String),
}

/// An open shell. Drop `input` to hang up.
#[derive(Debug)]
pub struct ShellSession {
    /// Output, until [`ShellEvent::Exited`] or [`ShellEvent::Error`].
    pub output: mpsc::Receiver<ShellEvent>,
    /// Input and resizes.
    pub input: mpsc::Sender<ShellInput>,
}

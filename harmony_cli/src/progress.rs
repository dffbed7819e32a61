//! [`Progress`]: one line per Score, drawn as a spinner on a terminal and as plain lines
//! otherwise (CI logs, pipes).

use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use console::style;
use harmony::interpret::{InterpretError, Outcome};
use harmony::maestro::{MaestroEvent, MaestroObserver, ScoreRef};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::summary::format_duration;

/// How progress is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// An animated spinner per step, replaced by its result line (stdout is a terminal).
    Spinner,
    /// A start line and a result line per step.
    Plain,
}

/// Draws Maestro's events on stdout.
pub(crate) struct Progress {
    mode: Mode,
    spinner: Mutex<Option<ProgressBar>>,
}

impl Progress {
    pub(crate) fn new(mode: Mode) -> Self {
        Self {
            mode,
            spinner: Mutex::new(None),
        }
    }

    fn start(&self, label: String) {
        match self.mode {
            Mode::Plain => line(&format!("{label} ...")),
            Mode::Spinner => {
                let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stdout());
                if let Ok(spinner_style) = ProgressStyle::with_template("{spinner:.cyan} {msg}") {
                    bar.set_style(spinner_style);
                }
                bar.set_message(label);
                bar.enable_steady_tick(Duration::from_millis(100));
                *self.lock() = Some(bar);
            }
        }
    }

    fn finish(&self, text: String) {
        // Clear the spinner, then print the result as an ordinary line: the terminal keeps a
        // plain log, and long messages wrap without confusing the spinner's redraw.
        if let Some(bar) = self.lock().take() {
            bar.finish_and_clear();
        }
        line(&text);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<ProgressBar>> {
        self.spinner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl MaestroObserver for Progress {
    fn on_event(&self, event: &MaestroEvent<'_>) {
        match event {
            MaestroEvent::TopologyPreparing { topology } => {
                self.start(format!("preparing topology {topology}"));
            }
            MaestroEvent::TopologyPrepared {
                topology,
                result,
                duration,
            } => self.finish(result_line(
                &format!("topology {topology}"),
                result,
                *duration,
            )),
            MaestroEvent::ScoreStarted { score } => self.start(step_label(score)),
            MaestroEvent::ScoreFinished {
                score,
                result,
                duration,
            } => self.finish(result_line(&step_label(score), result, *duration)),
            MaestroEvent::ScoreSkipped { score } => self.finish(format!(
                "{} {} (skipped: an earlier Score failed)",
                style("-").dim(),
                step_label(score)
            )),
            _ => {}
        }
    }
}

fn step_label(score: &ScoreRef<'_>) -> String {
    format!("[{}/{}] {}", score.step + 1, score.of, score.name)
}

fn result_line(
    label: &str,
    result: &Result<Outcome, InterpretError>,
    duration: Duration,
) -> String {
    let duration = format_duration(duration);
    match result {
        Ok(outcome) => format!(
            "{} {label} ({duration}): {}",
            style("✓").green(),
            one_line(&outcome.message)
        ),
        Err(err) => format!(
            "{} {label} ({duration}): {}",
            style("✗").red(),
            one_line(&err.chain())
        ),
    }
}

/// Keeps a message on one line so the progress and the table stay aligned.
pub(crate) fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn line(text: &str) {
    let mut stdout = std::io::stdout().lock();
    // Progress is best effort: a closed stdout must not fail the deploy itself.
    let _ = writeln!(stdout, "{text}");
    let _ = stdout.flush();
}

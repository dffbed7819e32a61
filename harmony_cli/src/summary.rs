//! The summary table printed after a run: one row per selected Score.

use std::time::Duration;

use console::{Alignment, pad_str, style};
use harmony::maestro::{RunReport, ScoreResult};

use crate::progress::one_line;

/// Formats a duration the way people read them: `0.4s`, `12.3s`, `2m05s`.
pub(crate) fn format_duration(duration: Duration) -> String {
    let secs = duration.as_secs_f64();
    if secs < 60.0 {
        format!("{secs:.1}s")
    } else {
        let whole = duration.as_secs();
        format!("{}m{:02}s", whole / 60, whole % 60)
    }
}

/// Renders the report as an aligned table followed by a one-line tally. Colours are applied
/// after padding, so alignment survives ANSI codes; `console` drops them when stdout is not a
/// terminal.
pub(crate) fn render(report: &RunReport) -> String {
    let header = ["#", "Score", "Status", "Duration", "Message"].map(String::from);
    let rows: Vec<([String; 5], Status)> = report
        .entries
        .iter()
        .map(|entry| {
            let (status, message) = match &entry.result {
                ScoreResult::Completed(outcome) if outcome.changed() => {
                    (Status::Changed, one_line(&outcome.message))
                }
                ScoreResult::Completed(outcome) => (Status::Unchanged, one_line(&outcome.message)),
                ScoreResult::Failed(err) => (Status::Failed, one_line(&err.chain())),
                ScoreResult::Skipped => (
                    Status::Skipped,
                    "not run: an earlier Score failed (--keep-going runs it anyway)".to_string(),
                ),
            };
            let duration = match entry.result {
                ScoreResult::Skipped => "-".to_string(),
                _ => format_duration(entry.duration),
            };
            (
                [
                    (entry.index + 1).to_string(),
                    entry.name.clone(),
                    status.label().to_string(),
                    duration,
                    message,
                ],
                status,
            )
        })
        .collect();

    let mut widths = header
        .clone()
        .map(|cell| console::measure_text_width(&cell));
    for (cells, _) in &rows {
        for (width, cell) in widths.iter_mut().zip(cells) {
            *width = (*width).max(console::measure_text_width(cell));
        }
    }
    // The message column is last and not padded.
    widths[4] = 0;

    let mut out = String::new();
    out.push_str(&row(&header, &widths, None));
    for (cells, status) in &rows {
        out.push_str(&row(cells, &widths, Some(*status)));
    }

    let count = |wanted: Status| rows.iter().filter(|(_, status)| *status == wanted).count();
    out.push_str(&format!(
        "{} Score(s): {} changed, {} unchanged, {} failed, {} skipped\n",
        rows.len(),
        count(Status::Changed),
        count(Status::Unchanged),
        count(Status::Failed),
        count(Status::Skipped),
    ));
    out
}

fn row(cells: &[String; 5], widths: &[usize; 5], status: Option<Status>) -> String {
    let mut line = String::new();
    for (column, (cell, width)) in cells.iter().zip(widths).enumerate() {
        let align = if column == 0 {
            Alignment::Right
        } else {
            Alignment::Left
        };
        let padded = pad_str(cell, *width, align, None).into_owned();
        let styled = match (column, status) {
            (_, None) => style(padded).bold().to_string(),
            (2, Some(status)) => status.paint(padded),
            _ => padded,
        };
        line.push_str(&styled);
        if column < cells.len() - 1 {
            line.push_str("  ");
        }
    }
    line.truncate(line.trim_end().len());
    line.push('\n');
    line
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Changed,
    Unchanged,
    Failed,
    Skipped,
}

impl Status {
    fn label(self) -> &'static str {
        match self {
            Status::Changed => "changed",
            Status::Unchanged => "no change",
            Status::Failed => "FAILED",
            Status::Skipped => "skipped",
        }
    }

    fn paint(self, text: String) -> String {
        match self {
            Status::Changed => style(text).green().to_string(),
            Status::Unchanged => style(text).dim().to_string(),
            Status::Failed => style(text).red().bold().to_string(),
            Status::Skipped => style(text).yellow().to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use harmony::interpret::{InterpretError, Outcome};
    use harmony::maestro::ScoreReport;

    use super::*;

    #[test]
    fn formats_durations_for_people() {
        assert_eq!(format_duration(Duration::from_millis(420)), "0.4s");
        assert_eq!(format_duration(Duration::from_secs(125)), "2m05s");
    }

    #[test]
    fn renders_one_aligned_row_per_score_and_a_tally() {
        console::set_colors_enabled(false);
        let report = RunReport {
            entries: vec![
                ScoreReport {
                    index: 0,
                    name: "Create workspace".into(),
                    result: ScoreResult::Completed(Outcome::success("created /tmp/w")),
                    duration: Duration::from_millis(100),
                },
                ScoreReport {
                    index: 1,
                    name: "Check token".into(),
                    result: ScoreResult::Failed(InterpretError::failed("TOKEN is not set")),
                    duration: Duration::from_millis(200),
                },
                ScoreReport {
                    index: 2,
                    name: "Notes".into(),
                    result: ScoreResult::Skipped,
                    duration: Duration::ZERO,
                },
            ],
        };
        let expected = "\
#  Score             Status   Duration  Message
1  Create workspace  changed  0.1s      created /tmp/w
2  Check token       FAILED   0.2s      TOKEN is not set
3  Notes             skipped  -         not run: an earlier Score failed (--keep-going runs it anyway)
3 Score(s): 1 changed, 0 unchanged, 1 failed, 1 skipped
";
        assert_eq!(render(&report), expected);
    }
}

//! [`CliError`]: why the command line could not run the Scores it was asked to.

use harmony::interpret::InterpretError;

/// Why a run did not happen or could not be completed. A failed Score is not a `CliError`: it
/// is in the [`RunSummary`](crate::RunSummary).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CliError {
    /// `--number` names no Score.
    #[error("--number {number} is out of range: {}", valid_numbers(*count))]
    NumberOutOfRange {
        /// The number given.
        number: usize,
        /// How many Scores there are.
        count: usize,
    },

    /// `--filter` matches no Score.
    #[error("--filter {filter:?} matches no Score; run with --list to see their names")]
    NoMatch {
        /// The filter given.
        filter: String,
    },

    /// No selection flag was given and nobody can be asked.
    #[error(
        "stdin is not a terminal, so the Scores to run cannot be chosen interactively; pass \
         --yes to run all (matching) Scores or --number N to run one (see --list)"
    )]
    NotInteractive,

    /// The interactive selection failed.
    #[error("the interactive Score selection failed; pass --yes or --number N instead")]
    Prompt(#[source] std::io::Error),

    /// The topology could not be prepared (or Maestro refused the selection).
    #[error(transparent)]
    Run(#[from] InterpretError),

    /// Output could not be written.
    #[error("cannot write to stdout")]
    Output(#[source] std::io::Error),
}

impl CliError {
    /// True for mistakes in the command line (exit code 2), as opposed to failures while
    /// running (exit code 1).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            CliError::NumberOutOfRange { .. } | CliError::NoMatch { .. } | CliError::NotInteractive
        )
    }

    /// The error and all its causes on one line.
    pub fn chain(&self) -> String {
        let mut line = self.to_string();
        let mut source = std::error::Error::source(self);
        while let Some(cause) = source {
            line.push_str(": ");
            line.push_str(&cause.to_string());
            source = cause.source();
        }
        line
    }
}

fn valid_numbers(count: usize) -> String {
    match count {
        0 => "there are no Scores to run".to_string(),
        1 => "the only valid number is 1 (see --list)".to_string(),
        _ => format!("valid numbers are 1 to {count} (see --list)"),
    }
}

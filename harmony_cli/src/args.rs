//! [`Args`]: the flags that choose which Scores run.

/// Which Scores to run and how. A `clap::Args` struct so that other binaries embed it with
/// `#[command(flatten)]` (for example under one subcommand per topology).
///
/// Scores are numbered from 1 in registration order; numbers do not shift when `--filter`
/// hides some, so `--list --filter x` shows the numbers `--number` takes.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct Args {
    /// Print the numbered Score names (after --filter) and exit without running anything.
    #[arg(long)]
    pub list: bool,

    /// Keep only the Scores whose name contains SUBSTR, ignoring case.
    #[arg(long, value_name = "SUBSTR")]
    pub filter: Option<String>,

    /// Run every selected Score without asking.
    #[arg(long, short = 'y')]
    pub yes: bool,

    /// Run only the Score numbered N by --list (1-based).
    #[arg(long, value_name = "N", conflicts_with = "filter")]
    pub number: Option<usize>,

    /// Run the remaining Scores after one fails. By default the run stops at the first
    /// failure, like a deploy: later Scores usually build on earlier ones.
    #[arg(long)]
    pub keep_going: bool,
}

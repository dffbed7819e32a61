//! The generic command line for a list of harmony Scores against one Topology.
//!
//! A deploy binary builds its topology and Scores, then hands them to [`run`] (or
//! [`run_to_exit_code`] from `main`). The user chooses what runs with [`Args`]: `--list`,
//! `--filter`, `--yes`, `--number`, or an interactive choice when stdin is a terminal. Each Score
//! gets one progress line, and a summary table closes the run.
//!
//! - [`args`][]: the flags, embeddable with `#[command(flatten)]`.
//! - [`error`][]: [`CliError`].
//! - `select`, `progress`, `summary`: choosing Scores, drawing progress, the final table.

#![deny(missing_docs)]

pub mod args;
pub mod error;
mod progress;
mod select;
mod summary;

use std::io::{IsTerminal, Write};
use std::process::ExitCode;
use std::sync::Arc;

use clap::Parser;
use harmony::inventory::Inventory;
use harmony::maestro::{FailurePolicy, Maestro, RunReport};
use harmony::score::Score;
use harmony::topology::Topology;

pub use crate::args::Args;
pub use crate::error::CliError;
use crate::progress::{Mode, Progress};
use crate::select::Plan;

/// What a finished invocation did. Empty when it only listed Scores or the user selected none.
#[derive(Debug, Default)]
pub struct RunSummary {
    /// One entry per Score that was selected to run.
    pub report: RunReport,
}

impl RunSummary {
    /// True when no Score failed.
    pub fn succeeded(&self) -> bool {
        !self.report.has_failures()
    }

    /// `0` when every Score succeeded, `1` otherwise.
    pub fn exit_code(&self) -> ExitCode {
        if self.succeeded() {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    }
}

/// The command line when `run` parses arguments itself.
#[derive(Debug, Parser)]
#[command(about = "Run harmony Scores against a topology")]
struct Cli {
    #[command(flatten)]
    args: Args,
}

/// Chooses Scores according to `args` (parsed from the process arguments when `None`), runs
/// them in order against `topology` and prints one progress line per Score and a summary.
///
/// A failed Score does not make this return `Err`: it is in the summary, and
/// [`RunSummary::exit_code`] is non-zero. `Err` means nothing useful could run: a bad selection
/// (`--number` out of range, `--filter` matching nothing, no terminal to ask) or a topology that
/// is not ready.
pub async fn run<T: Topology + 'static>(
    inventory: Inventory,
    topology: T,
    scores: Vec<Box<dyn Score<T>>>,
    args: Option<Args>,
) -> Result<RunSummary, CliError> {
    let args = args.unwrap_or_else(|| Cli::parse().args);
    let names: Vec<String> = scores.iter().map(|score| score.name()).collect();

    let selected = match select::plan(&names, &args, std::io::stdin().is_terminal())? {
        Plan::List(indices) => {
            print_list(&names, &indices)?;
            return Ok(RunSummary::default());
        }
        Plan::Run(indices) => indices,
        Plan::Ask(indices) => ask(&names, indices).await?,
    };
    if selected.is_empty() {
        write_stdout("Nothing selected; nothing to do.\n")?;
        return Ok(RunSummary::default());
    }

    let mode = if std::io::stdout().is_terminal() {
        Mode::Spinner
    } else {
        Mode::Plain
    };
    let policy = if args.keep_going {
        FailurePolicy::KeepGoing
    } else {
        FailurePolicy::StopOnFailure
    };
    let mut maestro =
        Maestro::new(inventory, topology).with_observer(Arc::new(Progress::new(mode)));
    maestro.register_all(scores);
    let report = maestro.run_selected(&selected, policy).await?;

    write_stdout(&format!("\n{}", summary::render(&report)))?;
    Ok(RunSummary { report })
}

/// [`run`] for `main`: prints errors and failed Scores to stderr and maps the result to an exit
/// code: `0` all selected Scores succeeded, `1` a Score failed or the topology was not ready,
/// `2` the command line was wrong.
///
/// ```no_run
/// # use harmony::{inventory::Inventory, topologies::K8sAnywhereTopology};
/// #[tokio::main]
/// async fn main() -> std::process::ExitCode {
///     let scores = Vec::new(); // your Scores
///     harmony_cli::run_to_exit_code(Inventory::autoload(), K8sAnywhereTopology::from_env(), scores, None)
///         .await
/// }
/// ```
pub async fn run_to_exit_code<T: Topology + 'static>(
    inventory: Inventory,
    topology: T,
    scores: Vec<Box<dyn Score<T>>>,
    args: Option<Args>,
) -> ExitCode {
    match run(inventory, topology, scores, args).await {
        Ok(summary) => {
            let failed: Vec<&str> = summary
                .report
                .failures()
                .map(|entry| entry.name.as_str())
                .collect();
            if !failed.is_empty() {
                eprintln!(
                    "error: {} Score(s) failed: {}",
                    failed.len(),
                    failed.join(", ")
                );
            }
            summary.exit_code()
        }
        Err(err) => {
            eprintln!("error: {}", err.chain());
            ExitCode::from(if err.is_usage() { 2 } else { 1 })
        }
    }
}

fn print_list(names: &[String], indices: &[usize]) -> Result<(), CliError> {
    let width = names.len().to_string().len();
    let listing: String = indices
        .iter()
        .map(|&index| format!("{:>width$}. {}\n", index + 1, names[index]))
        .collect();
    write_stdout(&listing)
}

/// Asks which of `candidates` to run (all pre-checked). Runs the blocking prompt off the async
/// workers.
async fn ask(names: &[String], candidates: Vec<usize>) -> Result<Vec<usize>, CliError> {
    let items: Vec<String> = candidates
        .iter()
        .map(|&index| format!("{}. {}", index + 1, names[index]))
        .collect();
    let answer = tokio::task::spawn_blocking(move || {
        dialoguer::MultiSelect::new()
            .with_prompt("Scores to run (space toggles, enter runs, esc cancels)")
            .items_checked(items.iter().map(|item| (item, true)))
            .interact_opt()
    })
    .await
    .map_err(|join| CliError::Prompt(std::io::Error::other(join)))?
    .map_err(|err| CliError::Prompt(err.into()))?;
    Ok(answer
        .unwrap_or_default()
        .into_iter()
        .filter_map(|position| candidates.get(position).copied())
        .collect())
}

fn write_stdout(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CliError::Output)
}

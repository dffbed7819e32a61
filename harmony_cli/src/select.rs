//! Turns [`Args`] and the Score names into what to do: list, run, or ask.

use crate::args::Args;
use crate::error::CliError;

/// What the command line will do, with 0-based Score indices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Plan {
    /// Print these Scores and exit.
    List(Vec<usize>),
    /// Run these Scores without asking.
    Run(Vec<usize>),
    /// Ask which of these Scores to run.
    Ask(Vec<usize>),
}

/// Decides what to do. `stdin_is_terminal` says whether asking is possible; without a terminal
/// and without `--yes`/`--number` this fails rather than hang waiting for an answer.
pub(crate) fn plan(
    names: &[String],
    args: &Args,
    stdin_is_terminal: bool,
) -> Result<Plan, CliError> {
    let matching: Vec<usize> = match &args.filter {
        None => (0..names.len()).collect(),
        Some(filter) => {
            let needle = filter.to_lowercase();
            let matching: Vec<usize> = names
                .iter()
                .enumerate()
                .filter(|(_, name)| name.to_lowercase().contains(&needle))
                .map(|(index, _)| index)
                .collect();
            if matching.is_empty() {
                return Err(CliError::NoMatch {
                    filter: filter.clone(),
                });
            }
            matching
        }
    };

    if args.list {
        return Ok(Plan::List(matching));
    }
    if let Some(number) = args.number {
        if number == 0 || number > names.len() {
            return Err(CliError::NumberOutOfRange {
                number,
                count: names.len(),
            });
        }
        return Ok(Plan::Run(vec![number - 1]));
    }
    if args.yes {
        return Ok(Plan::Run(matching));
    }
    if stdin_is_terminal {
        return Ok(Plan::Ask(matching));
    }
    Err(CliError::NotInteractive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        [
            "Create workspace",
            "Check deploy token",
            "Write release notes",
        ]
        .map(String::from)
        .to_vec()
    }

    fn args() -> Args {
        Args::default()
    }

    #[test]
    fn yes_runs_every_score_in_order() {
        let plan = plan(
            &names(),
            &Args {
                yes: true,
                ..args()
            },
            false,
        )
        .expect("plan");
        assert_eq!(plan, Plan::Run(vec![0, 1, 2]));
    }

    #[test]
    fn filter_matches_case_insensitively() {
        let args = Args {
            yes: true,
            filter: Some("WRITE".into()),
            ..args()
        };
        assert_eq!(
            plan(&names(), &args, false).expect("plan"),
            Plan::Run(vec![2])
        );
    }

    #[test]
    fn list_shows_filtered_scores_with_their_original_positions() {
        let args = Args {
            list: true,
            filter: Some("c".into()),
            ..args()
        };
        assert_eq!(
            plan(&names(), &args, false).expect("plan"),
            Plan::List(vec![0, 1])
        );
    }

    #[test]
    fn list_wins_over_selection_flags() {
        let args = Args {
            list: true,
            yes: true,
            number: Some(2),
            ..args()
        };
        assert_eq!(
            plan(&names(), &args, false).expect("plan"),
            Plan::List(vec![0, 1, 2])
        );
    }

    #[test]
    fn number_picks_one_score_one_based() {
        let args = Args {
            number: Some(3),
            ..args()
        };
        assert_eq!(
            plan(&names(), &args, false).expect("plan"),
            Plan::Run(vec![2])
        );
    }

    #[test]
    fn rejects_number_out_of_range_naming_the_valid_range() {
        for number in [0, 4] {
            let args = Args {
                number: Some(number),
                ..args()
            };
            let err = plan(&names(), &args, false).expect_err("out of range");
            assert_eq!(
                err.to_string(),
                format!("--number {number} is out of range: valid numbers are 1 to 3 (see --list)")
            );
            assert!(err.is_usage());
        }
    }

    #[test]
    fn rejects_filter_that_matches_nothing() {
        let args = Args {
            yes: true,
            filter: Some("nothing like it".into()),
            ..args()
        };
        let err = plan(&names(), &args, false).expect_err("no match");
        assert!(matches!(err, CliError::NoMatch { .. }));
    }

    #[test]
    fn asks_only_when_stdin_is_a_terminal() {
        assert_eq!(
            plan(&names(), &args(), true).expect("plan"),
            Plan::Ask(vec![0, 1, 2])
        );
        let err = plan(&names(), &args(), false).expect_err("cannot ask");
        assert!(err.to_string().contains("--yes"), "{err}");
    }
}

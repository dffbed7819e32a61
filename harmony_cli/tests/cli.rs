//! Drives the `three_scores` example through its command line, as a user would.
//!
//! The example has three Scores: `Create directory workspace`, `Check THREE_SCORES_TOKEN is set`
//! (fails unless that variable is set) and `Write release-notes.txt`. stdin is never a terminal
//! here, so the "no flag" case must refuse instead of prompting.

use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// `target/<profile>/examples/three_scores`, next to this test's `deps/` directory. `cargo test`
/// builds examples before running tests; when the binary is missing (e.g. `cargo test --test
/// cli`), build it with the same cargo.
fn example_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("test executable lives in target/<profile>/deps");
    let binary = profile_dir
        .join("examples")
        .join(format!("three_scores{}", std::env::consts::EXE_SUFFIX));
    if !binary.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "-p", "harmony_cli", "--example", "three_scores"])
            .status()
            .expect("run cargo build for the example");
        assert!(
            status.success(),
            "cargo build --example three_scores failed"
        );
    }
    assert!(binary.exists(), "example not found at {}", binary.display());
    binary
}

struct Run {
    output: Output,
    workdir: tempfile::TempDir,
}

impl Run {
    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn everything(&self) -> String {
        format!("--- stdout\n{}--- stderr\n{}", self.stdout(), self.stderr())
    }
}

fn three_scores(args: &[&str]) -> Run {
    let workdir = tempfile::tempdir().expect("tempdir");
    let output = Command::new(example_binary())
        .args(args)
        .env("HARMONY_WORKDIR", workdir.path())
        .env_remove("THREE_SCORES_TOKEN")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run three_scores");
    Run { output, workdir }
}

#[test]
fn list_prints_three_numbered_names_and_runs_nothing() {
    let run = three_scores(&["--list"]);
    assert_eq!(run.code(), Some(0), "{}", run.everything());
    assert_eq!(
        run.stdout(),
        "1. Create directory workspace\n\
         2. Check THREE_SCORES_TOKEN is set\n\
         3. Write release-notes.txt\n"
    );
    assert!(!run.workdir.path().join("workspace").exists());
}

#[test]
fn yes_runs_all_stops_at_the_failure_and_names_it() {
    let run = three_scores(&["--yes"]);
    assert_eq!(run.code(), Some(1), "{}", run.everything());
    let stdout = run.stdout();
    // Progress lines, one per Score, plain because stdout is a pipe.
    assert!(
        stdout.contains("✓ [1/3] Create directory workspace ("),
        "{stdout}"
    );
    assert!(
        stdout.contains("✗ [2/3] Check THREE_SCORES_TOKEN is set ("),
        "{stdout}"
    );
    assert!(
        stdout.contains("[3/3] Write release-notes.txt (skipped"),
        "{stdout}"
    );
    // The summary table names the failure and why.
    assert!(stdout.contains("#  Score"), "{stdout}");
    let failed_row = stdout
        .lines()
        .find(|line| line.starts_with("2  Check THREE_SCORES_TOKEN is set"))
        .unwrap_or_else(|| panic!("no summary row for Score 2 in\n{stdout}"));
    assert!(failed_row.contains("FAILED"), "{failed_row}");
    assert!(
        failed_row.contains("export THREE_SCORES_TOKEN="),
        "{failed_row}"
    );
    assert!(
        stdout.contains("3 Score(s): 1 changed, 0 unchanged, 1 failed, 1 skipped"),
        "{stdout}"
    );
    assert!(
        run.stderr()
            .contains("error: 1 Score(s) failed: Check THREE_SCORES_TOKEN is set"),
        "{}",
        run.everything()
    );
    assert!(run.workdir.path().join("workspace").is_dir());
    assert!(!run.workdir.path().join("release-notes.txt").exists());
}

#[test]
fn keep_going_runs_the_scores_after_a_failure() {
    let run = three_scores(&["--yes", "--keep-going"]);
    assert_eq!(run.code(), Some(1), "{}", run.everything());
    assert!(run.workdir.path().join("release-notes.txt").exists());
    assert!(
        run.stdout()
            .contains("2 changed, 0 unchanged, 1 failed, 0 skipped")
    );
}

#[test]
fn filter_selects_matching_scores_case_insensitively() {
    let run = three_scores(&["--filter", "WRITE", "--yes"]);
    assert_eq!(run.code(), Some(0), "{}", run.everything());
    let stdout = run.stdout();
    assert!(
        stdout.contains("✓ [1/1] Write release-notes.txt"),
        "{stdout}"
    );
    assert!(!stdout.contains("Create directory"), "{stdout}");
    assert!(run.workdir.path().join("release-notes.txt").exists());
}

#[test]
fn list_with_filter_keeps_the_original_numbers() {
    let run = three_scores(&["--list", "--filter", "check"]);
    assert_eq!(run.code(), Some(0), "{}", run.everything());
    assert_eq!(run.stdout(), "2. Check THREE_SCORES_TOKEN is set\n");
}

#[test]
fn number_runs_only_that_score_and_succeeds() {
    let run = three_scores(&["--number", "3"]);
    assert_eq!(run.code(), Some(0), "{}", run.everything());
    let stdout = run.stdout();
    assert!(
        stdout.contains("✓ [1/1] Write release-notes.txt"),
        "{stdout}"
    );
    assert!(stdout.contains("1 Score(s): 1 changed"), "{stdout}");
    assert!(!run.workdir.path().join("workspace").exists());
}

#[test]
fn number_out_of_range_names_the_valid_range() {
    let run = three_scores(&["--number", "9"]);
    assert_eq!(run.code(), Some(2), "{}", run.everything());
    assert!(
        run.stderr()
            .contains("--number 9 is out of range: valid numbers are 1 to 3"),
        "{}",
        run.everything()
    );
}

#[test]
fn no_selection_without_a_terminal_asks_for_yes_instead_of_hanging() {
    let run = three_scores(&[]);
    assert_eq!(run.code(), Some(2), "{}", run.everything());
    let stderr = run.stderr();
    assert!(stderr.contains("stdin is not a terminal"), "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert!(!run.workdir.path().join("workspace").exists());
}

#[test]
fn second_run_reports_no_change() {
    let workdir = tempfile::tempdir().expect("tempdir");
    let run_once = || {
        Command::new(example_binary())
            .args(["--number", "3"])
            .env("HARMONY_WORKDIR", workdir.path())
            .stdin(Stdio::null())
            .output()
            .expect("run three_scores")
    };
    assert!(run_once().status.success());
    let again = run_once();
    assert!(again.status.success());
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        stdout.contains("1 Score(s): 0 changed, 1 unchanged"),
        "{stdout}"
    );
}

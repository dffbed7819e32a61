//! Three Scores on a small in-example topology, run through `harmony_cli`.
//!
//! The second Score fails unless `THREE_SCORES_TOKEN` is set, to show what a failure looks
//! like. Files go to `$HARMONY_WORKDIR` (default: `<tmp>/harmony-three-scores`).
//!
//! ```text
//! cargo run -p harmony_cli --example three_scores -- --list
//! cargo run -p harmony_cli --example three_scores -- --yes
//! cargo run -p harmony_cli --example three_scores -- --number 3
//! ```

use std::path::PathBuf;
use std::process::ExitCode;

use async_trait::async_trait;
use harmony::interpret::{Interpret, InterpretError, InterpretStatus, Outcome, StatusCell};
use harmony::inventory::Inventory;
use harmony::score::Score;
use harmony::topology::Topology;

/// The environment variable the second Score requires.
const TOKEN_ENV: &str = "THREE_SCORES_TOKEN";

/// A directory on this host where the Scores put their files. Offers no capability beyond
/// being a place, which is all these Scores need.
struct Workbench {
    root: PathBuf,
}

#[async_trait]
impl Topology for Workbench {
    fn name(&self) -> &str {
        "workbench"
    }

    async fn ensure_ready(&self) -> Result<Outcome, InterpretError> {
        tokio::fs::create_dir_all(&self.root).await.map_err(|err| {
            InterpretError::TopologyNotReady {
                topology: "workbench".into(),
                reason: format!(
                    "cannot create {}; set HARMONY_WORKDIR to a writable directory",
                    self.root.display()
                ),
                source: Some(Box::new(err)),
            }
        })?;
        Ok(Outcome::noop(format!("working in {}", self.root.display())))
    }
}

/// A directory exists under the workbench.
#[derive(Debug, Clone)]
struct DirectoryScore {
    dir: &'static str,
}

/// An environment variable is set (stands in for a credential a deploy needs).
#[derive(Debug, Clone)]
struct RequiredEnvScore {
    var: &'static str,
}

/// A file under the workbench has exactly these contents.
#[derive(Debug, Clone)]
struct FileScore {
    file: &'static str,
    contents: &'static str,
}

/// Runs a closure-like check for the three Scores above, keeping the interpret boilerplate in
/// one place.
struct ExampleInterpret<S> {
    score: S,
    name: String,
    status: StatusCell,
}

trait Work: Send + Sync {
    fn work(&self, bench: &Workbench) -> Result<Outcome, InterpretError>;
}

#[async_trait]
impl<S: Work> Interpret<Workbench> for ExampleInterpret<S> {
    async fn execute(
        &self,
        _inventory: &Inventory,
        bench: &Workbench,
    ) -> Result<Outcome, InterpretError> {
        self.status.track(async { self.score.work(bench) }).await
    }

    fn name(&self) -> String {
        self.name.clone()
    }

    fn status(&self) -> InterpretStatus {
        self.status.get()
    }
}

fn interpret<S: Work + 'static>(score: S, name: String) -> Box<dyn Interpret<Workbench>> {
    Box::new(ExampleInterpret {
        score,
        name,
        status: StatusCell::default(),
    })
}

fn io_failure(what: String, err: std::io::Error) -> InterpretError {
    InterpretError::Failed {
        message: what,
        source: Some(Box::new(err)),
    }
}

impl Score<Workbench> for DirectoryScore {
    fn name(&self) -> String {
        format!("Create directory {}", self.dir)
    }

    fn create_interpret(&self) -> Box<dyn Interpret<Workbench>> {
        interpret(self.clone(), Score::<Workbench>::name(self))
    }
}

impl Work for DirectoryScore {
    fn work(&self, bench: &Workbench) -> Result<Outcome, InterpretError> {
        let path = bench.root.join(self.dir);
        if path.is_dir() {
            return Ok(Outcome::noop(format!("{} exists", path.display())));
        }
        std::fs::create_dir_all(&path)
            .map_err(|err| io_failure(format!("cannot create {}", path.display()), err))?;
        Ok(Outcome::success(format!("created {}", path.display())))
    }
}

impl Score<Workbench> for RequiredEnvScore {
    fn name(&self) -> String {
        format!("Check {} is set", self.var)
    }

    fn create_interpret(&self) -> Box<dyn Interpret<Workbench>> {
        interpret(self.clone(), Score::<Workbench>::name(self))
    }
}

impl Work for RequiredEnvScore {
    fn work(&self, _bench: &Workbench) -> Result<Outcome, InterpretError> {
        match std::env::var_os(self.var) {
            Some(value) if !value.is_empty() => Ok(Outcome::noop(format!("{} is set", self.var))),
            _ => Err(InterpretError::invalid_input(
                self.var,
                format!("is not set; export {}=<token> and run again", self.var),
            )),
        }
    }
}

impl Score<Workbench> for FileScore {
    fn name(&self) -> String {
        format!("Write {}", self.file)
    }

    fn create_interpret(&self) -> Box<dyn Interpret<Workbench>> {
        interpret(self.clone(), Score::<Workbench>::name(self))
    }
}

impl Work for FileScore {
    fn work(&self, bench: &Workbench) -> Result<Outcome, InterpretError> {
        let path = bench.root.join(self.file);
        if std::fs::read_to_string(&path).is_ok_and(|current| current == self.contents) {
            return Ok(Outcome::noop(format!("{} is up to date", path.display())));
        }
        std::fs::write(&path, self.contents)
            .map_err(|err| io_failure(format!("cannot write {}", path.display()), err))?;
        Ok(Outcome::success(format!("wrote {}", path.display())))
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let inventory = Inventory::autoload();
    let root = inventory
        .working_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("harmony-three-scores"));
    let scores: Vec<Box<dyn Score<Workbench>>> = vec![
        Box::new(DirectoryScore { dir: "workspace" }),
        Box::new(RequiredEnvScore { var: TOKEN_ENV }),
        Box::new(FileScore {
            file: "release-notes.txt",
            contents: "three_scores: all good\n",
        }),
    ];
    harmony_cli::run_to_exit_code(inventory, Workbench { root }, scores, None).await
}

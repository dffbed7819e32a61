//! [`Maestro`]: registers Scores against one topology and runs them in order, collecting what
//! each did into a [`RunReport`]. Progress goes to a [`MaestroObserver`], so a command line can
//! draw spinners without Maestro knowing about terminals.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::OnceCell;
use tracing::{Instrument, info, info_span, warn};

use crate::interpret::{InterpretError, Outcome};
use crate::inventory::Inventory;
use crate::score::Score;
use crate::topology::Topology;

/// What happens to the remaining Scores when one fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FailurePolicy {
    /// Stop at the first failure and report the rest as skipped, like a deploy should: later
    /// Scores usually build on earlier ones.
    #[default]
    StopOnFailure,
    /// Run every selected Score regardless, for independent Scores.
    KeepGoing,
}

/// A progress event, borrowed from Maestro for the duration of the callback.
#[derive(Debug)]
#[non_exhaustive]
pub enum MaestroEvent<'a> {
    /// The topology's `ensure_ready` is about to run.
    TopologyPreparing {
        /// The topology's name.
        topology: &'a str,
    },
    /// The topology's `ensure_ready` returned.
    TopologyPrepared {
        /// The topology's name.
        topology: &'a str,
        /// What it returned.
        result: &'a Result<Outcome, InterpretError>,
        /// How long it took.
        duration: Duration,
    },
    /// A Score is about to run.
    ScoreStarted {
        /// Which Score this is, as registered.
        score: ScoreRef<'a>,
    },
    /// A Score finished, well or badly.
    ScoreFinished {
        /// Which Score this was.
        score: ScoreRef<'a>,
        /// What its interpret returned.
        result: &'a Result<Outcome, InterpretError>,
        /// How long it ran.
        duration: Duration,
    },
    /// A Score was not run because an earlier one failed (see [`FailurePolicy`]).
    ScoreSkipped {
        /// Which Score this is.
        score: ScoreRef<'a>,
    },
}

/// Identifies a Score within a run, for progress lines like `[2/3] name`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScoreRef<'a> {
    /// Position among the registered Scores (0-based; add one to show it).
    pub index: usize,
    /// Position within this run (0-based).
    pub step: usize,
    /// Number of Scores in this run.
    pub of: usize,
    /// The Score's name.
    pub name: &'a str,
}

/// Receives Maestro's progress events. Called inline, so keep it quick.
pub trait MaestroObserver: Send + Sync {
    /// One event happened.
    fn on_event(&self, event: &MaestroEvent<'_>);
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoopObserver;

impl MaestroObserver for NoopObserver {
    fn on_event(&self, _event: &MaestroEvent<'_>) {}
}

/// What happened to one Score in a run.
#[derive(Debug)]
pub enum ScoreResult {
    /// The interpret succeeded.
    Completed(Outcome),
    /// The interpret failed.
    Failed(InterpretError),
    /// Not run because an earlier Score failed.
    Skipped,
}

/// One line of a [`RunReport`].
#[derive(Debug)]
pub struct ScoreReport {
    /// Position among the registered Scores (0-based).
    pub index: usize,
    /// The Score's name.
    pub name: String,
    /// What happened.
    pub result: ScoreResult,
    /// How long it ran (zero when skipped).
    pub duration: Duration,
}

/// What a run did, one entry per selected Score, in run order.
#[derive(Debug, Default)]
pub struct RunReport {
    /// The entries, in the order the Scores were run.
    pub entries: Vec<ScoreReport>,
}

impl RunReport {
    /// True when at least one Score failed.
    pub fn has_failures(&self) -> bool {
        self.failures().next().is_some()
    }

    /// The entries whose Score failed.
    pub fn failures(&self) -> impl Iterator<Item = &ScoreReport> {
        self.entries
            .iter()
            .filter(|entry| matches!(entry.result, ScoreResult::Failed(_)))
    }
}

/// Runs Scores against one topology, in the order they were registered.
///
/// ```no_run
/// # use harmony::{inventory::Inventory, maestro::{Maestro, FailurePolicy}, score::Score};
/// # use harmony::topologies::K8sAnywhereTopology;
/// # async fn deploy(scores: Vec<Box<dyn Score<K8sAnywhereTopology>>>) -> Result<(), Box<dyn std::error::Error>> {
/// let mut maestro = Maestro::new(Inventory::autoload(), K8sAnywhereTopology::from_env());
/// maestro.register_all(scores);
/// let report = maestro.run_all(FailurePolicy::StopOnFailure).await?;
/// assert!(!report.has_failures());
/// # Ok(()) }
/// ```
pub struct Maestro<T: Topology> {
    inventory: Inventory,
    topology: T,
    scores: Vec<Box<dyn Score<T>>>,
    observer: Arc<dyn MaestroObserver>,
    ready: OnceCell<Outcome>,
}

impl<T: Topology> fmt::Debug for Maestro<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Maestro")
            .field("inventory", &self.inventory)
            .field("topology", &self.topology.name())
            .field("scores", &self.scores)
            .field("ready", &self.ready.get())
            .finish_non_exhaustive()
    }
}

impl<T: Topology> Maestro<T> {
    /// A Maestro with no Scores, reporting progress nowhere.
    pub fn new(inventory: Inventory, topology: T) -> Self {
        Self {
            inventory,
            topology,
            scores: Vec::new(),
            observer: Arc::new(NoopObserver),
            ready: OnceCell::new(),
        }
    }

    /// Sends progress events to `observer`.
    #[must_use]
    pub fn with_observer(mut self, observer: Arc<dyn MaestroObserver>) -> Self {
        self.observer = observer;
        self
    }

    /// Replaces the progress observer.
    pub fn set_observer(&mut self, observer: Arc<dyn MaestroObserver>) {
        self.observer = observer;
    }

    /// The inventory passed to every interpret.
    pub fn inventory(&self) -> &Inventory {
        &self.inventory
    }

    /// The topology Scores run against.
    pub fn topology(&self) -> &T {
        &self.topology
    }

    /// Appends Scores; they run in the order registered.
    pub fn register_all(&mut self, scores: Vec<Box<dyn Score<T>>>) {
        self.scores.extend(scores);
    }

    /// The registered Scores, in order.
    pub fn scores(&self) -> &[Box<dyn Score<T>>] {
        &self.scores
    }

    /// Prepares the topology (`ensure_ready`) once; later calls return the first successful
    /// outcome without calling it again. A failure is not remembered, so a caller may retry.
    pub async fn initialize(&self) -> Result<&Outcome, InterpretError> {
        self.ready
            .get_or_try_init(|| async {
                let topology = self.topology.name();
                self.observer
                    .on_event(&MaestroEvent::TopologyPreparing { topology });
                let started = Instant::now();
                let result = self
                    .topology
                    .ensure_ready()
                    .instrument(info_span!("ensure_ready", topology))
                    .await;
                self.observer.on_event(&MaestroEvent::TopologyPrepared {
                    topology,
                    result: &result,
                    duration: started.elapsed(),
                });
                match &result {
                    Ok(outcome) => info!(topology, message = %outcome.message, "topology ready"),
                    Err(err) => warn!(topology, error = %err.chain(), "topology not ready"),
                }
                result
            })
            .await
    }

    /// Runs one Score (registered or not) after making sure the topology is ready. Emits no
    /// Score events; use [`run_all`](Self::run_all) or [`run_selected`](Self::run_selected)
    /// for a reported run.
    pub async fn interpret(&self, score: &dyn Score<T>) -> Result<Outcome, InterpretError> {
        self.initialize().await?;
        self.execute(score).await
    }

    /// Runs every registered Score in order.
    ///
    /// Returns `Err` only when the topology cannot be prepared; Score failures are in the
    /// report.
    pub async fn run_all(&self, policy: FailurePolicy) -> Result<RunReport, InterpretError> {
        let all: Vec<usize> = (0..self.scores.len()).collect();
        self.run_selected(&all, policy).await
    }

    /// Runs the registered Scores at `indices` (0-based), in the order given.
    ///
    /// Returns `Err` when an index is out of range (nothing runs then) or the topology cannot be
    /// prepared; Score failures are in the report.
    pub async fn run_selected(
        &self,
        indices: &[usize],
        policy: FailurePolicy,
    ) -> Result<RunReport, InterpretError> {
        if let Some(bad) = indices.iter().find(|&&index| index >= self.scores.len()) {
            return Err(InterpretError::invalid_input(
                "selection",
                format!(
                    "names Score index {bad}, but only {} Scores are registered (valid: 0..{})",
                    self.scores.len(),
                    self.scores.len()
                ),
            ));
        }
        self.initialize().await?;

        let mut report = RunReport::default();
        let mut stopped = false;
        for (step, &index) in indices.iter().enumerate() {
            let score = &self.scores[index];
            let name = score.name();
            let score_ref = ScoreRef {
                index,
                step,
                of: indices.len(),
                name: &name,
            };
            if stopped {
                self.observer
                    .on_event(&MaestroEvent::ScoreSkipped { score: score_ref });
                report.entries.push(ScoreReport {
                    index,
                    name,
                    result: ScoreResult::Skipped,
                    duration: Duration::ZERO,
                });
                continue;
            }

            self.observer
                .on_event(&MaestroEvent::ScoreStarted { score: score_ref });
            let started = Instant::now();
            let result = self.execute(score.as_ref()).await;
            let duration = started.elapsed();
            self.observer.on_event(&MaestroEvent::ScoreFinished {
                score: score_ref,
                result: &result,
                duration,
            });

            let result = match result {
                Ok(outcome) => ScoreResult::Completed(outcome),
                Err(err) => {
                    stopped = policy == FailurePolicy::StopOnFailure;
                    ScoreResult::Failed(err)
                }
            };
            report.entries.push(ScoreReport {
                index,
                name,
                result,
                duration,
            });
        }
        Ok(report)
    }

    async fn execute(&self, score: &dyn Score<T>) -> Result<Outcome, InterpretError> {
        let name = score.name();
        let interpret = score.create_interpret();
        let result = interpret
            .execute(&self.inventory, &self.topology)
            .instrument(info_span!("score", score = %name))
            .await;
        match &result {
            Ok(outcome) => {
                info!(score = %name, status = %outcome.status, message = %outcome.message, "score done")
            }
            Err(err) => warn!(score = %name, error = %err.chain(), "score failed"),
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use async_trait::async_trait;

    use super::*;
    use crate::interpret::{Interpret, InterpretStatus, OutcomeStatus, StatusCell};

    /// A topology that counts how often it was prepared and keeps a log of what ran.
    #[derive(Default)]
    struct Stage {
        prepared: AtomicUsize,
        refuse: bool,
        log: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Topology for Stage {
        fn name(&self) -> &str {
            "stage"
        }

        async fn ensure_ready(&self) -> Result<Outcome, InterpretError> {
            self.prepared.fetch_add(1, Ordering::SeqCst);
            if self.refuse {
                return Err(InterpretError::TopologyNotReady {
                    topology: "stage".into(),
                    reason: "lights are off".into(),
                    source: None,
                });
            }
            Ok(Outcome::success("stage lit"))
        }
    }

    /// Writes its name into the stage log; fails when told to. Idempotent: a second run on
    /// the same stage is a no-op.
    #[derive(Debug, Clone)]
    struct Line {
        name: &'static str,
        fail: bool,
    }

    struct LineInterpret {
        score: Line,
        status: StatusCell,
    }

    impl Score<Stage> for Line {
        fn name(&self) -> String {
            self.name.to_string()
        }

        fn create_interpret(&self) -> Box<dyn Interpret<Stage>> {
            Box::new(LineInterpret {
                score: self.clone(),
                status: StatusCell::default(),
            })
        }
    }

    #[async_trait]
    impl Interpret<Stage> for LineInterpret {
        async fn execute(
            &self,
            _inventory: &Inventory,
            stage: &Stage,
        ) -> Result<Outcome, InterpretError> {
            self.status
                .track(async {
                    if self.score.fail {
                        return Err(InterpretError::failed(format!(
                            "{} forgot the line",
                            self.score.name
                        )));
                    }
                    let mut log = stage.log.lock().expect("log lock");
                    if log.iter().any(|line| line == self.score.name) {
                        return Ok(Outcome::noop("already said"));
                    }
                    log.push(self.score.name.to_string());
                    Ok(Outcome::success("said"))
                })
                .await
        }

        fn name(&self) -> String {
            self.score.name.to_string()
        }

        fn status(&self) -> InterpretStatus {
            self.status.get()
        }
    }

    /// Records events as strings.
    #[derive(Default)]
    struct Recorder(Mutex<Vec<String>>);

    impl MaestroObserver for Recorder {
        fn on_event(&self, event: &MaestroEvent<'_>) {
            let line = match event {
                MaestroEvent::TopologyPreparing { topology } => format!("preparing {topology}"),
                MaestroEvent::TopologyPrepared { result, .. } => {
                    format!("prepared ok={}", result.is_ok())
                }
                MaestroEvent::ScoreStarted { score } => {
                    format!("start {}/{} {}", score.step + 1, score.of, score.name)
                }
                MaestroEvent::ScoreFinished { score, result, .. } => {
                    format!("finish {} ok={}", score.name, result.is_ok())
                }
                MaestroEvent::ScoreSkipped { score } => format!("skip {}", score.name),
            };
            self.0.lock().expect("recorder lock").push(line);
        }
    }

    fn line(name: &'static str) -> Box<dyn Score<Stage>> {
        Box::new(Line { name, fail: false })
    }

    fn failing(name: &'static str) -> Box<dyn Score<Stage>> {
        Box::new(Line { name, fail: true })
    }

    fn statuses(report: &RunReport) -> Vec<(&str, &'static str)> {
        report
            .entries
            .iter()
            .map(|entry| {
                let status = match &entry.result {
                    ScoreResult::Completed(outcome) if outcome.changed() => "changed",
                    ScoreResult::Completed(_) => "noop",
                    ScoreResult::Failed(_) => "failed",
                    ScoreResult::Skipped => "skipped",
                };
                (entry.name.as_str(), status)
            })
            .collect()
    }

    #[tokio::test]
    async fn runs_scores_in_registration_order() {
        let mut maestro = Maestro::new(Inventory::default(), Stage::default());
        maestro.register_all(vec![line("one"), line("two"), line("three")]);
        let report = maestro
            .run_all(FailurePolicy::StopOnFailure)
            .await
            .expect("stage is ready");
        assert_eq!(
            statuses(&report),
            [("one", "changed"), ("two", "changed"), ("three", "changed")]
        );
        assert_eq!(
            *maestro.topology().log.lock().expect("log"),
            ["one", "two", "three"]
        );
        assert!(!report.has_failures());
    }

    #[tokio::test]
    async fn second_run_reports_no_change() {
        let mut maestro = Maestro::new(Inventory::default(), Stage::default());
        maestro.register_all(vec![line("one"), line("two")]);
        maestro
            .run_all(FailurePolicy::StopOnFailure)
            .await
            .expect("first run");
        let again = maestro
            .run_all(FailurePolicy::StopOnFailure)
            .await
            .expect("second run");
        assert_eq!(statuses(&again), [("one", "noop"), ("two", "noop")]);
    }

    #[tokio::test]
    async fn prepares_topology_once_across_runs() {
        let mut maestro = Maestro::new(Inventory::default(), Stage::default());
        maestro.register_all(vec![line("one")]);
        maestro.initialize().await.expect("ready");
        maestro
            .run_all(FailurePolicy::StopOnFailure)
            .await
            .expect("run");
        maestro
            .interpret(&Line {
                name: "solo",
                fail: false,
            })
            .await
            .expect("solo");
        assert_eq!(maestro.topology().prepared.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn stops_after_first_failure_and_reports_the_rest_as_skipped() {
        let recorder = Arc::new(Recorder::default());
        let mut maestro =
            Maestro::new(Inventory::default(), Stage::default()).with_observer(recorder.clone());
        maestro.register_all(vec![line("one"), failing("two"), line("three")]);
        let report = maestro
            .run_all(FailurePolicy::StopOnFailure)
            .await
            .expect("ready");

        assert_eq!(
            statuses(&report),
            [("one", "changed"), ("two", "failed"), ("three", "skipped")]
        );
        let failed: Vec<&str> = report.failures().map(|entry| entry.name.as_str()).collect();
        assert_eq!(failed, ["two"]);
        assert_eq!(
            *recorder.0.lock().expect("events"),
            [
                "preparing stage",
                "prepared ok=true",
                "start 1/3 one",
                "finish one ok=true",
                "start 2/3 two",
                "finish two ok=false",
                "skip three",
            ]
        );
    }

    #[tokio::test]
    async fn keep_going_runs_every_score_despite_failures() {
        let mut maestro = Maestro::new(Inventory::default(), Stage::default());
        maestro.register_all(vec![failing("one"), line("two")]);
        let report = maestro
            .run_all(FailurePolicy::KeepGoing)
            .await
            .expect("ready");
        assert_eq!(statuses(&report), [("one", "failed"), ("two", "changed")]);
    }

    #[tokio::test]
    async fn runs_only_selected_scores_in_given_order() {
        let mut maestro = Maestro::new(Inventory::default(), Stage::default());
        maestro.register_all(vec![line("one"), line("two"), line("three")]);
        let report = maestro
            .run_selected(&[2, 0], FailurePolicy::StopOnFailure)
            .await
            .expect("ready");
        assert_eq!(
            statuses(&report),
            [("three", "changed"), ("one", "changed")]
        );
        let indices: Vec<usize> = report.entries.iter().map(|entry| entry.index).collect();
        assert_eq!(indices, [2, 0]);
    }

    #[tokio::test]
    async fn rejects_out_of_range_selection_before_running_anything() {
        let mut maestro = Maestro::new(Inventory::default(), Stage::default());
        maestro.register_all(vec![line("one")]);
        let err = maestro
            .run_selected(&[0, 1], FailurePolicy::StopOnFailure)
            .await
            .expect_err("index 1 does not exist");
        assert!(
            matches!(err, InterpretError::InvalidInput { ref field, .. } if field == "selection")
        );
        assert!(maestro.topology().log.lock().expect("log").is_empty());
    }

    #[tokio::test]
    async fn unready_topology_fails_the_run_without_running_scores() {
        let stage = Stage {
            refuse: true,
            ..Stage::default()
        };
        let mut maestro = Maestro::new(Inventory::default(), stage);
        maestro.register_all(vec![line("one")]);
        let err = maestro
            .run_all(FailurePolicy::StopOnFailure)
            .await
            .expect_err("stage refuses");
        assert!(matches!(err, InterpretError::TopologyNotReady { .. }));
        assert!(maestro.topology().log.lock().expect("log").is_empty());
    }

    #[tokio::test]
    async fn interpret_reports_its_status() {
        let interpret = Line {
            name: "one",
            fail: false,
        }
        .create_interpret();
        assert_eq!(interpret.status(), InterpretStatus::Queued);
        interpret
            .execute(&Inventory::default(), &Stage::default())
            .await
            .expect("runs");
        assert_eq!(
            interpret.status(),
            InterpretStatus::Done(OutcomeStatus::Success)
        );
        assert!(interpret.children().is_empty());
    }
}

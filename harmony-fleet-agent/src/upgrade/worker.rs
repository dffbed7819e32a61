//! One reconcile of an `AgentV0` deployment: observe, [`plan`](super::plan::plan), and — when
//! another build is wanted — fetch, self-test, swap, restart. The I/O is behind [`Upgrader`] so
//! the sequence is tested with an in-memory fake; [`HostUpgrader`](super::install::HostUpgrader)
//! is the real one.

use std::fmt;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use harmony_fleet_contracts::DeploymentName;
use harmony_fleet_contracts::payload::AgentV0;
use harmony_fleet_contracts::state::Phase;

use super::plan::{self, Decision, Facts};
use super::{FailedMarker, Pending, SelfInfo, UpgradeError};

/// What the upgrader sees before deciding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    /// This binary.
    pub info: SelfInfo,
    /// `pending.json`.
    pub pending: Option<Pending>,
    /// `failed.json`.
    pub failed: Option<FailedMarker>,
}

/// The I/O of a self-upgrade.
#[async_trait]
pub trait Upgrader: Send + Sync + fmt::Debug {
    /// This binary and the markers on disk.
    async fn observe(&self) -> Result<Observed, UpgradeError>;
    /// Download build `sha256`; where it was staged.
    async fn fetch(&self, sha256: &str) -> Result<PathBuf, UpgradeError>;
    /// Run the staged build's self-test: it must report `version`.
    async fn self_test(
        &self,
        staged: &Path,
        sha256: &str,
        version: &str,
    ) -> Result<(), UpgradeError>;
    /// Put the staged build in place of this binary (keeping the previous one, marking the
    /// upgrade pending).
    async fn swap(
        &self,
        deployment: &DeploymentName,
        desired: &AgentV0,
        sha256: &str,
        staged: &Path,
        info: &SelfInfo,
    ) -> Result<(), UpgradeError>;
    /// Stop the agent so that systemd starts the new binary.
    fn restart(&self);
}

/// An upgrader for agents that cannot upgrade themselves (tests of other parts, embedded
/// agents): every `AgentV0` deployment fails with this reason.
#[derive(Debug, Clone)]
pub struct DisabledUpgrader(pub String);

#[async_trait]
impl Upgrader for DisabledUpgrader {
    async fn observe(&self) -> Result<Observed, UpgradeError> {
        Err(UpgradeError::Unavailable(self.0.clone()))
    }
    async fn fetch(&self, _: &str) -> Result<PathBuf, UpgradeError> {
        Err(UpgradeError::Unavailable(self.0.clone()))
    }
    async fn self_test(&self, _: &Path, _: &str, _: &str) -> Result<(), UpgradeError> {
        Err(UpgradeError::Unavailable(self.0.clone()))
    }
    async fn swap(
        &self,
        _: &DeploymentName,
        _: &AgentV0,
        _: &str,
        _: &Path,
        _: &SelfInfo,
    ) -> Result<(), UpgradeError> {
        Err(UpgradeError::Unavailable(self.0.clone()))
    }
    fn restart(&self) {}
}

/// What one step reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepOutcome {
    /// The deployment's phase.
    pub phase: Phase,
    /// Its `lastError`.
    pub error: Option<String>,
}

impl StepOutcome {
    fn failed(error: impl fmt::Display) -> Self {
        Self {
            phase: Phase::Failed,
            error: Some(error.to_string()),
        }
    }

    fn phase(phase: Phase) -> Self {
        Self { phase, error: None }
    }
}

/// One reconcile of `desired`. `installing` is called before the (slow) install starts, to
/// report `Pending` while it runs.
pub async fn step(
    upgrader: &dyn Upgrader,
    deployment: &DeploymentName,
    desired: &AgentV0,
    installing: &(dyn Fn() + Sync),
) -> StepOutcome {
    let observed = match upgrader.observe().await {
        Ok(observed) => observed,
        Err(err) => return StepOutcome::failed(err),
    };
    let facts = Facts {
        arch: &observed.info.arch,
        own_sha: &observed.info.sha256,
        under_systemd: observed.info.under_systemd,
        pending: observed.pending.as_ref(),
        failed: observed.failed.as_ref(),
    };
    let (sha256, version) = match plan::plan(desired, facts) {
        Decision::Running => return StepOutcome::phase(Phase::Running),
        Decision::AwaitConfirm => return StepOutcome::phase(Phase::Pending),
        Decision::Failed(reason) => return StepOutcome::failed(reason),
        Decision::Install { sha256, version } => (sha256, version),
    };
    tracing::info!(
        %deployment,
        from = %observed.info.version,
        to = %version,
        sha256 = %sha256,
        "installing agent build"
    );
    installing();
    let staged = match upgrader.fetch(&sha256).await {
        Ok(staged) => staged,
        Err(err) => return StepOutcome::failed(err),
    };
    if let Err(err) = upgrader.self_test(&staged, &sha256, &version).await {
        return StepOutcome::failed(err);
    }
    if let Err(err) = upgrader
        .swap(deployment, desired, &sha256, &staged, &observed.info)
        .await
    {
        return StepOutcome::failed(err);
    }
    upgrader.restart();
    StepOutcome::phase(Phase::Pending)
}

#[cfg(test)]
pub(crate) mod fake {
    //! An in-memory [`Upgrader`].

    use std::sync::Mutex;

    use super::*;

    /// What the fake does and what was asked of it.
    #[derive(Debug, Default)]
    pub struct FakeUpgrader {
        /// What `observe` returns.
        pub observed: Mutex<Option<Observed>>,
        /// Error message of `fetch` (`None`: succeeds).
        pub fetch_error: Mutex<Option<String>>,
        /// Error message of `self_test`.
        pub self_test_error: Mutex<Option<String>>,
        /// Calls made, in order.
        pub calls: Mutex<Vec<String>>,
    }

    impl FakeUpgrader {
        /// A fake for a binary with SHA-256 `own`, under systemd.
        pub fn new(own: &str) -> Self {
            Self {
                observed: Mutex::new(Some(Observed {
                    info: SelfInfo {
                        arch: std::env::consts::ARCH.into(),
                        sha256: own.into(),
                        binary_path: "/usr/local/bin/fleet-agent".into(),
                        image: "/proc/self/exe".into(),
                        under_systemd: true,
                        version: "0.1.0".into(),
                    },
                    pending: None,
                    failed: None,
                })),
                ..Self::default()
            }
        }

        fn call(&self, call: String) {
            if let Ok(mut calls) = self.calls.lock() {
                calls.push(call);
            }
        }

        /// The calls so far.
        pub fn calls(&self) -> Vec<String> {
            self.calls.lock().map(|c| c.clone()).unwrap_or_default()
        }

        /// Changes what `observe` returns.
        pub fn edit(&self, edit: impl FnOnce(&mut Observed)) {
            if let Ok(mut observed) = self.observed.lock()
                && let Some(observed) = observed.as_mut()
            {
                edit(observed);
            }
        }
    }

    fn fails(error: &Mutex<Option<String>>) -> Option<String> {
        error.lock().ok().and_then(|e| e.clone())
    }

    #[async_trait]
    impl Upgrader for FakeUpgrader {
        async fn observe(&self) -> Result<Observed, UpgradeError> {
            self.observed
                .lock()
                .ok()
                .and_then(|o| o.clone())
                .ok_or_else(|| UpgradeError::Unavailable("no observation".into()))
        }
        async fn fetch(&self, sha256: &str) -> Result<PathBuf, UpgradeError> {
            self.call(format!("fetch {sha256}"));
            match fails(&self.fetch_error) {
                Some(message) => Err(UpgradeError::Fetch {
                    sha256: sha256.into(),
                    message,
                }),
                None => Ok(PathBuf::from(format!("/staged-{sha256}"))),
            }
        }
        async fn self_test(
            &self,
            staged: &Path,
            sha256: &str,
            version: &str,
        ) -> Result<(), UpgradeError> {
            self.call(format!("self-test {} {version}", staged.display()));
            match fails(&self.self_test_error) {
                Some(message) => Err(UpgradeError::SelfTest {
                    sha256: sha256.into(),
                    message,
                }),
                None => Ok(()),
            }
        }
        async fn swap(
            &self,
            _: &DeploymentName,
            _: &AgentV0,
            sha256: &str,
            _: &Path,
            _: &SelfInfo,
        ) -> Result<(), UpgradeError> {
            self.call(format!("swap {sha256}"));
            Ok(())
        }
        fn restart(&self) {
            self.call("restart".into());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::fake::FakeUpgrader;
    use super::*;

    const OWN: &str = "aa";
    const NEW: &str = "bb";

    fn desired(sha: &str) -> AgentV0 {
        AgentV0 {
            version: "0.1.1".into(),
            binaries: BTreeMap::from([(std::env::consts::ARCH.into(), sha.into())]),
            heartbeat_deadline_seconds: 60,
        }
    }

    fn name() -> DeploymentName {
        "agent".parse().expect("name")
    }

    #[tokio::test]
    async fn the_wanted_build_reports_running_and_touches_nothing() {
        let fake = FakeUpgrader::new(NEW);
        let outcome = step(&fake, &name(), &desired(NEW), &|| {}).await;
        assert_eq!(outcome, StepOutcome::phase(Phase::Running));
        assert!(fake.calls().is_empty());
    }

    #[tokio::test]
    async fn another_build_is_fetched_tested_swapped_and_restarted_into() {
        let fake = FakeUpgrader::new(OWN);
        let reported = std::sync::atomic::AtomicBool::new(false);
        let outcome = step(&fake, &name(), &desired(NEW), &|| {
            reported.store(true, std::sync::atomic::Ordering::SeqCst);
        })
        .await;
        assert_eq!(outcome, StepOutcome::phase(Phase::Pending));
        assert!(reported.load(std::sync::atomic::Ordering::SeqCst));
        assert_eq!(
            fake.calls(),
            [
                "fetch bb",
                "self-test /staged-bb 0.1.1",
                "swap bb",
                "restart"
            ]
        );
    }

    #[tokio::test]
    async fn a_failing_step_is_named_and_nothing_is_swapped() {
        let fake = FakeUpgrader::new(OWN);
        if let Ok(mut e) = fake.fetch_error.lock() {
            *e = Some("object bb is not in the agent-binaries object store".into());
        }
        let outcome = step(&fake, &name(), &desired(NEW), &|| {}).await;
        assert_eq!(outcome.phase, Phase::Failed);
        let error = outcome.error.unwrap_or_default();
        assert!(
            error.starts_with("fetch of agent build bb: object bb"),
            "{error}"
        );

        let fake = FakeUpgrader::new(OWN);
        if let Ok(mut e) = fake.self_test_error.lock() {
            *e = Some("exit status 1".into());
        }
        let outcome = step(&fake, &name(), &desired(NEW), &|| {}).await;
        let error = outcome.error.unwrap_or_default();
        assert!(error.starts_with("self-test of agent build bb"), "{error}");
        assert!(!fake.calls().iter().any(|c| c.starts_with("swap")));
    }

    #[tokio::test]
    async fn a_reverted_build_reports_its_reason_without_retrying() {
        let fake = FakeUpgrader::new(OWN);
        fake.edit(|o| {
            o.failed = Some(FailedMarker {
                deployment: name(),
                to_sha: NEW.into(),
                to_version: "0.1.1".into(),
                from_version: "0.1.0".into(),
                reason: "agent 0.1.1 did not heartbeat; reverted to 0.1.0".into(),
            });
        });
        let outcome = step(&fake, &name(), &desired(NEW), &|| {}).await;
        assert_eq!(
            outcome,
            StepOutcome::failed("agent 0.1.1 did not heartbeat; reverted to 0.1.0")
        );
        assert!(fake.calls().is_empty());
        // Another build is tried.
        let outcome = step(&fake, &name(), &desired("cc"), &|| {}).await;
        assert_eq!(outcome.phase, Phase::Pending);
        assert_eq!(fake.calls().first().map(String::as_str), Some("fetch cc"));
    }

    #[tokio::test]
    async fn the_new_build_on_probation_is_pending() {
        let fake = FakeUpgrader::new(NEW);
        fake.edit(|o| {
            o.pending = Some(Pending {
                deployment: name(),
                binary_path: "/usr/local/bin/fleet-agent".into(),
                from_sha: OWN.into(),
                from_version: "0.1.0".into(),
                to_sha: NEW.into(),
                to_version: "0.1.1".into(),
                deadline_unix: 0,
                heartbeat_deadline_seconds: 60,
                starts: 1,
            });
        });
        let outcome = step(&fake, &name(), &desired(NEW), &|| {}).await;
        assert_eq!(outcome, StepOutcome::phase(Phase::Pending));
    }
}

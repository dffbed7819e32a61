//! An in-memory [`ContainerRuntime`] for unit tests of reconciliation: records every call and
//! keeps a container table, so tests assert on decisions without podman.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;

use super::{
    Completion, ContainerRuntime, ContainerSpec, ContainerState, ContainerSummary, Logs,
    RuntimeError,
};

/// In-memory runtime. Images in `images` exist; `pull` succeeds only for images in `pullable`.
#[derive(Debug, Default)]
pub(crate) struct FakeRuntime {
    state: Mutex<FakeState>,
}

#[derive(Debug, Default)]
struct FakeState {
    images: BTreeSet<String>,
    pullable: BTreeSet<String>,
    containers: Vec<ContainerSummary>,
    /// Exit codes of init containers by container name prefix; absent means 0.
    init_exit: BTreeMap<String, i32>,
    next_id: u64,
    calls: Vec<String>,
}

impl FakeRuntime {
    /// A runtime where these images are present.
    pub(crate) fn with_images(images: &[&str]) -> Self {
        let runtime = Self::default();
        runtime.lock().images = images.iter().map(|i| (*i).to_owned()).collect();
        runtime
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        self.state.lock().expect("fake runtime lock")
    }

    /// Make `pull` succeed for this image.
    pub(crate) fn allow_pull(&self, image: &str) {
        self.lock().pullable.insert(image.to_owned());
    }

    /// Make init containers whose name starts with `prefix` exit with `code`.
    pub(crate) fn set_init_exit(&self, prefix: &str, code: i32) {
        self.lock().init_exit.insert(prefix.to_owned(), code);
    }

    /// Every call so far, as `verb arg`.
    pub(crate) fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Forget recorded calls.
    pub(crate) fn clear_calls(&self) {
        self.lock().calls.clear();
    }

    /// The container table.
    pub(crate) fn containers(&self) -> Vec<ContainerSummary> {
        self.lock().containers.clone()
    }

    /// Mark a container as exited (a crash).
    pub(crate) fn exit(&self, id: &str, code: i32) {
        if let Some(c) = self.lock().containers.iter_mut().find(|c| c.id == id) {
            c.state = ContainerState::Exited(code);
        }
    }
}

#[async_trait]
impl ContainerRuntime for FakeRuntime {
    async fn list(&self) -> Result<Vec<ContainerSummary>, RuntimeError> {
        Ok(self.lock().containers.clone())
    }

    async fn image_exists(&self, image: &str) -> Result<bool, RuntimeError> {
        Ok(self.lock().images.contains(image))
    }

    async fn pull(&self, image: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        state.calls.push(format!("pull {image}"));
        if state.pullable.contains(image) {
            state.images.insert(image.to_owned());
            Ok(())
        } else {
            Err(RuntimeError::Failed {
                command: format!("podman pull {image}"),
                status: "exit status: 125".into(),
                stderr: format!("Error: initializing source docker://{image}: not found"),
            })
        }
    }

    async fn run(&self, spec: &ContainerSpec) -> Result<String, RuntimeError> {
        let mut state = self.lock();
        state.calls.push(format!("run {}", spec.name));
        if !state.images.contains(&spec.image) {
            return Err(RuntimeError::Failed {
                command: format!("podman run {}", spec.image),
                status: "exit status: 125".into(),
                stderr: format!("Error: {}: image not known", spec.image),
            });
        }
        if state.containers.iter().any(|c| c.name == spec.name) {
            return Err(RuntimeError::Failed {
                command: format!("podman run --name {}", spec.name),
                status: "exit status: 125".into(),
                stderr: format!(
                    "Error: the container name \"{}\" is already in use",
                    spec.name
                ),
            });
        }
        state.next_id += 1;
        let id = format!("{:064x}", state.next_id);
        state.containers.push(ContainerSummary {
            id: id.clone(),
            name: spec.name.clone(),
            image: spec.image.clone(),
            state: ContainerState::Running,
            labels: spec.labels.clone(),
        });
        Ok(id)
    }

    async fn run_to_completion(
        &self,
        spec: &ContainerSpec,
        _timeout: Duration,
    ) -> Result<Completion, RuntimeError> {
        let mut state = self.lock();
        state.calls.push(format!("init {}", spec.name));
        if !state.images.contains(&spec.image) {
            return Err(RuntimeError::Failed {
                command: format!("podman run {}", spec.image),
                status: "exit status: 125".into(),
                stderr: format!("Error: {}: image not known", spec.image),
            });
        }
        let exit_code = state
            .init_exit
            .iter()
            .find(|(prefix, _)| spec.name.starts_with(prefix.as_str()))
            .map(|(_, code)| *code)
            .unwrap_or(0);
        Ok(Completion {
            exit_code,
            output_tail: format!("{} said goodbye", spec.name),
        })
    }

    async fn start(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        state.calls.push(format!("start {id}"));
        if let Some(c) = state.containers.iter_mut().find(|c| c.id == id) {
            c.state = ContainerState::Running;
        }
        Ok(())
    }

    async fn stop(&self, id: &str, grace: Duration) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        state.calls.push(format!("stop {id} {}", grace.as_secs()));
        if let Some(c) = state.containers.iter_mut().find(|c| c.id == id) {
            c.state = ContainerState::Exited(0);
        }
        Ok(())
    }

    async fn remove(&self, id: &str) -> Result<(), RuntimeError> {
        let mut state = self.lock();
        state.calls.push(format!("remove {id}"));
        state.containers.retain(|c| c.id != id);
        Ok(())
    }

    async fn logs(&self, id: &str, tail: u32) -> Result<Logs, RuntimeError> {
        Ok(Logs {
            text: format!("{tail} lines of {id}\n"),
        })
    }
}

//! [`Restore`]: puts the shared stack back the way a fault test found it (an agent restarted,
//! labels reset, NATS or the operator back up), also when the test fails half-way.
//!
//! A test makes one right after breaking something and calls [`Restore::now`] on its normal
//! path, where an error fails the test. If the test panics first, `Drop` runs the same action
//! on the stack's runtime before the next test takes the stack, so one failure does not
//! cascade into every test after it.

use std::future::Future;
use std::pin::Pin;

type Action = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send + 'static>>;

/// An action that restores shared state, run once: explicitly or on drop.
#[must_use = "a Restore runs its action when dropped; keep it alive until the fault is over"]
pub struct Restore {
    what: String,
    action: Option<Action>,
    runtime: tokio::runtime::Handle,
}

impl Restore {
    pub(crate) fn new(
        what: impl Into<String>,
        runtime: tokio::runtime::Handle,
        action: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) -> Self {
        Self {
            what: what.into(),
            action: Some(Box::pin(action)),
            runtime,
        }
    }

    /// Runs the restoration now; its error names what could not be restored.
    pub async fn now(mut self) -> anyhow::Result<()> {
        let Some(action) = self.action.take() else {
            return Ok(());
        };
        let what = self.what.clone();
        match self.runtime.spawn(action).await {
            Ok(result) => result.map_err(|e| e.context(format!("restoring {what}"))),
            Err(e) => Err(anyhow::anyhow!("restoring {what} panicked: {e}")),
        }
    }
}

impl Drop for Restore {
    fn drop(&mut self) {
        let Some(action) = self.action.take() else {
            return;
        };
        eprintln!("e2e: the test stopped early; restoring {}", self.what);
        // A thread of its own: drop may run inside the test's runtime, which must not block.
        let runtime = self.runtime.clone();
        let outcome = std::thread::scope(|s| s.spawn(|| runtime.block_on(action)).join());
        match outcome {
            Ok(Ok(())) => eprintln!("e2e: restored {}", self.what),
            Ok(Err(e)) => eprintln!("e2e: could not restore {}: {e:#}", self.what),
            Err(_) => eprintln!("e2e: restoring {} panicked", self.what),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn counting(runtime: &tokio::runtime::Runtime, runs: &Arc<AtomicUsize>) -> Restore {
        let runs = runs.clone();
        Restore::new("a counter", runtime.handle().clone(), async move {
            runs.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    #[test]
    fn runs_once_whether_called_or_dropped() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let runs = Arc::new(AtomicUsize::new(0));
        drop(counting(&runtime, &runs));
        assert_eq!(runs.load(Ordering::SeqCst), 1, "dropped: runs");
        let explicit = counting(&runtime, &runs);
        runtime.block_on(explicit.now()).expect("restored");
        assert_eq!(
            runs.load(Ordering::SeqCst),
            2,
            "called: runs once, not again on drop"
        );
    }

    #[test]
    fn runs_when_a_test_panics_inside_a_runtime() {
        let runtime = tokio::runtime::Runtime::new().expect("runtime");
        let runs = Arc::new(AtomicUsize::new(0));
        let guard = counting(&runtime, &runs);
        let test = tokio::runtime::Runtime::new().expect("test runtime");
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            test.block_on(async move {
                let _guard = guard;
                panic!("the test failed");
            })
        }));
        assert!(result.is_err());
        assert_eq!(runs.load(Ordering::SeqCst), 1);
    }
}

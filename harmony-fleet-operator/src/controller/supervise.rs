//! The operator's tasks watched as one: the first to end or panic stops the others, fails
//! `/readyz`, counts in `errors_total{kind="task"}` and is what [`super::OperatorHandle::wait`]
//! returns. Nothing a task does is lost in silence.

use futures::future::select_all;
use tokio::task::{AbortHandle, JoinError, JoinHandle};

use crate::error::{Error, Result};
use crate::http::Readiness;
use crate::metrics::Metrics;

/// A task of the operator: its name (for the error) and its handle.
pub(super) type Named<T> = (&'static str, JoinHandle<T>);

/// One task's end: its name and how it ended (a helper's `()` counts as `Ok(Ok(()))`).
type Ending =
    std::pin::Pin<Box<dyn Future<Output = (&'static str, Result<Result<()>, JoinError>)> + Send>>;

/// Aborts every task when dropped (the supervisor was dropped or gave up).
struct AbortAll(Vec<AbortHandle>);

impl Drop for AbortAll {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Waits for any task to end: the `fallible` ones (the reconcile loop, leader election) with
/// their own error, the others as [`Error::TaskEnded`]; returns why, as an error.
pub(super) async fn supervise(
    fallible: Vec<Named<Result<()>>>,
    tasks: Vec<Named<()>>,
    readiness: Readiness,
    metrics: Metrics,
) -> Result<()> {
    let _abort = AbortAll(
        fallible
            .iter()
            .map(|(_, t)| t.abort_handle())
            .chain(tasks.iter().map(|(_, t)| t.abort_handle()))
            .collect(),
    );
    let mut all: Vec<Ending> = Vec::with_capacity(tasks.len() + fallible.len());
    for (name, task) in fallible {
        all.push(Box::pin(async move { (name, task.await) }));
    }
    for (name, task) in tasks {
        all.push(Box::pin(async move { (name, task.await.map(Ok)) }));
    }
    let ((name, ended), _, _) = select_all(all).await;
    let error = match ended {
        Ok(Err(e)) => e,
        Ok(Ok(())) => Error::TaskEnded {
            task: name,
            how: "ended".to_owned(),
        },
        Err(e) => Error::TaskEnded {
            task: name,
            how: match e.try_into_panic() {
                Ok(panic) => format!("panicked: {}", panic_message(panic.as_ref())),
                Err(e) => format!("was cancelled: {e}"),
            },
        },
    };
    tracing::error!(task = name, error = %error, "operator task stopped; the operator stops");
    metrics.error("task");
    readiness.set_failed();
    Err(error)
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(no message)".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_helper_task_fails_readiness_and_stops_the_rest() {
        let readiness = Readiness::default();
        readiness.set_converged();
        let metrics = Metrics::new();
        let main = tokio::spawn(std::future::pending::<Result<()>>());
        let main_abort = main.abort_handle();
        let panics = tokio::spawn(async { panic!("registry lost its mind") });
        let err = supervise(
            vec![("reconcile", main)],
            vec![("registry", panics)],
            readiness.clone(),
            metrics.clone(),
        )
        .await
        .expect_err("a panic is an error");
        assert!(
            matches!(&err, Error::TaskEnded { task: "registry", how } if how.contains("registry lost its mind")),
            "{err}"
        );
        assert!(readiness.is_failed() && !readiness.is_converged());
        assert!(
            metrics
                .encode()
                .contains("fleet_operator_errors_total{kind=\"task\"} 1")
        );
        // The main loop was aborted with it.
        tokio::task::yield_now().await;
        assert!(main_abort.is_finished());
    }

    #[tokio::test]
    async fn the_main_loop_s_own_error_is_returned() {
        let main = tokio::spawn(async {
            Err(Error::WatchEnded {
                bucket: "all".into(),
                message: "every watch ended".into(),
            })
        });
        let idle = tokio::spawn(std::future::pending::<()>());
        let err = supervise(
            vec![("reconcile", main)],
            vec![("events", idle)],
            Readiness::default(),
            Metrics::new(),
        )
        .await
        .expect_err("an error");
        assert!(matches!(err, Error::WatchEnded { .. }), "{err}");
    }
}

//! Forwarding a watch into the reconcile loop's channel, in batches.

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;

use crate::metrics::Metrics;

/// Most events [`forward`] sends at once.
pub const FORWARD_BATCH: usize = 256;

/// Spawns a task that forwards a watch (a KV bucket's, or a Kubernetes watcher's) into `tx`,
/// mapped by `wrap` (in this task: decoding happens next to the receiver, not in it), in
/// batches of what the watch has ready, up to [`FORWARD_BATCH`] (`ready_chunks`): one channel
/// operation and at most one wake-up per batch instead of per event. Transient errors are logged and counted as
/// `errors_total{kind}`: both watches resume by themselves. The task ends when the receiver is
/// gone or the watch ends.
pub fn forward<I, E, T>(
    events: impl Stream<Item = Result<I, E>> + Send + 'static,
    tx: mpsc::Sender<Vec<T>>,
    wrap: impl Fn(I) -> T + Send + 'static,
    what: &'static str,
    error_kind: &'static str,
    metrics: Metrics,
) -> tokio::task::JoinHandle<()>
where
    I: Send + 'static,
    E: std::fmt::Display + Send + 'static,
    T: Send + 'static,
{
    tokio::spawn(async move {
        let mut chunks = std::pin::pin!(events.ready_chunks(FORWARD_BATCH));
        while let Some(chunk) = chunks.next().await {
            let mut batch = Vec::with_capacity(chunk.len());
            for event in chunk {
                match event {
                    Ok(event) => batch.push(wrap(event)),
                    Err(e) => {
                        metrics.error(error_kind);
                        tracing::warn!(watch = what, error = %e, "watch error; it resumes by itself")
                    }
                }
            }
            if !batch.is_empty() && tx.send(batch).await.is_err() {
                return;
            }
        }
        tracing::error!(watch = what, "watch ended");
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every batch `forward` sends for `events`, until the watch ends.
    async fn batches(events: Vec<Result<u32, String>>) -> (Vec<Vec<u32>>, Metrics) {
        let metrics = Metrics::new();
        let (tx, mut rx) = mpsc::channel(4);
        let task = forward(
            futures::stream::iter(events),
            tx,
            |n| n,
            "test",
            "test_watch",
            metrics.clone(),
        );
        let mut out = Vec::new();
        while let Some(batch) = rx.recv().await {
            out.push(batch);
        }
        task.await.expect("the task ends with its watch");
        (out, metrics)
    }

    #[tokio::test]
    async fn what_is_ready_goes_in_full_batches_in_order() {
        let n = 2 * FORWARD_BATCH as u32 + 88;
        let (out, _) = batches((0..n).map(Ok).collect()).await;
        let sizes: Vec<usize> = out.iter().map(Vec::len).collect();
        assert_eq!(sizes, vec![FORWARD_BATCH, FORWARD_BATCH, 88]);
        assert!(out.concat().into_iter().eq(0..n), "in order, nothing lost");
    }

    #[tokio::test]
    async fn errors_are_counted_and_skipped() {
        let (out, metrics) = batches(vec![Ok(1), Err("gone".into()), Ok(2)]).await;
        assert_eq!(out.concat(), vec![1, 2]);
        let errors = metrics
            .errors
            .get_or_create(&crate::metrics::ErrorLabels { kind: "test_watch" })
            .get();
        assert_eq!(errors, 1);
    }

    #[tokio::test]
    async fn a_slow_watch_sends_each_event_as_it_comes() {
        let (tx_events, rx_events) = mpsc::unbounded_channel::<Result<u32, String>>();
        let (tx, mut rx) = mpsc::channel(4);
        let _task = forward(
            tokio_stream_of(rx_events),
            tx,
            |n| n,
            "test",
            "test_watch",
            Metrics::new(),
        );
        for i in 0..3 {
            tx_events.send(Ok(i)).expect("open");
            assert_eq!(rx.recv().await, Some(vec![i]), "not held for a batch");
        }
    }

    fn tokio_stream_of(
        mut rx: mpsc::UnboundedReceiver<Result<u32, String>>,
    ) -> impl Stream<Item = Result<u32, String>> {
        futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}

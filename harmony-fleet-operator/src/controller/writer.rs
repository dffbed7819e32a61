//! The writer task: carries out the core's `desired-state` writes, change notices, the
//! checkpoint and the reads of payload bytes while the
//! loop goes on with its inputs (adr/0050), and hands each write's outcome back on a channel of
//! its own, which the loop reads before anything else.
//!
//! Jobs run one after the other, in the order the loop sent them: all puts of a job are
//! issued before any of the next, so a key written twice lands in the order decided, and the
//! notices of a batch of indexes go out after those indexes are stored.

use std::collections::HashMap;
use std::time::Instant;

use harmony_fleet_contracts::ids::DeviceId;
use harmony_fleet_contracts::notice;
use tokio::sync::mpsc;

use super::{Input, Rev};
use crate::kv::{Checkpoint, DesiredWriter, KvOp};

/// One job for the writer task.
#[derive(Debug)]
pub(super) enum WriteJob {
    /// `desired-state` keys; answered with [`Input::KeysWritten`].
    Keys(Vec<(String, KvOp)>),
    /// Per-device indexes; answered with [`Input::IndexesWritten`].
    Indexes(Vec<(DeviceId, KvOp)>),
    /// Change notices (no answer).
    Notify(Vec<DeviceId>),
    /// The checkpoint (adr/0051; no answer): after the jobs before it, so after the writes it
    /// vouches for.
    Checkpoint(Checkpoint),
    /// Answered once every job before it is done (a stopping operator waits for it).
    Barrier(tokio::sync::oneshot::Sender<()>),
    /// Read a revision's payload bytes from a key; answered with [`Input::RevisionFetched`].
    Fetch {
        /// The revision.
        rev: Rev,
        /// A key holding it.
        key: String,
    },
}

/// Starts the writer task. It ends when the loop drops the job sender, or when the loop no
/// longer reads outcomes.
pub(super) fn spawn(
    writer: DesiredWriter,
    outcomes: mpsc::UnboundedSender<Input>,
) -> (mpsc::UnboundedSender<WriteJob>, tokio::task::JoinHandle<()>) {
    let (jobs_tx, mut jobs) = mpsc::unbounded_channel::<WriteJob>();
    let task = tokio::spawn(async move {
        while let Some(job) = jobs.recv().await {
            let Some(outcome) = carry_out(&writer, job).await else {
                continue;
            };
            if outcomes.send(outcome).is_err() {
                return;
            }
        }
        // The loop is gone; the supervisor reports why. Idle rather than end first.
        std::future::pending::<()>().await;
    });
    (jobs_tx, task)
}

async fn carry_out(writer: &DesiredWriter, job: WriteJob) -> Option<Input> {
    match job {
        WriteJob::Keys(ops) => {
            let (count, started) = (ops.len(), Instant::now());
            let results = writer.apply(ops).await;
            tracing::debug!(
                keys = count,
                took_us = started.elapsed().as_micros() as u64,
                "desired-state written"
            );
            Some(Input::KeysWritten(
                results.into_iter().map(|(key, _, ok)| (key, ok)).collect(),
            ))
        }
        WriteJob::Indexes(ops) => {
            let mut devices: HashMap<String, DeviceId> = HashMap::with_capacity(ops.len());
            let ops = ops
                .into_iter()
                .map(|(device, op)| {
                    let key = notice::index_key(&device);
                    devices.insert(key.clone(), device);
                    (key, op)
                })
                .collect();
            let results = writer.apply(ops).await;
            Some(Input::IndexesWritten(
                results
                    .into_iter()
                    .filter_map(|(key, _, ok)| devices.remove(&key).map(|d| (d, ok)))
                    .collect(),
            ))
        }
        WriteJob::Notify(devices) => {
            writer.notify(&devices).await;
            tracing::debug!(devices = devices.len(), "change notices sent");
            None
        }
        WriteJob::Checkpoint(checkpoint) => {
            writer.put_checkpoint(&checkpoint).await;
            None
        }
        WriteJob::Barrier(done) => {
            let _ = done.send(());
            None
        }
        WriteJob::Fetch { rev, key } => Some(Input::RevisionFetched {
            rev,
            bytes: writer.fetch(&key).await,
        }),
    }
}

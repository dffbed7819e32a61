//! The shell's side of the reports snapshot (adr/0052): the `device-state` read that starts
//! from it, and its saves, off the loop.

use std::time::Instant;

use async_nats::jetstream::object_store::ObjectStore;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Input, ReportsStart};
use crate::error::{Error, Result};
use crate::kv::{self, FleetKv, operator_store};
use crate::metrics::Metrics;

/// Reads `device-state`: the reports snapshot when there is a usable one, then the messages
/// after it, or every report; each event with its stream sequence. [`Input::ReportsStart`]
/// goes first.
pub(super) async fn watch(
    fleet_kv: FleetKv,
    store: Option<ObjectStore>,
    tx: mpsc::Sender<Vec<Input>>,
    metrics: Metrics,
) -> Result<()> {
    let stream = operator_store::state_stream(&fleet_kv.state).await?;
    let snapshot = match &store {
        Some(store) => operator_store::read(store, stream).await,
        None => None,
    };
    let after = snapshot.as_ref().map(|s| s.mark.seq);
    let start = ReportsStart {
        stream_created: stream.created,
        snapshot: snapshot.map(Box::new),
        save: store.is_some(),
    };
    if tx.send(vec![Input::ReportsStart(start)]).await.is_err() {
        return Ok(());
    }
    let events = fleet_kv.watch_reports(after).await?;
    let forwarded = kv::forward(
        events,
        tx,
        |(event, seq)| Input::state(event, seq),
        "device-state",
        "kv_watch",
        metrics,
    );
    forwarded.await.map_err(|e| Error::WatchEnded {
        bucket: "device-state".into(),
        message: format!("its task ended: {e}"),
    })
}

/// Saves a snapshot (what [`super::Effect::SaveReports`] carries); the outcome goes back as
/// [`Input::ReportsSaved`] on `outcomes` (weak: the loop learns that the writer ended from
/// that channel closing). The shell runs it in a task of its own, stopped with the loop.
pub(super) async fn save(
    store: ObjectStore,
    outcomes: mpsc::WeakUnboundedSender<Input>,
    metrics: Metrics,
    seq: u64,
    bytes: Bytes,
) {
    let started = Instant::now();
    let ok = match operator_store::save(&store, &bytes).await {
        Ok(()) => {
            tracing::info!(
                seq,
                bytes = bytes.len(),
                took_ms = started.elapsed().as_millis() as u64,
                "reports snapshot saved"
            );
            true
        }
        Err(e) => {
            metrics.error("snapshot");
            tracing::warn!(seq, error = %e, "saving the reports snapshot failed; trying again later");
            false
        }
    };
    if let Some(outcomes) = outcomes.upgrade() {
        let _ = outcomes.send(Input::ReportsSaved { seq, ok });
    }
}

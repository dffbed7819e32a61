//! The operator's own object store ([`OPERATOR_STORE`]) and the reports snapshot kept in it
//! (adr/0052; format in `kv/snapshot.rs`).
//!
//! A cold start reads the snapshot, and `device-state` from the message after the sequence
//! it accounts for, when that is surely less to read than every report: a snapshot of another
//! stream (the bucket was created again), one ahead of the stream, or one so far behind that
//! half as many messages as the bucket holds came after it, is not used. Nothing here fails the
//! start: without a usable snapshot every report is read, as before. Deleting the object (or
//! the bucket) forces that full read once.

use async_nats::jetstream::{self, kv, object_store::ObjectStore};
use harmony_fleet_contracts::buckets::OPERATOR_STORE;
use tokio::io::AsyncReadExt;

use super::snapshot::{self, ReportsMark, ReportsSnapshot};
use super::{BucketChange, ensure_stream, object_store_config};
use crate::error::{Error, Result};

/// The object holding the reports snapshot.
pub const REPORTS_OBJECT: &str = "reports";

/// A snapshot larger than this is not written (a full read is cheaper than storing it): far
/// above the ~8 MB of 1.1M reports.
pub const MAX_SNAPSHOT_BYTES: usize = 256 * 1024 * 1024;

/// The stream of [`OPERATOR_STORE`], without a byte limit (operator-written, like
/// `desired-state`; it holds one object, replaced whole).
pub fn operator_store_config(replicas: usize) -> jetstream::stream::Config {
    object_store_config(
        OPERATOR_STORE,
        "harmony fleet: the operator's snapshot of device reports, for a faster start (written and read by the operator)",
        -1,
        replicas,
    )
}

/// Creates the operator's store, or updates its stream to these settings.
pub async fn ensure(js: &jetstream::Context, replicas: usize) -> Result<BucketChange> {
    ensure_stream(js, &operator_store_config(replicas), OPERATOR_STORE, 0).await
}

/// Opens the operator's store (created with the fleet's buckets). `None` (logged) when it is
/// missing: the operator then runs without snapshots.
pub async fn open(js: &jetstream::Context) -> Option<ObjectStore> {
    match js.get_object_store(OPERATOR_STORE).await {
        Ok(store) => Some(store),
        Err(e) => {
            tracing::warn!(bucket = OPERATOR_STORE, error = %e, "the operator's object store is missing (the deploy tooling creates it, or --create-buckets); every cold start reads every report");
            None
        }
    }
}

/// What `device-state` holds now: which stream, its last sequence, how many messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StateStream {
    /// Creation time (Unix nanoseconds).
    pub created: u64,
    /// Last stream sequence.
    pub last: u64,
    /// Messages it holds.
    pub messages: u64,
}

/// Reads `device-state`'s stream information.
pub async fn state_stream(state: &kv::Store) -> Result<StateStream> {
    let info = state
        .stream
        .get_info()
        .await
        .map_err(|e| Error::nats(format!("reading status of bucket {}", state.name), e))?;
    Ok(StateStream {
        created: u64::try_from(info.created.unix_timestamp_nanos()).unwrap_or(0),
        last: info.state.last_sequence,
        messages: info.state.messages,
    })
}

/// Whether a cold start reads less from `mark` than every report of `stream`: it reads the
/// snapshot (the reports it holds, cheap to load next to a message each) and every message
/// after its sequence. Pure.
pub fn worth_reading(mark: ReportsMark, stream: StateStream) -> bool {
    mark.stream_created == stream.created
        && mark.seq <= stream.last
        && (stream.last - mark.seq).saturating_mul(2) < stream.messages
}

/// The snapshot to start from, when there is a usable one (see the module's rule); logged
/// either way.
pub async fn read(store: &ObjectStore, stream: StateStream) -> Option<ReportsSnapshot> {
    let mut object = match store.get(REPORTS_OBJECT).await {
        Ok(object) => object,
        Err(e) if e.kind() == jetstream::object_store::GetErrorKind::NotFound => {
            tracing::info!("no reports snapshot; reading every report");
            return None;
        }
        Err(e) => {
            tracing::warn!(error = %e, "reading the reports snapshot failed; reading every report");
            return None;
        }
    };
    let mut bytes = Vec::with_capacity(object.info().size);
    if let Err(e) = object.read_to_end(&mut bytes).await {
        tracing::warn!(error = %e, "reading the reports snapshot failed; reading every report");
        return None;
    }
    let mark = match snapshot::decode_mark(&bytes) {
        Ok(mark) => mark,
        Err(e) => {
            tracing::warn!(error = %e, "reading every report");
            return None;
        }
    };
    if !worth_reading(mark, stream) {
        tracing::info!(
            snapshot_seq = mark.seq,
            stream_last = stream.last,
            messages = stream.messages,
            same_stream = mark.stream_created == stream.created,
            "the reports snapshot is of another stream or too far behind; reading every report"
        );
        return None;
    }
    match snapshot::decode(&bytes) {
        Ok(snapshot) => Some(snapshot),
        Err(e) => {
            tracing::warn!(error = %e, "reading every report");
            None
        }
    }
}

/// Replaces the reports snapshot with `bytes`.
pub async fn save(store: &ObjectStore, mut bytes: &[u8]) -> Result<()> {
    store
        .put(REPORTS_OBJECT, &mut bytes)
        .await
        .map(|_| ())
        .map_err(|e| {
            Error::nats(
                format!("writing the reports snapshot to {OPERATOR_STORE}"),
                e,
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_snapshot_is_read_only_when_it_is_of_this_stream_and_not_far_behind() {
        let stream = StateStream {
            created: 7,
            last: 1_000,
            messages: 800,
        };
        let mark = |created, seq| ReportsMark {
            stream_created: created,
            seq,
        };
        assert!(worth_reading(mark(7, 1_000), stream), "up to date");
        assert!(worth_reading(mark(7, 700), stream), "300 messages after it");
        assert!(
            worth_reading(mark(7, 601), stream),
            "399: under half the bucket"
        );
        assert!(!worth_reading(mark(7, 600), stream), "400: half the bucket");
        assert!(!worth_reading(mark(8, 1_000), stream), "another stream");
        assert!(
            !worth_reading(mark(7, 1_001), stream),
            "ahead of the stream"
        );
    }
}

//! The operator's checkpoint in `desired-state` (adr/0051), and the cold-start read it allows.
//!
//! The leader writes key [`CHECKPOINT_KEY`] whenever its writes have settled: every key and
//! index write acknowledged, no failed write unresolved, no index pending (the rule is in
//! `controller/checkpoint.rs`). At that moment each deployment
//! key is named, with the hash of its bytes, by the latest index of its device; a key the
//! operator writes later is in the stream after the checkpoint's sequence. So a restarted
//! operator reads the ~100k indexes and the messages after the checkpoint, instead of the
//! million keys: what an index says holds for every pair no later message changes.
//!
//! Without a checkpoint (a new bucket, an earlier operator, a checkpoint of another format) the
//! whole bucket is read, as before. Deleting the key forces that full read once; the operator
//! writes a new checkpoint as soon as its writes settle again.

use async_nats::jetstream::kv;
use futures::{Stream, StreamExt};
use harmony_fleet_contracts::notice::CHECKPOINT_KEY;
use serde::{Deserialize, Serialize};

use super::KvEvent;
use super::watch::{Start, watch};
use crate::error::{Error, Result};

/// The checkpoint format this build writes and trusts.
pub const CHECKPOINT_FORMAT: u32 = 1;

/// The checkpoint's value. The part that matters is its stream sequence (the key's revision);
/// the value says what it covers, for people and for a later format.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Checkpoint {
    /// The format of this build (1) when written; another format is not trusted.
    pub format: u32,
    /// Devices with an index when it was written.
    pub devices: u64,
}

impl Checkpoint {
    /// A checkpoint of this build's format.
    pub fn new(devices: u64) -> Self {
        Self {
            format: CHECKPOINT_FORMAT,
            devices,
        }
    }

    /// The bytes stored.
    pub fn to_bytes(&self) -> bytes::Bytes {
        // Two numbers cannot fail to serialise.
        serde_json::to_vec(self).unwrap_or_default().into()
    }
}

/// One event of the `desired-state` read ([`FleetKv::watch_desired`](super::FleetKv::watch_desired)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DesiredRead {
    /// An index read from a checkpoint: what it names holds for the keys written before it.
    Listed(KvEvent),
    /// Any other event, in stream order (with a checkpoint: the messages after it).
    Event(KvEvent),
}

/// The checkpoint in `store` and its stream sequence, when there is one this build trusts.
pub async fn read_checkpoint(store: &kv::Store) -> Result<Option<(u64, Checkpoint)>> {
    let entry = store
        .entry(CHECKPOINT_KEY)
        .await
        .map_err(|e| Error::nats(format!("reading {CHECKPOINT_KEY} in {}", store.name), e))?;
    let Some(entry) = entry.filter(|e| e.operation == kv::Operation::Put) else {
        return Ok(None);
    };
    match serde_json::from_slice::<Checkpoint>(&entry.value) {
        Ok(c) if c.format == CHECKPOINT_FORMAT => Ok(Some((entry.revision, c))),
        Ok(c) => {
            tracing::info!(
                format = c.format,
                "checkpoint of another format; reading every key"
            );
            Ok(None)
        }
        Err(e) => {
            tracing::warn!(error = %e, "checkpoint does not decode; reading every key");
            Ok(None)
        }
    }
}

/// Reads `desired-state` for a cold start: with a checkpoint, the indexes (the latest of each
/// device) then every message after the checkpoint; without one, or when that would be more
/// messages than the bucket holds (a checkpoint far behind: [`reads_less`]), every key. One
/// [`KvEvent::CaughtUp`] ends the backlog; then, with `follow`, live changes come, and without
/// it the stream stays pending.
pub async fn watch_desired(
    client: &async_nats::Client,
    store: &kv::Store,
    follow: bool,
) -> Result<impl Stream<Item = Result<DesiredRead>> + Send + 'static + use<>> {
    let checkpoint = read_checkpoint(store).await?;
    let state = store
        .stream
        .get_info()
        .await
        .map_err(|e| Error::nats(format!("reading status of bucket {}", store.name), e))?
        .state;
    let from_checkpoint = checkpoint.filter(|(sequence, c)| {
        let less = reads_less(c.devices, *sequence, state.last_sequence, state.messages);
        if !less {
            tracing::info!(
                checkpoint = sequence,
                last = state.last_sequence,
                messages = state.messages,
                "the checkpoint is far behind; reading every key"
            );
        }
        less
    });
    let rest = match from_checkpoint.map(|(sequence, _)| sequence) {
        None => {
            tracing::info!("reading every key of desired-state");
            let all = watch(client, store, ">", Start::Latest).await?;
            return Ok(backlog_or_all(all, follow)
                .map(|e| e.map(DesiredRead::Event))
                .boxed());
        }
        Some(sequence) => {
            tracing::info!(
                after = sequence,
                "checkpoint in desired-state; reading the indexes and the keys written after it"
            );
            let indexes = watch(client, store, "*", Start::Latest).await?;
            let after = watch(client, store, ">", Start::After(sequence)).await?;
            indexes
                .take_while(|e| futures::future::ready(!matches!(e, Ok(KvEvent::CaughtUp))))
                .map(|e| e.map(DesiredRead::Listed))
                .chain(backlog_or_all(after, follow).map(|e| e.map(DesiredRead::Event)))
        }
    };
    Ok(rest.boxed())
}

/// Whether reading from a checkpoint at stream sequence `checkpoint` surely reads fewer
/// messages than the bucket's `messages`: at most the indexes of the `devices` it counted and
/// one more per message since (a new device's first index), then every message since, up to
/// `last`.
pub fn reads_less(devices: u64, checkpoint: u64, last: u64, messages: u64) -> bool {
    let since = last.saturating_sub(checkpoint);
    devices.saturating_add(since.saturating_mul(2)) < messages
}

/// `events` whole (`follow`), or up to its [`KvEvent::CaughtUp`] and then pending: a watch
/// whose caller must not see it end (a supervised task that ends counts as failed).
fn backlog_or_all(
    events: impl Stream<Item = Result<KvEvent>> + Send + 'static,
    follow: bool,
) -> futures::stream::BoxStream<'static, Result<KvEvent>> {
    if follow {
        return events.boxed();
    }
    let backlog =
        futures::stream::unfold((Box::pin(events), false), |(mut events, read)| async move {
            if read {
                return None;
            }
            let event = events.next().await?;
            let read = matches!(event, Ok(KvEvent::CaughtUp));
            Some((event, (events, read)))
        });
    backlog.chain(futures::stream::pending()).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_is_used_only_when_it_reads_less() {
        // 1.1M keys and 100k indexes; the checkpoint 200k messages behind the end.
        assert!(reads_less(100_000, 1_000_000, 1_200_000, 1_200_000));
        // 110k keys, the checkpoint before a fan-out to 100k devices: its 10k indexes, up to
        // 200k new ones and the 200k messages since are more than the whole bucket.
        assert!(!reads_less(10_000, 20_000, 220_000, 210_000));
        assert!(
            !reads_less(0, 0, 10, 10),
            "an empty tail is still no saving"
        );
    }

    #[test]
    fn checkpoint_bytes_round_trip() {
        let c = Checkpoint::new(7);
        let back: Checkpoint = serde_json::from_slice(&c.to_bytes()).expect("decodes");
        assert_eq!(back, c);
        assert_eq!(c.to_bytes().as_ref(), br#"{"format":1,"devices":7}"#);
    }
}

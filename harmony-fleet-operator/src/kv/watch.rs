//! Bucket watches: every key of a bucket from its latest values on, then live changes, read
//! through an ordered **pull** consumer (adr/0046).
//!
//! A pull consumer is fetched as the stream is read, so a reader slower than the server (the
//! operator's core during a cold start at a million keys) holds the server back instead of
//! overflowing the client. The library's KV watch is a push consumer: behind a slow reader its
//! client buffer filled and the client dropped messages (130k "slow consumer" events in one
//! 1.1M-key run), each drop a consumer reset and a redelivery.
//!
//! A restarted server has forgotten the (ephemeral) consumer, and the library notices a lost
//! pull only after its idle heartbeat. The watch therefore also reopens itself, right after
//! the last message it delivered, as soon as the client has reconnected.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::jetstream::{self, kv};
use futures::stream::BoxStream;
use futures::{Stream, StreamExt, stream};
use jiff::Timestamp;

use super::KvEvent;
use crate::error::{Error, Result};

/// Longest wait of one pull of a bucket watch (its idle heartbeat is half of it).
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// Wait before reopening a watch whose server did not answer.
const REOPEN_DELAY: Duration = Duration::from_millis(250);

/// How often a watch compares the client's connection count with the one it opened under.
const RECONNECT_CHECK: Duration = Duration::from_millis(200);

/// The header a KV delete or purge carries (`DEL`, `PURGE`).
const KV_OPERATION: &str = "KV-Operation";

/// Where a watch starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Start {
    /// The latest value of every key it selects, then live changes.
    Latest,
    /// Every message after this stream sequence, in order, then live changes.
    After(u64),
}

/// Watches the keys of `store` (opened on `client`) that `filter` selects (a subject pattern
/// relative to the bucket, `>` for every key), from `from` on, as a stream of [`KvEvent`]s
/// with exactly one [`KvEvent::CaughtUp`] after the backlog.
pub(super) async fn watch(
    client: &async_nats::Client,
    store: &kv::Store,
    filter: &str,
    from: Start,
) -> Result<BoxStream<'static, Result<KvEvent>>> {
    Ok(watch_sequenced(client, store, filter, from)
        .await?
        .map(|item| item.map(|(event, _)| event))
        .boxed())
}

/// [`watch`], each event with the stream sequence of its message ([`KvEvent::CaughtUp`]:
/// that of the message before it, 0 when there is none).
pub(super) async fn watch_sequenced(
    client: &async_nats::Client,
    store: &kv::Store,
    filter: &str,
    from: Start,
) -> Result<BoxStream<'static, Result<(KvEvent, u64)>>> {
    // Asked now: `Store::status` answers what the stream held when the store was opened.
    let info = store
        .stream
        .get_info()
        .await
        .map_err(|e| Error::nats(format!("reading status of bucket {}", store.name), e))?;
    let last = info.state.last_sequence;
    let mut watch = PullWatch::new(client, store, filter, from);
    // Opened now, so that what it selects is known: nothing means caught up at once.
    let empty = watch.open().await? == 0;
    let head = stream::iter(empty.then_some(Ok((KvEvent::CaughtUp, 0))));
    let mut caught_up = empty;
    let body = decoded(watch, store.prefix.clone()).flat_map(move |item| {
        let mut out = Vec::with_capacity(2);
        match item {
            Ok((event, meta)) => {
                out.push(Ok((event, meta.sequence)));
                if !caught_up && (meta.pending == 0 || meta.sequence >= last) {
                    caught_up = true;
                    out.push(Ok((KvEvent::CaughtUp, meta.sequence)));
                }
            }
            Err(e) => out.push(Err(e)),
        }
        stream::iter(out)
    });
    Ok(head.chain(body).boxed())
}

/// `watch`'s messages as [`KvEvent`]s with their metadata (`prefix`: the bucket's subject
/// prefix, taken off each key).
fn decoded(
    watch: PullWatch,
    prefix: String,
) -> impl Stream<Item = Result<(KvEvent, Meta)>> + Send + 'static {
    stream::unfold((watch, prefix), |(mut watch, prefix)| async move {
        let item = match watch.next().await {
            Ok((message, meta)) => match decode_entry(&prefix, message, meta.at) {
                Ok(event) => Ok((event, meta)),
                Err(e) => Err(Error::WatchEnded {
                    bucket: watch.bucket.clone(),
                    message: e,
                }),
            },
            Err(e) => Err(e),
        };
        Some((item, (watch, prefix)))
    })
}

/// An ordered pull consumer on a bucket that reopens itself right after the last message it
/// delivered when it fails, ends, or the client reconnected under it.
struct PullWatch {
    stream: jetstream::stream::Stream,
    filter: String,
    bucket: String,
    /// The client's statistics: `connects` counts (re)connections.
    stats: Arc<async_nats::Statistics>,
    reconnect_check: tokio::time::Interval,
    messages: Option<jetstream::consumer::pull::Ordered>,
    /// `connects` when the current consumer was opened.
    opened_at_connect: u64,
    /// Stream sequence of the last message delivered (0: none yet).
    delivered: u64,
}

/// What a watch reads of a message's JetStream metadata (parsed once, from its reply subject).
#[derive(Clone, Copy, Debug)]
struct Meta {
    /// Stream sequence.
    sequence: u64,
    /// Messages still pending behind it.
    pending: u64,
    /// Server time of the write.
    at: Timestamp,
}

impl PullWatch {
    /// A watch of the keys `filter` selects, not opened yet.
    fn new(client: &async_nats::Client, store: &kv::Store, filter: &str, from: Start) -> Self {
        let mut reconnect_check = tokio::time::interval(RECONNECT_CHECK);
        reconnect_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        Self {
            stream: store.stream.clone(),
            filter: format!("{}{filter}", store.prefix),
            bucket: store.name.clone(),
            stats: client.statistics(),
            reconnect_check,
            messages: None,
            opened_at_connect: 0,
            delivered: match from {
                Start::Latest => 0,
                Start::After(sequence) => sequence,
            },
        }
    }

    async fn next(&mut self) -> Result<(jetstream::Message, Meta)> {
        loop {
            if self.messages.is_none()
                && let Err(e) = self.open().await
            {
                // The server is away: the caller logs it; the next try waits a bit.
                tokio::time::sleep(REOPEN_DELAY).await;
                return Err(e);
            }
            let Some(messages) = &mut self.messages else {
                continue;
            };
            tokio::select! {
                biased;
                item = messages.next() => return self.delivered(item),
                _ = self.reconnect_check.tick() => {
                    if self.stats.connects.load(Ordering::Relaxed) != self.opened_at_connect {
                        tracing::debug!(bucket = %self.bucket, after = self.delivered, "client reconnected; reopening the watch");
                        self.messages = None;
                    }
                }
            }
        }
    }

    /// Opens the consumer right after the last message delivered (from the start: the latest
    /// value of each key); returns how many messages it selects at that moment.
    async fn open(&mut self) -> Result<u64> {
        self.opened_at_connect = self.stats.connects.load(Ordering::Relaxed);
        let (messages, pending) =
            open(&self.stream, &self.filter, &self.bucket, self.delivered).await?;
        self.messages = Some(messages);
        Ok(pending)
    }

    fn delivered(
        &mut self,
        item: Option<
            std::result::Result<jetstream::Message, jetstream::consumer::pull::OrderedError>,
        >,
    ) -> Result<(jetstream::Message, Meta)> {
        match item {
            Some(Ok(message)) => {
                let meta = match message.info() {
                    Ok(info) => Meta {
                        sequence: info.stream_sequence,
                        pending: info.pending,
                        at: Timestamp::from_nanosecond(info.published.unix_timestamp_nanos())
                            .unwrap_or(Timestamp::UNIX_EPOCH),
                    },
                    Err(e) => {
                        return Err(Error::WatchEnded {
                            bucket: self.bucket.clone(),
                            message: format!("a message without JetStream metadata: {e}"),
                        });
                    }
                };
                self.delivered = meta.sequence;
                Ok((message, meta))
            }
            Some(Err(e)) => {
                self.messages = None;
                Err(Error::nats(format!("watch on bucket {}", self.bucket), e))
            }
            None => {
                self.messages = None;
                Err(Error::WatchEnded {
                    bucket: self.bucket.clone(),
                    message: "the consumer's messages ended; reopening".into(),
                })
            }
        }
    }
}

/// A bucket's ordered pull consumer from the start (the latest value of every key), or right
/// after stream sequence `delivered`, and how many messages it selects.
async fn open(
    stream: &jetstream::stream::Stream,
    filter: &str,
    bucket: &str,
    delivered: u64,
) -> Result<(jetstream::consumer::pull::Ordered, u64)> {
    let deliver_policy = match delivered {
        0 => jetstream::consumer::DeliverPolicy::LastPerSubject,
        n => jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: n + 1,
        },
    };
    let what = || format!("watching bucket {bucket}");
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            description: Some(format!("operator watch of {bucket}")),
            filter_subject: filter.to_owned(),
            deliver_policy,
            replay_policy: jetstream::consumer::ReplayPolicy::Instant,
            max_expires: PULL_EXPIRES,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats(what(), e))?;
    let pending = consumer.cached_info().num_pending;
    let messages = consumer
        .messages()
        .await
        .map_err(|e| Error::nats(what(), e))?;
    Ok((messages, pending))
}

/// A bucket's message, written at `at`, as a [`KvEvent`].
fn decode_entry(
    prefix: &str,
    message: jetstream::Message,
    at: Timestamp,
) -> std::result::Result<KvEvent, String> {
    let key = message
        .subject
        .strip_prefix(prefix)
        .ok_or_else(|| format!("subject {} outside the bucket", message.subject))?
        .to_owned();
    let deleted = message.headers.as_ref().is_some_and(|h| {
        matches!(
            h.get(KV_OPERATION).map(|v| v.as_str()),
            Some("DEL" | "PURGE")
        ) || h.get(async_nats::header::NATS_MARKER_REASON).is_some()
    });
    let event = if deleted {
        KvEvent::Delete { key }
    } else {
        KvEvent::Put {
            key,
            value: message.message.payload,
            at,
        }
    };
    Ok(event)
}

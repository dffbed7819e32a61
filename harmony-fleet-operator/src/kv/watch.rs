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

/// Watches every key of `store` (opened on `client`) from its latest values on, as a stream of
/// [`KvEvent`]s with exactly one [`KvEvent::CaughtUp`] after the backlog.
pub(super) async fn watch_from_start(
    client: &async_nats::Client,
    store: &kv::Store,
) -> Result<impl Stream<Item = Result<KvEvent>> + Send + 'static + use<>> {
    let bucket = store.name.clone();
    // Asked now: `Store::status` answers what the stream held when the store was opened.
    let info = store
        .stream
        .get_info()
        .await
        .map_err(|e| Error::nats(format!("reading status of bucket {bucket}"), e))?;
    let last = info.state.last_sequence;
    let empty = info.state.messages == 0;
    let mut reconnect_check = tokio::time::interval(RECONNECT_CHECK);
    reconnect_check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let watch = PullWatch {
        stream: store.stream.clone(),
        filter: format!("{}>", store.prefix),
        bucket: bucket.clone(),
        stats: client.statistics(),
        reconnect_check,
        messages: None,
        opened_at_connect: 0,
        delivered: 0,
    };
    let messages = stream::unfold(watch, |mut watch| async move {
        let item = watch.next().await;
        Some((item, watch))
    });
    let prefix = store.prefix.clone();
    let head = stream::iter(empty.then_some(Ok(KvEvent::CaughtUp)));
    let mut caught_up = empty;
    let body = messages.flat_map(move |message| {
        let mut out = Vec::with_capacity(2);
        match message {
            Ok((message, meta)) => match decode_entry(&prefix, message, meta.at) {
                Ok(event) => {
                    out.push(Ok(event));
                    if !caught_up && (meta.pending == 0 || meta.sequence >= last) {
                        caught_up = true;
                        out.push(Ok(KvEvent::CaughtUp));
                    }
                }
                Err(e) => out.push(Err(Error::WatchEnded {
                    bucket: bucket.clone(),
                    message: e,
                })),
            },
            Err(e) => out.push(Err(e)),
        }
        stream::iter(out)
    });
    Ok(head.chain(body))
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
    async fn next(&mut self) -> Result<(jetstream::Message, Meta)> {
        loop {
            let messages = match &mut self.messages {
                Some(messages) => messages,
                None => {
                    self.opened_at_connect = self.stats.connects.load(Ordering::Relaxed);
                    match open(&self.stream, &self.filter, &self.bucket, self.delivered).await {
                        Ok(messages) => self.messages.insert(messages),
                        Err(e) => {
                            // The server is away: the caller logs it; the next try waits a bit.
                            tokio::time::sleep(REOPEN_DELAY).await;
                            return Err(e);
                        }
                    }
                }
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
/// after stream sequence `delivered`.
async fn open(
    stream: &jetstream::stream::Stream,
    filter: &str,
    bucket: &str,
    delivered: u64,
) -> Result<jetstream::consumer::pull::Ordered> {
    let deliver_policy = match delivered {
        0 => jetstream::consumer::DeliverPolicy::LastPerSubject,
        n => jetstream::consumer::DeliverPolicy::ByStartSequence {
            start_sequence: n + 1,
        },
    };
    let what = || format!("watching bucket {bucket}");
    stream
        .create_consumer(jetstream::consumer::pull::OrderedConfig {
            description: Some(format!("operator watch of {bucket}")),
            filter_subject: filter.to_owned(),
            deliver_policy,
            replay_policy: jetstream::consumer::ReplayPolicy::Instant,
            max_expires: PULL_EXPIRES,
            ..Default::default()
        })
        .await
        .map_err(|e| Error::nats(what(), e))?
        .messages()
        .await
        .map_err(|e| Error::nats(what(), e))
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

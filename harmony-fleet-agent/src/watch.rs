//! How this device learns its desired state, without a JetStream consumer (adr/0013, adr/0014).
//!
//! The operator keeps, per device, an index in `desired-state` (key `<device>`: deployment →
//! hash of its payload) and publishes a core-NATS notice on `desired-notify.<device>` after
//! each change ([`harmony_fleet_contracts::notice`]). This loop holds one plain subscription
//! on that subject and **lists**: one exact-subject direct get of the index, then direct gets
//! of only the keys whose hash differs from what it last saw. It lists
//! - when connected, and again after every reconnect (notices sent meanwhile are lost);
//! - on every notice (notices arriving during a listing coalesce into one more);
//! - on a jittered timer ([`WatchSettings::resync_interval`]), which bounds how long a lost
//!   notice can go unnoticed;
//! - shortly after a listing that raced a write (a key whose bytes do not match the index);
//! - again, a few times with growing pauses, after a notice whose listing showed the same
//!   index revision as before: on a replicated bucket a follower that has not caught up may
//!   answer the direct get, and without a second look the change would wait for the timer.
//!
//! A missing index is not an empty one: the agent keeps what it runs until the operator writes
//! it (it writes an explicit empty index to remove everything).
//!
//! Each listing is a [`WatchEvent::Snapshot`]: the supervisor compares it with what it holds by
//! KV revision (roll forward only) and removes what is gone. If the index's own revision goes
//! backwards and stays there, the stream was recreated (its sequence numbers restarted): the
//! listing is sent as [`WatchEvent::Rebased`], so the new, lower revisions are taken instead
//! of being ignored as old.

use std::collections::BTreeMap;
use std::hash::{BuildHasher, RandomState};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use harmony_fleet_contracts::buckets::DESIRED_STATE;
use harmony_fleet_contracts::canonical::ContentHash;
use harmony_fleet_contracts::jetstream as contract_js;
use harmony_fleet_contracts::notice::{self, DesiredIndex};
use harmony_fleet_contracts::{DeploymentName, DeviceId, keys};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::connection::{Connection, wait_connected};

/// Header carrying the KV operation on delete/purge markers.
const KV_OPERATION_HEADER: &str = "KV-Operation";
/// Header carrying the reason of server-generated markers (TTL expiry, `Nats-Marker-Reason`).
const MARKER_REASON_HEADER: &str = "Nats-Marker-Reason";
/// Header of a direct-get reply carrying the message's stream sequence (the KV revision).
const SEQUENCE_HEADER: &str = "Nats-Sequence";
/// How soon a listing that raced a write is repeated.
const RACE_RETRY: Duration = Duration::from_millis(250);
/// Pauses before the follow-up listings after a notice that changed nothing visible
/// (a lagging replica answered); their count bounds the extra reads per notice.
const NOTICE_FOLLOW_UPS: [Duration; 3] = [
    Duration::from_millis(250),
    Duration::from_secs(1),
    Duration::from_secs(4),
];
/// Default of [`WatchSettings::resync_interval`].
pub const DEFAULT_RESYNC_INTERVAL: Duration = Duration::from_secs(180);

/// What happened to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KvOperation {
    /// A value was written.
    Put,
    /// The key was deleted (tombstone).
    Delete,
    /// The key was purged.
    Purge,
}

/// One KV record of the device's desired state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KvRecord {
    /// The key without the bucket prefix (`<device>.<deployment>`).
    pub key: String,
    /// KV revision (stream sequence).
    pub revision: u64,
    /// Put, delete or purge.
    pub operation: KvOperation,
    /// The value (empty for deletes).
    pub value: Bytes,
}

/// What the watch delivers to the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchEvent {
    /// The complete current state of the device's keys (latest record per key); keys absent
    /// here no longer exist.
    Snapshot(Vec<KvRecord>),
    /// Like [`WatchEvent::Snapshot`], after the stream was recreated: its revisions restarted,
    /// so they must replace the held ones instead of being compared with them.
    Rebased(Vec<KvRecord>),
    /// One change after the snapshot (kept for runtimes that still deliver single changes).
    Change(KvRecord),
}

/// How the listing runs.
#[derive(Debug, Clone, Copy)]
pub struct WatchSettings {
    /// Mean time between listings when no notice arrives (each wait is drawn from
    /// 50–150 % of it, so a fleet does not list in step).
    pub resync_interval: Duration,
}

impl Default for WatchSettings {
    fn default() -> Self {
        Self {
            resync_interval: DEFAULT_RESYNC_INTERVAL,
        }
    }
}

/// A number in `[0, 1)` that differs per call and per process (no RNG dependency: std's
/// randomly keyed hasher over a counter).
fn random_fraction() -> f64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let bits = RandomState::new().hash_one(n);
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// `base` scaled by a random factor in `[low, high)`.
pub fn jittered(base: Duration, low: f64, high: f64) -> Duration {
    base.mul_f64(low + (high - low) * random_fraction())
}

fn operation_of(headers: Option<&async_nats::HeaderMap>) -> KvOperation {
    let Some(headers) = headers else {
        return KvOperation::Put;
    };
    if let Some(op) = headers.get(KV_OPERATION_HEADER) {
        return match op.as_str() {
            "DEL" => KvOperation::Delete,
            "PURGE" => KvOperation::Purge,
            _ => KvOperation::Put,
        };
    }
    match headers.get(MARKER_REASON_HEADER).map(|v| v.as_str()) {
        Some("MaxAge" | "Purge") => KvOperation::Purge,
        Some("Remove") => KvOperation::Delete,
        _ => KvOperation::Put,
    }
}

/// Why a listing failed.
#[derive(Debug, thiserror::Error)]
enum ListError {
    #[error("direct get of {subject} failed: {source}")]
    Request {
        subject: String,
        #[source]
        source: async_nats::RequestError,
    },
    #[error("direct get of {subject} answered status {status}: {description}")]
    Status {
        subject: String,
        status: u16,
        description: String,
    },
    #[error("direct get of {subject} answered without a {SEQUENCE_HEADER} header")]
    NoSequence { subject: String },
    #[error(transparent)]
    Index(#[from] notice::IndexError),
}

/// The last message of `key` in `desired-state`, by a direct get on the subject-scoped form
/// (`$JS.API.DIRECT.GET.KV_desired-state.$KV.desired-state.<key>`, the only read a device's
/// permissions allow). `None` when the key has no message.
async fn direct_get(client: &async_nats::Client, key: &str) -> Result<Option<KvRecord>, ListError> {
    let subject = contract_js::direct_get(DESIRED_STATE, key);
    let reply = client
        .request(subject.clone(), Bytes::new())
        .await
        .map_err(|source| ListError::Request {
            subject: subject.clone(),
            source,
        })?;
    if let Some(status) = reply.status {
        if status == async_nats::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if status != async_nats::StatusCode::OK {
            return Err(ListError::Status {
                subject,
                status: status.as_u16(),
                description: reply.description.unwrap_or_default(),
            });
        }
    }
    let revision = reply
        .headers
        .as_ref()
        .and_then(|h| h.get(SEQUENCE_HEADER))
        .and_then(|v| v.as_str().parse::<u64>().ok())
        .ok_or_else(|| ListError::NoSequence {
            subject: subject.clone(),
        })?;
    Ok(Some(KvRecord {
        key: key.to_owned(),
        revision,
        operation: operation_of(reply.headers.as_ref()),
        value: reply.payload,
    }))
}

/// What the last listing saw: the index revision and each key's record and hash.
#[derive(Debug, Default)]
struct Seen {
    index_revision: Option<u64>,
    keys: BTreeMap<DeploymentName, (KvRecord, ContentHash)>,
}

/// What one listing produced (`None` from [`list`]: no index to go by).
struct Listing {
    event: WatchEvent,
    /// A key did not match the index (a write in between, or a lagging replica).
    raced: bool,
}

/// The index, when there is one: a missing (or deleted) index means the operator has not
/// written it yet — a new device, or a bucket recreated and not yet rewritten — and never
/// that the device should run nothing (the operator writes an empty index for that).
async fn get_index(
    client: &async_nats::Client,
    device: &DeviceId,
) -> Result<Option<KvRecord>, ListError> {
    let record = direct_get(client, &notice::index_key(device)).await?;
    Ok(record.filter(|r| r.operation == KvOperation::Put))
}

async fn list(
    client: &async_nats::Client,
    device: &DeviceId,
    seen: &mut Seen,
) -> Result<Option<Listing>, ListError> {
    let Some(mut index_record) = get_index(client, device).await? else {
        tracing::debug!("no desired-state index yet; keeping what runs");
        return Ok(None);
    };
    let mut rebased = false;
    if let Some(last) = seen.index_revision
        && index_record.revision < last
    {
        // A lagging replica answers with an older index now and then; a recreated stream
        // keeps answering lower revisions. Ask once more to tell them apart.
        let Some(again) = get_index(client, device).await? else {
            return Ok(None);
        };
        index_record = again;
        if index_record.revision < last {
            tracing::warn!(
                held = last,
                now = index_record.revision,
                "desired-state revisions went backwards: the stream was recreated; re-basing on its contents"
            );
            rebased = true;
        }
    }
    let index = DesiredIndex::from_bytes(&index_record.value)?;
    let mut raced = false;
    let mut records = Vec::with_capacity(index.deployments.len());
    let mut keys_now = BTreeMap::new();
    for (deployment, hash) in index.deployments {
        if !rebased
            && let Some((record, held)) = seen.keys.get(&deployment)
            && *held == hash
        {
            records.push(record.clone());
            keys_now.insert(deployment, (record.clone(), hash));
            continue;
        }
        let key = keys::desired_key(device, &deployment);
        match direct_get(client, &key).await? {
            Some(record) if record.operation == KvOperation::Put => {
                let got = ContentHash::of_bytes(&record.value);
                if got != hash {
                    tracing::debug!(%deployment, "desired-state key differs from the index; listing again shortly");
                    raced = true;
                }
                records.push(record.clone());
                keys_now.insert(deployment, (record, got));
            }
            _ => {
                // Deleted after the index was read: the next index will say so.
                raced = true;
            }
        }
    }
    seen.index_revision = Some(index_record.revision);
    seen.keys = keys_now;
    let event = if rebased {
        WatchEvent::Rebased(records)
    } else {
        WatchEvent::Snapshot(records)
    };
    Ok(Some(Listing { event, raced }))
}

/// Run until `shutdown`, sending a listing to `events` on start, on every reconnect, on
/// notices and on the timer.
pub async fn run(
    connection: Connection,
    device: DeviceId,
    settings: WatchSettings,
    events: mpsc::Sender<WatchEvent>,
    shutdown: CancellationToken,
) {
    let mut link = connection.link();
    let client = connection.client().clone();
    let mut seen = Seen::default();
    let mut failures: u32 = 0;
    let notice_subject = notice::notify_subject(&device);
    'connected: loop {
        let generation = tokio::select! {
            () = shutdown.cancelled() => return,
            generation = wait_connected(&mut link) => match generation {
                Some(generation) => generation,
                None => return,
            },
        };
        let mut notices = match client.subscribe(notice_subject.clone()).await {
            Ok(subscriber) => subscriber,
            Err(err) => {
                tracing::warn!(error = %err, subject = notice_subject, "cannot subscribe to change notices; retrying");
                failures = failures.saturating_add(1);
                if !pause(&shutdown, failures).await {
                    return;
                }
                continue;
            }
        };
        // List now (this is also the re-sync after a reconnect), then on each trigger.
        let mut next_list = Instant::now();
        let mut timer = Instant::now() + jittered(settings.resync_interval, 0.5, 1.5);
        // Follow-up listings already done for the last notice (`None`: no notice pending).
        let mut follow_ups: Option<usize> = None;
        loop {
            if Instant::now() >= next_list {
                let before = seen.index_revision;
                let listed = tokio::select! {
                    () = shutdown.cancelled() => return,
                    listed = list(&client, &device, &mut seen) => listed,
                };
                match listed {
                    Ok(None) => {
                        failures = 0;
                        next_list = far_future();
                        if let Some(pause) = follow_up(&mut follow_ups, false) {
                            next_list = Instant::now() + pause;
                        }
                    }
                    Ok(Some(listing)) => {
                        failures = 0;
                        let sent = tokio::select! {
                            () = shutdown.cancelled() => return,
                            sent = events.send(listing.event) => sent,
                        };
                        if sent.is_err() {
                            return;
                        }
                        next_list = if listing.raced {
                            Instant::now() + RACE_RETRY
                        } else {
                            far_future()
                        };
                        let moved = seen.index_revision != before;
                        if let Some(pause) = follow_up(&mut follow_ups, moved) {
                            next_list = next_list.min(Instant::now() + pause);
                        }
                    }
                    Err(err) => {
                        failures = failures.saturating_add(1);
                        tracing::warn!(error = %err, "listing the desired state failed; retrying");
                        next_list = Instant::now() + retry_delay(failures);
                    }
                }
            }
            tokio::select! {
                () = shutdown.cancelled() => return,
                changed = link.wait_for(|l| l.generation != generation) => {
                    if changed.is_err() {
                        return;
                    }
                    tracing::info!("reconnected; listing the desired state again");
                    continue 'connected;
                }
                notice = notices.next() => {
                    if notice.is_none() {
                        tracing::warn!("notice subscription ended; subscribing again");
                        continue 'connected;
                    }
                    // Coalesce a burst (a rollout touching many deployments) into one listing.
                    while let Some(Some(_)) = futures::FutureExt::now_or_never(notices.next()) {}
                    next_list = Instant::now();
                    follow_ups = Some(0);
                }
                () = tokio::time::sleep_until(timer) => {
                    timer = Instant::now() + jittered(settings.resync_interval, 0.5, 1.5);
                    next_list = Instant::now();
                }
                () = tokio::time::sleep_until(next_list) => {}
            }
        }
    }
}

/// After a listing: the pause before the next follow-up listing of a notice, if one is due.
/// A notice promises a change; when the index revision did not move (`moved` false), the
/// replica that answered may lag, so look again, at most [`NOTICE_FOLLOW_UPS`] times.
fn follow_up(follow_ups: &mut Option<usize>, moved: bool) -> Option<Duration> {
    let done = (*follow_ups)?;
    if moved || done >= NOTICE_FOLLOW_UPS.len() {
        *follow_ups = None;
        return None;
    }
    *follow_ups = Some(done + 1);
    Some(NOTICE_FOLLOW_UPS[done])
}

/// An instant far enough away to mean "not scheduled".
fn far_future() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}

/// Back-off after `failures` failed attempts: 250 ms doubling to 5 s, jittered.
fn retry_delay(failures: u32) -> Duration {
    let base = Duration::from_millis(250u64 << failures.min(5)).min(Duration::from_secs(5));
    jittered(base, 0.5, 1.0)
}

/// Waits [`retry_delay`]; `false` when shutting down.
async fn pause(shutdown: &CancellationToken, failures: u32) -> bool {
    tokio::select! {
        () = shutdown.cancelled() => false,
        () = tokio::time::sleep(retry_delay(failures)) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_its_bounds_and_varies() {
        let base = Duration::from_secs(100);
        let draws: Vec<Duration> = (0..200).map(|_| jittered(base, 0.5, 1.5)).collect();
        assert!(
            draws
                .iter()
                .all(|d| *d >= Duration::from_secs(50) && *d < Duration::from_secs(150))
        );
        let distinct: std::collections::BTreeSet<_> = draws.iter().collect();
        assert!(distinct.len() > 150, "{} distinct of 200", distinct.len());
    }

    #[test]
    fn retry_delay_grows_to_five_seconds() {
        assert!(retry_delay(0) <= Duration::from_millis(250));
        assert!(retry_delay(10) <= Duration::from_secs(5));
        assert!(retry_delay(10) >= Duration::from_millis(2500));
    }

    #[test]
    fn a_notice_whose_listing_changed_nothing_is_followed_up_a_bounded_number_of_times() {
        // No notice pending: nothing to follow up.
        let mut pending = None;
        assert_eq!(follow_up(&mut pending, false), None);
        // The replica lagged three times, then the budget is spent.
        let mut pending = Some(0);
        assert_eq!(follow_up(&mut pending, false), Some(NOTICE_FOLLOW_UPS[0]));
        assert_eq!(follow_up(&mut pending, false), Some(NOTICE_FOLLOW_UPS[1]));
        assert_eq!(follow_up(&mut pending, false), Some(NOTICE_FOLLOW_UPS[2]));
        assert_eq!(follow_up(&mut pending, false), None);
        assert_eq!(pending, None);
        // The change showed up: done at once.
        let mut pending = Some(0);
        assert_eq!(follow_up(&mut pending, true), None);
        assert_eq!(pending, None);
    }

    #[test]
    fn delete_markers_are_told_apart_from_puts() {
        let mut headers = async_nats::HeaderMap::new();
        assert_eq!(operation_of(None), KvOperation::Put);
        headers.insert(KV_OPERATION_HEADER, "DEL");
        assert_eq!(operation_of(Some(&headers)), KvOperation::Delete);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(MARKER_REASON_HEADER, "MaxAge");
        assert_eq!(operation_of(Some(&headers)), KvOperation::Purge);
    }
}

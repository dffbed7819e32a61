//! The operator's bucket watches against a real nats-server (adr/0046): the backlog, the one
//! `CaughtUp`, live changes, and a server restart under a watch — the watch reopens right
//! after the last message it delivered as soon as its client has reconnected (no repeat, no
//! gap), instead of waiting out the library's idle heartbeat.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use harmony::local::{LocalNats, NatsOptions};
use harmony_fleet_operator::kv::{FleetKv, KvEvent, Split};

/// The next event that is not an error (errors while the server is away are expected and
/// logged by the operator), within `within`.
async fn next_event(
    events: &mut (impl Stream<Item = harmony_fleet_operator::Result<KvEvent>> + Unpin),
    within: Duration,
) -> Result<KvEvent> {
    tokio::time::timeout(within, async {
        loop {
            match events.next().await {
                Some(Ok(event)) => return Ok(event),
                Some(Err(_)) => continue,
                None => bail!("the watch ended"),
            }
        }
    })
    .await
    .with_context(|| format!("no event within {within:?}"))?
}

fn key_of(event: &KvEvent) -> Option<&str> {
    match event {
        KvEvent::Put { key, .. } | KvEvent::Delete { key } => Some(key),
        KvEvent::CaughtUp => None,
    }
}

#[tokio::test]
async fn a_watch_delivers_the_backlog_then_changes_and_resumes_after_a_server_restart() -> Result<()>
{
    let mut nats = LocalNats::start(NatsOptions::default()).await?;
    let kv = FleetKv::open(async_nats::connect(nats.url()).await?, true).await?;
    let within = Duration::from_secs(10);
    kv.desired.put("a", Bytes::from_static(b"1")).await?;
    kv.desired.put("b", Bytes::from_static(b"1")).await?;
    kv.desired.put("a", Bytes::from_static(b"2")).await?;

    let mut events = Box::pin(kv.watch(&kv.desired).await?);
    let mut backlog = Vec::new();
    loop {
        match next_event(&mut events, within).await? {
            KvEvent::CaughtUp => break,
            KvEvent::Put { key, value, .. } => backlog.push((key, value)),
            other => bail!("unexpected {other:?} in the backlog"),
        }
    }
    assert_eq!(
        backlog,
        [
            ("b".to_owned(), Bytes::from_static(b"1")),
            ("a".to_owned(), Bytes::from_static(b"2"))
        ],
        "the latest value of each key, in stream order"
    );

    kv.desired.delete("b").await?;
    let deleted = next_event(&mut events, within).await?;
    assert_eq!(deleted, KvEvent::Delete { key: "b".into() });

    nats.restart().await?;
    // The watch's client reconnects by itself; a write after the restart reaches the watch
    // once, and nothing before it comes again. The deadline is under the library's 15 s idle
    // heartbeat, after which a lost pull would be noticed without the reconnect check.
    let written = tokio::time::timeout(within, async {
        loop {
            if kv.desired.put("c", Bytes::from_static(b"1")).await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    assert!(
        written.is_ok(),
        "no write accepted within {within:?} of the restart"
    );
    let after = next_event(&mut events, within).await?;
    assert_eq!(
        key_of(&after),
        Some("c"),
        "the first event after the restart: {after:?}"
    );
    Ok(())
}

/// A backlog read by several consumers side by side: every key's latest value once, one
/// `CaughtUp`, and a key written while the stretches are read comes after them, so no key's
/// events are out of order.
#[tokio::test]
async fn a_large_backlog_read_side_by_side_keeps_each_key_in_order() -> Result<()> {
    let nats = LocalNats::start(NatsOptions::default()).await?;
    let kv = FleetKv::open(async_nats::connect(nats.url()).await?, true).await?;
    let within = Duration::from_secs(10);
    let keys: Vec<String> = (0..40).map(|i| format!("k{i:02}")).collect();
    for key in &keys {
        kv.desired.put(key, Bytes::from_static(b"1")).await?;
    }
    // Rewritten and deleted keys leave gaps in the stream's sequences.
    for key in &keys[..5] {
        kv.desired.put(key, Bytes::from_static(b"2")).await?;
    }
    kv.desired.delete(&keys[5]).await?;
    let split = Split {
        above: 10,
        per_part: 10,
        max_parts: 4,
    };
    let mut events = Box::pin(kv.watch_with(&kv.desired, split).await?);
    let consumers = kv.desired.stream.get_info().await?.state.consumer_count;
    assert_eq!(
        consumers, 4,
        "45 messages over stretches of 10, at most four"
    );
    // Written after the watch started: in no stretch, read after all of them.
    kv.desired.put(&keys[39], Bytes::from_static(b"3")).await?;

    let mut seen: Vec<KvEvent> = Vec::new();
    let mut caught_up = None;
    while !seen
        .iter()
        .any(|e| matches!(e, KvEvent::Put { key, value, .. } if key == &keys[39] && value.as_ref() == b"3"))
    {
        let event = next_event(&mut events, within).await?;
        if event == KvEvent::CaughtUp {
            assert!(caught_up.is_none(), "one CaughtUp");
            caught_up = Some(seen.len());
        }
        seen.push(event);
    }
    let caught_up = caught_up.context("CaughtUp before the live write")?;
    let mut latest = std::collections::BTreeMap::new();
    for (i, event) in seen[..caught_up].iter().enumerate() {
        let key = key_of(event).context("one CaughtUp")?.to_owned();
        assert!(
            latest.insert(key.clone(), i).is_none(),
            "{key} twice in the backlog"
        );
    }
    // k39 is in the backlog only if its stretch was read before the write removed it.
    assert!(
        keys[..39].iter().all(|k| latest.contains_key(k)),
        "every other key once, the deleted one as a delete: {latest:?}"
    );
    for (i, event) in seen[..caught_up].iter().enumerate() {
        match event {
            KvEvent::Put { key, value, .. } if keys[..5].contains(key) => {
                assert_eq!(value.as_ref(), b"2", "{key}: its latest value")
            }
            KvEvent::Delete { key } => assert_eq!(key, &keys[5], "event {i}"),
            KvEvent::Put { value, .. } => assert_eq!(value.as_ref(), b"1"),
            KvEvent::CaughtUp => bail!("CaughtUp inside the backlog"),
        }
    }
    assert_eq!(
        seen.len(),
        caught_up + 2,
        "after CaughtUp only the live write: {:?}",
        &seen[caught_up..]
    );
    Ok(())
}

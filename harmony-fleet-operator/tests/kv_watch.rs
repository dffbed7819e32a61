//! The operator's bucket watches against a real nats-server (adr/0046): the backlog, the one
//! `CaughtUp`, live changes, and a server restart under a watch — the watch reopens right
//! after the last message it delivered as soon as its client has reconnected (no repeat, no
//! gap), instead of waiting out the library's idle heartbeat.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use futures::{Stream, StreamExt};
use harmony::local::{LocalNats, NatsOptions};
use harmony_fleet_operator::kv::{FleetKv, KvEvent};

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

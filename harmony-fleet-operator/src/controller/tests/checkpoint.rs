//! The checkpoint (adr/0051): written once writes have settled; a cold start from it trusts
//! the indexes for the keys before it, and reads back payload bytes it needs.

use harmony_fleet_contracts::notice::DesiredIndex;

use super::*;

fn checkpoints(effects: &[Effect]) -> usize {
    effects
        .iter()
        .filter(|e| matches!(e, Effect::WriteCheckpoint(_)))
        .count()
}

fn hash(image: &str) -> Rev {
    ContentHash::of_bytes(&payload(image))
}

/// `device`'s index naming `entries`, as read from a checkpoint.
fn listed(device: &str, entries: &[(&str, &str)]) -> DesiredEvent {
    let index = DesiredIndex {
        deployments: entries.iter().map(|(d, i)| (name(d), hash(i))).collect(),
    };
    DesiredEvent::Listed {
        device: id(device),
        stored: ContentHash::of_bytes(&index.to_bytes()),
        index: Ok(index),
    }
}

/// A key read after the checkpoint.
fn key_after(device: &str, deployment: &str, image: &str) -> DesiredEvent {
    decode_desired(KvEvent::Put {
        key: keys::desired_key(&id(device), &name(deployment)),
        value: payload(image),
        at: Timestamp::from_second(T0).expect("valid"),
    })
}

#[test]
fn a_checkpoint_follows_settled_writes_and_not_a_failed_one() {
    let mut h = Harness::new();
    let started = h.cold_start();
    assert_eq!(checkpoints(&started), 1, "the next start reads from here");
    h.feed(info("pi-1", "plant-1"));
    h.feed(info("pi-2", "plant-1"));

    h.failing.insert("pi-1.web".into());
    let applied = h.feed(apply(deployment("default", "web", "plant-1", "nginx:1", 0)));
    assert!(
        applied.iter().any(|e| matches!(e, Effect::WriteIndexes(_))),
        "pi-2's index: {applied:?}"
    );
    assert_eq!(
        checkpoints(&applied),
        0,
        "a failed put may have landed: no checkpoint until it is written again"
    );

    h.advance(1.0);
    let retried = h.feed(Input::Tick);
    assert_eq!(writes(&retried).0, vec!["pi-1.web".to_owned()]);
    assert_eq!(checkpoints(&retried), 1, "{retried:?}");
    let index = position(&retried, |e| matches!(e, Effect::WriteIndexes(_)));
    let checkpoint = position(&retried, |e| matches!(e, Effect::WriteCheckpoint(_)));
    assert!(index < checkpoint, "after the index naming the key");

    h.advance(1.0);
    assert_eq!(
        checkpoints(&h.feed(Input::Tick)),
        0,
        "nothing new to vouch for"
    );
}

#[test]
fn a_put_that_failed_for_a_device_that_no_longer_matches_is_deleted() {
    let mut h = Harness::new();
    h.cold_start();
    h.feed(info("pi-1", "plant-1"));
    h.failing.insert("pi-1.web".into());
    h.feed(apply(deployment("default", "web", "plant-1", "nginx:1", 0)));
    // The device moves away before the retry: the core holds no key, KV may hold one.
    let moved = h.feed(info("pi-1", "plant-2"));
    assert_eq!(writes(&moved).1, vec!["pi-1.web".to_owned()]);
    assert_eq!(checkpoints(&moved), 1, "{moved:?}");
    h.advance(1.0);
    let tick = h.feed(Input::Tick);
    assert_eq!(writes(&tick), (vec![], vec![]), "the retry was resolved");
}

#[test]
fn a_cold_start_from_a_checkpoint_trusts_the_indexes_and_the_keys_after_it() {
    let mut h = Harness::new();
    for event in [
        listed("pi-1", &[("web", "nginx:1")]),
        listed("pi-2", &[("web", "nginx:1")]),
        // Written after the checkpoint, its index not yet: the key wins.
        key_after("pi-2", "web", "nginx:0"),
    ] {
        assert!(!h.core.load_desired(event));
    }
    for device in ["pi-1", "pi-2"] {
        h.feed(info(device, "plant-1"));
    }
    let effects = h.cold_start_with(vec![deployment("default", "web", "plant-1", "nginx:1", 0)]);
    assert_eq!(
        writes(&effects),
        (vec!["pi-2.web".to_owned()], vec![]),
        "only the key changed after the checkpoint is written; pi-1's index says it holds nginx:1"
    );
}

#[test]
fn a_rollback_after_a_checkpoint_start_reads_the_old_payload_back() {
    let mut h = Harness::new();
    // pi-1 and pi-2 hold nginx:0, whose bytes no CR produces and no key read carried.
    for device in ["pi-1", "pi-2"] {
        assert!(!h.core.load_desired(listed(device, &[("web", "nginx:0")])));
        h.feed(info(device, "plant-1"));
        h.feed(report(device, "web", "nginx:0", StatePhase::Running));
    }
    let mut d = deployment("default", "web", "plant-1", "nginx:1", 0);
    d.spec.rollout = serde_json::from_value(json!({
        "strategy": "Batches",
        "batches": [{"count": 1}],
        "onFailure": "RollBack",
    }))
    .expect("a valid rollout");
    let started = h.cold_start_with(vec![d]);
    let (canary, _) = writes(&started);
    assert_eq!(canary.len(), 1, "the first batch: {started:?}");
    let device = canary[0].split('.').next().expect("device").to_owned();

    // The canary fails: it goes back to nginx:0, whose bytes must be read first.
    let failed = h.feed(report(&device, "web", "nginx:1", StatePhase::Failed));
    let fetch = failed
        .iter()
        .find_map(|e| match e {
            Effect::FetchRevision { rev, key } => Some((*rev, key.clone())),
            _ => None,
        })
        .expect("bytes asked for");
    assert_eq!(fetch.0, hash("nginx:0"));
    let other = if device == "pi-1" { "pi-2" } else { "pi-1" };
    assert_eq!(fetch.1, format!("{other}.web"), "a key that holds nginx:0");
    assert!(
        writes(&failed).0.is_empty(),
        "nothing written without bytes"
    );
    assert_eq!(checkpoints(&failed), 0, "not settled while a write waits");

    // Wrong bytes are not taken; the right ones release the write.
    let wrong = h.feed(Input::RevisionFetched {
        rev: fetch.0,
        bytes: Some(payload("nginx:9")),
    });
    assert!(writes(&wrong).0.is_empty());
    h.advance(1.0);
    let again = h.feed(Input::Tick);
    assert!(
        again
            .iter()
            .any(|e| matches!(e, Effect::FetchRevision { .. })),
        "asked again on the tick: {again:?}"
    );
    let back = h.feed(Input::RevisionFetched {
        rev: fetch.0,
        bytes: Some(payload("nginx:0")),
    });
    let put = back
        .iter()
        .find_map(|e| match e {
            Effect::WriteKeys(ops) => ops.iter().find(|(k, _)| *k == canary[0]).cloned(),
            _ => None,
        })
        .expect("the canary's key written back");
    assert_eq!(put.1, KvOp::Put(payload("nginx:0")));
    assert_eq!(checkpoints(&back), 1);
}

#[test]
fn a_drain_writes_held_indexes_and_then_the_checkpoint() {
    let mut h = Harness::new();
    h.cold_start();
    h.feed(info("pi-1", "plant-1"));
    // More inputs queued: the index is held back to coalesce it with theirs.
    h.core.set_backlog(true);
    let applied = h.feed(apply(deployment("default", "web", "plant-1", "nginx:1", 0)));
    assert_eq!(writes(&applied).0, vec!["pi-1.web".to_owned()]);
    assert!(
        !applied.iter().any(|e| matches!(e, Effect::WriteIndexes(_))),
        "held: {applied:?}"
    );
    assert!(!h.core.drained());

    let drained = h.feed(Input::Drain);
    let index = position(&drained, |e| matches!(e, Effect::WriteIndexes(_)));
    let checkpoint = position(&drained, |e| matches!(e, Effect::WriteCheckpoint(_)));
    assert!(index < checkpoint, "{drained:?}");
    assert!(h.core.drained());

    let mut standby = Harness::standby();
    standby.feed(Input::Drain);
    assert!(standby.core.drained(), "a standby writes nothing");
}

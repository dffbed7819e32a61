//! Writes in flight while the loop goes on (adr/0050): the shell answers a write after later
//! inputs; the core keeps one write in flight and gathers the next one meanwhile.

use super::*;

/// `web` at `plant-1` over pi-1 and pi-2, converged, every write answered.
fn fleet() -> Harness {
    let mut h = Harness::new();
    h.cold_start();
    h.feed(info("pi-1", "plant-1"));
    h.feed(info("pi-2", "plant-1"));
    h
}

/// The `web` Deployment at `generation` running `image`.
fn web(image: &str, generation: i64) -> Input {
    let mut d = deployment("default", "web", "plant-1", image, 0);
    d.metadata.generation = Some(generation);
    apply(d)
}

/// Handles `input` without answering any write; returns the effects.
fn handle(h: &mut Harness, input: Input) -> Vec<Effect> {
    let now = h.now();
    h.core.handle(input, now)
}

fn key_writes(effects: &[Effect]) -> Vec<&Vec<(String, KvOp)>> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::WriteKeys(ops) => Some(ops),
            _ => None,
        })
        .collect()
}

/// Every key of `ops` written with `ok`.
fn answered(ops: &[(String, KvOp)], ok: bool) -> Input {
    Input::KeysWritten(ops.iter().map(|(k, _)| (k.clone(), ok)).collect())
}

#[test]
fn inputs_go_on_while_keys_are_written_and_the_next_write_waits_for_the_first() {
    let mut h = fleet();
    let first = handle(&mut h, web("nginx:1", 1));
    let batches = key_writes(&first);
    assert_eq!(batches.len(), 1);
    let in_flight = batches[0].clone();
    assert_eq!(in_flight.len(), 2);

    // A new revision while the first write is in flight: decided, not handed over yet.
    let second = handle(&mut h, web("nginx:2", 2));
    assert!(key_writes(&second).is_empty(), "{second:?}");
    assert!(
        !second
            .iter()
            .any(|e| matches!(e, Effect::WriteIndexes(_) | Effect::PatchStatus(..))),
        "no index and no status while keys are in flight: {second:?}"
    );

    // A device that read its key before the core heard the write's answer is not a stray.
    let reported = handle(
        &mut h,
        report("pi-1", "web", "nginx:1", StatePhase::Running),
    );
    assert!(
        !reported
            .iter()
            .any(|e| matches!(e, Effect::RemoveStray(_) | Effect::BlacklistDevice { .. })),
        "{reported:?}"
    );

    // The answer releases the next write: the newer revision, to both devices; the indexes
    // follow the keys they name.
    let after = h.feed(answered(&in_flight, true));
    let batches = key_writes(&after);
    assert_eq!(batches.len(), 1, "{after:?}");
    let payload = KvOp::Put(payload("nginx:2"));
    assert!(batches[0].iter().all(|(_, op)| *op == payload));
    assert_eq!(batches[0].len(), 2);
    let keys = position(&after, |e| matches!(e, Effect::WriteKeys(_)));
    let indexes = position(&after, |e| matches!(e, Effect::WriteIndexes(_)));
    assert!(keys < indexes, "indexes only after the keys they name");
}

#[test]
fn indexes_held_past_their_longest_hold_go_before_more_keys() {
    let mut h = fleet();
    h.core.set_backlog(true);
    let first = handle(&mut h, web("nginx:1", 1));
    let in_flight = key_writes(&first)[0].clone();
    // More keys decided while the first ones are written.
    let mut api = deployment("default", "api", "plant-1", "redis:1", 0);
    api.metadata.generation = Some(1);
    assert!(key_writes(&handle(&mut h, apply(api))).is_empty());
    // Answered: the indexes wait (more inputs queued), the next keys go.
    let answer = handle(&mut h, answered(&in_flight, true));
    let next = key_writes(&answer);
    assert_eq!(next.len(), 1, "{answer:?}");
    assert!(!answer.iter().any(|e| matches!(e, Effect::WriteIndexes(_))));
    assert_eq!(
        h.core.next_wake(),
        None,
        "no wake-up while keys are in flight"
    );
    // Answered after the longest hold: the held indexes go first, the keys after.
    let more = deployment("default", "db", "plant-1", "pg:1", 0);
    assert!(key_writes(&handle(&mut h, apply(more))).is_empty());
    h.advance(INDEX_MAX_HOLD.as_secs_f64());
    let second = next[0].clone();
    let answer = handle(&mut h, answered(&second, true));
    assert!(key_writes(&answer).is_empty(), "{answer:?}");
    assert!(answer.iter().any(|e| matches!(e, Effect::WriteIndexes(_))));
}

#[test]
fn a_revision_decided_again_while_in_flight_is_written_once() {
    let mut h = fleet();
    let first = handle(&mut h, web("nginx:1", 1));
    let in_flight = key_writes(&first)[0].clone();
    // Forth and back while the write is in flight: what lands is what is wanted.
    assert!(key_writes(&handle(&mut h, web("nginx:2", 2))).is_empty());
    assert!(key_writes(&handle(&mut h, web("nginx:1", 3))).is_empty());
    let after = h.feed(answered(&in_flight, true));
    assert!(
        key_writes(&after).is_empty(),
        "nothing more to write: {after:?}"
    );
    assert!(
        after.iter().any(|e| matches!(e, Effect::WriteIndexes(_))),
        "the indexes follow the keys"
    );
}

#[test]
fn a_failed_write_answered_late_is_retried_with_the_latest_revision() {
    let mut h = fleet();
    let first = handle(&mut h, web("nginx:1", 1));
    let in_flight = key_writes(&first)[0].clone();
    assert!(key_writes(&handle(&mut h, web("nginx:2", 2))).is_empty());
    // The first write failed: the pending newer revision goes out, nothing else.
    let after = h.feed(answered(&in_flight, false));
    let batches = key_writes(&after);
    assert_eq!(batches.len(), 1, "{after:?}");
    let payload = KvOp::Put(payload("nginx:2"));
    assert!(batches[0].iter().all(|(_, op)| *op == payload));
    // The retry on the next tick wants what is now written: no write.
    h.advance(1.0);
    assert!(key_writes(&h.feed(Input::Tick)).is_empty());
}

#[test]
fn a_decision_larger_than_a_batch_goes_out_in_batches_in_key_order() {
    let mut h = Harness::new();
    h.cold_start();
    let devices = KEY_BATCH + 1;
    for i in 0..devices {
        h.feed(info(&format!("pi-{i}"), "plant-1"));
    }
    let first = handle(&mut h, web("nginx:1", 1));
    let batches = key_writes(&first);
    assert_eq!(batches.len(), 1);
    let batch = batches[0].clone();
    assert_eq!(batch.len(), KEY_BATCH, "at most one batch in flight");
    assert!(batch.windows(2).all(|w| w[0].0 < w[1].0), "in key order");
    assert_eq!(h.core.writes_pending(), devices);
    assert!(h.core.writing());
    // The answer releases the rest: the one key left, after every key of the first batch.
    let after = handle(&mut h, answered(&batch, true));
    let rest = key_writes(&after);
    assert_eq!(rest.len(), 1, "{} effects", after.len());
    assert_eq!(rest[0].len(), 1);
    assert!(rest[0][0].0 > batch[KEY_BATCH - 1].0);
}

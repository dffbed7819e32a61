//! The reports snapshot (adr/0052): saved once the cold start converged and then as reports
//! come, loaded by the next start as the reports it holds, saved again while stopping.

use super::*;
use crate::controller::reports_snapshot::{SNAPSHOT_MAX_AGE, SNAPSHOT_MIN_INTERVAL};
use crate::kv::snapshot;

/// Where the `device-state` read starts: stream 7, with `snapshot`.
fn start(save: bool, snapshot: Option<ReportsSnapshot>) -> Input {
    Input::ReportsStart(ReportsStart {
        stream_created: 7,
        snapshot: snapshot.map(Box::new),
        save,
    })
}

/// `report`, as the message at stream sequence `seq`.
fn report_at(device: &str, image: &str, phase: StatePhase, seq: u64) -> Input {
    match report(device, "web", image, phase) {
        Input::State(event, _) => Input::State(event, seq),
        other => other,
    }
}

/// The snapshot saved among `effects`, decoded.
fn saved(effects: &[Effect]) -> Option<ReportsSnapshot> {
    effects.iter().find_map(|e| match e {
        Effect::SaveReports { seq, bytes } => {
            let snapshot = snapshot::decode(bytes).expect("decodes");
            assert_eq!(snapshot.mark.seq, *seq);
            Some(snapshot)
        }
        _ => None,
    })
}

/// A core started with `start`, pi-1 and pi-2 at plant-1 running `web` (nginx:1), and
/// `reports` read before the cold start converged.
fn started(first: Input, reports: Vec<Input>) -> Harness {
    let mut h = Harness::new();
    h.feed(first);
    h.feed(info("pi-1", "plant-1"));
    h.feed(info("pi-2", "plant-1"));
    for r in reports {
        h.feed(r);
    }
    h.cold_start_with(vec![deployment("default", "web", "plant-1", "nginx:1", 0)]);
    h
}

fn counts(h: &Harness) -> crate::aggregate::Counts {
    h.core.fleet.counts(&name("web"))
}

#[test]
fn a_snapshot_carries_the_reports_to_the_next_start() {
    let mut h = started(
        start(true, None),
        vec![
            report_at("pi-1", "nginx:1", StatePhase::Running, 11),
            report_at("pi-2", "nginx:1", StatePhase::Failed, 12),
        ],
    );
    h.advance(1.0);
    let first = saved(&h.feed(Input::Tick)).expect("the first tick after the cold start saves");
    assert_eq!(first.mark.seq, 12);
    assert_eq!(first.mark.stream_created, 7);
    assert_eq!(first.len(), 2);
    h.advance(SNAPSHOT_MAX_AGE.as_secs_f64() + 1.0);
    assert!(
        saved(&h.feed(Input::Tick)).is_none(),
        "nothing new, nothing saved"
    );

    // The next start loads it, then reads the messages after it.
    let mut next = started(
        start(true, Some(first)),
        vec![report_at("pi-1", "nginx:1", StatePhase::Pending, 13)],
    );
    let loaded = counts(&next);
    assert_eq!((loaded.matched, loaded.succeeded, loaded.failed), (2, 0, 1));
    let (failing, _) = next.core.fleet.failing(&name("web"), 10);
    assert_eq!(failing.len(), 1);
    assert_eq!(failing[0].device, id("pi-2"));
    assert_eq!(
        failing[0].error, "image not found",
        "a failed report keeps its error"
    );

    // Loaded just now: the next one waits for the interval, then holds the message after it.
    next.advance(1.0);
    assert!(saved(&next.feed(Input::Tick)).is_none());
    next.advance(SNAPSHOT_MIN_INTERVAL.as_secs_f64());
    let second = saved(&next.feed(Input::Tick)).expect("one message behind, interval passed");
    assert_eq!(second.mark.seq, 13);
}

#[test]
fn a_stopping_operator_saves_the_reports_it_read_before_it_counts_as_drained() {
    let mut h = started(
        start(true, None),
        vec![report_at("pi-1", "nginx:1", StatePhase::Running, 11)],
    );
    h.advance(1.0);
    assert!(saved(&h.feed(Input::Tick)).is_some());
    h.feed(report_at("pi-2", "nginx:1", StatePhase::Running, 12));

    h.failing.insert(SNAPSHOT.into());
    let drained = saved(&h.feed(Input::Drain)).expect("saved at once when stopping");
    assert_eq!(drained.mark.seq, 12);
    assert!(!h.core.drained(), "the save failed");
    h.advance(1.0);
    let again = saved(&h.feed(Input::Tick)).expect("tried again at once while stopping");
    assert_eq!(again.mark.seq, 12);
    assert!(h.core.drained());
}

#[test]
fn without_a_store_or_as_a_standby_nothing_is_saved() {
    let mut h = started(
        start(false, None),
        vec![report_at("pi-1", "nginx:1", StatePhase::Running, 11)],
    );
    h.advance(SNAPSHOT_MAX_AGE.as_secs_f64());
    assert!(saved(&h.feed(Input::Tick)).is_none());
    assert!(saved(&h.feed(Input::Drain)).is_none());
    assert!(h.core.drained());

    let mut standby = Harness::standby();
    standby.feed(start(true, None));
    standby.feed(report_at("pi-1", "nginx:1", StatePhase::Running, 11));
    standby.cold_start();
    standby.advance(SNAPSHOT_MAX_AGE.as_secs_f64());
    assert!(saved(&standby.feed(Input::Tick)).is_none());
    // Once elected it saves what it followed.
    standby.feed(Input::Elected);
    standby.advance(1.0);
    let taken_over = saved(&standby.feed(Input::Tick)).expect("the new leader saves");
    assert_eq!(taken_over.mark.seq, 11);
}

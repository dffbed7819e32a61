//! Cold start and `Deployment` resources.

use super::*;

use crate::controller::ownership::pick_owner;

// ----- cold start -----

#[test]
fn cold_start_writes_nothing_until_every_source_caught_up_then_fills_gaps_and_deletes_orphans() {
    let mut h = Harness::new();
    // KV holds a key for pi-1 (still wanted) and one of a deployment nobody owns any more.
    for (device, deployment) in [("pi-1", "web"), ("pi-1", "gone")] {
        h.core.load_desired(decode_desired(KvEvent::Put {
            key: keys::desired_key(&id(device), &name(deployment)),
            value: payload("nginx:1"),
            at: h.wall(),
        }));
    }
    let mut before = Vec::new();
    before.extend(h.feed(info("pi-1", "plant-1")));
    before.extend(h.feed(info("pi-2", "plant-1")));
    assert_eq!(
        writes(&before),
        (vec![], vec![]),
        "nothing before the sources caught up"
    );

    let effects = h.cold_start_with(vec![deployment("default", "web", "plant-1", "nginx:1", 0)]);
    let (puts, deletes) = writes(&effects);
    assert_eq!(
        puts,
        vec![keys::desired_key(&id("pi-2"), &name("web"))],
        "only the gap"
    );
    assert_eq!(deletes, vec![keys::desired_key(&id("pi-1"), &name("gone"))]);
    // Ready only after the writes and the indexes, and each notice after its index.
    let written = position(&effects, |e| matches!(e, Effect::WriteKeys(_)));
    let indexed = position(&effects, |e| matches!(e, Effect::WriteIndexes(_)));
    let notified = position(&effects, |e| matches!(e, Effect::Notify(_)));
    let ready = position(&effects, |e| *e == Effect::Converged);
    assert!(
        written < indexed && indexed < notified && notified < ready,
        "{effects:?}"
    );
    assert!(
        !statuses(&effects).is_empty(),
        "statuses written once converged"
    );
}

#[test]
fn a_restart_with_everything_in_place_rewrites_nothing() {
    let mut h = Harness::new();
    h.core.load_desired(decode_desired(KvEvent::Put {
        key: keys::desired_key(&id("pi-1"), &name("web")),
        value: payload("nginx:1"),
        at: h.wall(),
    }));
    h.feed(info("pi-1", "plant-1"));
    let effects = h.cold_start_with(vec![deployment("default", "web", "plant-1", "nginx:1", 0)]);
    assert_eq!(writes(&effects), (vec![], vec![]));
    assert!(effects.contains(&Effect::Converged));
}

#[test]
fn desired_state_read_side_by_side_with_the_other_sources_converges_when_it_catches_up_last() {
    let mut h = Harness::new();
    let web = || deployment("default", "web", "plant-1", "nginx:1", 0);
    let key = |device: &str| {
        Input::desired(KvEvent::Put {
            key: keys::desired_key(&id(device), &name("web")),
            value: payload("nginx:1"),
            at: Timestamp::from_second(T0).expect("valid"),
        })
    };
    // The sources arrive interleaved, as the watches deliver them side by side: pi-1's key,
    // the Deployment, both infos and a report, pi-2's key, and desired-state's end last.
    let mut effects = h.feed(key("pi-1"));
    for input in [
        Input::Cr(Box::new(watcher::Event::Init)),
        Input::Cr(Box::new(watcher::Event::InitApply(web()))),
        Input::Cr(Box::new(watcher::Event::InitDone)),
        info("pi-1", "plant-1"),
        report("pi-1", "web", "nginx:1", StatePhase::Running),
        info("pi-2", "plant-1"),
        Input::info(KvEvent::CaughtUp),
        Input::state(KvEvent::CaughtUp, 0),
        Input::heartbeat(KvEvent::CaughtUp),
        Input::Devices(Box::new(watcher::Event::Init)),
        Input::Devices(Box::new(watcher::Event::InitDone)),
        key("pi-2"),
    ] {
        effects.extend(h.feed(input));
    }
    assert!(!h.core.is_converged(), "not before desired-state caught up");
    assert_eq!(writes(&effects), (vec![], vec![]), "nothing written before");
    let effects = h.feed(Input::desired(KvEvent::CaughtUp));
    assert!(h.core.is_converged(), "at once, not on the next tick");
    // Both keys were there: nothing to rewrite, and pi-1's report counts.
    assert_eq!(writes(&effects), (vec![], vec![]));
    assert!(effects.contains(&Effect::Converged));
    let status = statuses(&effects).pop().expect("a status once converged");
    assert_eq!(status.aggregate.succeeded, 1, "{status:?}");
    // A leader ignores its own writes read back after the backlog.
    let later = h.feed(Input::desired(KvEvent::Delete {
        key: keys::desired_key(&id("pi-1"), &name("web")),
    }));
    assert_eq!(writes(&later), (vec![], vec![]));
}

// ----- Deployment resources -----

#[test]
fn a_new_deployment_writes_its_matched_devices_and_reports_status_at_once() {
    let (_, effects) = fleet_with_web();
    let (puts, deletes) = writes(&effects);
    assert_eq!(
        puts,
        vec![
            keys::desired_key(&id("pi-1"), &name("web")),
            keys::desired_key(&id("pi-2"), &name("web")),
        ]
    );
    assert!(deletes.is_empty());
    let notified: Vec<&Vec<DeviceId>> = effects
        .iter()
        .filter_map(|e| match e {
            Effect::Notify(d) => Some(d),
            _ => None,
        })
        .collect();
    assert_eq!(notified.len(), 1);
    assert_eq!(notified[0].len(), 2);
    // The first status change after quiet is written in the same pass.
    let status = statuses(&effects);
    assert_eq!(status.len(), 1, "{effects:?}");
    assert_eq!(status[0].aggregate.matched_device_count, 2);
    assert_eq!(status[0].aggregate.pending, 2);
    assert!(effects.iter().any(
        |e| matches!(e, Effect::Events(_, ev) if ev.iter().any(|ev| ev.reason == "RolloutStarted"))
    ));
}

#[test]
fn a_deployment_without_our_finalizer_gets_it() {
    let mut h = Harness::new();
    h.cold_start();
    let mut d = deployment("default", "web", "plant-1", "nginx:1", 0);
    d.metadata.finalizers = Some(vec!["someone/else".to_owned()]);
    let effects = h.feed(apply(d));
    assert!(effects.contains(&Effect::AddFinalizer {
        key: CrKey {
            namespace: "default".into(),
            name: "web".into()
        },
        finalizers: vec!["someone/else".to_owned(), FINALIZER.to_owned()],
        resource_version: Some("1".into()),
    }));
}

#[test]
fn a_younger_claim_on_the_same_name_gets_name_conflict_and_writes_nothing() {
    let (mut h, _) = fleet_with_web();
    let effects = h.feed(apply(deployment("other", "web", "plant-2", "nginx:2", 5)));
    assert_eq!(writes(&effects), (vec![], vec![]));
    let conflict = effects.iter().find_map(|e| match e {
        Effect::PatchStatus(k, s) if k.namespace == "other" => Some(s),
        _ => None,
    });
    assert_eq!(conflict.map(|s| ready_reason(s)), Some("NameConflict"));
}

#[test]
fn deleting_a_deployment_deletes_its_keys_then_releases_the_finalizer() {
    let (mut h, _) = fleet_with_web();
    let mut d = deployment("default", "web", "plant-1", "nginx:1", 0);
    d.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        h.wall(),
    ));
    let effects = h.feed(apply(d));
    let (_, deletes) = writes(&effects);
    assert_eq!(deletes.len(), 2);
    let deleted = position(&effects, |e| matches!(e, Effect::WriteKeys(_)));
    let released = position(
        &effects,
        |e| matches!(e, Effect::ReleaseFinalizer { finalizers, .. } if finalizers.is_empty()),
    );
    assert!(deleted < released);
    // Released: nothing more to do on later ticks.
    h.advance(1.0);
    let later = h.feed(Input::Tick);
    assert!(
        !later
            .iter()
            .any(|e| matches!(e, Effect::ReleaseFinalizer { .. }))
    );
}

#[test]
fn the_finalizer_waits_while_a_key_delete_fails_and_is_released_after_the_retry() {
    let (mut h, _) = fleet_with_web();
    h.failing
        .insert(keys::desired_key(&id("pi-1"), &name("web")));
    let mut d = deployment("default", "web", "plant-1", "nginx:1", 0);
    d.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        h.wall(),
    ));
    let effects = h.feed(apply(d));
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::ReleaseFinalizer { .. }))
    );
    h.advance(1.0);
    let effects = h.feed(Input::Tick);
    assert_eq!(
        writes(&effects).1,
        vec![keys::desired_key(&id("pi-1"), &name("web"))]
    );
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::ReleaseFinalizer { .. }))
    );
}

#[test]
fn the_oldest_claim_owns_a_name_and_a_same_second_tie_keeps_the_owner() {
    let at = |secs: i64| Timestamp::from_second(secs).ok();
    let claims: BTreeSet<_> = [(at(10), "b".to_owned()), (at(11), "a".to_owned())].into();
    assert_eq!(
        pick_owner(&claims, Some("a"), |_| false),
        Some("b"),
        "oldest wins"
    );
    // Created in the same second: the current owner keeps it, though "a" sorts first.
    let tied: BTreeSet<_> = [(at(10), "a".to_owned()), (at(10), "b".to_owned())].into();
    assert_eq!(pick_owner(&tied, Some("b"), |_| false), Some("b"));
    // After a restart (no owner yet), the one not refused before keeps it.
    assert_eq!(pick_owner(&tied, None, |ns| ns == "a"), Some("b"));
    // Nothing else to go by: the first namespace.
    assert_eq!(pick_owner(&tied, None, |_| false), Some("a"));
    assert_eq!(pick_owner(&BTreeSet::new(), None, |_| false), None);
}

// ----- index coalescing -----

fn indexed_devices(effects: &[Effect]) -> Vec<DeviceId> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::WriteIndexes(ops) => Some(ops.iter().map(|(d, _)| d.clone())),
            _ => None,
        })
        .flatten()
        .collect()
}

#[test]
fn queued_inputs_coalesce_index_writes_for_a_bounded_time() {
    let mut h = Harness::new();
    h.feed(info("pi-1", "plant-1"));
    h.cold_start();
    // Two Deployments arrive back to back: the first is handled with the second queued.
    h.core.set_backlog(true);
    let first = h.feed(apply(deployment("default", "web", "plant-1", "nginx:1", 0)));
    assert_eq!(writes(&first).0.len(), 1, "the key is written at once");
    assert!(indexed_devices(&first).is_empty(), "its index waits");
    let wake = h.core.next_wake().expect("a wake-up for the held index");
    assert!(wake <= h.now().mono + INDEX_COALESCE);
    h.core.set_backlog(false);
    let second = h.feed(apply(deployment("default", "api", "plant-1", "nginx:1", 0)));
    assert_eq!(
        indexed_devices(&second),
        vec![id("pi-1")],
        "one index write for both keys"
    );
    let index = h.core.indexes.wanted(&id("pi-1")).expect("an index");
    assert_eq!(index.deployments.len(), 2);

    // A queue that never empties holds an index no longer than INDEX_COALESCE.
    h.core.set_backlog(true);
    let held = h.feed(apply(deployment("default", "db", "plant-1", "nginx:1", 0)));
    assert!(indexed_devices(&held).is_empty());
    h.advance(INDEX_COALESCE.as_secs_f64());
    let due = h.feed(Input::Wake);
    assert_eq!(indexed_devices(&due), vec![id("pi-1")]);
}

//! Device inputs (`device-info`, `device-state`, heartbeats, the blacklist), write outcomes,
//! the tick and the status pace.

use super::*;

// ----- device-info -----

#[test]
fn a_device_relabelled_out_of_the_selector_loses_its_key_and_an_inconsistent_info_is_ignored() {
    let (mut h, _) = fleet_with_web();
    let effects = h.feed(info("pi-2", "plant-9"));
    assert_eq!(
        writes(&effects).1,
        vec![keys::desired_key(&id("pi-2"), &name("web"))]
    );
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Device(DeviceUpdate::Info { .. })))
    );

    // A value whose deviceId is not its key's changes nothing.
    let KvEvent::Put { value, at, .. } = info_event("pi-3", "plant-1") else {
        unreachable!()
    };
    let forged = h.feed(Input::info(KvEvent::Put {
        key: keys::info_key(&id("pi-1")),
        value,
        at,
    }));
    assert!(forged.is_empty(), "{forged:?}");
}

// ----- device-state -----

#[test]
fn reports_fold_into_the_status_and_a_report_for_an_unassigned_deployment_is_removed() {
    let (mut h, _) = fleet_with_web();
    h.advance(2.0);
    let effects = h.feed(report("pi-1", "web", "nginx:1", StatePhase::Running));
    let status = statuses(&effects);
    assert_eq!(status.len(), 1, "quiet for 2 s: written at once");
    assert_eq!(status[0].aggregate.succeeded, 1);

    let stray = h.feed(report("pi-3", "web", "nginx:1", StatePhase::Running));
    assert!(stray.contains(&Effect::RemoveStray(keys::state_key(
        &id("pi-3"),
        &name("web")
    ))));
}

#[test]
fn a_device_writing_too_many_stray_keys_is_blacklisted() {
    let (mut h, _) = fleet_with_web();
    let mut all = Vec::new();
    for n in 0..4 {
        all.extend(h.feed(report(
            "pi-3",
            &format!("made-up-{n}"),
            "nginx:1",
            StatePhase::Running,
        )));
    }
    assert!(
        all.iter()
            .any(|e| matches!(e, Effect::BlacklistDevice { device, .. } if *device == id("pi-3")))
    );
    assert_eq!(
        all.iter()
            .filter(|e| matches!(e, Effect::RemoveStray(_)))
            .count(),
        4
    );
    assert_eq!(
        stray_state_device("state.pi-1.NOT_A_NAME"),
        Some(id("pi-1"))
    );
    assert_eq!(stray_state_device("state.pi-1"), None);
    assert_eq!(stray_state_device("state.Not_A_Device.x"), None);
}

// ----- heartbeats -----

#[test]
fn a_heartbeat_brings_a_device_online_and_the_tick_after_the_timeout_takes_it_offline() {
    let (mut h, _) = fleet_with_web();
    let effects = h.feed(heartbeat("pi-1", h.wall()));
    assert!(effects.contains(&Effect::Device(DeviceUpdate::Liveness {
        id: id("pi-1"),
        online: true,
        last_heartbeat: Some(h.wall()),
    })));
    let beat = h.wall();
    h.advance(31.0);
    let effects = h.feed(Input::Tick);
    assert!(effects.contains(&Effect::Device(DeviceUpdate::Liveness {
        id: id("pi-1"),
        online: false,
        last_heartbeat: Some(beat),
    })));
    let status = statuses(&effects);
    assert_eq!(status.last().map(|s| s.aggregate.offline), Some(1));
}

// ----- Device resources: blacklist -----

#[test]
fn a_blacklisted_device_loses_its_keys_and_gets_them_back_when_released() {
    let (mut h, _) = fleet_with_web();
    let key = keys::desired_key(&id("pi-1"), &name("web"));
    let effects = h.feed(Input::Devices(Box::new(watcher::Event::Apply(
        device_resource("pi-1", true),
    ))));
    assert_eq!(writes(&effects).1, vec![key.clone()]);
    assert!(
        effects
            .iter()
            .any(|e| matches!(e, Effect::Events(_, ev) if ev[0].reason == "Blacklisted"))
    );
    // Labels reported while blacklisted are kept aside.
    assert_eq!(writes(&h.feed(info("pi-1", "plant-1"))), (vec![], vec![]));

    let effects = h.feed(Input::Devices(Box::new(watcher::Event::Apply(
        device_resource("pi-1", false),
    ))));
    assert_eq!(writes(&effects).0, vec![key]);
}

// ----- write outcomes, tick, pace -----

#[test]
fn a_failed_write_is_retried_on_the_next_tick() {
    let mut h = Harness::new();
    h.cold_start();
    h.feed(info("pi-1", "plant-1"));
    let key = keys::desired_key(&id("pi-1"), &name("web"));
    h.failing.insert(key.clone());
    let effects = h.feed(apply(deployment("default", "web", "plant-1", "nginx:1", 0)));
    assert_eq!(writes(&effects).0, vec![key.clone()]);
    assert!(
        !effects.iter().any(|e| matches!(e, Effect::WriteIndexes(_))),
        "no index for a failed key"
    );
    h.advance(1.0);
    let effects = h.feed(Input::Tick);
    assert_eq!(writes(&effects).0, vec![key]);
    assert!(effects.iter().any(|e| matches!(e, Effect::Notify(_))));
}

#[test]
fn status_changes_within_a_second_are_held_back_and_written_when_due() {
    let (mut h, first) = fleet_with_web();
    assert_eq!(statuses(&first).len(), 1);
    h.advance(0.2);
    let effects = h.feed(report("pi-1", "web", "nginx:1", StatePhase::Running));
    assert!(statuses(&effects).is_empty(), "within the pace: held back");
    let wake = h.core.next_wake().expect("a status is waiting");
    assert_eq!(wake, h.base + Duration::from_secs(1));
    h.advance(0.8);
    let effects = h.feed(Input::Wake);
    let status = statuses(&effects);
    assert_eq!(status.len(), 1);
    assert_eq!(status[0].aggregate.succeeded, 1);
    assert_eq!(h.core.next_wake(), None);
}

#[test]
fn a_new_revision_is_written_to_every_device_and_counted_when_reported() {
    let (mut h, _) = fleet_with_web();
    h.feed(report("pi-1", "web", "nginx:1", StatePhase::Running));
    h.feed(report("pi-2", "web", "nginx:1", StatePhase::Running));
    h.advance(2.0);
    let mut d = deployment("default", "web", "plant-1", "nginx:2", 0);
    d.metadata.generation = Some(2);
    let effects = h.feed(apply(d));
    assert_eq!(writes(&effects).0.len(), 2);
    let status = statuses(&effects);
    assert_eq!(status.last().map(|s| s.observed_generation), Some(Some(2)));
    assert_eq!(status.last().map(|s| s.aggregate.succeeded), Some(0));
}

#[test]
fn the_report_that_completes_a_rollout_is_written_at_once_whatever_the_pace() {
    let (mut h, first) = fleet_with_web();
    assert_eq!(statuses(&first).len(), 1);
    h.advance(0.2);
    assert!(statuses(&h.feed(report("pi-1", "web", "nginx:1", StatePhase::Running))).is_empty());
    h.advance(0.1);
    let effects = h.feed(report("pi-2", "web", "nginx:1", StatePhase::Running));
    let status = statuses(&effects);
    assert_eq!(
        status.len(),
        1,
        "the rollout completed: no wait for the pace"
    );
    assert_eq!(ready_reason(status[0]), "AllSucceeded");
    assert_eq!(
        status[0].rollout.as_ref().map(|r| r.phase),
        Some(crate::crd::deployment::RolloutPhase::Complete)
    );
    assert!(effects.iter().any(
        |e| matches!(e, Effect::Events(_, ev) if ev.iter().any(|ev| ev.reason == "RolloutComplete"))
    ));
}

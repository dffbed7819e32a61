//! Leader election: a standby, and its takeover.

use super::*;

// ----- leader election -----

/// What `effects` wrote to `desired-state`, as the watch a standby follows delivers it.
fn as_watched(effects: &[Effect]) -> Vec<Input> {
    let at = Timestamp::from_second(T0).expect("valid");
    let event = |key: String, op: &KvOp| match op {
        KvOp::Put(value) => KvEvent::Put {
            key,
            value: value.clone(),
            at,
        },
        KvOp::Delete => KvEvent::Delete { key },
    };
    let mut out = Vec::new();
    for e in effects {
        match e {
            Effect::WriteKeys(ops) => out.extend(
                ops.iter()
                    .map(|(k, op)| Input::desired(event(k.clone(), op))),
            ),
            Effect::WriteIndexes(ops) => out.extend(ops.iter().map(|(d, op)| {
                Input::desired(event(harmony_fleet_contracts::notice::index_key(d), op))
            })),
            _ => {}
        }
    }
    out
}

#[test]
fn a_standby_writes_nothing_and_takes_over_without_rewriting_what_the_leader_wrote() {
    let web = || deployment("default", "web", "plant-1", "nginx:1", 0);
    let (mut leader, mut standby) = (Harness::new(), Harness::standby());
    for h in [&mut leader, &mut standby] {
        h.feed(info("pi-1", "plant-1"));
        h.feed(info("pi-2", "plant-1"));
    }
    let written = leader.cold_start_with(vec![web()]);
    assert_eq!(writes(&written).0.len(), 2);
    let effects = standby.cold_start_with(vec![web()]);
    assert_eq!(
        effects,
        vec![Effect::Converged],
        "ready, but writes nothing"
    );
    assert!(!standby.core.is_leader());

    // The standby follows the leader's writes and its status; reports change nothing it does.
    for input in as_watched(&written) {
        assert!(standby.feed(input).is_empty());
    }
    let mut with_status = web();
    with_status.status = statuses(&written).last().map(|s| (*s).clone());
    assert!(standby.feed(apply(with_status)).is_empty());
    assert!(
        standby
            .feed(report("pi-1", "web", "nginx:1", StatePhase::Running))
            .is_empty()
    );
    leader.feed(report("pi-1", "web", "nginx:1", StatePhase::Running));

    // Elected: nothing the leader wrote is written again.
    let takeover = standby.feed(Input::Elected);
    assert!(standby.core.is_leader());
    assert_eq!(writes(&takeover), (vec![], vec![]), "{takeover:?}");
    assert!(
        !takeover
            .iter()
            .any(|e| matches!(e, Effect::WriteIndexes(_)))
    );
    // And it writes from now on: a new device gets its key.
    let effects = standby.feed(info("pi-3", "plant-1"));
    assert_eq!(
        writes(&effects).0,
        vec![keys::desired_key(&id("pi-3"), &name("web"))]
    );
}

//! Unit tests of the fleet state.
use super::*;
use pretty_assertions::assert_eq;

type Fleet = FleetState<String, String, u32>;

fn report(rev: u32, outcome: Outcome, error: Option<&str>, secs: i64) -> Option<Report<u32>> {
    Some(Report {
        rev,
        outcome,
        error: error.map(str::to_owned),
        at: Timestamp::from_second(secs).ok(),
    })
}

fn k(s: &str) -> String {
    s.to_owned()
}

#[test]
fn reports_without_a_key_are_listed_as_unassigned() {
    let mut f: FleetState<&str, &str, &str> = FleetState::new();
    let report = |rev| Report {
        rev,
        outcome: Outcome::Succeeded,
        error: None,
        at: None,
    };
    f.set_assigned(&"web", &"d1", Some("r1"));
    f.set_report(&"web", &"d1", Some(report("r1")));
    f.set_report(&"made-up", &"d1", Some(report("r1")));
    let stray: Vec<_> = f.unassigned_reports().collect();
    assert_eq!(stray, vec![(&"made-up", &"d1")]);
}

#[test]
fn offline_devices_are_counted_beside_their_last_report() {
    let mut f = Fleet::new();
    let (web, db) = (k("web"), k("db"));
    for d in ["a", "b"] {
        f.set_matched(&web, &k(d), true);
        f.set_assigned(&web, &k(d), Some(1));
        f.set_report(&web, &k(d), report(1, Outcome::Succeeded, None, 1));
    }
    f.take_dirty();
    f.set_offline(&k("a"), true, [&web, &db]);
    let counts = f.counts(&web);
    assert_eq!((counts.succeeded, counts.offline), (2, 1));
    assert_eq!(f.counts(&db), Counts::default(), "db does not match a");
    assert_eq!(f.take_dirty(), vec![web.clone()]);
    // Repeating the same liveness changes nothing.
    f.set_offline(&k("a"), true, [&web]);
    assert!(f.take_dirty().is_empty());
    // Matching an offline device counts it; unmatching uncounts it.
    f.set_matched(&db, &k("a"), true);
    assert_eq!(f.counts(&db).offline, 1);
    f.set_matched(&web, &k("a"), false);
    assert_eq!(f.counts(&web).offline, 0);
    f.set_offline(&k("a"), false, [&db]);
    assert_eq!(f.counts(&db).offline, 0);
    assert!(!f.is_offline(&k("a")));
}

#[test]
fn counts_follow_matches_assignments_and_reports() {
    let mut f = Fleet::new();
    let web = k("web");
    for d in ["a", "b", "c"] {
        f.set_matched(&web, &k(d), true);
        f.set_assigned(&web, &k(d), Some(2));
    }
    assert_eq!(
        f.counts(&web),
        Counts {
            matched: 3,
            succeeded: 0,
            failed: 0,
            offline: 0
        }
    );
    f.set_report(&web, &k("a"), report(2, Outcome::Succeeded, None, 1));
    f.set_report(&web, &k("b"), report(2, Outcome::Failed, Some("pull"), 2));
    f.set_report(&web, &k("c"), report(1, Outcome::Succeeded, None, 3));
    let c = f.counts(&web);
    assert_eq!(
        (c.matched, c.succeeded, c.failed, c.pending()),
        (3, 1, 1, 1)
    );
    // A report for an older revision counts as pending, not succeeded.
    f.set_assigned(&web, &k("a"), Some(3));
    assert_eq!(f.counts(&web).succeeded, 0);
    f.set_matched(&web, &k("b"), false);
    assert_eq!(f.counts(&web).failed, 0);
    assert_eq!(f.counts(&web).matched, 2);
}

#[test]
fn reports_before_the_deployment_is_known_are_kept() {
    let mut f = Fleet::new();
    let web = k("web");
    f.set_report(&web, &k("a"), report(7, Outcome::Succeeded, None, 1));
    assert_eq!(f.counts(&web), Counts::default());
    f.set_matched(&web, &k("a"), true);
    f.set_assigned(&web, &k("a"), Some(7));
    assert_eq!(f.counts(&web).succeeded, 1);
}

#[test]
fn failing_list_is_capped_and_last_error_is_the_latest() {
    let mut f = Fleet::new();
    let web = k("web");
    for i in 0..25 {
        let d = format!("d{i:02}");
        f.set_matched(&web, &d, true);
        f.set_assigned(&web, &d, Some(1));
        f.set_report(
            &web,
            &d,
            report(1, Outcome::Failed, Some(&format!("e{i}")), 100 - i),
        );
    }
    let (first, latest) = f.failing(&web, 10);
    assert_eq!(first.len(), 10);
    assert_eq!(first[0].device, "d00");
    let latest = latest.expect("a latest error");
    assert_eq!(
        (latest.device.as_str(), latest.error.as_str()),
        ("d00", "e0")
    );
    assert_eq!(f.counts(&web).failed, 25);
}

#[test]
fn dirty_set_only_holds_changed_deployments() {
    let mut f = Fleet::new();
    f.set_matched(&k("web"), &k("a"), true);
    assert_eq!(f.take_dirty(), vec![k("web")]);
    f.set_matched(&k("web"), &k("a"), true);
    assert!(f.take_dirty().is_empty());
    f.set_report(&k("web"), &k("a"), report(1, Outcome::InProgress, None, 1));
    assert!(
        f.take_dirty().is_empty(),
        "no assignment yet: still pending"
    );
}

#[test]
fn error_change_of_a_failed_device_marks_dirty() {
    let mut f = Fleet::new();
    let web = k("web");
    f.set_matched(&web, &k("a"), true);
    f.set_assigned(&web, &k("a"), Some(1));
    f.set_report(&web, &k("a"), report(1, Outcome::Failed, Some("x"), 1));
    f.take_dirty();
    f.set_report(&web, &k("a"), report(1, Outcome::Failed, Some("y"), 2));
    assert_eq!(f.take_dirty(), vec![web]);
}

#[test]
fn last_good_survives_a_later_failure() {
    let mut f = Fleet::new();
    let web = k("web");
    f.set_report(&web, &k("a"), report(1, Outcome::Succeeded, None, 1));
    f.set_report(&web, &k("a"), report(2, Outcome::Failed, Some("boom"), 2));
    assert_eq!(f.last_good(&web, &k("a")), Some(&1));
}

#[test]
fn revisions_are_held_once_and_forgotten_with_their_last_pair() {
    let mut f = Fleet::new();
    let web = k("web");
    let devices = ["a", "b", "c"].map(k);
    for d in &devices {
        f.set_matched(&web, d, true);
        f.set_assigned(&web, d, Some(1));
        f.set_report(&web, d, report(1, Outcome::Succeeded, None, 1));
    }
    assert_eq!(f.revisions_in_use(), 1);
    for d in &devices {
        f.set_assigned(&web, d, Some(2));
    }
    assert_eq!(f.revisions_in_use(), 2, "1 is still reported");
    assert_eq!(f.counts(&web).succeeded, 0);
    for d in &devices {
        f.set_report(&web, d, report(2, Outcome::Failed, Some("boom"), 2));
    }
    assert_eq!(f.revisions_in_use(), 2, "1 is still the last good one");
    assert_eq!(f.last_good(&web, &devices[0]), Some(&1));
    assert_eq!(f.reported(&web, &devices[0]), Some((&2, Outcome::Failed)));
    for d in &devices {
        f.set_report(&web, d, report(2, Outcome::Succeeded, None, 3));
    }
    assert_eq!(f.revisions_in_use(), 1);
    assert_eq!(f.failing(&web, 10).0, Vec::new());
    assert!(
        f.deployments[&web].details.is_empty(),
        "no error kept for a succeeded report"
    );
    for d in &devices {
        f.set_matched(&web, d, false);
        f.set_assigned(&web, d, None);
        f.set_report(&web, d, None);
    }
    assert_eq!(f.revisions_in_use(), 0);
    assert!(f.deployments.is_empty(), "nothing is left of web");
    // Slots are reused.
    f.set_assigned(&web, &devices[0], Some(3));
    assert_eq!(f.revisions.slot_count(), 2);
}

#[test]
fn a_pair_is_sixteen_bytes() {
    assert_eq!(size_of::<Entry>(), 16);
}

#[test]
fn empty_entries_are_forgotten() {
    let mut f = Fleet::new();
    let web = k("web");
    f.set_assigned(&web, &k("a"), Some(1));
    f.set_assigned(&web, &k("a"), None);
    assert_eq!(f.assigned_pairs().count(), 0);
    assert!(f.deployments.is_empty(), "nothing is left of web");
}

#[test]
fn reports_lists_each_report_with_the_detail_of_failed_ones_and_counts_them() {
    let mut f = Fleet::new();
    let (web, db) = (k("web"), k("db"));
    f.set_assigned(&web, &k("a"), Some(1));
    f.set_report(&web, &k("a"), report(1, Outcome::Succeeded, None, 10));
    f.set_report(&web, &k("b"), report(2, Outcome::Failed, Some("pull"), 20));
    f.set_report(&db, &k("a"), report(3, Outcome::InProgress, None, 30));
    f.set_report(&db, &k("c"), report(3, Outcome::InProgress, None, 30));
    f.set_report(&db, &k("c"), None);
    assert_eq!(f.reported_count(), 3);
    let mut listed: Vec<_> = f
        .reports()
        .map(|(k, d, r)| (k.clone(), d.clone(), *r.rev, r.outcome, r.error, r.at))
        .collect();
    listed.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    let at = |secs| Timestamp::from_second(secs).ok();
    assert_eq!(
        listed,
        vec![
            (db.clone(), k("a"), 3, Outcome::InProgress, None, None),
            (web.clone(), k("a"), 1, Outcome::Succeeded, None, None),
            (
                web.clone(),
                k("b"),
                2,
                Outcome::Failed,
                Some("pull".into()),
                at(20)
            ),
        ]
    );
}

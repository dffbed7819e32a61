use super::*;
use pretty_assertions::assert_eq;

type Index = TargetIndex<String, String>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

fn eq(pairs: &[(&str, &str)]) -> Selector {
    Selector {
        match_labels: labels(pairs),
        match_expressions: Vec::new(),
    }
}

fn expr(key: &str, operator: Operator, values: &[&str]) -> Selector {
    Selector {
        match_labels: BTreeMap::new(),
        match_expressions: vec![Requirement {
            key: key.to_owned(),
            operator,
            values: values.iter().map(|v| (*v).to_owned()).collect(),
        }],
    }
}

fn matched(device: &str, deployment: &str) -> Change<String, String> {
    Change::Matched {
        device: device.into(),
        deployment: deployment.into(),
    }
}

fn unmatched(device: &str, deployment: &str) -> Change<String, String> {
    Change::Unmatched {
        device: device.into(),
        deployment: deployment.into(),
    }
}

fn sorted(mut v: Vec<Change<String, String>>) -> Vec<Change<String, String>> {
    v.sort();
    v
}

#[test]
fn selector_semantics_follow_kubernetes() {
    let l = labels(&[("site", "plant-3"), ("arch", "arm64")]);
    assert!(Selector::default().matches(&l));
    assert!(eq(&[("site", "plant-3")]).matches(&l));
    assert!(!eq(&[("site", "plant-3"), ("arch", "x86")]).matches(&l));
    assert!(expr("site", Operator::In, &["plant-1", "plant-3"]).matches(&l));
    assert!(!expr("site", Operator::NotIn, &["plant-3"]).matches(&l));
    assert!(expr("ring", Operator::NotIn, &["canary"]).matches(&l));
    assert!(expr("arch", Operator::Exists, &[]).matches(&l));
    assert!(!expr("arch", Operator::DoesNotExist, &[]).matches(&l));
    assert!(expr("ring", Operator::DoesNotExist, &[]).matches(&l));
}

#[test]
fn new_deployment_matches_exactly_the_labelled_devices() {
    let mut ix = Index::new();
    ix.upsert_device("a".into(), labels(&[("site", "p3")]));
    ix.upsert_device("b".into(), labels(&[("site", "p4")]));
    ix.upsert_device("c".into(), labels(&[("site", "p3"), ("ring", "canary")]));
    let changes = ix.upsert_deployment("web".into(), eq(&[("site", "p3")]));
    assert_eq!(
        sorted(changes),
        vec![matched("a", "web"), matched("c", "web")]
    );
    assert_eq!(ix.matched(&"web".to_owned()).count(), 2);
}

#[test]
fn relabelled_device_moves_between_deployments() {
    let mut ix = Index::new();
    ix.upsert_deployment("p3".into(), eq(&[("site", "p3")]));
    ix.upsert_deployment("p4".into(), eq(&[("site", "p4")]));
    assert_eq!(
        ix.upsert_device("a".into(), labels(&[("site", "p3")])),
        vec![matched("a", "p3")]
    );
    assert_eq!(
        sorted(ix.upsert_device("a".into(), labels(&[("site", "p4")]))),
        vec![matched("a", "p4"), unmatched("a", "p3")]
    );
    assert!(ix.is_matched(&"p4".to_owned(), &"a".to_owned()));
    assert!(!ix.is_matched(&"p3".to_owned(), &"a".to_owned()));
}

#[test]
fn unchanged_labels_produce_no_changes() {
    let mut ix = Index::new();
    ix.upsert_deployment("web".into(), eq(&[("site", "p3")]));
    ix.upsert_device("a".into(), labels(&[("site", "p3")]));
    assert!(
        ix.upsert_device("a".into(), labels(&[("site", "p3")]))
            .is_empty()
    );
    assert!(
        ix.upsert_deployment("web".into(), eq(&[("site", "p3")]))
            .is_empty()
    );
}

#[test]
fn removed_device_and_deployment_release_their_pairs() {
    let mut ix = Index::new();
    ix.upsert_deployment("web".into(), Selector::default());
    ix.upsert_device("a".into(), labels(&[]));
    ix.upsert_device("b".into(), labels(&[("x", "y")]));
    assert_eq!(
        ix.remove_device(&"a".to_owned()),
        vec![unmatched("a", "web")]
    );
    assert_eq!(
        ix.remove_deployment(&"web".to_owned()),
        vec![unmatched("b", "web")]
    );
    assert!(ix.remove_deployment(&"web".to_owned()).is_empty());
    assert_eq!(ix.deployments_of(&"b".to_owned()).count(), 0);
}

#[test]
fn selector_change_reports_only_the_difference() {
    let mut ix = Index::new();
    for (d, site) in [("a", "p1"), ("b", "p2"), ("c", "p3")] {
        ix.upsert_device(d.into(), labels(&[("site", site)]));
    }
    ix.upsert_deployment("web".into(), expr("site", Operator::In, &["p1", "p2"]));
    let changes = ix.upsert_deployment("web".into(), expr("site", Operator::In, &["p2", "p3"]));
    assert_eq!(
        sorted(changes),
        vec![matched("c", "web"), unmatched("a", "web")]
    );
}

#[test]
fn anchored_selectors_still_see_devices_added_later() {
    let mut ix = Index::new();
    ix.upsert_deployment("exists".into(), expr("gpu", Operator::Exists, &[]));
    ix.upsert_deployment("notin".into(), expr("ring", Operator::NotIn, &["canary"]));
    ix.upsert_deployment(
        "mixed".into(),
        Selector {
            match_labels: labels(&[("site", "p3")]),
            match_expressions: vec![Requirement {
                key: "ring".into(),
                operator: Operator::DoesNotExist,
                values: BTreeSet::new(),
            }],
        },
    );
    let changes = ix.upsert_device("a".into(), labels(&[("gpu", "yes"), ("site", "p3")]));
    assert_eq!(
        sorted(changes),
        vec![
            matched("a", "exists"),
            matched("a", "mixed"),
            matched("a", "notin")
        ]
    );
    let changes = ix.upsert_device(
        "a".into(),
        labels(&[("gpu", "yes"), ("site", "p3"), ("ring", "canary")]),
    );
    assert_eq!(
        sorted(changes),
        vec![unmatched("a", "mixed"), unmatched("a", "notin")]
    );
}

/// Cross-checks the incremental index against brute force over a pseudo-random sequence
/// of device and deployment updates.
#[test]
fn incremental_index_agrees_with_brute_force() {
    let sites = ["p1", "p2", "p3"];
    let rings = ["canary", "stable"];
    let selectors = [
        eq(&[("site", "p1")]),
        expr("site", Operator::In, &["p2", "p3"]),
        expr("ring", Operator::Exists, &[]),
        expr("ring", Operator::NotIn, &["canary"]),
        Selector::default(),
        expr("site", Operator::DoesNotExist, &[]),
    ];
    let mut ix = Index::new();
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    for _ in 0..2000 {
        let r = next();
        match r % 4 {
            0 | 1 => {
                let mut l = Labels::new();
                if next() % 3 != 0 {
                    l.insert("site".into(), sites[(next() % 3) as usize].into());
                }
                if next() % 2 == 0 {
                    l.insert("ring".into(), rings[(next() % 2) as usize].into());
                }
                ix.upsert_device(format!("d{}", next() % 20), l);
            }
            2 => {
                let s = selectors[(next() % selectors.len() as u64) as usize].clone();
                ix.upsert_deployment(format!("k{}", next() % 5), s);
            }
            _ => {
                if next() % 2 == 0 {
                    ix.remove_device(&format!("d{}", next() % 20));
                } else {
                    ix.remove_deployment(&format!("k{}", next() % 5));
                }
            }
        }
        for (k, (sel, _)) in &ix.selectors {
            let brute: BTreeSet<&String> = ix
                .devices
                .iter()
                .filter(|(_, l)| sel.matches(&***l))
                .map(|(d, _)| d)
                .collect();
            let indexed: BTreeSet<&String> = ix.matched(k).collect();
            assert_eq!(indexed, brute, "deployment {k}");
        }
    }
}

const ID: &str = "fleet.nationtech.io/device";

#[test]
fn the_identity_label_is_matched_like_any_label_without_being_stored() {
    let mut ix = Index::with_identity_label(ID);
    for d in ["pi-1", "pi-2", "pi-3"] {
        // What the operator passes: the reported labels plus the identity label.
        assert!(
            ix.upsert_device(d.into(), labels(&[("site", "a"), (ID, d)]))
                .is_empty()
        );
    }
    assert_eq!(ix.label_set_count(), 1, "equal labels are held once");
    assert_eq!(
        ix.labels(&"pi-2".to_owned()).map(|l| l.to_labels()),
        Some(labels(&[("site", "a"), (ID, "pi-2")]))
    );

    // Anchored on the identity pair: exactly that device.
    assert_eq!(
        ix.upsert_deployment("one".into(), eq(&[(ID, "pi-2")])),
        vec![matched("pi-2", "one")]
    );
    // `In` over ids, `Exists` on the key (every device), `NotIn` (all but one).
    assert_eq!(
        sorted(ix.upsert_deployment("two".into(), expr(ID, Operator::In, &["pi-1", "pi-3", "x"]))),
        vec![matched("pi-1", "two"), matched("pi-3", "two")]
    );
    assert_eq!(
        ix.upsert_deployment("all".into(), expr(ID, Operator::Exists, &[]))
            .len(),
        3
    );
    assert_eq!(
        sorted(ix.upsert_deployment("not-3".into(), expr(ID, Operator::NotIn, &["pi-3"]))),
        vec![matched("pi-1", "not-3"), matched("pi-2", "not-3")]
    );
    // A device added later is found through the identity anchors too.
    assert_eq!(
        sorted(ix.upsert_device("x".into(), labels(&[("site", "b"), (ID, "x")]))),
        vec![
            matched("x", "all"),
            matched("x", "not-3"),
            matched("x", "two")
        ]
    );
    assert_eq!(ix.label_set_count(), 2);
    // Relabelling and removal release the shared sets.
    ix.upsert_device("x".into(), labels(&[("site", "a"), (ID, "x")]));
    assert_eq!(ix.label_set_count(), 1);
    for d in ["pi-1", "pi-2", "pi-3", "x"] {
        ix.remove_device(&d.to_owned());
    }
    assert_eq!(ix.label_set_count(), 0);
}

#[test]
fn another_value_under_the_identity_key_is_an_ordinary_label() {
    let mut ix = Index::with_identity_label(ID);
    ix.upsert_device("pi-1".into(), labels(&[(ID, "someone-else")]));
    assert_eq!(
        ix.upsert_deployment("d".into(), eq(&[(ID, "someone-else")])),
        vec![matched("pi-1", "d")]
    );
    assert!(
        ix.upsert_deployment("e".into(), eq(&[(ID, "pi-1")]))
            .is_empty()
    );
}

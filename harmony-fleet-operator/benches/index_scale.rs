//! Scale bench of the pure targeting index (no servers): seeds N devices and M deployments,
//! then times the per-event operations the reconcile loop performs. Shows that a device event
//! costs the same with 100 or 10 000 deployments (no O(deployments × devices) path).
//!
//! `cargo bench -p harmony-fleet-operator --bench index_scale -- 100000 10000`

use std::collections::BTreeMap;
use std::time::Instant;

use harmony_fleet_operator::index::{Labels, Selector, TargetIndex};

fn labels(i: usize, sites: usize) -> Labels {
    let mut l = BTreeMap::new();
    l.insert("site".to_owned(), format!("plant-{}", i % sites));
    l.insert(
        "ring".to_owned(),
        if i.is_multiple_of(10) {
            "canary"
        } else {
            "stable"
        }
        .to_owned(),
    );
    l.insert(
        "arch".to_owned(),
        if i.is_multiple_of(2) {
            "arm64"
        } else {
            "amd64"
        }
        .to_owned(),
    );
    l
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let devices = args.first().copied().unwrap_or(100_000);
    let deployments = args.get(1).copied().unwrap_or(1_000);
    let sites = deployments.max(1);

    let mut index: TargetIndex<String, u32> = TargetIndex::new();
    let t = Instant::now();
    for i in 0..devices {
        index.upsert_device(format!("dev-{i}"), labels(i, sites));
    }
    println!("seed {devices} devices: {:?}", t.elapsed());

    let t = Instant::now();
    let mut pairs = 0usize;
    for k in 0..deployments {
        let mut s = Selector::default();
        s.match_labels.insert("site".into(), format!("plant-{k}"));
        pairs += index.upsert_deployment(k as u32, s).len();
    }
    println!(
        "add {deployments} deployments (one site each, {pairs} pairs): {:?} ({:?}/deployment)",
        t.elapsed(),
        t.elapsed() / deployments.max(1) as u32
    );

    let n = 10_000.min(devices);
    let t = Instant::now();
    let mut changes = 0usize;
    for i in 0..n {
        changes += index
            .upsert_device(format!("dev-{i}"), labels(i + 1, sites))
            .len();
    }
    println!(
        "relabel {n} devices ({changes} pair changes): {:?} ({:?}/event)",
        t.elapsed(),
        t.elapsed() / n as u32
    );

    let t = Instant::now();
    let mut s = Selector::default();
    s.match_labels.insert("ring".into(), "canary".into());
    let matched = index.upsert_deployment(u32::MAX, s).len();
    println!(
        "add a canary deployment matching {matched} devices: {:?}",
        t.elapsed()
    );
}

//! Which labels target a device. Pure: no I/O.
//!
//! A device reports labels in its `device-info`; the `Device` resource also carries labels
//! people set (`kubectl label fleetdev pi-1 site=plant-3`). Targeting uses:
//! 1. the reported labels, **minus** keys under a protected prefix
//!    ([`harmony_fleet_contracts::device::PROTECTED_LABEL_PREFIXES`]), which a device may not
//!    claim — they are ignored, and the `Device` says so in a condition;
//! 2. overlaid by every label on the `Device` that a field manager other than the operator
//!    owns (from `metadata.managedFields`): a label set by a person wins over a reported
//!    one, and the operator never removes or overwrites it;
//! 3. plus `fleet.nationtech.io/device=<id>` ([`DEVICE_ID_LABEL`]), which comes from the
//!    device's identity, not from what it says.
//!
//! The operator applies (server-side) only the reported labels that no one else owns, so its
//! writes never take a person's label back.

use std::collections::BTreeMap;

use harmony_fleet_contracts::DeviceId;
use harmony_fleet_contracts::device::{DEVICE_ID_LABEL, is_protected_label};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use crate::index::Labels;

/// Reported labels split into those accepted and the keys ignored (protected prefixes).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Reported {
    /// Labels the device may claim.
    pub accepted: Labels,
    /// Keys it claimed under a protected prefix, ignored.
    pub ignored: Vec<String>,
}

/// Splits what `device` reported. Its id label is set from its identity (reporting the same
/// value is not an error; reporting another one is ignored like any protected key).
pub fn split_reported(device: &DeviceId, reported: &Labels) -> Reported {
    let mut out = Reported::default();
    for (key, value) in reported {
        if key == DEVICE_ID_LABEL && value == device.as_str() {
            continue;
        }
        if is_protected_label(key) {
            out.ignored.push(key.clone());
        } else {
            out.accepted.insert(key.clone(), value.clone());
        }
    }
    out.accepted
        .insert(DEVICE_ID_LABEL.to_owned(), device.to_string());
    out
}

/// The labels of `meta` owned by a field manager other than `operator` (the operator's own
/// server-side apply); a label owned by both counts as set by someone else.
pub fn set_by_others(meta: &ObjectMeta, operator: &str) -> Labels {
    let Some(labels) = meta.labels.as_ref() else {
        return Labels::new();
    };
    let mut out = BTreeMap::new();
    for entry in meta.managed_fields.iter().flatten() {
        if entry.manager.as_deref() == Some(operator) || entry.subresource.is_some() {
            continue;
        }
        let Some(fields) = entry.fields_v1.as_ref() else {
            continue;
        };
        let Some(owned) = fields.0.get("f:metadata").and_then(|m| m.get("f:labels")) else {
            continue;
        };
        let Some(owned) = owned.as_object() else {
            continue;
        };
        for key in owned.keys().filter_map(|k| k.strip_prefix("f:")) {
            if let Some(value) = labels.get(key) {
                out.insert(key.to_owned(), value.clone());
            }
        }
    }
    out
}

/// The labels that target the device: accepted reported labels, overlaid by labels set by
/// others.
pub fn effective(accepted: &Labels, others: Option<&Labels>) -> Labels {
    let mut out = accepted.clone();
    if let Some(others) = others {
        out.extend(others.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    out
}

/// The labels the operator applies on the `Device`: accepted reported labels whose keys no
/// one else owns.
pub fn to_apply(accepted: &Labels, others: Option<&Labels>) -> Labels {
    accepted
        .iter()
        .filter(|(k, _)| others.is_none_or(|o| !o.contains_key(*k)))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

#[cfg(test)]
mod tests {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::{FieldsV1, ManagedFieldsEntry};
    use serde_json::json;

    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    fn entry(manager: &str, keys: &[&str]) -> ManagedFieldsEntry {
        let owned: serde_json::Map<String, serde_json::Value> =
            keys.iter().map(|k| (format!("f:{k}"), json!({}))).collect();
        ManagedFieldsEntry {
            manager: Some(manager.to_owned()),
            operation: Some("Update".to_owned()),
            fields_type: Some("FieldsV1".to_owned()),
            fields_v1: Some(FieldsV1(json!({"f:metadata": {"f:labels": owned}}))),
            ..Default::default()
        }
    }

    #[test]
    fn protected_reported_labels_are_ignored_and_named() {
        let pi1: DeviceId = "pi-1".parse().expect("id");
        let r = split_reported(
            &pi1,
            &labels(&[
                ("site", "plant-3"),
                ("fleet.nationtech.io/zone", "vault"),
                ("node.kubernetes.io/role", "x"),
            ]),
        );
        assert_eq!(
            r.accepted,
            labels(&[("site", "plant-3"), ("fleet.nationtech.io/device", "pi-1")])
        );
        assert_eq!(
            r.ignored,
            ["fleet.nationtech.io/zone", "node.kubernetes.io/role"]
        );
        // The id label comes from the identity: the right one is fine, another is ignored.
        let r = split_reported(&pi1, &labels(&[("fleet.nationtech.io/device", "pi-1")]));
        assert!(r.ignored.is_empty());
        let r = split_reported(&pi1, &labels(&[("fleet.nationtech.io/device", "pi-2")]));
        assert_eq!(r.ignored, ["fleet.nationtech.io/device"]);
        assert_eq!(r.accepted["fleet.nationtech.io/device"], "pi-1");
    }

    #[test]
    fn labels_set_by_people_are_read_from_managed_fields() {
        let meta = ObjectMeta {
            labels: Some(labels(&[
                ("site", "plant-3"),
                ("ring", "canary"),
                ("fleet.nationtech.io/zone", "cold"),
            ])),
            managed_fields: Some(vec![
                entry("harmony-fleet-operator", &["site", "ring"]),
                entry("kubectl-label", &["ring", "fleet.nationtech.io/zone"]),
            ]),
            ..Default::default()
        };
        assert_eq!(
            set_by_others(&meta, "harmony-fleet-operator"),
            labels(&[("ring", "canary"), ("fleet.nationtech.io/zone", "cold")])
        );
        assert!(set_by_others(&ObjectMeta::default(), "op").is_empty());
    }

    #[test]
    fn a_persons_label_wins_and_is_never_applied_by_the_operator() {
        let accepted = labels(&[("site", "lab"), ("ring", "stable")]);
        let others = labels(&[("site", "plant-3"), ("fleet.nationtech.io/zone", "cold")]);
        assert_eq!(
            effective(&accepted, Some(&others)),
            labels(&[
                ("site", "plant-3"),
                ("ring", "stable"),
                ("fleet.nationtech.io/zone", "cold")
            ])
        );
        assert_eq!(
            to_apply(&accepted, Some(&others)),
            labels(&[("ring", "stable")])
        );
        assert_eq!(effective(&accepted, None), accepted);
        assert_eq!(to_apply(&accepted, None), accepted);
    }
}

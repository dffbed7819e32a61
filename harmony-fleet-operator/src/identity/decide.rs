//! What to do with an enrollment or renewal request, and which credentials to revoke: pure
//! functions of the `Device` as kubectl shows it, tested without servers.

use std::collections::BTreeMap;
use std::time::Duration;

use harmony_fleet_contracts::identity::{EnrollRequest, IdentityError};

/// What the identity service knows of one `Device`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DeviceRecord {
    /// `spec.publicKey`: the key an admin approved.
    pub approved_key: Option<String>,
    /// `status.enrollment.requestedKey`: the key of the pending request.
    pub requested_key: Option<String>,
    /// `status.enrollment.issuedKey` / `issuedAt`: the last credential issued.
    pub issued: Option<(String, i64)>,
    /// Blacklisted by annotation.
    pub blacklisted: bool,
    /// Being deleted (`deletionTimestamp` set).
    pub deleting: bool,
}

/// The answer to a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// Sign a credential for `key` and reply with it.
    Issue {
        /// The approved key.
        key: String,
    },
    /// New request: record `key` as pending on the `Device` (creating it if needed), then
    /// hold the request until an admin approves or the hold times out.
    RecordPending {
        /// The requested key.
        key: String,
    },
    /// Already pending with this key: hold the request.
    Hold,
    /// Refuse with `reason`; `report`: also record it on the `Device`
    /// (`status.enrollment.lastRefusal`), because an admin should see it.
    Refuse {
        /// Why, naming the field and the fix.
        reason: String,
        /// Worth showing on the `Device`.
        report: bool,
        /// Because the device is blacklisted (the reply tells the agent to stop its
        /// workloads).
        blacklisted: bool,
    },
}

fn refuse(reason: impl Into<String>, report: bool) -> Decision {
    Decision::Refuse {
        reason: reason.into(),
        report,
        blacklisted: false,
    }
}

fn refuse_blacklisted(reason: impl Into<String>, report: bool) -> Decision {
    Decision::Refuse {
        reason: reason.into(),
        report,
        blacklisted: true,
    }
}

/// Decides on an [`EnrollRequest`] that arrived at `now` (seconds since the epoch) for a
/// device whose `Device` is `record` (`None`: no `Device` yet).
pub fn enroll(request: &EnrollRequest, record: Option<&DeviceRecord>, now: i64) -> Decision {
    if let Err(e) = request.verify(now) {
        // Forged or malformed: nothing is written for it (anyone holding the bootstrap
        // identity could send it).
        return refuse(e.to_string(), matches!(e, IdentityError::ClockSkew { .. }));
    }
    let key = &request.public_key;
    let device = &request.device_id;
    let Some(record) = record else {
        return Decision::RecordPending { key: key.clone() };
    };
    if record.deleting {
        return refuse(
            format!("Device {device} is being deleted; enroll again once it is gone"),
            false,
        );
    }
    if record.blacklisted {
        return refuse_blacklisted(
            format!(
                "Device {device} is blacklisted: remove its annotation fleet.nationtech.io/blacklisted to let it enroll"
            ),
            true,
        );
    }
    match (&record.approved_key, &record.requested_key) {
        (Some(approved), _) if approved == key => Decision::Issue { key: key.clone() },
        (Some(approved), _) => refuse(
            format!(
                "Device {device} is enrolled with another key ({approved}); a request with key {key} was refused. \
                 If the device was re-installed, approve the new key: set spec.publicKey to {key}"
            ),
            true,
        ),
        (None, Some(requested)) if requested == key => Decision::Hold,
        (None, Some(requested)) => refuse(
            format!(
                "Device {device} already has a pending request with key {requested}; a request with key {key} was refused. \
                 Approve one of them by setting spec.publicKey"
            ),
            true,
        ),
        (None, None) => Decision::RecordPending { key: key.clone() },
    }
}

/// Decides on a renewal by the holder of `key` (the subject proved the device id).
pub fn renew(device: &str, key: &str, record: Option<&DeviceRecord>) -> Decision {
    let Some(record) = record else {
        return refuse(
            format!("Device {device} does not exist: it was deleted; enroll again"),
            false,
        );
    };
    if record.blacklisted {
        return refuse_blacklisted(
            format!("Device {device} is blacklisted: no credential is renewed"),
            false,
        );
    }
    if record.deleting {
        return refuse(
            format!("Device {device} is being deleted: no credential is renewed"),
            false,
        );
    }
    match &record.approved_key {
        Some(approved) if approved == key => Decision::Issue {
            key: key.to_owned(),
        },
        Some(approved) => refuse(
            format!(
                "Device {device} was re-keyed to {approved}: the credential of {key} is not renewed"
            ),
            true,
        ),
        None => refuse(
            format!("Device {device} has no approved key (spec.publicKey): enroll again"),
            true,
        ),
    }
}

/// The issued credentials that must not connect: those of blacklisted or deleted devices, and
/// those issued for a key that is no longer the approved one. Each with its issue time.
pub fn to_revoke<'a>(records: impl IntoIterator<Item = &'a DeviceRecord>) -> Vec<(String, i64)> {
    records
        .into_iter()
        .filter_map(|r| {
            let (key, issued_at) = r.issued.as_ref()?;
            let revoke =
                r.blacklisted || r.deleting || r.approved_key.as_deref() != Some(key.as_str());
            revoke.then(|| (key.clone(), *issued_at))
        })
        .collect()
}

/// The fleet account's revocations after revoking `needed` at `now`, with entries older than
/// `lifetime` dropped (every credential issued before them has expired); `None` when nothing
/// changes.
///
/// An entry revokes every credential of its key issued at or before its time, so an existing
/// entry covers a credential only if it is not older than that credential's issue time.
pub fn revocations(
    current: &BTreeMap<String, i64>,
    needed: &[(String, i64)],
    now: i64,
    lifetime: Duration,
) -> Option<BTreeMap<String, i64>> {
    let horizon = now.saturating_sub(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX));
    let mut next: BTreeMap<String, i64> = current
        .iter()
        .filter(|(_, at)| **at >= horizon)
        .map(|(k, at)| (k.clone(), *at))
        .collect();
    for (key, issued_at) in needed {
        let covered = next.get(key).is_some_and(|at| at >= issued_at);
        if !covered {
            next.insert(key.clone(), now.max(*issued_at));
        }
    }
    (&next != current).then_some(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmony_fleet_contracts::device::Inventory;
    use nkeys::KeyPair;

    const NOW: i64 = 1_800_000_000;

    fn request(key: &KeyPair) -> EnrollRequest {
        let inventory = Inventory {
            hostname: "pi".into(),
            arch: "aarch64".into(),
            os: "linux".into(),
            os_release: None,
            kernel_version: None,
            cpu_count: 4,
            memory_bytes: 1,
        };
        EnrollRequest::signed("pi-1".parse().expect("id"), key, inventory, NOW).expect("sign")
    }

    #[test]
    fn a_first_request_is_recorded_then_held_then_issued_once_approved() {
        let key = KeyPair::new_user();
        let pk = key.public_key();
        let req = request(&key);
        assert_eq!(
            enroll(&req, None, NOW),
            Decision::RecordPending { key: pk.clone() }
        );
        let pending = DeviceRecord {
            requested_key: Some(pk.clone()),
            ..DeviceRecord::default()
        };
        assert_eq!(enroll(&req, Some(&pending), NOW), Decision::Hold);
        let approved = DeviceRecord {
            approved_key: Some(pk.clone()),
            ..pending
        };
        assert_eq!(
            enroll(&req, Some(&approved), NOW),
            Decision::Issue { key: pk }
        );
    }

    #[test]
    fn the_same_id_with_another_key_is_refused_and_reported() {
        let first = KeyPair::new_user();
        let second = KeyPair::new_user();
        let enrolled = DeviceRecord {
            approved_key: Some(first.public_key()),
            ..DeviceRecord::default()
        };
        let Decision::Refuse { reason, report, .. } =
            enroll(&request(&second), Some(&enrolled), NOW)
        else {
            panic!("not refused");
        };
        assert!(report);
        assert!(reason.contains("spec.publicKey"), "{reason}");
        assert!(reason.contains(&second.public_key()), "{reason}");

        let pending = DeviceRecord {
            requested_key: Some(first.public_key()),
            ..DeviceRecord::default()
        };
        assert!(matches!(
            enroll(&request(&second), Some(&pending), NOW),
            Decision::Refuse { report: true, .. }
        ));
    }

    #[test]
    fn forged_requests_are_refused_without_writing_anything() {
        let key = KeyPair::new_user();
        let mut forged = request(&key);
        forged.public_key = KeyPair::new_user().public_key();
        assert!(matches!(
            enroll(&forged, None, NOW),
            Decision::Refuse { report: false, .. }
        ));
    }

    #[test]
    fn blacklisted_and_deleted_devices_get_nothing() {
        let key = KeyPair::new_user();
        let pk = key.public_key();
        let blacklisted = DeviceRecord {
            approved_key: Some(pk.clone()),
            blacklisted: true,
            ..DeviceRecord::default()
        };
        // The refusals say "blacklisted": the agent then stops its workloads.
        assert!(matches!(
            enroll(&request(&key), Some(&blacklisted), NOW),
            Decision::Refuse {
                blacklisted: true,
                ..
            }
        ));
        assert!(matches!(
            renew("pi-1", &pk, Some(&blacklisted)),
            Decision::Refuse {
                blacklisted: true,
                ..
            }
        ));
        assert!(matches!(
            renew("pi-1", &pk, None),
            Decision::Refuse {
                blacklisted: false,
                ..
            }
        ));
        let fine = DeviceRecord {
            blacklisted: false,
            ..blacklisted
        };
        assert_eq!(
            renew("pi-1", &pk, Some(&fine)),
            Decision::Issue { key: pk.clone() }
        );
        assert!(matches!(
            renew("pi-1", "UOTHER", Some(&fine)),
            Decision::Refuse { .. }
        ));
    }

    #[test]
    fn revoked_are_the_blacklisted_the_deleted_and_the_rekeyed() {
        let issued = |approved: &str, key: &str| DeviceRecord {
            approved_key: Some(approved.into()),
            issued: Some((key.into(), 10)),
            ..DeviceRecord::default()
        };
        let records = [
            issued("UA", "UA"),
            DeviceRecord {
                blacklisted: true,
                ..issued("UB", "UB")
            },
            DeviceRecord {
                deleting: true,
                ..issued("UC", "UC")
            },
            issued("UD2", "UD1"),
            DeviceRecord::default(),
        ];
        let keys: Vec<String> = to_revoke(&records).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["UB", "UC", "UD1"]);
    }

    #[test]
    fn revocations_cover_each_issue_time_and_forget_what_expired() {
        let lifetime = Duration::from_secs(100);
        let mut current = BTreeMap::new();
        current.insert("UOLD".to_owned(), NOW - 101);
        current.insert("UKEPT".to_owned(), NOW - 50);
        let next = revocations(
            &current,
            &[("UNEW".into(), NOW - 5), ("UKEPT".into(), NOW - 60)],
            NOW,
            lifetime,
        )
        .expect("changed");
        assert_eq!(next.get("UNEW"), Some(&NOW));
        assert_eq!(
            next.get("UKEPT"),
            Some(&(NOW - 50)),
            "already covers its issue"
        );
        assert!(!next.contains_key("UOLD"), "expired entries are pruned");

        // Re-issued after an old revocation (un-blacklisted, then blacklisted again): bumped.
        let bumped =
            revocations(&next, &[("UKEPT".into(), NOW - 10)], NOW, lifetime).expect("changed");
        assert_eq!(bumped.get("UKEPT"), Some(&NOW));
        assert_eq!(
            revocations(&bumped, &[("UKEPT".into(), NOW - 10)], NOW, lifetime),
            None
        );
    }
}

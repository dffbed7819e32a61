//! `harmony-fleet-deploy device list|approve`: what a platform engineer needs to let devices
//! join (adr/0016), on any cluster the kubeconfig reaches. The same as
//! `kubectl get fleetdev` and `kubectl patch fleetdev <id> --type merge -p '{"spec":{"publicKey":"U…"}}'`,
//! with the checks a person would forget.

use harmony_fleet_operator::crd::Device;
use harmony_fleet_operator::crd::device::EnrollmentPhase;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};

use crate::error::DeployError;

/// One line of `device list`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceRow {
    /// Device id.
    pub name: String,
    /// `Pending`, `Enrolled`, `Revoked` or `-`.
    pub enrollment: String,
    /// The approved key, or the requested one while pending.
    pub key: String,
    /// Online per the last heartbeat.
    pub online: bool,
    /// The last refusal, if any.
    pub last_refusal: Option<String>,
}

/// The row of `device`.
pub fn row(device: &Device) -> DeviceRow {
    let enrollment = device.status.as_ref().and_then(|s| s.enrollment.as_ref());
    DeviceRow {
        name: device.metadata.name.clone().unwrap_or_default(),
        enrollment: enrollment
            .map(|e| format!("{:?}", e.phase))
            .unwrap_or_else(|| "-".into()),
        key: device
            .spec
            .public_key
            .clone()
            .or_else(|| enrollment.and_then(|e| e.requested_key.clone()))
            .unwrap_or_else(|| "-".into()),
        online: device.status.as_ref().is_some_and(|s| s.online),
        last_refusal: enrollment.and_then(|e| e.last_refusal.clone()),
    }
}

/// Whether `device` waits for approval.
pub fn is_pending(device: &Device) -> bool {
    device
        .status
        .as_ref()
        .and_then(|s| s.enrollment.as_ref())
        .is_some_and(|e| e.phase == EnrollmentPhase::Pending && e.requested_key.is_some())
        && device.spec.public_key.is_none()
}

/// The key to approve for `device`: its pending request's, which must equal `expected` when
/// given (the key `fleet-agent identity` printed on the device).
pub fn key_to_approve(device: &Device, expected: Option<&str>) -> Result<String, DeployError> {
    let name = device.metadata.name.clone().unwrap_or_default();
    let requested = device
        .status
        .as_ref()
        .and_then(|s| s.enrollment.as_ref())
        .and_then(|e| e.requested_key.clone());
    match (requested, expected) {
        (Some(requested), Some(expected)) if requested != expected => {
            Err(DeployError::Approval {
                device: name,
                reason: format!(
                    "it asked with key {requested}, not {expected}: check `fleet-agent identity` on the device; approve the key it prints"
                ),
            })
        }
        (Some(requested), _) => Ok(requested),
        (None, Some(expected)) => {
            harmony_fleet_contracts::identity::check_user_public_key(expected).map_err(|e| {
                DeployError::Approval {
                    device: name.clone(),
                    reason: e.to_string(),
                }
            })?;
            Ok(expected.to_owned())
        }
        (None, None) => Err(DeployError::Approval {
            device: name,
            reason: "it has no pending request: start its agent first, or pre-approve with --key U… (from `fleet-agent identity`)".into(),
        }),
    }
}

/// Every `Device`, or only the pending ones.
pub async fn list(
    client: &kube::Client,
    pending_only: bool,
) -> Result<Vec<DeviceRow>, DeployError> {
    let api: Api<Device> = Api::all(client.clone());
    let devices = api
        .list(&ListParams::default())
        .await
        .map_err(|source| DeployError::Kube {
            action: "listing Devices".into(),
            source,
        })?;
    Ok(devices
        .items
        .iter()
        .filter(|d| !pending_only || is_pending(d))
        .map(row)
        .collect())
}

/// Approves `name` (its pending key, or `key`): sets `spec.publicKey`. Returns the key.
pub async fn approve(
    client: &kube::Client,
    name: &str,
    key: Option<&str>,
) -> Result<String, DeployError> {
    let api: Api<Device> = Api::all(client.clone());
    let device = api
        .get_opt(name)
        .await
        .map_err(|source| DeployError::Kube {
            action: format!("reading Device {name}"),
            source,
        })?;
    let key = match &device {
        Some(device) => key_to_approve(device, key)?,
        None => {
            let Some(key) = key else {
                return Err(DeployError::Approval {
                    device: name.to_owned(),
                    reason: "no such Device: start its agent first (it asks to join), or pre-approve with --key U…".into(),
                });
            };
            harmony_fleet_contracts::identity::check_user_public_key(key).map_err(|e| {
                DeployError::Approval {
                    device: name.to_owned(),
                    reason: e.to_string(),
                }
            })?;
            key.to_owned()
        }
    };
    let body = serde_json::json!({
        "apiVersion": format!("{}/v1alpha1", harmony_fleet_operator::crd::GROUP),
        "kind": "Device",
        "metadata": { "name": name },
        "spec": { "publicKey": key },
    });
    api.patch(
        name,
        &PatchParams::apply(crate::FIELD_MANAGER).force(),
        &Patch::Apply(body),
    )
    .await
    .map_err(|source| DeployError::Kube {
        action: format!("approving Device {name}"),
        source,
    })?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;
    use harmony_fleet_operator::crd::device::{DeviceSpec, DeviceStatus, Enrollment};

    fn pending(key: &str) -> Device {
        let mut device = Device::new("pi-1", DeviceSpec::default());
        device.status = Some(DeviceStatus {
            enrollment: Some(Enrollment {
                phase: EnrollmentPhase::Pending,
                requested_key: Some(key.into()),
                ..Enrollment::default()
            }),
            ..DeviceStatus::default()
        });
        device
    }

    #[test]
    fn the_pending_key_is_approved_only_if_it_is_the_one_the_device_prints() {
        let key = nkeys::KeyPair::new_user().public_key();
        let device = pending(&key);
        assert!(is_pending(&device));
        assert_eq!(key_to_approve(&device, None).expect("key"), key);
        assert_eq!(key_to_approve(&device, Some(&key)).expect("key"), key);
        let other = nkeys::KeyPair::new_user().public_key();
        let err = key_to_approve(&device, Some(&other))
            .expect_err("mismatch")
            .to_string();
        assert!(err.contains("fleet-agent identity"), "{err}");
        let row = row(&device);
        assert_eq!(
            (row.enrollment.as_str(), row.key.as_str()),
            ("Pending", key.as_str())
        );
    }

    #[test]
    fn nothing_to_approve_names_what_to_do() {
        let device = Device::new("pi-1", DeviceSpec::default());
        assert!(!is_pending(&device));
        let err = key_to_approve(&device, None).expect_err("none").to_string();
        assert!(err.contains("--key"), "{err}");
        assert!(key_to_approve(&device, Some("Unope")).is_err());
    }
}

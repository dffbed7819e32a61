//! The NATS identities of one fleet installation: an admin (creates buckets), the operator,
//! and one user per enrolled device. Generated once, then kept (a local file under the state
//! directory, or a Secret in the cluster), so re-running a Score never rotates a password
//! behind a running component's back.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use harmony_fleet_contracts::DeviceId;
use rand::Rng;
use rand::distr::Alphanumeric;
use serde::{Deserialize, Serialize};

use crate::error::DeployError;

/// One user name and password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// NATS user name.
    pub user: String,
    /// Its password.
    pub password: String,
}

impl fmt::Debug for Login {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Login")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Login {
    fn generate(user: &str) -> Self {
        Login {
            user: user.to_owned(),
            password: rand::rng()
                .sample_iter(Alphanumeric)
                .take(32)
                .map(char::from)
                .collect(),
        }
    }
}

/// Every NATS identity of an installation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetCredentials {
    /// Unrestricted: creates and updates the buckets.
    pub admin: Login,
    /// The operator (contract's operator permission template).
    pub operator: Login,
    /// Device password by device id (user name = device id; device permission template).
    pub devices: BTreeMap<DeviceId, String>,
}

impl FleetCredentials {
    /// Fresh credentials for `devices`.
    pub fn generate(devices: &[DeviceId]) -> Self {
        let mut credentials = FleetCredentials {
            admin: Login::generate("fleet-admin"),
            operator: Login::generate("fleet-operator"),
            devices: BTreeMap::new(),
        };
        credentials.enroll(devices);
        credentials
    }

    /// Adds a password for every device that has none; returns whether anything was added.
    /// Existing passwords are kept; devices no longer listed keep theirs too (removing a
    /// device's identity is a decision, not a side effect of a shorter list).
    pub fn enroll(&mut self, devices: &[DeviceId]) -> bool {
        let mut added = false;
        for device in devices {
            if !self.devices.contains_key(device) {
                let login = Login::generate(device.as_str());
                self.devices.insert(device.clone(), login.password);
                added = true;
            }
        }
        added
    }

    /// The login of `device`, if enrolled.
    pub fn device(&self, device: &DeviceId) -> Option<Login> {
        self.devices.get(device).map(|password| Login {
            user: device.as_str().to_owned(),
            password: password.clone(),
        })
    }

    /// Parses the JSON form.
    pub fn from_json(bytes: &[u8], origin: &Path) -> Result<Self, DeployError> {
        serde_json::from_slice(bytes).map_err(|e| DeployError::CorruptState {
            path: origin.to_owned(),
            reason: e.to_string(),
        })
    }

    /// The JSON form (what the file and the Secret hold).
    pub fn to_json(&self) -> String {
        // Plain strings and maps of strings: serialisation cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Loads `path` (enrolling missing devices) or generates it; writes it back (mode 0600)
    /// when anything changed. Returns the credentials and whether they changed.
    pub fn load_or_create(path: &Path, devices: &[DeviceId]) -> Result<(Self, bool), DeployError> {
        let (mut credentials, mut changed) = match std::fs::read(path) {
            Ok(bytes) => (Self::from_json(&bytes, path)?, false),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Self::generate(&[]), true),
            Err(e) => return Err(DeployError::io(format!("reading {}", path.display()), e)),
        };
        changed |= credentials.enroll(devices);
        if changed {
            write_private(path, credentials.to_json().as_bytes())?;
        }
        Ok((credentials, changed))
    }
}

/// Writes `bytes` to `path` atomically, readable by the owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), DeployError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| DeployError::io(format!("creating {}", parent.display()), e))?;
    }
    let tmp = path.with_extension("tmp");
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut file| file.write_all(bytes))
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| DeployError::io(format!("writing {}", path.display()), e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(s: &str) -> DeviceId {
        s.parse().expect("valid id")
    }

    #[test]
    fn enrolling_keeps_existing_passwords_and_adds_new_devices() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("credentials.json");
        let (first, changed) =
            FleetCredentials::load_or_create(&path, &[id("dev-1")]).expect("create");
        assert!(changed);
        let (again, changed) =
            FleetCredentials::load_or_create(&path, &[id("dev-1")]).expect("load");
        assert!(!changed);
        assert_eq!(first, again);
        let (more, changed) =
            FleetCredentials::load_or_create(&path, &[id("dev-1"), id("dev-2")]).expect("enroll");
        assert!(changed);
        assert_eq!(more.device(&id("dev-1")), first.device(&id("dev-1")));
        assert!(more.device(&id("dev-2")).is_some());
        let mode = std::fs::metadata(&path).expect("meta");
        use std::os::unix::fs::PermissionsExt as _;
        assert_eq!(mode.permissions().mode() & 0o777, 0o600);
    }

    #[test]
    fn debug_output_never_shows_passwords() {
        let credentials = FleetCredentials::generate(&[]);
        let text = format!("{:?}", credentials.admin);
        assert!(!text.contains(&credentials.admin.password));
    }

    #[test]
    fn a_corrupt_file_is_an_error_naming_the_fix() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("credentials.json");
        std::fs::write(&path, "{not json").expect("write");
        let err = FleetCredentials::load_or_create(&path, &[])
            .expect_err("corrupt")
            .to_string();
        assert!(err.contains("local down"), "{err}");
    }
}

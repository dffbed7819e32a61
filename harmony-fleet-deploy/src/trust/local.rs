//! The local fleet's trust, kept as files under `<state>/nats/` (all 0600):
//!
//! | file | holds | used by |
//! |---|---|---|
//! | `trust.json` | [`TrustMaterial`] | this module |
//! | `admin.creds` | fleet admin (creates buckets, smoke tests) | deploy, e2e |
//! | `operator.creds` | the fleet operator's user | operator (`--nats-creds`) |
//! | `system.creds` | the system user that pushes revocations | operator (`--identity-system-creds`) |
//! | `signer.json` | fleet signing + operator signing seeds | operator (`--identity-signer`) |
//! | `bootstrap.creds` | the shared identity that can only ask to enroll | agents |

use std::path::{Path, PathBuf};

use harmony::local::nats::NatsAuthConfig;
use harmony_fleet_contracts::DeviceId;

use super::{Trust, TrustMaterial};
use crate::error::DeployError;
use crate::files::write_private;
use crate::nats::smoke::NatsIdentity;

/// The local fleet's trust material, loaded or created.
#[derive(Debug)]
pub struct LocalTrust {
    dir: PathBuf,
    trust: Trust,
}

impl LocalTrust {
    /// The directory of the trust files of the fleet at `state_dir`.
    pub fn dir(state_dir: &Path) -> PathBuf {
        state_dir.join("nats")
    }

    /// Loads the trust of the fleet at `state_dir`, creating it (and every file of the module
    /// table) on first use. Returns whether it was created.
    pub fn load_or_create(state_dir: &Path) -> Result<(Self, bool), DeployError> {
        let dir = Self::dir(state_dir);
        let path = dir.join("trust.json");
        let origin = path.display().to_string();
        let (material, created) = match std::fs::read(&path) {
            Ok(bytes) => (
                TrustMaterial::from_json(&bytes, &origin).map_err(|e| {
                    DeployError::CorruptState {
                        path: path.clone(),
                        reason: e.to_string(),
                    }
                })?,
                false,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let material = TrustMaterial::generate()?;
                write_private(&path, &material.to_json())?;
                (material, true)
            }
            Err(e) => return Err(DeployError::io(format!("reading {origin}"), e)),
        };
        let trust = Trust::open(material, &origin).map_err(|e| DeployError::CorruptState {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let local = Self { dir, trust };
        if created || !local.bootstrap_creds_path().is_file() {
            local.write_files()?;
        }
        Ok((local, created))
    }

    fn write_files(&self) -> Result<(), DeployError> {
        let files = [
            (self.admin_creds_path(), self.trust.admin_creds()?),
            (self.operator_creds_path(), self.trust.operator_creds()?),
            (self.system_creds_path(), self.trust.system_creds()?),
            (self.signer_path(), self.trust.signer_json()?),
            (self.bootstrap_creds_path(), self.trust.bootstrap_creds()?),
        ];
        for (path, text) in files {
            write_private(&path, text.as_bytes())?;
        }
        Ok(())
    }

    /// nats-server's authentication (see [`Trust::auth_config`]).
    pub fn auth_config(&self) -> NatsAuthConfig {
        self.trust.auth_config()
    }

    /// `admin.creds`.
    pub fn admin_creds_path(&self) -> PathBuf {
        self.dir.join("admin.creds")
    }
    /// `operator.creds`.
    pub fn operator_creds_path(&self) -> PathBuf {
        self.dir.join("operator.creds")
    }
    /// `system.creds`.
    pub fn system_creds_path(&self) -> PathBuf {
        self.dir.join("system.creds")
    }
    /// `signer.json`.
    pub fn signer_path(&self) -> PathBuf {
        self.dir.join("signer.json")
    }
    /// `bootstrap.creds`.
    pub fn bootstrap_creds_path(&self) -> PathBuf {
        self.dir.join("bootstrap.creds")
    }

    fn identity(name: &str, path: &Path) -> Result<NatsIdentity, DeployError> {
        let creds = std::fs::read_to_string(path)
            .map_err(|e| DeployError::io(format!("reading {}", path.display()), e))?;
        Ok(NatsIdentity {
            name: name.to_owned(),
            creds,
        })
    }

    /// The fleet admin.
    pub fn admin(&self) -> Result<NatsIdentity, DeployError> {
        Self::identity("fleet-admin", &self.admin_creds_path())
    }

    /// The fleet operator's user.
    pub fn operator(&self) -> Result<NatsIdentity, DeployError> {
        Self::identity("fleet-operator", &self.operator_creds_path())
    }

    /// A throwaway credential for `device` (see [`Trust::throwaway_device`]).
    pub fn throwaway_device(&self, device: &DeviceId) -> Result<NatsIdentity, DeployError> {
        self.trust.throwaway_device(device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_then_the_server_configuration_stays_the_same() {
        let dir = tempfile::tempdir().expect("tmp");
        let (first, created) = LocalTrust::load_or_create(dir.path()).expect("create");
        assert!(created);
        let (again, created) = LocalTrust::load_or_create(dir.path()).expect("load");
        assert!(!created);
        assert_eq!(first.auth_config(), again.auth_config());
        use std::os::unix::fs::PermissionsExt as _;
        for path in [
            first.dir.join("trust.json"),
            first.admin_creds_path(),
            first.signer_path(),
            first.bootstrap_creds_path(),
        ] {
            let mode = std::fs::metadata(&path).expect("meta").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
    }
}

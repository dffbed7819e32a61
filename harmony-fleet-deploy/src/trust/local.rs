//! The local fleet's chain of trust (adr/0016): generated once under `<state>/nats/` and kept,
//! so nats-server's configuration never changes after the first `local up` — enrolling a
//! device issues a JWT, it does not touch the server.
//!
//! | file (0600) | holds | used by |
//! |---|---|---|
//! | `trust.json` | every seed, the operator JWT and the two account JWTs the server starts with | this module |
//! | `admin.creds` | fleet admin (creates buckets, smoke tests) | deploy, e2e |
//! | `operator.creds` | the fleet operator's user | operator (`--nats-creds`) |
//! | `system.creds` | the system user that pushes revocations | operator (`--identity-system-creds`) |
//! | `signer.json` | fleet signing + operator signing seeds | operator (`--identity-signer`) |
//! | `bootstrap.creds` | the shared identity that can only ask to enroll | agents |

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use harmony::local::nats::{NatsAuthConfig, NatsOperatorTrust};
use harmony_fleet_contracts::DeviceId;
use harmony_fleet_contracts::jwt::creds_file;
use harmony_fleet_contracts::trust::{FleetSigner, TrustChain, TrustSeeds};
use serde::{Deserialize, Serialize};

use crate::credentials::write_private;
use crate::error::DeployError;
use crate::nats::smoke::NatsIdentity;

/// What `trust.json` holds.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Stored {
    seeds: TrustSeeds,
    operator_jwt: String,
    system_account_jwt: String,
    fleet_account_jwt: String,
}

/// The local fleet's trust material, loaded or created.
pub struct LocalTrust {
    dir: PathBuf,
    chain: TrustChain,
    stored: Stored,
}

impl std::fmt::Debug for LocalTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalTrust")
            .field("dir", &self.dir)
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn jwt_error(what: &str) -> impl FnOnce(harmony_fleet_contracts::jwt::JwtError) -> DeployError {
    let what = what.to_owned();
    move |e| DeployError::Trust {
        reason: format!("{what}: {e}"),
    }
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
        let (stored, created) = match std::fs::read(&path) {
            Ok(bytes) => {
                let stored: Stored =
                    serde_json::from_slice(&bytes).map_err(|e| DeployError::CorruptState {
                        path: path.clone(),
                        reason: e.to_string(),
                    })?;
                (stored, false)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let chain = TrustChain::generate();
                let t = now();
                let stored = Stored {
                    seeds: chain.seeds().map_err(jwt_error("new trust chain"))?,
                    operator_jwt: chain.operator_jwt(t).map_err(jwt_error("operator JWT"))?,
                    system_account_jwt: chain
                        .system_account_jwt(t)
                        .map_err(jwt_error("system account JWT"))?,
                    fleet_account_jwt: chain
                        .fleet_account_jwt(BTreeMap::new(), t)
                        .map_err(jwt_error("fleet account JWT"))?,
                };
                let json = serde_json::to_vec_pretty(&stored).unwrap_or_default();
                write_private(&path, &json)?;
                (stored, true)
            }
            Err(e) => return Err(DeployError::io(format!("reading {}", path.display()), e)),
        };
        let chain =
            TrustChain::from_seeds(&stored.seeds).map_err(|e| DeployError::CorruptState {
                path: path.clone(),
                reason: e.to_string(),
            })?;
        let trust = Self { dir, chain, stored };
        if created || !trust.bootstrap_creds_path().is_file() {
            trust.write_files()?;
        }
        Ok((trust, created))
    }

    fn write_files(&self) -> Result<(), DeployError> {
        let t = now();
        let files = [
            (
                self.admin_creds_path(),
                self.chain.admin_creds(t).map_err(jwt_error("admin"))?,
            ),
            (
                self.operator_creds_path(),
                self.chain
                    .operator_creds(t)
                    .map_err(jwt_error("operator"))?,
            ),
            (
                self.system_creds_path(),
                self.chain
                    .claims_pusher_creds(t)
                    .map_err(jwt_error("system user"))?,
            ),
            (
                self.signer_path(),
                serde_json::to_string_pretty(
                    &self.chain.signer_seeds().map_err(jwt_error("signer"))?,
                )
                .unwrap_or_default(),
            ),
            (
                self.bootstrap_creds_path(),
                self.chain
                    .bootstrap_creds(t, None)
                    .map_err(jwt_error("bootstrap"))?,
            ),
        ];
        for (path, text) in files {
            write_private(&path, text.as_bytes())?;
        }
        Ok(())
    }

    /// nats-server's authentication: trust the operator, resolver preloaded with the system
    /// and fleet accounts. The same text on every run.
    pub fn auth_config(&self) -> NatsAuthConfig {
        NatsAuthConfig {
            system_account: Some(self.chain.system_account()),
            operator: Some(NatsOperatorTrust {
                jwt: self.stored.operator_jwt.clone(),
                preload: vec![
                    (
                        self.chain.system_account(),
                        self.stored.system_account_jwt.clone(),
                    ),
                    (
                        self.chain.fleet_account(),
                        self.stored.fleet_account_jwt.clone(),
                    ),
                ],
            }),
            ..NatsAuthConfig::default()
        }
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
        Ok(NatsIdentity::Creds {
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

    /// A throwaway credential for `device` with a fresh key (smoke tests of the permission
    /// template).
    pub fn throwaway_device(&self, device: &DeviceId) -> Result<NatsIdentity, DeployError> {
        let signer =
            FleetSigner::from_seeds(&self.chain.signer_seeds().map_err(jwt_error("signer"))?)
                .map_err(jwt_error("signer"))?;
        let key = nkeys::KeyPair::new_user();
        let token = signer
            .device_jwt(
                device,
                &key.public_key(),
                now(),
                std::time::Duration::from_secs(600),
            )
            .map_err(jwt_error("smoke device"))?;
        let seed = key.seed().map_err(|e| DeployError::Trust {
            reason: format!("smoke device seed: {e}"),
        })?;
        Ok(NatsIdentity::Creds {
            name: device.to_string(),
            creds: creds_file(&token, &seed),
        })
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
        assert!(!format!("{first:?}").contains(&first.stored.seeds.fleet_signing));
    }
}

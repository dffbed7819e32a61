//! The fleet's chain of trust (adr/0016): an operator key that signs the system and fleet
//! accounts, a fleet signing key that issues every user's credential. Made once per
//! installation and kept, so nats-server's configuration never changes afterwards — enrolling a
//! device issues a JWT, it does not touch the server.
//!
//! - [`TrustMaterial`]: what is kept (seeds and the JWTs the server starts with), and
//!   [`Trust`], everything derived from it (the server's `operator`/`resolver` configuration,
//!   each component's `.creds`). No I/O.
//! - [`local`]: kept as files under `<state>/nats/` (`LocalTopology`).
//! - [`cluster`]: kept in Secrets of the fleet's namespace (`K8sAnywhereTopology`, adr/0019),
//!   with the CA of NATS' TLS.

pub mod cluster;
pub mod local;

use std::collections::BTreeMap;

use harmony::local::nats::{NatsAuthConfig, NatsOperatorTrust};
use harmony_fleet_contracts::DeviceId;
use harmony_fleet_contracts::jwt::{JwtError, creds_file};
use harmony_fleet_contracts::trust::{FleetSigner, TrustChain, TrustSeeds};
use serde::{Deserialize, Serialize};

pub use local::LocalTrust;

use crate::error::DeployError;
use crate::nats::smoke::NatsIdentity;

/// What an installation keeps of its trust: every seed, the operator JWT and the two account
/// JWTs the server starts with. Serialised as `trust.json`.
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustMaterial {
    seeds: TrustSeeds,
    operator_jwt: String,
    system_account_jwt: String,
    fleet_account_jwt: String,
}

impl std::fmt::Debug for TrustMaterial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustMaterial").finish_non_exhaustive()
    }
}

fn now() -> i64 {
    jiff::Timestamp::now().as_second()
}

fn jwt_error(what: &str) -> impl FnOnce(JwtError) -> DeployError {
    let what = what.to_owned();
    move |e| DeployError::Trust {
        reason: format!("{what}: {e}"),
    }
}

impl TrustMaterial {
    /// A new chain of trust.
    pub fn generate() -> Result<Self, DeployError> {
        let chain = TrustChain::generate();
        let t = now();
        Ok(TrustMaterial {
            seeds: chain.seeds().map_err(jwt_error("new trust chain"))?,
            operator_jwt: chain.operator_jwt(t).map_err(jwt_error("operator JWT"))?,
            system_account_jwt: chain
                .system_account_jwt(t)
                .map_err(jwt_error("system account JWT"))?,
            fleet_account_jwt: chain
                .fleet_account_jwt(BTreeMap::new(), t)
                .map_err(jwt_error("fleet account JWT"))?,
        })
    }

    /// The `trust.json` text.
    pub fn to_json(&self) -> Vec<u8> {
        // Strings and string maps only: serialising cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Reads `trust.json` text; `origin` names where it came from in the error.
    pub fn from_json(bytes: &[u8], origin: &str) -> Result<Self, DeployError> {
        serde_json::from_slice(bytes).map_err(|e| DeployError::Trust {
            reason: format!("{origin} is not a trust.json this version reads: {e}"),
        })
    }
}

/// A [`TrustMaterial`] opened: the keys parsed, ready to derive what each party needs.
pub struct Trust {
    chain: TrustChain,
    material: TrustMaterial,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trust")
            .field("chain", &self.chain)
            .finish_non_exhaustive()
    }
}

impl Trust {
    /// Opens `material`; `origin` names where it came from in the error.
    pub fn open(material: TrustMaterial, origin: &str) -> Result<Self, DeployError> {
        let chain = TrustChain::from_seeds(&material.seeds).map_err(|e| DeployError::Trust {
            reason: format!("{origin} holds seeds that do not parse: {e}"),
        })?;
        Ok(Trust { chain, material })
    }

    /// What is kept.
    pub fn material(&self) -> &TrustMaterial {
        &self.material
    }

    /// nats-server's authentication: trust the operator, the resolver preloaded with the
    /// system and fleet accounts. The same text on every run.
    pub fn auth_config(&self) -> NatsAuthConfig {
        NatsAuthConfig {
            system_account: Some(self.chain.system_account()),
            operator: Some(NatsOperatorTrust {
                jwt: self.material.operator_jwt.clone(),
                preload: vec![
                    (
                        self.chain.system_account(),
                        self.material.system_account_jwt.clone(),
                    ),
                    (
                        self.chain.fleet_account(),
                        self.material.fleet_account_jwt.clone(),
                    ),
                ],
            }),
            ..NatsAuthConfig::default()
        }
    }

    /// `.creds` of the fleet admin (creates buckets, smoke tests).
    pub fn admin_creds(&self) -> Result<String, DeployError> {
        self.chain.admin_creds(now()).map_err(jwt_error("admin"))
    }

    /// `.creds` of the fleet operator's user.
    pub fn operator_creds(&self) -> Result<String, DeployError> {
        self.chain
            .operator_creds(now())
            .map_err(jwt_error("operator"))
    }

    /// `.creds` of the system user that pushes revocations (the operator's identity service).
    pub fn system_creds(&self) -> Result<String, DeployError> {
        self.chain
            .claims_pusher_creds(now())
            .map_err(jwt_error("system user"))
    }

    /// `signer.json`: the fleet and operator signing seeds (the operator's identity service).
    pub fn signer_json(&self) -> Result<String, DeployError> {
        let seeds = self.chain.signer_seeds().map_err(jwt_error("signer"))?;
        Ok(serde_json::to_string_pretty(&seeds).unwrap_or_default())
    }

    /// `.creds` of the shared identity that can only ask to enroll (every agent).
    pub fn bootstrap_creds(&self) -> Result<String, DeployError> {
        self.chain
            .bootstrap_creds(now(), None)
            .map_err(jwt_error("bootstrap"))
    }

    /// A throwaway credential for `device` with a fresh key, valid ten minutes (smoke tests of
    /// the permission template).
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
        Ok(NatsIdentity {
            name: device.to_string(),
            creds: creds_file(&token, &seed),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn material_round_trips_and_gives_the_same_server_configuration() {
        let material = TrustMaterial::generate().expect("generate");
        let json = material.to_json();
        let again = TrustMaterial::from_json(&json, "test").expect("read back");
        let first = Trust::open(material, "test").expect("open");
        let second = Trust::open(again, "test").expect("open");
        assert_eq!(first.auth_config(), second.auth_config());
        assert!(!format!("{first:?}").contains(&first.material.seeds.fleet_signing));
        assert!(!format!("{:?}", first.material).contains(&first.material.seeds.fleet_signing));
        let err = TrustMaterial::from_json(b"{}", "Secret fleet-system/fleet-nats-trust")
            .expect_err("empty");
        assert!(
            err.to_string()
                .contains("Secret fleet-system/fleet-nats-trust is not a trust.json"),
            "{err}"
        );
    }
}

//! The fleet's chain of trust for nats-server's operator mode (adr/0016): which keys exist,
//! who holds them, and the JWTs they sign.
//!
//! | key | kind | signs | held by |
//! |---|---|---|---|
//! | operator | `O` | the operator JWT | the installer only |
//! | operator signing | `O` | account JWTs (the fleet account, with its revocations) | installer, fleet operator |
//! | system account | `A` | — (its JWT is signed by the operator signing key) | installer |
//! | fleet account | `A` | — | installer |
//! | fleet signing | `A` | user JWTs of the fleet account: devices, operator, admin, bootstrap | installer, fleet operator |
//!
//! nats-server is configured once with the operator JWT and the two account JWTs
//! ([`TrustChain::operator_jwt`], [`TrustChain::system_account_jwt`],
//! [`TrustChain::fleet_account_jwt`]); every later change — a device enrolled, revoked or
//! re-keyed — is a new user JWT (nothing for the server to learn) or a new fleet account JWT
//! pushed at run time ([`CLAIMS_UPDATE_SUBJECT`]).

use std::collections::BTreeMap;
use std::time::Duration;

use nkeys::KeyPair;
use serde::{Deserialize, Serialize};

use crate::identity::{bootstrap_user_claims, fleet_account_claims, user_rules};
use crate::jwt::{
    self, AccountClaims, AccountLimits, Claims, JwtError, OperatorClaims, UserClaims,
};
use crate::permissions::{Permissions, SubjectList, operator_permissions};

/// Where a system-account user pushes an account JWT to the servers' resolvers.
pub const CLAIMS_UPDATE_SUBJECT: &str = "$SYS.REQ.CLAIMS.UPDATE";

/// What a system-account user asks to read an account's current JWT:
/// `$SYS.REQ.ACCOUNT.<account>.CLAIMS.LOOKUP`.
pub fn claims_lookup_subject(account: &str) -> String {
    format!("$SYS.REQ.ACCOUNT.{account}.CLAIMS.LOOKUP")
}

/// The seeds of the chain (secrets: stored 0600 or in a Secret, never logged).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustSeeds {
    /// Operator identity key.
    pub operator: String,
    /// Operator signing key.
    pub operator_signing: String,
    /// System account key.
    pub system_account: String,
    /// Fleet account key.
    pub fleet_account: String,
    /// Fleet account signing key.
    pub fleet_signing: String,
}

impl std::fmt::Debug for TrustSeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TrustSeeds(<redacted>)")
    }
}

/// The key pairs of the chain, loaded from [`TrustSeeds`].
pub struct TrustChain {
    operator: KeyPair,
    operator_signing: KeyPair,
    system_account: KeyPair,
    fleet_account: KeyPair,
    fleet_signing: KeyPair,
}

impl std::fmt::Debug for TrustChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TrustChain")
            .field("operator", &self.operator.public_key())
            .field("fleet_account", &self.fleet_account.public_key())
            .finish_non_exhaustive()
    }
}

fn load(seed: &str, what: &'static str) -> Result<KeyPair, JwtError> {
    KeyPair::from_seed(seed).map_err(|source| JwtError::Key { what, source })
}

fn seed(kp: &KeyPair, what: &'static str) -> Result<String, JwtError> {
    kp.seed().map_err(|source| JwtError::Key { what, source })
}

/// Permissions of the fleet admin: everything in the fleet account.
pub fn admin_permissions() -> Permissions {
    Permissions {
        publish: SubjectList {
            allow: vec![">".into()],
        },
        subscribe: SubjectList {
            allow: vec![">".into()],
        },
        allow_responses: false,
    }
}

/// Permissions of the system user the fleet operator pushes account updates with.
pub fn claims_pusher_permissions() -> Permissions {
    Permissions {
        publish: SubjectList {
            allow: vec![
                CLAIMS_UPDATE_SUBJECT.to_owned(),
                "$SYS.REQ.ACCOUNT.*.CLAIMS.LOOKUP".to_owned(),
            ],
        },
        subscribe: SubjectList {
            allow: vec!["_INBOX.>".into()],
        },
        allow_responses: false,
    }
}

/// What the fleet operator holds of the chain: enough to issue device credentials and to
/// re-sign the fleet account (revocations), not to change the operator or the system account.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignerSeeds {
    /// The fleet account's public key.
    pub fleet_account: String,
    /// Fleet account signing key seed.
    pub fleet_signing: String,
    /// Operator signing key seed.
    pub operator_signing: String,
}

impl std::fmt::Debug for SignerSeeds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SignerSeeds")
            .field("fleet_account", &self.fleet_account)
            .finish_non_exhaustive()
    }
}

/// The fleet operator's signing keys, loaded from [`SignerSeeds`].
pub struct FleetSigner {
    fleet_account: String,
    fleet_signing: KeyPair,
    operator_signing: KeyPair,
}

impl std::fmt::Debug for FleetSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FleetSigner")
            .field("fleet_account", &self.fleet_account)
            .finish_non_exhaustive()
    }
}

impl FleetSigner {
    /// The signer of `seeds`.
    pub fn from_seeds(seeds: &SignerSeeds) -> Result<Self, JwtError> {
        KeyPair::from_public_key(&seeds.fleet_account).map_err(|source| JwtError::Key {
            what: "fleet account public key",
            source,
        })?;
        Ok(Self {
            fleet_account: seeds.fleet_account.clone(),
            fleet_signing: load(&seeds.fleet_signing, "fleet signing seed")?,
            operator_signing: load(&seeds.operator_signing, "operator signing seed")?,
        })
    }

    /// The fleet account's public key.
    pub fn fleet_account(&self) -> &str {
        &self.fleet_account
    }

    /// The credential of `device` holding `public_key`, issued at `now` for `lifetime`.
    pub fn device_jwt(
        &self,
        device: &crate::ids::DeviceId,
        public_key: &str,
        now: i64,
        lifetime: Duration,
    ) -> Result<String, JwtError> {
        let claims = crate::identity::device_user_claims(
            device,
            public_key,
            &self.fleet_account,
            now,
            lifetime,
        );
        jwt::encode(claims, &self.fleet_signing)
    }

    /// The fleet account's JWT with `revocations`.
    pub fn fleet_account_jwt(
        &self,
        revocations: BTreeMap<String, i64>,
        now: i64,
    ) -> Result<String, JwtError> {
        jwt::encode(
            fleet_account_claims(
                &self.fleet_account,
                vec![self.fleet_signing.public_key()],
                revocations,
                now,
            ),
            &self.operator_signing,
        )
    }
}

impl TrustChain {
    /// The part the fleet operator holds.
    pub fn signer_seeds(&self) -> Result<SignerSeeds, JwtError> {
        Ok(SignerSeeds {
            fleet_account: self.fleet_account(),
            fleet_signing: seed(&self.fleet_signing, "fleet signing")?,
            operator_signing: seed(&self.operator_signing, "operator signing")?,
        })
    }

    /// A new chain with fresh keys.
    pub fn generate() -> Self {
        Self {
            operator: KeyPair::new_operator(),
            operator_signing: KeyPair::new_operator(),
            system_account: KeyPair::new_account(),
            fleet_account: KeyPair::new_account(),
            fleet_signing: KeyPair::new_account(),
        }
    }

    /// The chain of `seeds`.
    pub fn from_seeds(seeds: &TrustSeeds) -> Result<Self, JwtError> {
        Ok(Self {
            operator: load(&seeds.operator, "operator seed")?,
            operator_signing: load(&seeds.operator_signing, "operator signing seed")?,
            system_account: load(&seeds.system_account, "system account seed")?,
            fleet_account: load(&seeds.fleet_account, "fleet account seed")?,
            fleet_signing: load(&seeds.fleet_signing, "fleet signing seed")?,
        })
    }

    /// Its seeds, to store.
    pub fn seeds(&self) -> Result<TrustSeeds, JwtError> {
        Ok(TrustSeeds {
            operator: seed(&self.operator, "operator")?,
            operator_signing: seed(&self.operator_signing, "operator signing")?,
            system_account: seed(&self.system_account, "system account")?,
            fleet_account: seed(&self.fleet_account, "fleet account")?,
            fleet_signing: seed(&self.fleet_signing, "fleet signing")?,
        })
    }

    /// The system account's public key.
    pub fn system_account(&self) -> String {
        self.system_account.public_key()
    }

    /// The fleet account's public key.
    pub fn fleet_account(&self) -> String {
        self.fleet_account.public_key()
    }

    /// The key that signs fleet user JWTs.
    pub fn fleet_signing(&self) -> &KeyPair {
        &self.fleet_signing
    }

    /// The key that signs account JWTs.
    pub fn operator_signing(&self) -> &KeyPair {
        &self.operator_signing
    }

    /// The operator JWT nats-server is configured with.
    pub fn operator_jwt(&self, now: i64) -> Result<String, JwtError> {
        jwt::encode(
            Claims {
                jti: String::new(),
                aud: None,
                iat: now,
                iss: String::new(),
                name: "harmony-fleet".into(),
                sub: self.operator.public_key(),
                exp: None,
                nats: OperatorClaims::new(
                    vec![self.operator_signing.public_key()],
                    self.system_account(),
                ),
            },
            &self.operator,
        )
    }

    /// The system account's JWT (no JetStream).
    pub fn system_account_jwt(&self, now: i64) -> Result<String, JwtError> {
        jwt::encode(
            Claims {
                jti: String::new(),
                aud: None,
                iat: now,
                iss: String::new(),
                name: "SYS".into(),
                sub: self.system_account(),
                exp: None,
                nats: AccountClaims::new(AccountLimits::without_jetstream(), vec![]),
            },
            &self.operator_signing,
        )
    }

    /// The fleet account's JWT with `revocations` (user public key → seconds since the epoch).
    pub fn fleet_account_jwt(
        &self,
        revocations: BTreeMap<String, i64>,
        now: i64,
    ) -> Result<String, JwtError> {
        FleetSigner::from_seeds(&self.signer_seeds()?)?.fleet_account_jwt(revocations, now)
    }

    /// A user of the fleet account with `permissions`, as a `.creds` file with a fresh key.
    pub fn fleet_user_creds(
        &self,
        name: &str,
        permissions: &Permissions,
        now: i64,
    ) -> Result<String, JwtError> {
        let user = KeyPair::new_user();
        let mut nats = user_rules(permissions);
        nats.issuer_account = Some(self.fleet_account());
        let claims = Claims {
            jti: String::new(),
            aud: None,
            iat: now,
            iss: String::new(),
            name: name.to_owned(),
            sub: user.public_key(),
            exp: None,
            nats,
        };
        let token = jwt::encode(claims, &self.fleet_signing)?;
        Ok(jwt::creds_file(&token, &seed(&user, "user")?))
    }

    /// The fleet operator's user ([`operator_permissions`]).
    pub fn operator_creds(&self, now: i64) -> Result<String, JwtError> {
        self.fleet_user_creds("fleet-operator", &operator_permissions(), now)
    }

    /// The fleet admin ([`admin_permissions`]).
    pub fn admin_creds(&self, now: i64) -> Result<String, JwtError> {
        self.fleet_user_creds("fleet-admin", &admin_permissions(), now)
    }

    /// The shared bootstrap identity of devices without a credential, valid for `lifetime`
    /// (`None`: until the fleet account revokes it).
    pub fn bootstrap_creds(
        &self,
        now: i64,
        lifetime: Option<Duration>,
    ) -> Result<String, JwtError> {
        let user = KeyPair::new_user();
        let claims =
            bootstrap_user_claims(&user.public_key(), &self.fleet_account(), now, lifetime);
        let token = jwt::encode(claims, &self.fleet_signing)?;
        Ok(jwt::creds_file(&token, &seed(&user, "user")?))
    }

    /// The system user the fleet operator pushes account JWTs with
    /// ([`claims_pusher_permissions`]).
    pub fn claims_pusher_creds(&self, now: i64) -> Result<String, JwtError> {
        let user = KeyPair::new_user();
        let claims: Claims<UserClaims> = Claims {
            jti: String::new(),
            aud: None,
            iat: now,
            iss: String::new(),
            name: "fleet-claims-pusher".into(),
            sub: user.public_key(),
            exp: None,
            nats: user_rules(&claims_pusher_permissions()),
        };
        let token = jwt::encode(claims, &self.system_account)?;
        Ok(jwt::creds_file(&token, &seed(&user, "user")?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seeds_round_trip_and_never_print() {
        let chain = TrustChain::generate();
        let seeds = chain.seeds().expect("seeds");
        let again = TrustChain::from_seeds(&seeds).expect("load");
        assert_eq!(again.fleet_account(), chain.fleet_account());
        assert_eq!(format!("{seeds:?}"), "TrustSeeds(<redacted>)");
        assert!(!format!("{again:?}").contains(&seeds.fleet_signing));
        let mut broken = seeds;
        broken.fleet_signing = "SAnope".into();
        let err = TrustChain::from_seeds(&broken).expect_err("bad seed");
        assert!(err.to_string().contains("fleet signing seed"), "{err}");
    }

    #[test]
    fn each_jwt_is_signed_by_the_key_the_server_expects() {
        let chain = TrustChain::generate();
        let operator: Claims<OperatorClaims> =
            jwt::decode(&chain.operator_jwt(1).expect("op")).expect("op");
        assert_eq!(operator.iss, operator.sub);
        assert_eq!(operator.nats.system_account, chain.system_account());
        let signing = chain.operator_signing.public_key();
        assert_eq!(operator.nats.signing_keys, vec![signing.clone()]);

        let fleet: Claims<AccountClaims> =
            jwt::decode(&chain.fleet_account_jwt(BTreeMap::new(), 1).expect("acc")).expect("acc");
        assert_eq!(fleet.iss, signing);
        assert_eq!(
            fleet.nats.signing_keys,
            vec![chain.fleet_signing.public_key()]
        );

        let (user_jwt, _) = jwt::parse_creds(&chain.operator_creds(1).expect("creds")).expect("p");
        let user: Claims<UserClaims> = jwt::decode(&user_jwt).expect("user");
        assert_eq!(user.iss, chain.fleet_signing.public_key());
        assert_eq!(user.nats.issuer_account, Some(chain.fleet_account()));

        let (pusher_jwt, _) =
            jwt::parse_creds(&chain.claims_pusher_creds(1).expect("creds")).expect("p");
        let pusher: Claims<UserClaims> = jwt::decode(&pusher_jwt).expect("pusher");
        assert_eq!(pusher.iss, chain.system_account());

        let signer = FleetSigner::from_seeds(&chain.signer_seeds().expect("s")).expect("signer");
        let device: crate::ids::DeviceId = "pi-1".parse().expect("id");
        let user_key = KeyPair::new_user().public_key();
        let token = signer
            .device_jwt(&device, &user_key, 1, Duration::from_secs(60))
            .expect("jwt");
        let claims: Claims<UserClaims> = jwt::decode(&token).expect("decode");
        assert_eq!(claims.iss, chain.fleet_signing.public_key());
        assert_eq!(claims.exp, Some(61));
        let seeds = chain.signer_seeds().expect("seeds");
        assert!(!format!("{signer:?} {seeds:?}").contains(&seeds.fleet_signing));
    }
}

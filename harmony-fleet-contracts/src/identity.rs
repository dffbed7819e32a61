//! Device identity: the credentials nats-server trusts (adr/0016) and the enrollment protocol
//! that hands them out.
//!
//! Every device owns an nkey pair; the seed never leaves it. nats-server runs in operator mode
//! and trusts the fleet account's signing key, so a device connects with a user JWT that the
//! fleet operator signed — [`device_user_claims`], which carries [`device_permissions`] — and
//! no server configuration names any device.
//!
//! | step | who | subject | body |
//! |---|---|---|---|
//! | ask to join | device, as the shared bootstrap user | [`ENROLL_SUBJECT`] | [`EnrollRequest`] → [`EnrollReply`] |
//! | renew before expiry | device, as itself | [`renew_subject`] | empty → [`EnrollReply`] |
//!
//! The bootstrap user ([`bootstrap_user_claims`]) can publish only [`ENROLL_SUBJECT`] and
//! receive only on [`BOOTSTRAP_INBOX_PREFIX`]. Replies carry JWTs, which are not secrets: a
//! JWT is useless without the seed that signs the server's connect nonce.
//!
//! An [`EnrollRequest`] is signed by the key it presents ([`EnrollRequest::verify`]), so nobody
//! can enroll a key they do not hold.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::{KeyPair, KeyPairType};
use serde::{Deserialize, Serialize};

use crate::bootstrap_token::BootstrapToken;
use crate::device::Inventory;
use crate::ids::DeviceId;
use crate::jwt::{AccountClaims, AccountLimits, Claims, ResponseRules, SubjectRules, UserClaims};
use crate::permissions::{Permissions, device_permissions};

/// Where a device without a credential sends its [`EnrollRequest`].
pub const ENROLL_SUBJECT: &str = "device-enroll";

/// Inbox prefix of the bootstrap user (not `_INBOX_<device>`: the device has no credential yet,
/// and no device id can make `_INBOX_` + id equal to it).
pub const BOOTSTRAP_INBOX_PREFIX: &str = "_ENROLL_INBOX";

/// Prefix of the per-device identity subjects.
pub const IDENTITY_PREFIX: &str = "device-identity";

/// The subject a device renews its credential on: `device-identity.<d>.renew`. Only `<d>`'s
/// own credential may publish it, so the request needs no body: the subject says who asks.
pub fn renew_subject(device: &DeviceId) -> String {
    format!("{IDENTITY_PREFIX}.{device}.renew")
}

/// Pattern the operator serves renewals on.
pub const RENEW_ALL: &str = "device-identity.*.renew";

/// How long an issued device credential is valid unless configured otherwise.
pub const DEFAULT_CREDENTIAL_LIFETIME: Duration = Duration::from_secs(30 * 24 * 3600);

/// The largest message a device may publish: above every reply cap of the command protocol
/// (logs, exec output), far below nats-server's 1 MiB default.
pub const DEVICE_MAX_PAYLOAD: i64 = 512 * 1024;

/// The largest message the bootstrap user may publish (an [`EnrollRequest`] is < 1 KiB).
pub const BOOTSTRAP_MAX_PAYLOAD: i64 = 4 * 1024;

/// How far an [`EnrollRequest`]'s `requestedAt` may be from the operator's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

/// Why an identity value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// `publicKey` is not an nkey user public key.
    #[error(
        "publicKey {key:?} is not a NATS user public key (56 characters starting with U, as `fleet-agent identity` prints)"
    )]
    PublicKey {
        /// The value given.
        key: String,
    },
    /// The signature does not verify against `publicKey`.
    #[error(
        "signature of the enrollment request of {device} does not verify against its publicKey: the request was not made by the holder of that key"
    )]
    Signature {
        /// The device named in the request.
        device: DeviceId,
    },
    /// `requestedAt` is too far from now.
    #[error(
        "requestedAt of the enrollment request of {device} is {skew_secs} s away from the operator's clock (at most {max_secs} s): set the device's clock (NTP) and retry"
    )]
    ClockSkew {
        /// The device named in the request.
        device: DeviceId,
        /// How far off, in seconds.
        skew_secs: i64,
        /// The limit, in seconds.
        max_secs: u64,
    },
}

/// Checks that `key` is an nkey user public key (`U…`).
pub fn check_user_public_key(key: &str) -> Result<(), IdentityError> {
    match KeyPair::from_public_key(key) {
        Ok(kp) if kp.key_pair_type() == KeyPairType::User => Ok(()),
        _ => Err(IdentityError::PublicKey {
            key: key.to_owned(),
        }),
    }
}

/// A device's request to join, signed by the key it presents.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnrollRequest {
    /// The id the device claims.
    pub device_id: DeviceId,
    /// Its nkey user public key.
    pub public_key: String,
    /// Hardware and OS facts, shown to the admin who approves.
    pub inventory: Inventory,
    /// When the request was made, seconds since the epoch (bounds replays).
    pub requested_at: i64,
    /// base64url ed25519 signature of [`EnrollRequest::signing_input`] by `publicKey`.
    pub signature: String,
    /// A bootstrap token (`<id>.<secret>`, adr/0020) that pre-approves the key; absent: an
    /// admin approves. Not part of the signed input: the signature proves possession of the
    /// key, the token is a bearer secret that TLS protects, and whoever could read it could
    /// sign their own request with it anyway; leaving the input unchanged keeps requests with
    /// a token verifiable by operators that predate tokens (they answer `Pending`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_token: Option<BootstrapToken>,
}

impl EnrollRequest {
    /// A request for `device`, signed with `key`.
    pub fn signed(
        device_id: DeviceId,
        key: &KeyPair,
        inventory: Inventory,
        requested_at: i64,
    ) -> Result<Self, nkeys::error::Error> {
        let public_key = key.public_key();
        let input = Self::input(&device_id, &public_key, requested_at);
        let signature = URL_SAFE_NO_PAD.encode(key.sign(input.as_bytes())?);
        Ok(Self {
            device_id,
            public_key,
            inventory,
            requested_at,
            signature,
            bootstrap_token: None,
        })
    }

    /// The same request presenting `token` (the signature stays valid: see `bootstrapToken`).
    pub fn with_bootstrap_token(mut self, token: Option<BootstrapToken>) -> Self {
        self.bootstrap_token = token;
        self
    }

    fn input(device: &DeviceId, public_key: &str, requested_at: i64) -> String {
        format!("harmony-fleet-enroll:{device}:{public_key}:{requested_at}")
    }

    /// What the signature covers: `harmony-fleet-enroll:<device>:<publicKey>:<requestedAt>`.
    pub fn signing_input(&self) -> String {
        Self::input(&self.device_id, &self.public_key, self.requested_at)
    }

    /// Checks the key, the signature and the clock (`now`, seconds since the epoch).
    pub fn verify(&self, now: i64) -> Result<(), IdentityError> {
        check_user_public_key(&self.public_key)?;
        let key =
            KeyPair::from_public_key(&self.public_key).map_err(|_| IdentityError::PublicKey {
                key: self.public_key.clone(),
            })?;
        let bad_signature = || IdentityError::Signature {
            device: self.device_id.clone(),
        };
        let signature = URL_SAFE_NO_PAD
            .decode(&self.signature)
            .map_err(|_| bad_signature())?;
        key.verify(self.signing_input().as_bytes(), &signature)
            .map_err(|_| bad_signature())?;
        let skew = (now - self.requested_at).abs();
        let max = MAX_CLOCK_SKEW.as_secs();
        if skew.unsigned_abs() > max {
            return Err(IdentityError::ClockSkew {
                device: self.device_id.clone(),
                skew_secs: skew,
                max_secs: max,
            });
        }
        Ok(())
    }
}

/// A device's request for a fresh credential, sent on its own [`renew_subject`] with its
/// current credential (so the subject proves who asks; the body says which key it holds).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RenewRequest {
    /// The public key the device connects with.
    pub public_key: String,
}

/// The operator's answer to an enrollment or renewal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "camelCase")]
pub enum EnrollReply {
    /// The credential: a user JWT for the requested key. Connect with it and the own seed.
    Issued {
        /// The user JWT.
        jwt: String,
    },
    /// Recorded, waiting for an admin; ask again.
    Pending {
        /// What the admin has to do.
        message: String,
    },
    /// Refused; asking again with the same request changes nothing.
    Refused {
        /// Why, naming the field and the fix.
        reason: String,
        /// The device is blacklisted: an agent stops its workloads (it can no longer hear
        /// that its desired state was removed). Absent (false) from operators before it.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        blacklisted: bool,
    },
}

impl EnrollReply {
    /// A refusal for `reason` (not a blacklisting).
    pub fn refused(reason: impl Into<String>) -> Self {
        EnrollReply::Refused {
            reason: reason.into(),
            blacklisted: false,
        }
    }
}

/// Publish/subscribe rules and reply permission of a JWT user, from a permission template.
pub fn user_rules(permissions: &Permissions) -> UserClaims {
    let rules = |allow: &[String]| SubjectRules {
        allow: allow.to_vec(),
        deny: Vec::new(),
    };
    UserClaims::new(
        rules(&permissions.publish.allow),
        rules(&permissions.subscribe.allow),
        permissions
            .allow_responses
            .then_some(ResponseRules { max: 1, ttl: 0 }),
    )
}

fn expiry(now: i64, lifetime: Duration) -> i64 {
    now.saturating_add(i64::try_from(lifetime.as_secs()).unwrap_or(i64::MAX))
}

/// The claims of `device`'s credential: its permission template, its payload limit, issued by
/// a signing key of `account` at `now` for `lifetime`.
pub fn device_user_claims(
    device: &DeviceId,
    public_key: &str,
    account: &str,
    now: i64,
    lifetime: Duration,
) -> Claims<UserClaims> {
    let mut nats = user_rules(&device_permissions(device));
    nats.payload = DEVICE_MAX_PAYLOAD;
    nats.issuer_account = Some(account.to_owned());
    Claims {
        jti: String::new(),
        aud: None,
        iat: now,
        iss: String::new(),
        name: device.to_string(),
        sub: public_key.to_owned(),
        exp: Some(expiry(now, lifetime)),
        nats,
    }
}

/// The permissions of the shared bootstrap identity: ask to enroll, hear the answer.
pub fn bootstrap_permissions() -> Permissions {
    use crate::permissions::SubjectList;
    Permissions {
        publish: SubjectList {
            allow: vec![ENROLL_SUBJECT.to_owned()],
        },
        subscribe: SubjectList {
            allow: vec![format!("{BOOTSTRAP_INBOX_PREFIX}.>")],
        },
        allow_responses: false,
    }
}

/// The claims of the bootstrap user `public_key` of `account`: [`bootstrap_permissions`], a
/// small payload and few subscriptions. `exp`: `None` for no expiry.
pub fn bootstrap_user_claims(
    public_key: &str,
    account: &str,
    now: i64,
    lifetime: Option<Duration>,
) -> Claims<UserClaims> {
    let mut nats = user_rules(&bootstrap_permissions());
    nats.payload = BOOTSTRAP_MAX_PAYLOAD;
    nats.subs = 4;
    nats.issuer_account = Some(account.to_owned());
    Claims {
        jti: String::new(),
        aud: None,
        iat: now,
        iss: String::new(),
        name: "fleet-bootstrap".to_owned(),
        sub: public_key.to_owned(),
        exp: lifetime.map(|l| expiry(now, l)),
        nats,
    }
}

/// The fleet account: JetStream on, users signed by `signing_keys`, `revocations` in force.
pub fn fleet_account_claims(
    account: &str,
    signing_keys: Vec<String>,
    revocations: std::collections::BTreeMap<String, i64>,
    now: i64,
) -> Claims<AccountClaims> {
    let mut nats = AccountClaims::new(AccountLimits::unlimited(), signing_keys);
    nats.revocations = revocations;
    Claims {
        jti: String::new(),
        aud: None,
        iat: now,
        iss: String::new(),
        name: "FLEET".to_owned(),
        sub: account.to_owned(),
        exp: None,
        nats,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::commands::{MAX_EXEC_OUTPUT_BYTES, MAX_LOG_BYTES};
    use crate::jwt;

    fn device() -> DeviceId {
        "pi-1".parse().expect("id")
    }

    fn inventory() -> Inventory {
        Inventory {
            hostname: "pi".into(),
            arch: "aarch64".into(),
            os: "linux".into(),
            os_release: None,
            kernel_version: None,
            cpu_count: 4,
            memory_bytes: 1 << 30,
        }
    }

    #[test]
    fn a_signed_request_verifies_and_a_changed_one_does_not() {
        let key = KeyPair::new_user();
        let request = EnrollRequest::signed(device(), &key, inventory(), 1_000).expect("sign");
        request.verify(1_010).expect("valid");

        let mut other_id = request.clone();
        other_id.device_id = "pi-2".parse().expect("id");
        assert!(matches!(
            other_id.verify(1_010),
            Err(IdentityError::Signature { .. })
        ));

        let mut other_key = request.clone();
        other_key.public_key = KeyPair::new_user().public_key();
        assert!(matches!(
            other_key.verify(1_010),
            Err(IdentityError::Signature { .. })
        ));

        let mut garbage = request.clone();
        garbage.signature = "!!".into();
        assert!(garbage.verify(1_010).is_err());
    }

    #[test]
    fn stale_requests_and_non_user_keys_are_refused_with_the_fix() {
        let key = KeyPair::new_user();
        let request = EnrollRequest::signed(device(), &key, inventory(), 1_000).expect("sign");
        let err = request.verify(1_000 + 301).expect_err("stale");
        assert!(err.to_string().contains("NTP"), "{err}");

        let account = KeyPair::new_account();
        let mut wrong_kind = request;
        wrong_kind.public_key = account.public_key();
        let err = wrong_kind.verify(1_000).expect_err("account key");
        assert!(matches!(err, IdentityError::PublicKey { .. }));
        assert!(err.to_string().contains("fleet-agent identity"));
        assert!(check_user_public_key("UNOPE").is_err());
    }

    #[test]
    fn the_device_credential_carries_the_permission_template() {
        let key = KeyPair::new_user();
        let signer = KeyPair::new_account();
        let claims = device_user_claims(
            &device(),
            &key.public_key(),
            "AFLEET",
            100,
            DEFAULT_CREDENTIAL_LIFETIME,
        );
        let token = jwt::encode(claims, &signer).expect("encode");
        let decoded: Claims<UserClaims> = jwt::decode(&token).expect("decode");
        let template = device_permissions(&device());
        assert_eq!(decoded.nats.publish.allow, template.publish.allow);
        assert_eq!(decoded.nats.subscribe.allow, template.subscribe.allow);
        assert_eq!(decoded.nats.resp, Some(ResponseRules { max: 1, ttl: 0 }));
        assert_eq!(decoded.nats.issuer_account.as_deref(), Some("AFLEET"));
        assert_eq!(decoded.exp, Some(100 + 30 * 24 * 3600));
        assert_eq!(decoded.sub, key.public_key());
    }

    #[test]
    fn the_device_payload_limit_is_above_every_reply_cap() {
        let caps = [MAX_LOG_BYTES, 2 * MAX_EXEC_OUTPUT_BYTES];
        for cap in caps {
            assert!(i64::try_from(cap).expect("fits") + 16 * 1024 < DEVICE_MAX_PAYLOAD);
        }
    }

    #[test]
    fn the_bootstrap_user_can_only_ask_to_enroll() {
        let perms = bootstrap_permissions();
        assert!(perms.allows_publish(ENROLL_SUBJECT));
        assert!(!perms.allows_publish(&renew_subject(&device())));
        assert!(!perms.allows_publish("$JS.API.INFO"));
        assert!(!perms.allows_subscribe("_INBOX.>"));
        assert!(!perms.allows_subscribe("_INBOX_pi-1.x"));
        assert!(perms.allows_subscribe("_ENROLL_INBOX.abc"));
        let claims = bootstrap_user_claims("UBOOT", "AFLEET", 5, None);
        assert_eq!(claims.exp, None);
        assert_eq!(claims.nats.resp, None);
        assert_eq!(claims.nats.payload, BOOTSTRAP_MAX_PAYLOAD);
    }

    #[test]
    fn a_device_may_renew_only_its_own_credential() {
        let perms = device_permissions(&device());
        assert!(perms.allows_publish(&renew_subject(&device())));
        let other = "pi-2".parse().expect("id");
        assert!(!perms.allows_publish(&renew_subject(&other)));
        assert!(!perms.allows_publish(ENROLL_SUBJECT));
        assert!(crate::subject::matches(
            RENEW_ALL,
            &renew_subject(&device())
        ));
    }

    #[test]
    fn replies_have_a_stable_wire_shape() {
        let reply = EnrollReply::Pending {
            message: "approve".into(),
        };
        assert_eq!(
            serde_json::to_string(&reply).expect("json"),
            r#"{"status":"pending","message":"approve"}"#
        );
        let issued: EnrollReply =
            serde_json::from_str(r#"{"status":"issued","jwt":"a.b.c"}"#).expect("json");
        assert_eq!(
            issued,
            EnrollReply::Issued {
                jwt: "a.b.c".into()
            }
        );
    }
}

//! NATS JWTs (version 2, the format nats-server's decentralized authentication reads): encoding
//! with an nkey, decoding with the signature checked, and the `.creds` file that pairs a user
//! JWT with its seed.
//!
//! A JWT is `base64url(header).base64url(claims).base64url(signature)`, unpadded. The header is
//! always `{"typ":"JWT","alg":"ed25519-nkey"}`; the signature is the issuer's ed25519 signature
//! of the first two parts; the claims name the issuer (`iss`) and subject (`sub`) by their
//! public nkeys and carry a `nats` object whose shape depends on the kind of JWT
//! ([`OperatorClaims`], [`AccountClaims`], [`UserClaims`]).
//!
//! `jti` is derived from the whole claim set (nats part included), so two JWTs that differ only
//! in, say, an account's revocations never share an id: nats-server's resolver skips an update
//! whose `jti` equals the stored one.

use std::collections::BTreeMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use nkeys::KeyPair;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sha2::Digest as _;

/// The one header every JWT here carries.
const HEADER: &str = r#"{"typ":"JWT","alg":"ed25519-nkey"}"#;

/// "No limit" in NATS limit fields.
pub const NO_LIMIT: i64 = -1;

/// A JWT that cannot be made or trusted.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum JwtError {
    /// Not three base64url parts, or the parts are not the expected JSON.
    #[error("malformed NATS JWT: {reason}")]
    Malformed {
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify against the issuer named in the claims.
    #[error("NATS JWT signature does not verify against its issuer {issuer}")]
    BadSignature {
        /// The claimed issuer.
        issuer: String,
    },
    /// A key could not be used (wrong kind, malformed seed or public key).
    #[error("nkey {what}: {source}")]
    Key {
        /// Which key.
        what: &'static str,
        /// What nkeys said.
        #[source]
        source: nkeys::error::Error,
    },
    /// A `.creds` file without its JWT or seed block.
    #[error(
        "credentials file has no {missing} block: expected a NATS .creds file as written by harmony-fleet (JWT, then seed)"
    )]
    Creds {
        /// `"JWT"` or `"seed"`.
        missing: &'static str,
    },
}

fn malformed(reason: impl Into<String>) -> JwtError {
    JwtError::Malformed {
        reason: reason.into(),
    }
}

/// The claims every JWT has, with the kind-specific `nats` part.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims<N> {
    /// Unique id (base32 of a SHA-512/256 of the claims); set by [`encode`].
    #[serde(default)]
    pub jti: String,
    /// Issued at, seconds since the epoch.
    pub iat: i64,
    /// Issuer's public key; set by [`encode`].
    #[serde(default)]
    pub iss: String,
    /// Human-readable name.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    /// Subject's public key.
    pub sub: String,
    /// Audience: who the JWT is for (auth callout responses: the server id; their user JWTs:
    /// the target account).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aud: Option<String>,
    /// Expiry, seconds since the epoch; `None`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exp: Option<i64>,
    /// The kind-specific part.
    pub nats: N,
}

/// `nats` of an operator JWT (self-signed: `iss == sub`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorClaims {
    /// Keys that may sign account JWTs besides the operator's own.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<String>,
    /// The system account's public key.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub system_account: String,
    /// Always `"operator"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always 2.
    pub version: u8,
}

/// Limits of an account (all [`NO_LIMIT`] unless set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountLimits {
    /// Subscriptions.
    pub subs: i64,
    /// Bytes in flight.
    pub data: i64,
    /// Largest message payload.
    pub payload: i64,
    /// Imports.
    pub imports: i64,
    /// Exports.
    pub exports: i64,
    /// Wildcard exports allowed.
    pub wildcards: bool,
    /// Connections.
    pub conn: i64,
    /// Leaf node connections.
    pub leaf: i64,
    /// JetStream memory storage bytes (0 disables JetStream when disk is 0 too).
    pub mem_storage: i64,
    /// JetStream disk storage bytes.
    pub disk_storage: i64,
    /// Streams.
    pub streams: i64,
    /// Consumers.
    pub consumer: i64,
}

impl AccountLimits {
    /// Nothing limited, JetStream on.
    pub fn unlimited() -> Self {
        Self {
            subs: NO_LIMIT,
            data: NO_LIMIT,
            payload: NO_LIMIT,
            imports: NO_LIMIT,
            exports: NO_LIMIT,
            wildcards: true,
            conn: NO_LIMIT,
            leaf: NO_LIMIT,
            mem_storage: NO_LIMIT,
            disk_storage: NO_LIMIT,
            streams: NO_LIMIT,
            consumer: NO_LIMIT,
        }
    }

    /// Nothing limited, JetStream off (the system account).
    pub fn without_jetstream() -> Self {
        Self {
            mem_storage: 0,
            disk_storage: 0,
            streams: 0,
            consumer: 0,
            ..Self::unlimited()
        }
    }
}

/// `nats` of an account JWT (signed by the operator or one of its signing keys).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountClaims {
    /// Limits.
    pub limits: AccountLimits,
    /// Keys that may sign user JWTs of this account besides the account key.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub signing_keys: Vec<String>,
    /// User public key → seconds since the epoch: user JWTs of that key issued at or before
    /// that time are refused, and their connections closed.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub revocations: BTreeMap<String, i64>,
    /// Always `"account"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always 2.
    pub version: u8,
}

/// Allow (and deny) lists of a user's publish or subscribe permission.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubjectRules {
    /// Allowed subjects; empty with an empty deny list means everything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allow: Vec<String>,
    /// Denied subjects.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deny: Vec<String>,
}

/// How many replies a user may send to a request it received, and for how long.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseRules {
    /// Replies per request.
    pub max: i64,
    /// Window in nanoseconds; 0: the server default.
    pub ttl: i64,
}

/// `nats` of a user JWT (signed by its account, or an account signing key with
/// `issuer_account` set).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserClaims {
    /// Publish permission.
    #[serde(rename = "pub", default)]
    pub publish: SubjectRules,
    /// Subscribe permission.
    #[serde(rename = "sub", default)]
    pub subscribe: SubjectRules,
    /// Replies to received requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resp: Option<ResponseRules>,
    /// Subscriptions.
    pub subs: i64,
    /// Bytes in flight.
    pub data: i64,
    /// Largest message payload.
    pub payload: i64,
    /// The account, when a signing key issued this JWT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer_account: Option<String>,
    /// Always `"user"`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Always 2.
    pub version: u8,
}

impl UserClaims {
    /// A user with the given rules and no limits.
    pub fn new(
        publish: SubjectRules,
        subscribe: SubjectRules,
        resp: Option<ResponseRules>,
    ) -> Self {
        Self {
            publish,
            subscribe,
            resp,
            subs: NO_LIMIT,
            data: NO_LIMIT,
            payload: NO_LIMIT,
            issuer_account: None,
            kind: "user".into(),
            version: 2,
        }
    }
}

impl OperatorClaims {
    /// An operator with `signing_keys` and `system_account`.
    pub fn new(signing_keys: Vec<String>, system_account: String) -> Self {
        Self {
            signing_keys,
            system_account,
            kind: "operator".into(),
            version: 2,
        }
    }
}

impl AccountClaims {
    /// An account with `limits` and `signing_keys`, nothing revoked.
    pub fn new(limits: AccountLimits, signing_keys: Vec<String>) -> Self {
        Self {
            limits,
            signing_keys,
            revocations: BTreeMap::new(),
            kind: "account".into(),
            version: 2,
        }
    }
}

/// Signs `claims` with `issuer`: sets `iss` and `jti`, returns the JWT.
pub fn encode<N: Serialize>(mut claims: Claims<N>, issuer: &KeyPair) -> Result<String, JwtError> {
    claims.iss = issuer.public_key();
    claims.jti = String::new();
    let unsigned = serde_json::to_vec(&claims).map_err(|e| malformed(e.to_string()))?;
    let digest = sha2::Sha512_256::digest(&unsigned);
    claims.jti = data_encoding::BASE32_NOPAD.encode(&digest);
    let body = serde_json::to_vec(&claims).map_err(|e| malformed(e.to_string()))?;
    let signing_input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(HEADER),
        URL_SAFE_NO_PAD.encode(body)
    );
    let signature = issuer
        .sign(signing_input.as_bytes())
        .map_err(|source| JwtError::Key {
            what: "signing",
            source,
        })?;
    Ok(format!(
        "{signing_input}.{}",
        URL_SAFE_NO_PAD.encode(signature)
    ))
}

/// Decodes `jwt` and checks its signature against the issuer it names. Says nothing about
/// whether that issuer is trusted: compare `iss` (or `nats.issuer_account`) yourself.
pub fn decode<N: DeserializeOwned>(jwt: &str) -> Result<Claims<N>, JwtError> {
    let mut parts = jwt.trim().split('.');
    let (Some(header), Some(body), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three dot-separated parts"));
    };
    let header_json = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|e| malformed(format!("header: {e}")))?;
    let header_value: serde_json::Value =
        serde_json::from_slice(&header_json).map_err(|e| malformed(format!("header: {e}")))?;
    if header_value.get("alg").and_then(|v| v.as_str()) != Some("ed25519-nkey") {
        return Err(malformed("header alg is not ed25519-nkey"));
    }
    let body_json = URL_SAFE_NO_PAD
        .decode(body)
        .map_err(|e| malformed(format!("claims: {e}")))?;
    let claims: Claims<N> =
        serde_json::from_slice(&body_json).map_err(|e| malformed(format!("claims: {e}")))?;
    let signature = URL_SAFE_NO_PAD
        .decode(signature)
        .map_err(|e| malformed(format!("signature: {e}")))?;
    let issuer = KeyPair::from_public_key(&claims.iss).map_err(|source| JwtError::Key {
        what: "issuer",
        source,
    })?;
    let signing_input = &jwt.trim()[..header.len() + 1 + body.len()];
    issuer
        .verify(signing_input.as_bytes(), &signature)
        .map_err(|_| JwtError::BadSignature {
            issuer: claims.iss.clone(),
        })?;
    Ok(claims)
}

/// A `.creds` file: the user JWT and the seed that signs the server's nonce, in the blocks
/// nats tools read.
pub fn creds_file(jwt: &str, seed: &str) -> String {
    format!(
        "-----BEGIN NATS USER JWT-----\n{jwt}\n------END NATS USER JWT------\n\n\
         ************************* IMPORTANT *************************\n\
         NKEY Seed printed below can be used to sign and prove identity.\n\
         NKEYs are sensitive and should be treated as secrets.\n\n\
         -----BEGIN USER NKEY SEED-----\n{seed}\n------END USER NKEY SEED------\n\n\
         *************************************************************\n"
    )
}

/// The JWT and seed of a `.creds` file.
pub fn parse_creds(text: &str) -> Result<(String, String), JwtError> {
    let block = |begin: &str, missing: &'static str| {
        text.lines()
            .skip_while(|l| !(l.starts_with("-----BEGIN") && l.contains(begin)))
            .nth(1)
            .map(|l| l.trim().to_owned())
            .filter(|l| !l.is_empty() && !l.starts_with("---"))
            .ok_or(JwtError::Creds { missing })
    };
    Ok((block("JWT", "JWT")?, block("SEED", "seed")?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user_claims(subject: &KeyPair) -> Claims<UserClaims> {
        Claims {
            jti: String::new(),
            aud: None,
            iat: 1_700_000_000,
            iss: String::new(),
            name: "dev-1".into(),
            sub: subject.public_key(),
            exp: Some(1_800_000_000),
            nats: UserClaims::new(
                SubjectRules {
                    allow: vec!["a.>".into()],
                    deny: vec![],
                },
                SubjectRules::default(),
                Some(ResponseRules { max: 1, ttl: 0 }),
            ),
        }
    }

    #[test]
    fn encoded_jwts_decode_and_verify() {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let jwt = encode(user_claims(&user), &account).expect("encode");
        let decoded: Claims<UserClaims> = decode(&jwt).expect("decode");
        assert_eq!(decoded.iss, account.public_key());
        assert_eq!(decoded.sub, user.public_key());
        assert_eq!(decoded.nats.publish.allow, vec!["a.>".to_owned()]);
        assert_eq!(decoded.jti.len(), 52, "base32 of 32 bytes");
        let header = jwt.split('.').next().expect("header");
        assert_eq!(
            URL_SAFE_NO_PAD.decode(header).expect("b64"),
            HEADER.as_bytes()
        );
    }

    #[test]
    fn the_wire_names_are_the_ones_nats_server_reads() {
        let user = KeyPair::new_user();
        let jwt = encode(user_claims(&user), &KeyPair::new_account()).expect("encode");
        let body = URL_SAFE_NO_PAD
            .decode(jwt.split('.').nth(1).expect("body"))
            .expect("b64");
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        let nats = &value["nats"];
        assert_eq!(nats["type"], "user");
        assert_eq!(nats["version"], 2);
        assert_eq!(nats["pub"]["allow"][0], "a.>");
        assert_eq!(nats["resp"]["max"], 1);
        assert_eq!(nats["subs"], -1);
        assert_eq!(value["exp"], 1_800_000_000);
    }

    #[test]
    fn a_tampered_jwt_is_refused() {
        let account = KeyPair::new_account();
        let user = KeyPair::new_user();
        let jwt = encode(user_claims(&user), &account).expect("encode");
        let mut forged = user_claims(&user);
        forged.nats.publish.allow = vec![">".into()];
        forged.iss = account.public_key();
        let forged_body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"));
        let mut parts: Vec<&str> = jwt.split('.').collect();
        parts[1] = &forged_body;
        let err = decode::<UserClaims>(&parts.join(".")).expect_err("forged");
        assert!(matches!(err, JwtError::BadSignature { .. }), "{err}");
        assert!(decode::<UserClaims>("a.b").is_err());
    }

    #[test]
    fn jti_covers_the_nats_part() {
        let operator = KeyPair::new_operator();
        let account = KeyPair::new_account();
        let claims = |revoked: &[&str]| Claims {
            jti: String::new(),
            aud: None,
            iat: 1,
            iss: String::new(),
            name: "FLEET".into(),
            sub: account.public_key(),
            exp: None,
            nats: AccountClaims {
                revocations: revoked.iter().map(|k| ((*k).to_owned(), 1)).collect(),
                ..AccountClaims::new(AccountLimits::unlimited(), vec![])
            },
        };
        let a: Claims<AccountClaims> =
            decode(&encode(claims(&[]), &operator).expect("a")).expect("a");
        let b: Claims<AccountClaims> =
            decode(&encode(claims(&["UX"]), &operator).expect("b")).expect("b");
        assert_ne!(a.jti, b.jti);
    }

    #[test]
    fn creds_files_round_trip() {
        let user = KeyPair::new_user();
        let seed = user.seed().expect("seed");
        let text = creds_file("header.body.sig", &seed);
        assert_eq!(
            parse_creds(&text).expect("parse"),
            ("header.body.sig".to_owned(), seed)
        );
        assert!(matches!(
            parse_creds("nothing here"),
            Err(JwtError::Creds { missing: "JWT" })
        ));
    }
}

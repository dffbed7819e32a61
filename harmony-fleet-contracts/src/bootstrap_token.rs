//! Bootstrap tokens (adr/0020): like kubeadm join tokens, a shared secret that pre-approves
//! the devices that present it, instead of an admin approving each key.
//!
//! A token is `<id>.<secret>` ([`BootstrapToken`]): the id (6 characters `[a-z0-9]`) names the
//! Secret `fleet-bootstrap-token-<id>` of type [`SECRET_TYPE`] in the fleet namespace, which
//! holds the secret (16 characters `[a-z0-9]`), the expiration and the usage count
//! ([`TokenRecord`], keys in [`data_keys`]). `harmony-fleet-deploy token create` writes it; the
//! operator reads it and counts each use.
//!
//! The secret half is never printed by `Debug` of any type here: logging a request or a record
//! never leaks it.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use jiff::Timestamp;
use serde::{Deserialize, Serialize};

/// The Secret type of a bootstrap token.
pub const SECRET_TYPE: &str = "bootstrap.fleet.nationtech.io/token";

/// Name prefix of a bootstrap token's Secret: `fleet-bootstrap-token-<id>`.
pub const SECRET_NAME_PREFIX: &str = "fleet-bootstrap-token-";

/// The namespace the tokens live in unless configured otherwise (`--token-namespace`).
pub const DEFAULT_NAMESPACE: &str = "fleet-system";

/// Length of a token id.
pub const ID_LEN: usize = 6;

/// Length of a token secret.
pub const SECRET_LEN: usize = 16;

/// The alphabet of ids and secrets.
pub const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";

/// Keys of the token Secret's `data`.
pub mod data_keys {
    /// The token id (equal to the Secret name's suffix).
    pub const TOKEN_ID: &str = "token-id";
    /// The token secret.
    pub const TOKEN_SECRET: &str = "token-secret";
    /// When the token stops working (RFC 3339).
    pub const EXPIRATION: &str = "expiration";
    /// How many devices may use it.
    pub const USAGE_LIMIT: &str = "usage-limit";
    /// How many devices used it.
    pub const USAGES: &str = "usages";
}

/// Annotation on a `Device` approved by a token: the token's id.
pub const APPROVED_BY_ANNOTATION: &str = "fleet.nationtech.io/approved-by-token";

/// Why a token or its Secret is not well formed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenFormatError {
    /// The token string is not `<id>.<secret>`.
    #[error(
        "bootstrap token is not <id>.<secret> ({ID_LEN} and {SECRET_LEN} characters a-z0-9, as `harmony-fleet-deploy token create` prints)"
    )]
    Token,
    /// A token id is not 6 characters `[a-z0-9]`.
    #[error("bootstrap token id {id:?} is not {ID_LEN} characters a-z0-9")]
    Id {
        /// The value given.
        id: String,
    },
    /// A field of the token Secret is missing or unreadable.
    #[error(
        "bootstrap token Secret {name}: data.{key} {problem}; recreate it with `harmony-fleet-deploy token create`"
    )]
    Field {
        /// The Secret's name.
        name: String,
        /// The data key.
        key: &'static str,
        /// What is wrong with it.
        problem: String,
    },
}

fn in_alphabet(s: &str, len: usize) -> bool {
    s.len() == len && s.bytes().all(|b| ALPHABET.contains(&b))
}

/// A token id: 6 characters `[a-z0-9]`; not secret.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokenId(String);

impl TokenId {
    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name of this token's Secret.
    pub fn secret_name(&self) -> String {
        format!("{SECRET_NAME_PREFIX}{}", self.0)
    }
}

impl FromStr for TokenId {
    type Err = TokenFormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if in_alphabet(s, ID_LEN) {
            Ok(Self(s.to_owned()))
        } else {
            Err(TokenFormatError::Id { id: s.to_owned() })
        }
    }
}

impl fmt::Display for TokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A token as a device presents it, `<id>.<secret>`. On the wire it is any string (a malformed
/// one is refused by the operator with the reason recorded, not dropped as unreadable JSON);
/// `FromStr` checks the format for configuration files. `Debug` shows the id only.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BootstrapToken(String);

impl BootstrapToken {
    /// The token of `id` and `secret`.
    pub fn new(id: &TokenId, secret: &str) -> Self {
        Self(format!("{id}.{secret}"))
    }

    /// The id and the secret, if well formed.
    pub fn parts(&self) -> Result<(TokenId, &str), TokenFormatError> {
        let (id, secret) = self.0.split_once('.').ok_or(TokenFormatError::Token)?;
        if !in_alphabet(id, ID_LEN) || !in_alphabet(secret, SECRET_LEN) {
            return Err(TokenFormatError::Token);
        }
        Ok((TokenId(id.to_owned()), secret))
    }

    /// The whole token, secret included: for the one place that prints it on creation.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl FromStr for BootstrapToken {
    type Err = TokenFormatError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let token = Self(s.trim().to_owned());
        token.parts()?;
        Ok(token)
    }
}

impl fmt::Debug for BootstrapToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.parts() {
            Ok((id, _)) => write!(f, "BootstrapToken({id}.<redacted>)"),
            Err(_) => f.write_str("BootstrapToken(<malformed, redacted>)"),
        }
    }
}

/// What a token's Secret holds.
#[derive(Clone, PartialEq, Eq)]
pub struct TokenRecord {
    /// The id.
    pub id: TokenId,
    /// The secret half.
    pub secret: String,
    /// When it stops working.
    pub expiration: Timestamp,
    /// How many devices may use it.
    pub usage_limit: u32,
    /// How many devices used it.
    pub usages: u32,
}

impl fmt::Debug for TokenRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenRecord")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .field("expiration", &self.expiration)
            .field("usage_limit", &self.usage_limit)
            .field("usages", &self.usages)
            .finish()
    }
}

impl TokenRecord {
    /// The token devices present.
    pub fn token(&self) -> BootstrapToken {
        BootstrapToken::new(&self.id, &self.secret)
    }

    /// The Secret's `data`, as text (base64 is the Kubernetes client's business).
    pub fn to_data(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            (data_keys::TOKEN_ID.to_owned(), self.id.to_string()),
            (data_keys::TOKEN_SECRET.to_owned(), self.secret.clone()),
            (
                data_keys::EXPIRATION.to_owned(),
                self.expiration.to_string(),
            ),
            (
                data_keys::USAGE_LIMIT.to_owned(),
                self.usage_limit.to_string(),
            ),
            (data_keys::USAGES.to_owned(), self.usages.to_string()),
        ])
    }

    /// Reads the `data` of the Secret `name` (decoded bytes per key).
    pub fn from_data(
        name: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Self, TokenFormatError> {
        let field = |key: &'static str, problem: &str| TokenFormatError::Field {
            name: name.to_owned(),
            key,
            problem: problem.to_owned(),
        };
        let text = |key: &'static str| -> Result<&str, TokenFormatError> {
            let bytes = data.get(key).ok_or_else(|| field(key, "is missing"))?;
            std::str::from_utf8(bytes)
                .map(str::trim)
                .map_err(|_| field(key, "is not UTF-8"))
        };
        let id: TokenId = text(data_keys::TOKEN_ID)?
            .parse()
            .map_err(|_| field(data_keys::TOKEN_ID, "is not 6 characters a-z0-9"))?;
        if name != id.secret_name() {
            return Err(field(
                data_keys::TOKEN_ID,
                &format!(
                    "does not match the Secret name (expected {})",
                    id.secret_name()
                ),
            ));
        }
        let secret = text(data_keys::TOKEN_SECRET)?;
        if !in_alphabet(secret, SECRET_LEN) {
            return Err(field(
                data_keys::TOKEN_SECRET,
                "is not 16 characters a-z0-9",
            ));
        }
        let expiration: Timestamp = text(data_keys::EXPIRATION)?.parse().map_err(|_| {
            field(
                data_keys::EXPIRATION,
                "is not an RFC 3339 time (e.g. 2026-12-31T00:00:00Z)",
            )
        })?;
        let number = |key: &'static str| -> Result<u32, TokenFormatError> {
            text(key)?
                .parse()
                .map_err(|_| field(key, "is not a whole number"))
        };
        Ok(Self {
            id,
            secret: secret.to_owned(),
            expiration,
            usage_limit: number(data_keys::USAGE_LIMIT)?,
            usages: number(data_keys::USAGES)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> TokenRecord {
        TokenRecord {
            id: "abc123".parse().expect("id"),
            secret: "0123456789abcdef".into(),
            expiration: "2026-12-31T00:00:00Z".parse().expect("time"),
            usage_limit: 3,
            usages: 1,
        }
    }

    fn bytes(data: BTreeMap<String, String>) -> BTreeMap<String, Vec<u8>> {
        data.into_iter().map(|(k, v)| (k, v.into_bytes())).collect()
    }

    #[test]
    fn a_record_round_trips_through_secret_data() {
        let r = record();
        let back = TokenRecord::from_data("fleet-bootstrap-token-abc123", &bytes(r.to_data()))
            .expect("reads");
        assert_eq!(back, r);
        assert_eq!(r.token().expose(), "abc123.0123456789abcdef");
    }

    #[test]
    fn bad_secret_data_names_the_key() {
        let mut data = bytes(record().to_data());
        data.insert(data_keys::USAGES.into(), b"many".to_vec());
        let err = TokenRecord::from_data("fleet-bootstrap-token-abc123", &data)
            .expect_err("bad")
            .to_string();
        assert!(err.contains("data.usages"), "{err}");
        let err =
            TokenRecord::from_data("fleet-bootstrap-token-zzz999", &bytes(record().to_data()))
                .expect_err("name mismatch")
                .to_string();
        assert!(err.contains("token-id"), "{err}");
    }

    #[test]
    fn tokens_parse_and_never_debug_their_secret() {
        let token: BootstrapToken = "abc123.0123456789abcdef".parse().expect("token");
        let (id, secret) = token.parts().expect("parts");
        assert_eq!((id.as_str(), secret), ("abc123", "0123456789abcdef"));
        let shown = format!("{token:?} {:?}", record());
        assert!(!shown.contains("0123456789abcdef"), "{shown}");
        assert!(shown.contains("abc123"), "{shown}");
        for bad in [
            "abc123",
            "abc12.0123456789abcdef",
            "ABC123.0123456789abcdef",
            "abc123.short",
        ] {
            assert!(bad.parse::<BootstrapToken>().is_err(), "{bad}");
        }
    }
}

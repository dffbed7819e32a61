//! Whether a bootstrap token (adr/0020) may approve one more device: a pure function of the
//! presented token, its Secret's record and the clock, tested without servers. The shell that
//! reads the Secret and counts the use is [`super::service`]'s `tokens` module.

use harmony_fleet_contracts::bootstrap_token::{BootstrapToken, TokenId, TokenRecord};
use jiff::Timestamp;

/// Why a token does not approve the device. The messages never contain the secret; each
/// names what to do. The request stays pending: an admin can still approve it by hand.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum TokenRefusal {
    /// Not `<id>.<secret>`.
    #[error(
        "bootstrap token is malformed (expected <id>.<secret>, 6 and 16 characters a-z0-9): fix [credentials] bootstrap_token in the agent's config, or approve the device by hand"
    )]
    Malformed,
    /// No Secret for the id.
    #[error(
        "bootstrap token {id} does not exist (no Secret {name} in namespace {namespace}): create one with `harmony-fleet-deploy token create`, or approve the device by hand",
        name = id.secret_name()
    )]
    NotFound {
        /// The presented id.
        id: TokenId,
        /// Where the operator looked.
        namespace: String,
    },
    /// The Secret exists but is not a token the operator can read.
    #[error("bootstrap token {id} cannot be used: {problem}; or approve the device by hand")]
    Unreadable {
        /// The presented id.
        id: TokenId,
        /// What is wrong with the Secret.
        problem: String,
    },
    /// The secret half does not match.
    #[error(
        "bootstrap token {id}: wrong secret; give the device the whole token `harmony-fleet-deploy token create` printed, or approve it by hand"
    )]
    WrongSecret {
        /// The presented id.
        id: TokenId,
    },
    /// Past its expiration.
    #[error(
        "bootstrap token {id} expired at {expiration}: create a new one with `harmony-fleet-deploy token create --ttl …`, or approve the device by hand"
    )]
    Expired {
        /// The token.
        id: TokenId,
        /// When it expired.
        expiration: Timestamp,
    },
    /// Used as often as allowed.
    #[error(
        "bootstrap token {id} is used up ({limit} of {limit} uses): create a new one with `harmony-fleet-deploy token create --usages N`, or approve the device by hand"
    )]
    Exhausted {
        /// The token.
        id: TokenId,
        /// Its usage limit.
        limit: u32,
    },
}

/// The id and secret of a presented token, or [`TokenRefusal::Malformed`].
pub fn parse(token: &BootstrapToken) -> Result<(TokenId, &str), TokenRefusal> {
    token.parts().map_err(|_| TokenRefusal::Malformed)
}

/// Equal in time independent of where the first difference is (the lengths are public: the
/// format fixes them).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Checks that `secret` (presented with `id`) opens `record` at `now` and that a use is left.
/// `record`: `None` when no Secret exists for `id` (looked for in `namespace`).
pub fn check(
    id: &TokenId,
    secret: &str,
    record: Option<&TokenRecord>,
    namespace: &str,
    now: Timestamp,
) -> Result<(), TokenRefusal> {
    let Some(record) = record else {
        return Err(TokenRefusal::NotFound {
            id: id.clone(),
            namespace: namespace.to_owned(),
        });
    };
    if !constant_time_eq(record.secret.as_bytes(), secret.as_bytes()) {
        return Err(TokenRefusal::WrongSecret { id: id.clone() });
    }
    if now >= record.expiration {
        return Err(TokenRefusal::Expired {
            id: id.clone(),
            expiration: record.expiration,
        });
    }
    if record.usages >= record.usage_limit {
        return Err(TokenRefusal::Exhausted {
            id: id.clone(),
            limit: record.usage_limit,
        });
    }
    Ok(())
}

/// `record` after one more use.
pub fn used_once(record: &TokenRecord) -> TokenRecord {
    TokenRecord {
        usages: record.usages.saturating_add(1),
        ..record.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef";

    fn now() -> Timestamp {
        "2026-12-07T12:00:00Z".parse().expect("time")
    }

    fn id() -> TokenId {
        "abc123".parse().expect("id")
    }

    fn record(usages: u32, limit: u32, expiration: &str) -> TokenRecord {
        TokenRecord {
            id: id(),
            secret: SECRET.into(),
            expiration: expiration.parse().expect("time"),
            usage_limit: limit,
            usages,
        }
    }

    fn valid() -> TokenRecord {
        record(0, 2, "2026-12-08T12:00:00Z")
    }

    #[test]
    fn a_valid_token_with_a_use_left_passes_and_counts_one_use() {
        assert_eq!(
            check(&id(), SECRET, Some(&valid()), "fleet-system", now()),
            Ok(())
        );
        let once = used_once(&valid());
        assert_eq!(once.usages, 1);
        assert_eq!(
            check(&id(), SECRET, Some(&once), "fleet-system", now()),
            Ok(())
        );
    }

    #[test]
    fn a_malformed_token_is_refused() {
        let token: BootstrapToken =
            serde_json::from_str("\"abc123-0123456789abcdef\"").expect("any string parses");
        assert_eq!(parse(&token), Err(TokenRefusal::Malformed));
        let ok: BootstrapToken = "abc123.0123456789abcdef".parse().expect("token");
        assert_eq!(parse(&ok).expect("parts").0, id());
    }

    #[test]
    fn an_unknown_token_is_refused_naming_where_it_was_looked_for() {
        let refusal = check(&id(), SECRET, None, "fleet-system", now()).expect_err("not found");
        let text = refusal.to_string();
        assert!(text.contains("fleet-bootstrap-token-abc123"), "{text}");
        assert!(text.contains("fleet-system"), "{text}");
        assert!(text.contains("token create"), "{text}");
    }

    #[test]
    fn a_wrong_secret_is_refused_without_showing_either_secret() {
        let refusal = check(&id(), "ffffffffffffffff", Some(&valid()), "ns", now())
            .expect_err("wrong secret");
        assert_eq!(refusal, TokenRefusal::WrongSecret { id: id() });
        let text = refusal.to_string();
        assert!(
            !text.contains(SECRET) && !text.contains("ffffffffffffffff"),
            "{text}"
        );
        // A shorter secret cannot match a prefix.
        assert!(check(&id(), &SECRET[..8], Some(&valid()), "ns", now()).is_err());
    }

    #[test]
    fn an_expired_token_is_refused() {
        let expired = record(0, 5, "2026-12-07T12:00:00Z");
        let refusal = check(&id(), SECRET, Some(&expired), "ns", now()).expect_err("expired");
        assert!(matches!(refusal, TokenRefusal::Expired { .. }));
        assert!(refusal.to_string().contains("--ttl"), "{refusal}");
    }

    #[test]
    fn an_exhausted_token_is_refused() {
        let used = used_once(&record(0, 1, "2026-12-08T12:00:00Z"));
        let refusal = check(&id(), SECRET, Some(&used), "ns", now()).expect_err("used up");
        assert_eq!(refusal, TokenRefusal::Exhausted { id: id(), limit: 1 });
        assert!(refusal.to_string().contains("--usages"), "{refusal}");
        // A limit of zero is used up from the start.
        assert!(
            check(
                &id(),
                SECRET,
                Some(&record(0, 0, "2026-12-08T12:00:00Z")),
                "ns",
                now()
            )
            .is_err()
        );
    }

    #[test]
    fn the_secret_comparison_is_exact() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}

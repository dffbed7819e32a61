//! `harmony-fleet-deploy token create|list`: bootstrap tokens (adr/0020), like kubeadm join
//! tokens. A token Secret `fleet-bootstrap-token-<id>` in the fleet namespace pre-approves the
//! devices that present `<id>.<secret>` (`[credentials] bootstrap_token` in agent.toml), up to
//! its usage limit and until it expires. The operator counts the uses.
//!
//! `list` never shows the secret half; `create` prints the whole token once.

use std::time::Duration;

use harmony_fleet_contracts::bootstrap_token::{
    ALPHABET, ID_LEN, SECRET_LEN, SECRET_TYPE, TokenRecord,
};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::api::{ListParams, PostParams};
use rand::Rng;

use crate::error::DeployError;

/// Default lifetime of a token.
pub const DEFAULT_TTL: &str = "24h";

/// Parses `--ttl`: a whole number with unit `s`, `m`, `h` or `d` (`24h`, `7d`).
pub fn parse_ttl(text: &str) -> Result<Duration, DeployError> {
    let bad = || DeployError::Token {
        flag: "--ttl",
        reason: format!(
            "{text:?} is not a lifetime: give a whole number with s, m, h or d, e.g. --ttl 24h or --ttl 7d"
        ),
    };
    let text = text.trim();
    let split = text.len().checked_sub(1).ok_or_else(bad)?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().map_err(|_| bad())?;
    let unit_secs = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad()),
    };
    let secs = number.checked_mul(unit_secs).ok_or_else(bad)?;
    if secs == 0 {
        return Err(DeployError::Token {
            flag: "--ttl",
            reason: "is zero: a token that is already expired approves nothing; give e.g. --ttl 1h"
                .into(),
        });
    }
    Ok(Duration::from_secs(secs))
}

fn random(rng: &mut impl Rng, len: usize) -> String {
    (0..len)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect()
}

/// Checks `--usages`.
pub fn check_usages(usages: u32) -> Result<(), DeployError> {
    if usages == 0 {
        return Err(DeployError::Token {
            flag: "--usages",
            reason: "is 0: a token nobody may use approves nothing; give at least 1".into(),
        });
    }
    Ok(())
}

/// A new token record: random id and secret, expiring `ttl` after `now`, `usages` uses.
pub fn new_record(
    rng: &mut impl Rng,
    now: Timestamp,
    ttl: Duration,
    usages: u32,
) -> Result<TokenRecord, DeployError> {
    check_usages(usages)?;
    let ttl_error = || DeployError::Token {
        flag: "--ttl",
        reason: "is too long: give at most a few years, e.g. --ttl 365d".into(),
    };
    let signed = SignedDuration::try_from(ttl).map_err(|_| ttl_error())?;
    let expiration = now.checked_add(signed).map_err(|_| ttl_error())?;
    let id = random(rng, ID_LEN)
        .parse()
        .map_err(|e| DeployError::Token {
            flag: "--ttl",
            reason: format!("internal: generated id refused: {e}"),
        })?;
    Ok(TokenRecord {
        id,
        secret: random(rng, SECRET_LEN),
        expiration,
        usage_limit: usages,
        usages: 0,
    })
}

/// The Secret holding `record` in `namespace`.
pub fn secret(record: &TokenRecord, namespace: &str) -> Secret {
    Secret {
        metadata: crate::k8s::meta(&record.id.secret_name(), Some(namespace), "bootstrap-token"),
        type_: Some(SECRET_TYPE.to_owned()),
        string_data: Some(record.to_data()),
        ..Secret::default()
    }
}

/// What to tell the person who created `record`.
pub fn instructions(record: &TokenRecord, namespace: &str) -> String {
    format!(
        "Bootstrap token (Secret {namespace}/{name}; expires {expiration}; {limit} use(s)):\n\n    {token}\n\n\
         Put it in each device's agent.toml, next to bootstrap_creds:\n\n    [credentials]\n    type = \"nkey\"\n    bootstrap_creds = \"/etc/fleet-agent/bootstrap.creds\"\n    bootstrap_token = \"{token}\"\n\n\
         A device presenting it is approved without `device approve`; `harmony-fleet-deploy token list` shows the uses.\n\
         It is shown only now: keep it like a password.",
        name = record.id.secret_name(),
        expiration = record.expiration,
        limit = record.usage_limit,
        token = record.token().expose(),
    )
}

/// Creates a token in `namespace`.
pub async fn create(
    client: &kube::Client,
    namespace: &str,
    ttl: Duration,
    usages: u32,
) -> Result<TokenRecord, DeployError> {
    let record = new_record(&mut rand::rng(), Timestamp::now(), ttl, usages)?;
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &secret(&record, namespace))
        .await
        .map_err(|source| DeployError::Kube {
            action: format!(
                "creating Secret {namespace}/{} (does namespace {namespace} exist? --namespace)",
                record.id.secret_name()
            ),
            source,
        })?;
    Ok(record)
}

/// One line of `token list`: never the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRow {
    /// The id.
    pub id: String,
    /// Expiration (RFC 3339), or why the Secret is unreadable.
    pub expires: String,
    /// `usages/limit`.
    pub usages: String,
    /// Whether it can still approve a device at `now`.
    pub usable: bool,
}

/// The row of a token Secret.
pub fn row(secret: &Secret, now: Timestamp) -> TokenRow {
    let name = secret.metadata.name.clone().unwrap_or_default();
    let data = secret
        .data
        .iter()
        .flatten()
        .map(|(k, v)| (k.clone(), v.0.clone()))
        .collect();
    match TokenRecord::from_data(&name, &data) {
        Ok(r) => TokenRow {
            id: r.id.to_string(),
            expires: r.expiration.to_string(),
            usages: format!("{}/{}", r.usages, r.usage_limit),
            usable: now < r.expiration && r.usages < r.usage_limit,
        },
        Err(e) => TokenRow {
            id: name,
            expires: format!("unreadable: {e}"),
            usages: "-".into(),
            usable: false,
        },
    }
}

/// The tokens in `namespace`.
pub async fn list(client: &kube::Client, namespace: &str) -> Result<Vec<TokenRow>, DeployError> {
    let api: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let secrets = api
        .list(&ListParams::default().fields(&format!("type={SECRET_TYPE}")))
        .await
        .map_err(|source| DeployError::Kube {
            action: format!("listing bootstrap token Secrets in namespace {namespace}"),
            source,
        })?;
    let now = Timestamp::now();
    Ok(secrets.items.iter().map(|s| row(s, now)).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;

    #[test]
    fn ttl_takes_whole_units_and_names_the_flag() {
        assert_eq!(parse_ttl("24h").expect("24h"), Duration::from_secs(86_400));
        assert_eq!(
            parse_ttl("7d").expect("7d"),
            Duration::from_secs(7 * 86_400)
        );
        assert_eq!(parse_ttl("90s").expect("90s"), Duration::from_secs(90));
        for bad in ["", "h", "24", "1.5h", "-1h", "0h", "10y"] {
            let err = parse_ttl(bad).expect_err(bad).to_string();
            assert!(err.contains("--ttl"), "{bad}: {err}");
        }
    }

    #[test]
    fn a_new_token_has_the_format_and_the_listing_hides_its_secret() {
        let now: Timestamp = "2026-12-07T00:00:00Z".parse().expect("time");
        let record =
            new_record(&mut rand::rng(), now, Duration::from_secs(3600), 3).expect("record");
        let token = record.token();
        let (id, secret) = token.parts().expect("<id>.<secret>");
        assert_eq!((id.as_str().len(), secret.len()), (6, 16));
        assert_eq!(record.expiration.to_string(), "2026-12-07T01:00:00Z");
        let text = instructions(&record, "fleet-system");
        assert!(
            text.contains(token.expose()) && text.contains("bootstrap_token"),
            "{text}"
        );

        // What the API server returns: data, base64-decoded by the client.
        let mut stored = secret_of(&record);
        let row = row(&stored, now);
        assert_eq!(row.usages, "0/3");
        assert!(row.usable);
        assert!(!format!("{row:?}").contains(secret));
        stored.data = None;
        assert!(!super::row(&stored, now).usable);

        let err = new_record(&mut rand::rng(), now, Duration::from_secs(60), 0)
            .expect_err("zero uses")
            .to_string();
        assert!(err.contains("--usages"), "{err}");
    }

    fn secret_of(record: &TokenRecord) -> Secret {
        let mut secret = secret(record, "fleet-system");
        secret.data = secret.string_data.take().map(|data| {
            data.into_iter()
                .map(|(k, v)| (k, ByteString(v.into_bytes())))
                .collect()
        });
        secret
    }
}

//! The fleet account's JWT on nats-server's resolver: reading its current revocations at
//! start, and pushing a re-signed one (`$SYS.REQ.CLAIMS.UPDATE`) as a system-account user.

use std::collections::BTreeMap;

use harmony_fleet_contracts::jwt::{self, AccountClaims, Claims};
use harmony_fleet_contracts::trust::{CLAIMS_UPDATE_SUBJECT, FleetSigner, claims_lookup_subject};

use crate::error::{Error, Result};

/// The revocations of `account` as the resolver holds them (none if it holds no JWT).
pub async fn revocations(
    system: &async_nats::Client,
    account: &str,
) -> Result<BTreeMap<String, i64>> {
    let reply = system
        .request(claims_lookup_subject(account), "".into())
        .await
        .map_err(|e| Error::nats(format!("looking up the claims of account {account}"), e))?;
    if reply.payload.is_empty() {
        return Ok(BTreeMap::new());
    }
    let text = String::from_utf8_lossy(&reply.payload);
    let claims: Claims<AccountClaims> = jwt::decode(&text)
        .map_err(|e| Error::credential(format!("reading the JWT of account {account}"), e))?;
    Ok(claims.nats.revocations)
}

/// Signs the fleet account with `revocations` at `now` and pushes it; fails if the resolver
/// refuses it.
pub async fn push(
    system: &async_nats::Client,
    signer: &FleetSigner,
    revocations: BTreeMap<String, i64>,
    now: i64,
) -> Result<()> {
    let account = signer
        .fleet_account_jwt(revocations, now)
        .map_err(|e| Error::credential("signing the fleet account", e))?;
    let reply = system
        .request(CLAIMS_UPDATE_SUBJECT, account.into())
        .await
        .map_err(|e| Error::nats("pushing the fleet account JWT", e))?;
    let body: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap_or_default();
    if body.get("error").is_some() || body["data"]["code"] != 200 {
        return Err(Error::nats(
            "pushing the fleet account JWT",
            format!("the resolver refused it: {body}"),
        ));
    }
    Ok(())
}

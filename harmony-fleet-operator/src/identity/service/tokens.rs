//! The shell of bootstrap tokens (adr/0020): take one use of the presented token from its
//! Secret — read, check ([`token::check`]), replace with the read's `resourceVersion`, so two
//! devices racing for the last use cannot both win — then approve the key on the `Device`
//! exactly as an admin would (`spec.publicKey`), naming the token in an annotation, and issue
//! the credential. A refused token is recorded in `status.enrollment.lastRefusal` and the
//! request stays pending for a manual approval. The secret half is never logged.

use std::collections::BTreeMap;

use async_nats::Subject;
use harmony_fleet_contracts::bootstrap_token::{
    APPROVED_BY_ANNOTATION, BootstrapToken, SECRET_TYPE, TokenId, TokenRecord, data_keys,
};
use harmony_fleet_contracts::identity::EnrollRequest;
use jiff::Timestamp;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::State;
use crate::identity::token::{self, TokenRefusal};

/// Field manager of token approvals (a merge patch, like `kubectl patch`: the identity
/// service's server-side applies never drop the approved key).
pub const TOKEN_FIELD_MANAGER: &str = "harmony-fleet-operator-bootstrap-token";

/// How often a conflicting replace is retried before giving up for this request.
const ATTEMPTS: usize = 5;

/// What taking a use of a token came to.
#[derive(Debug)]
pub enum Outcome {
    /// One use taken; the device may be approved.
    Taken {
        /// The token.
        id: TokenId,
        /// Uses after this one.
        usages: u32,
        /// The limit.
        limit: u32,
    },
    /// The token does not approve it.
    Refused(TokenRefusal),
    /// The API server failed; nothing was taken.
    Failed(String),
}

/// Takes one use of `token` from its Secret in `secrets`' namespace `namespace`.
pub async fn take_use(secrets: &Api<Secret>, namespace: &str, token: &BootstrapToken) -> Outcome {
    let (id, presented) = match token::parse(token) {
        Ok(parts) => parts,
        Err(refusal) => return Outcome::Refused(refusal),
    };
    let name = id.secret_name();
    for attempt in 1..=ATTEMPTS {
        let mut secret = match secrets.get_opt(&name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                return Outcome::Refused(TokenRefusal::NotFound {
                    id,
                    namespace: namespace.to_owned(),
                });
            }
            Err(e) => return Outcome::Failed(format!("reading Secret {namespace}/{name}: {e}")),
        };
        if secret.type_.as_deref() != Some(SECRET_TYPE) {
            return Outcome::Refused(TokenRefusal::Unreadable {
                problem: format!(
                    "Secret {namespace}/{name} has type {:?}, not {SECRET_TYPE}",
                    secret.type_.as_deref().unwrap_or("")
                ),
                id,
            });
        }
        let mut data = secret.data.take().unwrap_or_default();
        let bytes: BTreeMap<String, Vec<u8>> =
            data.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect();
        let record = match TokenRecord::from_data(&name, &bytes) {
            Ok(record) => record,
            Err(e) => {
                return Outcome::Refused(TokenRefusal::Unreadable {
                    id,
                    problem: e.to_string(),
                });
            }
        };
        if let Err(refusal) =
            token::check(&id, presented, Some(&record), namespace, Timestamp::now())
        {
            return Outcome::Refused(refusal);
        }
        let next = token::used_once(&record);
        data.insert(
            data_keys::USAGES.to_owned(),
            ByteString(next.usages.to_string().into_bytes()),
        );
        secret.data = Some(data);
        // `metadata.resourceVersion` is the read's: the API server refuses the replace (409)
        // if another use was taken in between, and the loop reads and checks again.
        match secrets
            .replace(&name, &PostParams::default(), &secret)
            .await
        {
            Ok(_) => {
                return Outcome::Taken {
                    id,
                    usages: next.usages,
                    limit: next.usage_limit,
                };
            }
            Err(kube::Error::Api(status)) if status.code == 409 => {
                tracing::debug!(token_id = %id, attempt, "bootstrap token changed while taking a use; reading it again");
            }
            Err(e) => {
                return Outcome::Failed(format!(
                    "counting a use of Secret {namespace}/{name}: {e}"
                ));
            }
        }
    }
    Outcome::Failed(format!(
        "Secret {namespace}/{name} changed {ATTEMPTS} times while taking a use; the device asks again"
    ))
}

impl State {
    /// Approves `request`'s key with its bootstrap token, if it carries one, and answers it
    /// with a credential. Returns whether it answered; otherwise the caller holds the request
    /// (pending, for a manual approval).
    pub(super) async fn try_token(
        &mut self,
        request: &EnrollRequest,
        key: &str,
        reply: Option<&Subject>,
    ) -> bool {
        let Some(presented) = &request.bootstrap_token else {
            return false;
        };
        let name = request.device_id.to_string();
        let namespace = self.options.token_namespace.clone();
        let (id, usages, limit) = match take_use(&self.secrets, &namespace, presented).await {
            Outcome::Taken { id, usages, limit } => (id, usages, limit),
            Outcome::Refused(refusal) => {
                let reason = refusal.to_string();
                tracing::warn!(device = %name, token = ?presented, %reason, "bootstrap token refused; the request stays pending for a manual approval");
                self.report_refusal(&name, &reason).await;
                return false;
            }
            Outcome::Failed(message) => {
                tracing::warn!(device = %name, token = ?presented, error = %message, "bootstrap token not checked; the request stays pending");
                return false;
            }
        };
        let body = json!({
            "metadata": { "annotations": { APPROVED_BY_ANNOTATION: id.as_str() } },
            "spec": { "publicKey": key },
        });
        let params = PatchParams {
            field_manager: Some(TOKEN_FIELD_MANAGER.to_owned()),
            ..PatchParams::default()
        };
        if let Err(e) = self
            .devices
            .patch(&name, &params, &Patch::Merge(body))
            .await
        {
            tracing::warn!(device = %name, token_id = %id, error = %e, "approving with a bootstrap token failed after taking a use; the request stays pending");
            return false;
        }
        self.records.entry(name.clone()).or_default().approved_key = Some(key.to_owned());
        tracing::info!(device = %name, key, token_id = %id, usages, limit, "approved by bootstrap token");
        let answer = self.issue(&request.device_id, key).await;
        self.held.remove(&name);
        self.reply(reply, &answer).await;
        true
    }
}

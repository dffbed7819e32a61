//! Revocation: the fleet account re-signed with the revoked keys, `Revoked` shown on the
//! Devices it covers, and a deleted `Device` released once its credential is revoked.

use super::*;

impl State {
    /// Revokes what [`decide::to_revoke`] lists, by pushing a re-signed fleet account.
    pub(super) async fn reconcile_revocations(&mut self) {
        let needed = decide::to_revoke(self.records.values());
        let Some(next) =
            decide::revocations(&self.revocations, &needed, now(), self.options.lifetime)
        else {
            return;
        };
        match self.push_account(next.clone()).await {
            Ok(()) => {
                tracing::info!(revoked = next.len(), "fleet account revocations updated");
                self.revocations = next;
                self.mark_revoked().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "pushing the fleet account's revocations failed; retrying on the next Device change")
            }
        }
    }

    /// Shows `Revoked` on blacklisted devices whose credential is now revoked.
    async fn mark_revoked(&mut self) {
        let revoked: Vec<String> = self
            .records
            .iter()
            .filter(|(_, r)| r.blacklisted && !r.deleting && r.issued.is_some())
            .filter(|(name, _)| {
                self.enrollments
                    .get(*name)
                    .is_some_and(|e| e.phase != EnrollmentPhase::Revoked)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for name in revoked {
            if let Some(mut enrollment) = self.enrollments.get(&name).cloned() {
                enrollment.phase = EnrollmentPhase::Revoked;
                if let Err(e) = self.write_enrollment(&name, enrollment).await {
                    tracing::warn!(device = %name, error = %e, "marking a credential revoked failed");
                }
            }
        }
    }

    async fn push_account(&self, revocations: BTreeMap<String, i64>) -> Result<()> {
        account::push(&self.system, &self.options.signer, revocations, now()).await
    }

    /// A deleted `Device` keeps its finalizer until its credential is revoked.
    pub(super) async fn release_deleted(&mut self, device: &Device) {
        let Some(name) = device.metadata.name.as_deref() else {
            return;
        };
        let ours = device
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| f.iter().any(|f| f == CREDENTIAL_FINALIZER));
        if !ours {
            return;
        }
        let covered = match self.records.get(name).and_then(|r| r.issued.as_ref()) {
            Some((key, issued_at)) => self.revocations.get(key).is_some_and(|at| at >= issued_at),
            None => true,
        };
        if !covered {
            return;
        }
        let body = json!({
            "apiVersion": format!("{GROUP}/v1alpha1"),
            "kind": "Device",
            "metadata": { "name": name, "finalizers": [] },
        });
        if let Err(e) = self
            .devices
            .patch(
                name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(body),
            )
            .await
        {
            tracing::warn!(device = name, error = %e, "removing the credential finalizer failed");
        }
    }
}

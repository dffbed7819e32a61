//! Payload bytes of revisions. A revision's bytes are known when a CR produced it, or when its
//! key was read (a full cold start, a standby following the leader). After a cold start from a
//! checkpoint (adr/0051) only hashes are known for the keys written before it, so a write of a
//! revision no CR produces any more (a rollback to the previous revision, or to a device's
//! last good one) waits while its bytes are read back from a key that holds them.

use bytes::Bytes;
use harmony_fleet_contracts::canonical::ContentHash;
use harmony_fleet_contracts::ids::{DeploymentName, DeviceId};
use harmony_fleet_contracts::keys;

use super::reconciler::Reconciler;
use super::{Effect, Rev};

impl Reconciler {
    /// The write of `rev` to `key` needs bytes not known yet: it waits for them, and they are
    /// asked for (once per revision) from a key holding `rev`. `false` when no key holds it:
    /// the bytes cannot be had.
    pub(super) fn park(
        &mut self,
        key: String,
        deployment: DeploymentName,
        device: DeviceId,
        rev: Rev,
    ) -> bool {
        if !self.fetching.contains(&rev) {
            let Some(holder) = self.holder_of(&deployment, &rev) else {
                return false;
            };
            self.fetching.insert(rev);
            self.emit(Effect::FetchRevision { rev, key: holder });
        }
        self.parked.insert(key, (deployment, device, Some(rev)));
        true
    }

    /// A key holding `rev`: one of `deployment`'s first, else any.
    fn holder_of(&self, deployment: &DeploymentName, rev: &Rev) -> Option<String> {
        let of_deployment = self
            .fleet
            .assigned_devices(deployment)
            .into_iter()
            .find(|d| self.fleet.assigned(deployment, d) == Some(rev))
            .map(|d| keys::desired_key(&d, deployment));
        of_deployment.or_else(|| {
            self.fleet
                .assigned_pairs()
                .find(|(_, _, r, _)| *r == rev)
                .map(|(k, d, _, _)| keys::desired_key(d, k))
        })
    }

    /// The bytes of `rev` were read (`None`: they could not be): the writes waiting for them
    /// go on, unless a later decision replaced them; without bytes they are tried again on
    /// the tick.
    pub(super) fn on_revision_fetched(&mut self, rev: Rev, bytes: Option<Bytes>) {
        self.fetching.remove(&rev);
        let bytes = bytes.filter(|b| ContentHash::of_bytes(b) == rev);
        let found = bytes.is_some();
        match bytes {
            Some(bytes) => {
                self.revisions.insert(rev, bytes);
            }
            None => {
                tracing::warn!(revision = %rev, "payload bytes of a revision could not be read back; retrying on the tick");
            }
        }
        let waiting: Vec<_> = self
            .parked
            .extract_if(.., |_, (_, _, r)| r.as_ref() == Some(&rev))
            .collect();
        for (key, (deployment, device, rev)) in waiting {
            if found {
                self.ops.entry(key).or_insert((deployment, device, rev));
            } else {
                self.retry.insert((deployment, device), rev);
            }
        }
    }
}

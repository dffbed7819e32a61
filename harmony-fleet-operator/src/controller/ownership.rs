//! `Deployment` resources: who owns a fleet-wide name, the revision and rollout of the owner,
//! and the finalizer that holds a deleted resource until its keys are gone.

use std::collections::{BTreeSet, HashSet};

use bytes::Bytes;
use harmony_fleet_contracts::canonical::ContentHash;
use harmony_fleet_contracts::ids::DeploymentName;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::watcher;

use super::reconciler::Reconciler;
use super::status::restore_rollout;
use super::{CrKey, Effect, PatchOutcome, Rev};
use crate::crd::deployment::{Deployment, DeploymentStatus};
use crate::crd::{FINALIZER, ToIndex, ToPolicy};
use crate::events::{self as fleet_events, Regarding};
use crate::index::Selector;
use crate::rollout::{Policy, Progress, RolloutState};

/// What the core remembers of one `Deployment` resource.
#[derive(Debug, Clone)]
pub(super) struct Cr {
    pub(super) name: Option<DeploymentName>,
    pub(super) created: Option<Timestamp>,
    pub(super) generation: Option<i64>,
    pub(super) resource_version: Option<String>,
    pub(super) finalizers: Vec<String>,
    pub(super) deleting: bool,
    pub(super) resource: Deployment,
    /// Why the spec cannot be served (invalid name or payload), if so.
    pub(super) problem: Option<(String, String)>,
    /// Status as last written (or found on the resource at start).
    pub(super) last_status: Option<DeploymentStatus>,
}

/// A Deployment name this operator serves.
#[derive(Debug)]
pub(super) struct Owned {
    pub(super) key: CrKey,
    pub(super) selector: Selector,
    pub(super) policy: Policy,
    pub(super) rollout: RolloutState<Rev>,
    pub(super) progress: Progress,
}

impl Reconciler {
    pub(super) fn on_cr(&mut self, event: watcher::Event<Deployment>) {
        match event {
            watcher::Event::Init => self.relist = Some(HashSet::new()),
            watcher::Event::InitApply(d) | watcher::Event::Apply(d) => {
                if let Some(seen) = &mut self.relist {
                    seen.insert(cr_key(&d));
                }
                self.on_cr_apply(d);
            }
            watcher::Event::InitDone => {
                if let Some(seen) = self.relist.take() {
                    let gone: Vec<CrKey> = self
                        .crs
                        .keys()
                        .filter(|k| !seen.contains(k))
                        .cloned()
                        .collect();
                    for key in gone {
                        self.forget_cr(&key);
                    }
                }
                if !self.caught_up.crs {
                    self.caught_up.crs = true;
                    self.maybe_converge();
                }
            }
            watcher::Event::Delete(d) => {
                let key = cr_key(&d);
                self.forget_cr(&key);
            }
        }
    }

    fn on_cr_apply(&mut self, d: Deployment) {
        let key = cr_key(&d);
        let deleting = d.metadata.deletion_timestamp.is_some();
        let previous = self.crs.get(&key);
        let spec_changed = previous.is_none_or(|p| p.resource.spec != d.spec);
        // A leader trusts what it wrote last (the watch may lag); a standby follows the
        // leader's statuses, which it takes over from.
        let last_status = if self.leader {
            previous
                .and_then(|p| p.last_status.clone())
                .or_else(|| d.status.clone())
        } else {
            d.status.clone()
        };
        let name = DeploymentName::new(key.name.clone()).map(|n| self.ids.deployment(n));
        let problem = match &name {
            Err(e) => Some((
                "InvalidName".to_owned(),
                format!("metadata.name cannot be a deployment name: {e}"),
            )),
            Ok(_) => d.spec.score.validate().err().map(|e| {
                (
                    "InvalidScore".to_owned(),
                    format!("spec.score is invalid: {e}"),
                )
            }),
        };
        let cr = Cr {
            name: name.ok(),
            created: d.metadata.creation_timestamp.as_ref().map(|t| t.0),
            generation: d.metadata.generation,
            resource_version: d.metadata.resource_version.clone(),
            finalizers: d.finalizers().to_vec(),
            deleting,
            resource: d,
            problem,
            last_status,
        };
        let generation_changed = previous.is_none_or(|p| p.generation != cr.generation);
        self.crs.insert(key.clone(), cr.clone());
        if generation_changed {
            self.dirty_status(key.clone());
        }

        if deleting {
            self.release_name(&key);
            self.finalize.insert(key.clone());
            self.try_finalize(&key);
            return;
        }
        if !cr.finalizers.iter().any(|f| f == FINALIZER) {
            let mut finalizers = cr.finalizers.clone();
            finalizers.push(FINALIZER.to_owned());
            self.emit(Effect::AddFinalizer {
                key: key.clone(),
                finalizers,
                resource_version: cr.resource_version.clone(),
            });
        }
        let Some(name) = cr.name.clone() else {
            return;
        };
        self.claims
            .entry(name.clone())
            .or_default()
            .insert((cr.created, key.namespace.clone()));
        self.resolve_owner(&name, spec_changed);
    }

    /// Decides which CR owns `name` and (re)applies it when it changed or `force` is set.
    fn resolve_owner(&mut self, name: &DeploymentName, force: bool) {
        let current = self.owned.get(name).map(|o| o.key.clone());
        let refused = |ns: &str| {
            self.crs
                .get(&CrKey {
                    namespace: ns.to_owned(),
                    name: name.as_str().to_owned(),
                })
                .and_then(|cr| cr.last_status.as_ref())
                .is_some_and(|s| {
                    s.conditions
                        .iter()
                        .any(|c| c.type_ == "Ready" && c.reason == "NameConflict")
                })
        };
        let claimant = self
            .claims
            .get(name)
            .and_then(|c| pick_owner(c, current.as_ref().map(|k| k.namespace.as_str()), refused))
            .map(|ns| CrKey {
                namespace: ns.to_owned(),
                name: name.as_str().to_owned(),
            });
        let claimants: Vec<CrKey> = self
            .claims
            .get(name)
            .into_iter()
            .flatten()
            .map(|(_, ns)| CrKey {
                namespace: ns.clone(),
                name: name.as_str().to_owned(),
            })
            .collect();
        for key in claimants {
            self.dirty_status(key);
        }
        match claimant {
            None => {
                if current.is_some() {
                    self.owned.remove(name);
                    let changes = self.index.remove_deployment(name);
                    self.apply_changes(changes);
                    self.metrics.deployments.set(self.owned.len() as i64);
                }
            }
            Some(owner) => {
                if current.as_ref() != Some(&owner) || force {
                    self.apply_owned(&owner);
                }
            }
        }
    }

    /// Applies the spec of the owning CR: revision, rollout, selector.
    fn apply_owned(&mut self, key: &CrKey) {
        let Some(cr) = self.crs.get(key) else {
            return;
        };
        let Some(name) = cr.name.clone() else {
            return;
        };
        if cr.problem.is_some() {
            // Keep serving the last good spec (if any); the status says what is wrong.
            if let Some(owned) = self.owned.get_mut(&name) {
                owned.key = key.clone();
            }
            return;
        }
        let spec = &cr.resource.spec;
        let (bytes, rev) = match spec.score.to_canonical_json() {
            Ok(bytes) => {
                let rev = ContentHash::of_bytes(&bytes);
                (Bytes::from(bytes), rev)
            }
            Err(e) => {
                tracing::error!(deployment = %name, error = %e, "cannot encode spec.score");
                return;
            }
        };
        self.revisions.entry(rev).or_insert(bytes);
        let selector = spec.target_selector.to_index();
        let policy = spec.rollout.to_policy();
        let restored = cr
            .last_status
            .as_ref()
            .and_then(|s| s.rollout.as_ref())
            .and_then(restore_rollout);
        let events = match self.owned.get_mut(&name) {
            Some(owned) => {
                owned.key = key.clone();
                owned.policy = policy;
                owned.selector = selector.clone();
                if owned.rollout.target != rev {
                    let before = owned.rollout.clone();
                    owned.rollout = RolloutState::start(rev, Some(&owned.rollout));
                    fleet_events::transitions(Some(&before), &owned.rollout)
                } else {
                    Vec::new()
                }
            }
            None => {
                // A rollout restored from the status (operator restart) is no news.
                let (rollout, events) = match restored {
                    Some(r) if r.target == rev => (r, Vec::new()),
                    other => {
                        let rollout = RolloutState::start(rev, other.as_ref());
                        let events = fleet_events::transitions(other.as_ref(), &rollout);
                        (rollout, events)
                    }
                };
                self.owned.insert(
                    name.clone(),
                    Owned {
                        key: key.clone(),
                        selector: selector.clone(),
                        policy,
                        rollout,
                        progress: Progress::default(),
                    },
                );
                self.metrics.deployments.set(self.owned.len() as i64);
                events
            }
        };
        self.tell(key, events);
        let changes = self.index.upsert_deployment(name.clone(), selector);
        self.apply_changes(changes);
        // A spec change is stepped at once, whatever the pace of report-driven steps.
        self.rollout_dirty.remove(&name);
        self.step_rollout(&name);
        self.dirty_status(key.clone());
    }

    /// Stops `key` from claiming its name (deletion or removal).
    fn release_name(&mut self, key: &CrKey) {
        let Some(cr) = self.crs.get(key) else {
            return;
        };
        let Some(name) = cr.name.clone() else {
            return;
        };
        let created = cr.created;
        if let Some(claims) = self.claims.get_mut(&name) {
            claims.remove(&(created, key.namespace.clone()));
            if claims.is_empty() {
                self.claims.remove(&name);
            }
        }
        if self.owned.get(&name).is_some_and(|o| o.key == *key) {
            self.owned.remove(&name);
            // A successor takes over the keys; otherwise they are deleted.
            if self.claims.contains_key(&name) {
                self.resolve_owner(&name, true);
            } else {
                let changes = self.index.remove_deployment(&name);
                self.apply_changes(changes);
                self.rollout_pacer.forget(&name);
            }
            self.metrics.deployments.set(self.owned.len() as i64);
        }
    }

    fn forget_cr(&mut self, key: &CrKey) {
        self.release_name(key);
        self.crs.remove(key);
        self.finalize.remove(key);
        self.status_dirty.remove(key);
        self.status_pacer.forget(key);
        self.headlines.remove(key);
    }

    /// Deletes the keys of a deleted CR's name if nobody else owns it; its finalizer is
    /// released once they are gone ([`Reconciler::release_finalizers`]).
    fn try_finalize(&mut self, key: &CrKey) {
        if !self.converged {
            return;
        }
        let Some(name) = self.crs.get(key).and_then(|cr| cr.name.clone()) else {
            return;
        };
        if !self.owned.contains_key(&name) {
            for device in self.fleet.assigned_devices(&name) {
                self.want(&name, &device, None);
            }
        }
    }

    /// [`Self::try_finalize`] for every deleted CR still held (on the tick: retries).
    pub(super) fn finalize_pending(&mut self) {
        let pending: Vec<CrKey> = self.finalize.iter().cloned().collect();
        for key in pending {
            self.try_finalize(&key);
        }
    }

    /// Asks to release the finalizer of each deleted CR whose keys are all gone. Runs only
    /// when no write is in flight, so "gone" is what KV holds.
    pub(super) fn release_finalizers(&mut self) {
        let pending: Vec<CrKey> = self
            .finalize
            .iter()
            .filter(|k| !self.releasing.contains(*k))
            .cloned()
            .collect();
        for key in pending {
            let Some(cr) = self.crs.get(&key) else {
                self.finalize.remove(&key);
                continue;
            };
            if let Some(name) = &cr.name
                && !self.owned.contains_key(name)
                && !self.fleet.assigned_devices(name).is_empty()
            {
                continue;
            }
            if !cr.finalizers.iter().any(|f| f == FINALIZER) {
                self.finalize.remove(&key);
                continue;
            }
            let finalizers = cr
                .finalizers
                .iter()
                .filter(|f| *f != FINALIZER)
                .cloned()
                .collect();
            let resource_version = cr.resource_version.clone();
            self.releasing.insert(key.clone());
            self.emit(Effect::ReleaseFinalizer {
                key,
                finalizers,
                resource_version,
            });
        }
    }

    pub(super) fn on_finalizer_released(&mut self, key: CrKey, outcome: PatchOutcome) {
        self.releasing.remove(&key);
        match outcome {
            PatchOutcome::Done => {
                tracing::info!(deployment = %key.name, namespace = %key.namespace, "keys removed, finalizer released");
                self.finalize.remove(&key);
            }
            PatchOutcome::Gone => {
                self.finalize.remove(&key);
            }
            // Retried on the next tick (a conflict means a newer version is on its way).
            PatchOutcome::Failed => {}
        }
    }

    /// Hands the rollout Events of `key` to the Event writer.
    pub(super) fn tell(&mut self, key: &CrKey, events: Vec<fleet_events::FleetEvent>) {
        if !events.is_empty() {
            let regarding = Regarding::Deployment {
                namespace: key.namespace.clone(),
                name: key.name.clone(),
            };
            self.emit(Effect::Events(regarding, events));
        }
    }
}

/// Which namespace owns a fleet-wide name among its claims `(created, namespace)`: the oldest.
/// `creationTimestamp` has one-second resolution, so claims made in the same second tie; the
/// tie goes to the current owner, then to a claimant not already refused with `NameConflict`
/// (so a restarted operator keeps the owner), then to the first namespace.
pub(super) fn pick_owner<'a>(
    claims: &'a BTreeSet<(Option<Timestamp>, String)>,
    current: Option<&str>,
    refused: impl Fn(&str) -> bool,
) -> Option<&'a str> {
    let (oldest, _) = claims.iter().next()?;
    let tied: Vec<&str> = claims
        .iter()
        .take_while(|(created, _)| created == oldest)
        .map(|(_, ns)| ns.as_str())
        .collect();
    tied.iter()
        .copied()
        .find(|ns| Some(*ns) == current)
        .or_else(|| tied.iter().copied().find(|ns| !refused(ns)))
        .or_else(|| tied.first().copied())
}

pub(super) fn cr_key(d: &Deployment) -> CrKey {
    CrKey {
        namespace: d.namespace().unwrap_or_default(),
        name: d.name_any(),
    }
}
